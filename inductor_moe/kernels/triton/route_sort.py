"""Triton route + sort in one launch for small T (seed 001's idea: no second launch, no round trip through
a separate kernel between the router and the sort).

``_route_sort_kernel``, grid ``(1,)``, 4 warps: one program routes all T tokens as one [BLOCK_T, lanes] tile
(``route._route_tile``, the code of ``route_triton``), writes ``weights``/``ids``, waits at a CTA barrier
and sorts the T*k pairs it just wrote (``sort._sort_small_body``, the code of ``sort_triton``'s small
path; the pairs are re-read from the lines this program wrote, so they come from L1/L2), then pads the
whole tail itself. Bigger problems (``fused_unfit`` says why) run ``route_triton`` then ``sort_triton``:
the same results, two to four launches. Limits (GPU): BLOCK_T * lanes <= ``FUSED_MAX_TILE`` (T <= 16 at
E = 256) and next_pow2(T*k) <= ``FUSED_MAX_PAIRS``.

Where the one launch wins (``benchmarks/bench_route_sort.py``, H200, session 4; both in one CUDA graph): at
every fitting size up to a routing tile of 4096 (Qwen3 E=128 k=8 to T=32: 17.0 vs 18.2 us; GPT-OSS E=32 to
T=64: 12.4 vs 15.9; Mixtral E=8 to T=128: 14.2 vs 16.7; DeepSeek E=256 sigmoid-group to T=16: 13.6 vs
16.5 us) and not beyond (DeepSeek T=32, a 32x256 tile: 41.1 vs 24.5 us, one program is too little work
spread): ``FUSED_MAX_TILE`` is 4096.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import route as _route
from . import sort as _sort
from .route import _route_tile, lanes, route_meta, route_triton
from .sort import _sort_small_body, sort_triton

FUSED_MAX_TILE = (1 << 16) if _route.INTERPRET else 4096  # BLOCK_T * lanes of the routing tile (measured)
FUSED_MAX_PAIRS = 256  # T * k pairs of the sort (next power of two)
FUSED_WARPS = 4


@triton.jit
def _route_sort_kernel(
    x_ptr, bias_ptr, mask_ptr, w_ptr, ids_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr,
    T, E, stride_xt, stride_xe, top_k, n_group, group_size, topk_group, scaling,
    bm, L, NB,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, RENORM: tl.constexpr,
    TOPK_FIRST: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_H: tl.constexpr, JB: tl.constexpr,
    PAD_C: tl.constexpr, FILL: tl.constexpr,
):
    w, ids = _route_tile(
        x_ptr, bias_ptr, 0, T, E, stride_xt, stride_xe, top_k, n_group, group_size, topk_group, scaling,
        SIGMOID, HAS_BIAS, GROUPED, RENORM, TOPK_FIRST, BLOCK_T, BLOCK_G, BLOCK_S, BLOCK_K,
    )
    rows = tl.arange(0, BLOCK_T)
    kcols = tl.arange(0, BLOCK_K)
    offs = rows[:, None] * top_k + kcols[None, :]
    valid = (rows[:, None] < T) & (kcols[None, :] < top_k)
    tl.store(w_ptr + offs, w, mask=valid)
    tl.store(ids_ptr + offs, ids, mask=valid)
    tl.debug_barrier()  # the pairs written above are read back by other threads of this program
    _sort_small_body(ids_ptr, w_ptr, mask_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr, 0,
                     T, top_k, E, bm, L, NB, L, NB, HAS_MASK, BLOCK_Q, BLOCK_H, JB, PAD_C, FILL)


def fused_unfit(num_tokens: int, num_experts: int, top_k: int, n_group: int = 1, grouped: bool = False) -> str | None:
    """None when one program can route and sort the whole batch, else why not (then two launches)."""
    if num_experts > _route.MAX_EXPERTS or top_k > _route.MAX_TOP_K:
        return f"E={num_experts}, k={top_k} beyond the router kernel"
    block_t = triton.next_power_of_2(max(num_tokens, 1))
    width = lanes(route_meta(num_experts, top_k, "softmax", True, "softmax_then_topk", None,
                             n_group if grouped else 1))
    if block_t * width > FUSED_MAX_TILE:
        return f"routing tile {block_t}x{width} > {FUSED_MAX_TILE}"
    if triton.next_power_of_2(max(num_tokens * top_k, 1)) > FUSED_MAX_PAIRS:
        return f"{num_tokens * top_k} pairs > {FUSED_MAX_PAIRS}"
    return None


def route_sort_triton(
    logits: torch.Tensor,
    top_k: int,
    block_m: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
    expert_mask: torch.Tensor | None = None,
    *,
    fused: bool | None = None,
):
    """``fused`` forces (True) or forbids (False) the one-launch kernel, for tests; None decides by size."""
    tokens, experts = logits.shape
    meta = route_meta(experts, top_k, scoring, renormalize, order, correction_bias, n_group)
    if fused is None:
        fused = fused_unfit(tokens, experts, top_k, n_group, meta["GROUPED"]) is None
    if not fused:
        weights, ids = route_triton(logits, top_k, scoring, renormalize, order, correction_bias, n_group,
                                    topk_group, scaling)
        return (*sort_triton(ids, weights, experts, block_m, expert_mask), weights, ids)

    device = logits.device
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=device)
    ids = torch.empty((tokens, top_k), dtype=torch.int32, device=device)
    outs = _sort.sort_outputs(tokens, top_k, experts, block_m, device)
    sti, sw, sei, nv = outs
    bias = correction_bias.contiguous() if meta["HAS_BIAS"] else logits
    mask, has_mask = _sort.mask_arg(expert_mask, logits)
    _route_sort_kernel[(1,)](
        logits, bias, mask, weights, ids, sti, sw, sei, nv,
        tokens, experts, logits.stride(0), logits.stride(1), top_k, n_group, experts // n_group, topk_group,
        float(scaling), block_m, sti.numel(), sei.numel(),
        HAS_MASK=has_mask, BLOCK_T=triton.next_power_of_2(max(tokens, 1)), num_warps=FUSED_WARPS,
        **meta, **_sort.small_meta(tokens * top_k, experts, block_m),
    )
    return (*outs, weights, ids)
