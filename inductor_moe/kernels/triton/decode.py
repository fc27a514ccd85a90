"""Triton decode path of ``inductor_moe::moe``: router and experts in two launches, no sort, no combine pass.

For a handful of tokens every (token, slot) pair hits its own expert, so the sorted layout buys nothing:
its cost is the sort launch, padding blocks and the [T*k, H] buffer that is summed afterwards. Here:

``_decode_up_kernel``, one program per (pair, tile of ``BLOCK_N`` intermediate columns): routes its token
again (``route._route_tile`` on one row: E logits, a few reductions, all router kinds) and keeps its slot's
expert and weight (the tile-0 program stores them for the second kernel), then streams the gate and up rows
of that expert (the up rows through their own base: ``w13[:, I:]``, or ``w3`` when gate and up are
separate weights) against the token's hidden row (a GEMV: f32 products summed over ``BLOCK_K`` columns, no
``tl.dot``, which would need 16 rows) and writes ``act`` [T*k, I] in the model dtype, as the sorted path does.

``_decode_down_kernel``, one program per (token, tile of ``BLOCK_N`` hidden columns): one GEMV over the
token's k slots laid end to end (k*I columns; column c reads slot c // I of ``act``, scaled by that slot's
routing weight, and the rows of that slot's expert), so the combine over slots happens in registers, in a
fixed order (deterministic), and the output [T, H] is written once.

Weights are read through their strides (GPT-OSS's transposed storage works, with tiles laid along its
contiguous axis: ``tiles_for``). Used for T with T*k <= E/5 (``use_decode``; about one distinct expert per
pair), else the sorted path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import decode_key, pick_decode_tiles
from .experts import ACT_CODES, _activation, _gate_up_rows, _proj_rows, up_weights
from .route import _route_tile, route_meta


@triton.jit(do_not_specialize=["T"])
def _decode_up_kernel(
    x_ptr, logits_ptr, corr_ptr, wts_ptr, ids_ptr, w_ptr, wu_ptr, b_ptr, act_ptr,
    T, E, K, I, top_k, n_group, group_size, topk_group, scaling,
    stride_xt, stride_xk, stride_lt, stride_le, stride_we, stride_wn, stride_wk, stride_ue, stride_un, stride_uk,
    stride_be, stride_bn,
    alpha, limit,
    SIGMOID: tl.constexpr, HAS_CORR: tl.constexpr, GROUPED: tl.constexpr, RENORM: tl.constexpr,
    TOPK_FIRST: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_TOPK: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tl.cdiv(I, BLOCK_N)
    pair = pid // tiles
    tile = pid % tiles
    token = pair // top_k
    slot = pair % top_k
    w, ids = _route_tile(
        logits_ptr, corr_ptr, token, T, E, stride_lt, stride_le, top_k, n_group, group_size, topk_group, scaling,
        SIGMOID, HAS_CORR, GROUPED, RENORM, TOPK_FIRST, 1, BLOCK_G, BLOCK_S, BLOCK_TOPK,
    )
    mine = tl.arange(0, BLOCK_TOPK)[None, :] == slot
    expert = tl.sum(tl.where(mine, ids, 0))
    if tile == 0:
        tl.store(ids_ptr + pair, expert)
        tl.store(wts_ptr + pair, tl.sum(tl.where(mine, w, 0.0)))

    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    gate_rows, up_rows = _gate_up_rows(offs_n, I, INTERLEAVED)  # of the bias [E, 2I]
    w_rows = _proj_rows(offs_n, INTERLEAVED)  # of the gate base (w13) and the up base (w13[:, I:] or w3)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    u_base = wu_ptr + expert.to(tl.int64) * stride_ue
    x_row = x_ptr + token.to(tl.int64) * stride_xt
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        xv = tl.load(x_row + offs_k * stride_xk, mask=k_ok, other=0.0).to(tl.float32)
        m = n_ok[:, None] & k_ok[None, :]
        wg = tl.load(w_base + w_rows[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=m, other=0.0)
        wu = tl.load(u_base + w_rows[:, None] * stride_un + offs_k[None, :] * stride_uk, mask=m, other=0.0)
        acc_g += tl.sum(wg.to(tl.float32) * xv[None, :], axis=1)
        acc_u += tl.sum(wu.to(tl.float32) * xv[None, :], axis=1)
    if HAS_BIAS:
        b_base = b_ptr + expert.to(tl.int64) * stride_be
        acc_g += tl.load(b_base + gate_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)
        acc_u += tl.load(b_base + up_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)
    h = _activation(acc_g, acc_u, ACT, alpha, limit)
    tl.store(act_ptr + pair.to(tl.int64) * I + offs_n, h.to(act_ptr.dtype.element_ty), mask=n_ok)


@triton.jit(do_not_specialize=["T"])
def _decode_down_kernel(
    act_ptr, wts_ptr, ids_ptr, w_ptr, b_ptr, out_ptr,
    T, I, N, top_k,
    stride_we, stride_wn, stride_wk, stride_be, stride_bn, stride_ot,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tl.cdiv(N, BLOCK_N)
    token = pid // tiles
    offs_n = (pid % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    first_pair = token.to(tl.int64) * top_k
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    width = top_k * I  # the token's k slots end to end
    for c0 in range(0, width, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        c_ok = cols < width
        slot = cols // I
        col = cols - slot * I
        pair = first_pair + slot
        expert = tl.load(ids_ptr + pair, mask=c_ok, other=0).to(tl.int64)
        a = tl.load(act_ptr + pair * I + col, mask=c_ok, other=0.0).to(tl.float32)
        a = a * tl.load(wts_ptr + pair, mask=c_ok, other=0.0)
        wv = tl.load(w_ptr + expert[None, :] * stride_we + offs_n[:, None] * stride_wn + col[None, :] * stride_wk,
                     mask=n_ok[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(wv.to(tl.float32) * a[None, :], axis=1)
    if HAS_BIAS:
        for s in range(top_k):
            e = tl.load(ids_ptr + first_pair + s).to(tl.int64)
            acc += tl.load(wts_ptr + first_pair + s) * tl.load(
                b_ptr + e * stride_be + offs_n * stride_bn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def use_decode(tokens: int, top_k: int, num_experts: int) -> bool:
    """The decode path while the pairs hit about as many distinct experts as there are pairs."""
    return 0 < tokens and (tokens == 1 or tokens * top_k * 5 <= num_experts)


def tiles_for(w: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) of a GEMV over ``w`` [E, N, K]: long runs along the contiguous axis."""
    if w.stride(2) == 1:
        return 16, 512, 4
    return 64, 64, 4


def moe_decode_triton(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias,
                      n_group, topk_group, scaling, activation, gate_up_interleaved, alpha, limit,
                      tiles1: tuple[int, int, int] | None = None, tiles2: tuple[int, int, int] | None = None,
                      w3=None):
    """``moe`` for a few tokens (``w3``: separate up weights, ``w13`` then holds the gate rows alone).
    Tiles: ``tiles1``/``tiles2`` when given (tuning, tests), else the tuned table
    (``configs.pick_decode_tiles``, written by benchmarks/tune_decode.py), else ``tiles_for``."""
    tokens, hidden_dim = hidden.shape
    num_experts = w13.shape[0]
    inter = w2.shape[2]
    device = hidden.device
    out = torch.empty(tokens, hidden_dim, dtype=hidden.dtype, device=device)
    if tokens == 0:
        return out
    ids = torch.empty(tokens * top_k, dtype=torch.int32, device=device)
    weights = torch.empty(tokens * top_k, dtype=torch.float32, device=device)
    act = torch.empty(tokens * top_k, inter, dtype=hidden.dtype, device=device)
    meta = route_meta(num_experts, top_k, scoring, renormalize, order, correction_bias, n_group)
    corr = correction_bias.contiguous() if meta["HAS_BIAS"] else logits
    if tiles1 is None or tiles2 is None:
        key = decode_key(num_experts, hidden_dim, inter, top_k, hidden.dtype, w13.stride(2) == 1, w2.stride(2) == 1)
        tuned = pick_decode_tiles(key) or {}
        tiles1 = tiles1 or tuned.get("up")
        tiles2 = tiles2 or tuned.get("down")
    bn1, bk1, warps1 = tiles1 or tiles_for(w13)
    bias13 = b13 if b13 is not None else w13
    up = up_weights(w13, inter, gate_up_interleaved, w3)
    _decode_up_kernel[(tokens * top_k * triton.cdiv(inter, bn1),)](
        hidden, logits, corr, weights, ids, w13, up, bias13, act,
        tokens, num_experts, hidden_dim, inter, top_k, n_group, num_experts // n_group, topk_group, float(scaling),
        hidden.stride(0), hidden.stride(1), logits.stride(0), logits.stride(1),
        w13.stride(0), w13.stride(1), w13.stride(2), up.stride(0), up.stride(1), up.stride(2),
        bias13.stride(0) if b13 is not None else 0, bias13.stride(1) if b13 is not None else 0,
        float(alpha), float(limit),
        SIGMOID=meta["SIGMOID"], HAS_CORR=meta["HAS_BIAS"], GROUPED=meta["GROUPED"], RENORM=meta["RENORM"],
        TOPK_FIRST=meta["TOPK_FIRST"], BLOCK_G=meta["BLOCK_G"], BLOCK_S=meta["BLOCK_S"], BLOCK_TOPK=meta["BLOCK_K"],
        HAS_BIAS=b13 is not None, ACT=ACT_CODES[activation], INTERLEAVED=gate_up_interleaved,
        BLOCK_N=bn1, BLOCK_K=bk1, num_warps=warps1,
    )
    bn2, bk2, warps2 = tiles2 or tiles_for(w2)
    bias2 = b2 if b2 is not None else w2
    _decode_down_kernel[(tokens * triton.cdiv(hidden_dim, bn2),)](
        act, weights, ids, w2, bias2, out,
        tokens, inter, hidden_dim, top_k,
        w2.stride(0), w2.stride(1), w2.stride(2),
        bias2.stride(0) if b2 is not None else 0, bias2.stride(1) if b2 is not None else 0, out.stride(0),
        HAS_BIAS=b2 is not None, BLOCK_N=bn2, BLOCK_K=bk2, num_warps=warps2,
    )
    return out
