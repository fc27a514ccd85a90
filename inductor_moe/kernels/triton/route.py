"""Triton router: logits [T, E] -> top-k expert ids (int32) and f32 weights, matching ``route_ref``.

One kernel, ``_route_kernel``, grid ``(cdiv(T, BLOCK_T),)``: each program holds a [BLOCK_T, lanes] tile of
logits in registers (lanes = next_pow2(E), masked past E, so any E works; grouped routing uses n_group
slices of next_pow2(E / n_group) lanes), does all math in f32 and picks the k experts by k rounds of
"max, then knock the winner out". Each lane's selection score and lane index are packed into one int64
key (order-preserving bits of the f32 score high, ``lanes - 1 - lane`` low), so one max reduction per round
finds the best score and, on a tie, the lower expert. On the GPU a program is one warp of BLOCK_T * lanes
<= 1024 elements (rows stay inside the warp: reductions are shuffles, no barrier). Constexpr branches:

- ``softmax_then_topk``: softmax (or sigmoid) scores; the selection score adds ``correction_bias`` when
  given (the weights stay the unbiased scores); with ``n_group > 1`` the DeepSeek-V3 group limit first
  (group score = sum of the group's two best selection scores, two max reductions over the group axis of
  a [BLOCK_T, groups, group lanes] view; the best ``topk_group`` groups are kept, the other experts get
  -inf); optional renormalization (sigmoid adds 1e-20 to the denominator, as the reference does); times
  ``scaling``.
- ``topk_then_softmax``: top-k of the raw logits, softmax over those k values, times ``scaling``.

Selection order is ``torch.topk``'s: descending score, a tie goes to the lower expert index, a NaN score
ranks above +inf (and NaNs among themselves by index). So a NaN logit yields NaN weights (softmax: the
whole row, whose ids are then 0..k-1; sigmoid: the NaN experts come first), while the ids always stay
distinct and inside [0, E).

The tile helper (``_route_tile``) is shared with the fused route+sort kernel in ``route_sort.py``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .limits import MAX_EXPERTS, MAX_TOP_K  # noqa: F401  (re-exported)

# The interpreter pays per traced op, not per element: larger tiles (fewer programs) there, same code.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TILE_ELEMS = (1 << 16) if INTERPRET else 1024  # BLOCK_T * lanes per program (per warp) ...
MAX_BLOCK_T = 1024 if INTERPRET else 64  # ... and at most this many tokens


_KEY_NONE = tl.constexpr(-(2**63))  # packed key of a lane that is not (or no longer) a candidate


@triton.jit
def _order_bits(v):
    """f32 -> int32 with the same order (signed compare); -0.0 equals +0.0, every NaN maps above +inf."""
    bits = v.to(tl.int32, bitcast=True)
    o = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    o = tl.where(o == -1, 0, o)  # -0.0
    return tl.where(v != v, 0x7FFFFFFF, o)


@triton.jit
def _from_order_bits(o):
    """Inverse of ``_order_bits`` (-0.0 comes back as +0.0, a NaN as a NaN)."""
    return tl.where(o >= 0, o, o ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _pack(score, lanes, candidate, LANES: tl.constexpr):
    """One int64 key per lane: the score's order bits high, ``LANES - 1 - lane`` low. A max over keys finds
    the best score and, on a tie, the lowest lane (lanes ascend with expert ids) in one reduction."""
    key = (_order_bits(score).to(tl.int64) << 32) | (LANES - 1 - lanes).to(tl.int64)
    return tl.where(candidate, key, _KEY_NONE)


@triton.jit
def _key_score(key):
    return _from_order_bits((key >> 32).to(tl.int32))


@triton.jit
def _key_lane(key, LANES: tl.constexpr):
    return LANES - 1 - (key - ((key >> 32) << 32)).to(tl.int32)


@triton.jit
def _route_tile(
    x_ptr, bias_ptr, row0, T, E, stride_xt, stride_xe,
    top_k, n_group, group_size, topk_group, scaling,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, RENORM: tl.constexpr,
    TOPK_FIRST: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Route rows [row0, row0 + BLOCK_T): returns (weights f32 [BLOCK_T, BLOCK_K], ids int32 [BLOCK_T, BLOCK_K]);
    entries of rows >= T or slots >= top_k are garbage and must be masked by the caller.

    Lanes: BLOCK_G groups of BLOCK_S lanes (ungrouped: one group of next_pow2(E)); lane g*BLOCK_S + j holds
    expert g*group_size + j, so a group is a power-of-two slice of lanes and lanes ascend with experts."""
    LANES: tl.constexpr = BLOCK_G * BLOCK_S
    rows = row0 + tl.arange(0, BLOCK_T)
    lanes = tl.arange(0, LANES)
    if GROUPED:
        expert = (lanes // BLOCK_S) * group_size + lanes % BLOCK_S
        lane_ok = (lanes % BLOCK_S < group_size) & (lanes // BLOCK_S < n_group)
    else:
        expert = lanes
        lane_ok = lanes < E
    rmask = rows < T
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xt + expert[None, :] * stride_xe,
                mask=rmask[:, None] & lane_ok[None, :], other=0.0).to(tl.float32)
    valid = (rows[:, None] >= 0) & lane_ok[None, :]  # [BLOCK_T, LANES]: real experts (rows >= T too)
    neg_inf = float("-inf")

    if TOPK_FIRST:
        choice = x
        probs = x
    else:
        if SIGMOID:
            probs = 1.0 / (1.0 + tl.exp(-x))
        else:
            xm = tl.where(valid, x, neg_inf)
            row_max = tl.max(xm, axis=1)
            num = tl.exp(xm - row_max[:, None])
            probs = num / tl.sum(num, axis=1)[:, None]
        choice = probs
        if HAS_BIAS:
            bias = tl.load(bias_ptr + expert, mask=lane_ok, other=0.0).to(tl.float32)
            choice = choice + bias[None, :]
        if GROUPED:
            # DeepSeek-V3 noaux_tc: group score = its two best choice scores summed; keep topk_group groups
            key3 = tl.reshape(_pack(choice, lanes[None, :], valid, LANES), [BLOCK_T, BLOCK_G, BLOCK_S])
            best1 = tl.max(key3, axis=2)
            best2 = tl.max(tl.where(key3 == best1[:, :, None], _KEY_NONE, key3), axis=2)
            score = _key_score(best1) + tl.where(group_size >= 2, _key_score(best2), 0.0)
            groups = tl.arange(0, BLOCK_G)
            gkey = _pack(score, groups[None, :], (groups < n_group)[None, :] & (rows >= 0)[:, None], BLOCK_G)
            kept = tl.zeros([BLOCK_T, BLOCK_G], dtype=tl.int32)
            for _i in range(topk_group):
                top = gkey == tl.max(gkey, axis=1)[:, None]
                kept = tl.where(top, 1, kept)
                gkey = tl.where(top, _KEY_NONE, gkey)
            kept_lanes = tl.reshape(tl.broadcast_to(kept[:, :, None], [BLOCK_T, BLOCK_G, BLOCK_S]), [BLOCK_T, LANES])
            choice = tl.where(kept_lanes != 0, choice, neg_inf)

    key = _pack(choice, lanes[None, :], valid, LANES)
    kcols = tl.arange(0, BLOCK_K)
    w_acc = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    id_acc = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    for i in range(top_k):
        best = tl.max(key, axis=1)
        lane = _key_lane(best, LANES)
        hit = lanes[None, :] == lane[:, None]
        if HAS_BIAS:
            w = tl.sum(tl.where(hit, probs, 0.0), axis=1)  # the unbiased score of the pick
        else:
            w = _key_score(best)  # the picked score itself, bit for bit
        key = tl.where(hit, _KEY_NONE, key)
        if GROUPED:
            pick = (lane // BLOCK_S) * group_size + lane % BLOCK_S
        else:
            pick = lane
        pick = tl.minimum(tl.maximum(pick, 0), E - 1)  # always in range already (k <= E candidates)
        slot = kcols[None, :] == i
        w_acc = tl.where(slot, w[:, None], w_acc)
        id_acc = tl.where(slot, pick[:, None], id_acc)

    kmask = kcols[None, :] < top_k
    if TOPK_FIRST:
        top = tl.where(kmask, w_acc, neg_inf)
        num = tl.exp(top - tl.max(top, axis=1)[:, None])
        w_acc = num / tl.sum(num, axis=1)[:, None]
    elif RENORM:
        denom = tl.sum(tl.where(kmask, w_acc, 0.0), axis=1)
        if SIGMOID:
            denom = denom + 1e-20
        w_acc = w_acc / denom[:, None]
    w_acc = w_acc * scaling
    return w_acc, id_acc


@triton.jit
def _route_kernel(
    x_ptr, bias_ptr, w_ptr, ids_ptr, T, E, stride_xt, stride_xe,
    top_k, n_group, group_size, topk_group, scaling,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, RENORM: tl.constexpr,
    TOPK_FIRST: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row0 = tl.program_id(0) * BLOCK_T
    w, ids = _route_tile(
        x_ptr, bias_ptr, row0, T, E, stride_xt, stride_xe, top_k, n_group, group_size, topk_group, scaling,
        SIGMOID, HAS_BIAS, GROUPED, RENORM, TOPK_FIRST, BLOCK_T, BLOCK_G, BLOCK_S, BLOCK_K,
    )
    rows = row0 + tl.arange(0, BLOCK_T)
    kcols = tl.arange(0, BLOCK_K)
    offs = rows[:, None].to(tl.int64) * top_k + kcols[None, :]
    mask = (rows[:, None] < T) & (kcols[None, :] < top_k)
    tl.store(w_ptr + offs, w, mask=mask)
    tl.store(ids_ptr + offs, ids, mask=mask)


def route_meta(num_experts: int, top_k: int, scoring: str, renormalize: bool, order: str, correction_bias,
               n_group: int) -> dict:
    """Constexpr flags and lane blocks shared by the route and route+sort launches."""
    topk_first = order == "topk_then_softmax"
    grouped = n_group > 1 and not topk_first
    return dict(
        SIGMOID=(scoring == "sigmoid") and not topk_first,
        HAS_BIAS=correction_bias is not None and not topk_first,
        GROUPED=grouped,
        RENORM=bool(renormalize),
        TOPK_FIRST=topk_first,
        BLOCK_G=triton.next_power_of_2(n_group) if grouped else 1,
        BLOCK_S=triton.next_power_of_2(num_experts // n_group if grouped else num_experts),
        BLOCK_K=triton.next_power_of_2(top_k),
    )


def lanes(meta: dict) -> int:
    return meta["BLOCK_G"] * meta["BLOCK_S"]


def route_triton(
    logits: torch.Tensor,
    top_k: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
    *,
    block_t: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_t`` (tokens per program, a power of two) and ``num_warps`` override the launch, for tuning."""
    tokens, experts = logits.shape
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((tokens, top_k), dtype=torch.int32, device=logits.device)
    if tokens == 0:
        return weights, ids
    meta = route_meta(experts, top_k, scoring, renormalize, order, correction_bias, n_group)
    width = lanes(meta)
    if block_t is None:
        block_t = max(1, min(triton.next_power_of_2(tokens), TILE_ELEMS // width, MAX_BLOCK_T))
    if num_warps is None:  # a warp per TILE_ELEMS: rows stay inside one warp, reductions need no barrier
        num_warps = max(1, min(8, block_t * width // TILE_ELEMS))
    bias = correction_bias.contiguous() if meta["HAS_BIAS"] else logits  # dummy pointer when absent
    _route_kernel[(triton.cdiv(tokens, block_t),)](
        logits, bias, weights, ids, tokens, experts, logits.stride(0), logits.stride(1),
        top_k, n_group, experts // n_group, topk_group, float(scaling),
        BLOCK_T=block_t, num_warps=num_warps, **meta,
    )
    return weights, ids
