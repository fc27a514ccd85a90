"""Triton moe_sorting: (token, slot) pairs grouped by expert into ``block_m``-padded runs, bit-exact with
``sort_ref`` (layout in ``inductor_moe.ops.sort``).

No atomic decides where a pair goes: each pair's place is computed. Per-expert counts come from
``tl.histogram`` (order-free); a pair's stable rank inside its expert is the number of earlier kept pairs
of the same expert, counted by comparing it with the pairs before it in blocks of JB ([pairs, JB] tiles,
no scan); its destination is ``run_start[expert] (+ its expert's pairs in earlier chunks) + rank``.
Every output element is written exactly once: real entries by their pair, pads inside runs per expert, the
tail ``[num_valid[0], L)`` in slices, and a used block's ``sorted_expert_ids`` entry by the one pair at
offset 0 of the block (every used block has one). So no write order matters and the result is
deterministic. Output shapes depend on (T, k, E, block_m) only; sizes are kernel arguments; no host sync:
CUDA-graph capturable.

Paths by P = T*k pairs:
- small (next_pow2(P) <= ``SMALL_MAX_PAIRS``): ``_sort_small_kernel``, one launch, grid
  ``(cdiv(L, TAIL_BLOCK),)``, 4 warps. Program 0 holds all P pairs (BLOCK_Q = next_pow2(P) lanes):
  histogram over BLOCK_H = max(64, next_pow2(E + 1)) bins (bin E takes the dropped pairs), run starts by a
  cumsum over experts, ranks against JB-pair blocks, ``tl.gather`` of the run start per pair, scatter,
  pads inside runs, ``num_valid``. Every program recomputes the (cheap) histogram to know where the tail
  starts and pads its slice of the tail.
- large: three launches over chunks of ``CHUNK`` pairs, C = cdiv(P, CHUNK), workspace [2*C*E + P] int32:
  1. ``_sort_count_kernel`` grid (C,): the chunk's histogram -> hist[c, :], each pair's rank among the
     chunk's pairs of its expert -> rank[p];
  2. ``_sort_scan_kernel`` grid (1,), 8 warps: expert totals, padded run starts, base[c, e] = run_start[e]
     + pairs of e in chunks before c ([CB, BLOCK_E] tiles, cumsum over chunks); pads inside runs;
     ``num_valid``;
  3. ``_sort_scatter_kernel`` grid (C,): pair p of chunk c to base[c, e] + rank[p]; each program also pads
     its slice of the tail past ``num_valid[0]``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..reference.sort import TOKEN_BITS, sorted_length
from .limits import MAX_EXPERTS  # noqa: F401  (re-exported)

# The interpreter pays per traced op, not per element: it gets the same code with larger tiles (fewer loop
# trips). Tests shrink these module constants to cover the multi-trip loops.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
SMALL_MAX_PAIRS = 512  # single-program path up to this many (token, slot) pairs (next power of two)
CHUNK = 256  # pairs per program on the large path
TILE_ELEMS = (1 << 20) if INTERPRET else 4096  # elements of a [pairs, pairs] tile (scan: [chunks, experts])
PAD_TILE = (1 << 20) if INTERPRET else 2048  # elements of an [experts, pad columns] tile
TAIL_BLOCK = (1 << 20) if INTERPRET else 8192  # tail entries per program on the small path
FILL = (1 << 14) if INTERPRET else 1024  # entries per store in the fill loops


@triton.jit
def _expert_pads(sti_ptr, sw_ptr, counts, padded, run_start, bm, pad_value,
                 BLOCK_E: tl.constexpr, PAD_C: tl.constexpr):
    """Pad entries at the end of every expert's run: [run_start + count, run_start + padded)."""
    missing = padded - counts
    for j0 in range(0, bm, PAD_C):
        j = j0 + tl.arange(0, PAD_C)
        pos = (run_start + counts)[:, None] + j[None, :]
        m = j[None, :] < missing[:, None]
        tl.store(sti_ptr + pos, tl.full([BLOCK_E, PAD_C], 0, tl.int32) + pad_value, mask=m)
        tl.store(sw_ptr + pos, tl.zeros([BLOCK_E, PAD_C], dtype=tl.float32), mask=m)


@triton.jit
def _fill_tail(sti_ptr, sw_ptr, sei_ptr, total, start, stop, bstart, bstop, L, NB, bm, pad_value,
               FILL: tl.constexpr):
    """Entries in [start, stop) at or past ``total`` become padding; blocks in [bstart, bstop) starting
    at or past ``total`` get expert -1."""
    for s in range(start, stop, FILL):
        i = s + tl.arange(0, FILL)
        m = (i >= total) & (i < stop) & (i < L)
        tl.store(sti_ptr + i, tl.full([FILL], 0, tl.int32) + pad_value, mask=m)
        tl.store(sw_ptr + i, tl.zeros([FILL], dtype=tl.float32), mask=m)
    for s in range(bstart, bstop, FILL):
        b = s + tl.arange(0, FILL)
        m = (b * bm >= total) & (b < bstop) & (b < NB)
        tl.store(sei_ptr + b, tl.full([FILL], -1, tl.int32), mask=m)


@triton.jit
def _load_pairs(ids_ptr, mask_ptr, p, P, E, HAS_MASK: tl.constexpr):
    """Expert ids of pairs ``p`` as int32 and whether each is kept (p < P, id in [0, E), mask True)."""
    pm = p < P
    raw = tl.load(ids_ptr + p, mask=pm, other=-1)
    keep = pm & (raw >= 0) & (raw < E)
    e = tl.where(keep, raw, 0).to(tl.int32)
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + e, mask=keep, other=0) != 0)
    return e, keep


@triton.jit
def _padded_runs(e, keep, E, bm, BLOCK_H: tl.constexpr):
    """Per expert (BLOCK_H >= E + 1 bins): pair count, count padded to bm, start of the padded run."""
    counts = tl.histogram(tl.where(keep, e, E), BLOCK_H)  # bin E collects the dropped pairs
    counts = tl.where(tl.arange(0, BLOCK_H) < E, counts, 0)
    padded = (counts + bm - 1) // bm * bm
    return counts, padded, tl.cumsum(padded, 0) - padded


@triton.jit
def _rank_in_group(e, q, ids_ptr, mask_ptr, first, n, P, E,
                   HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, JB: tl.constexpr):
    """Lane q is pair first + q with expert e[q]: the number of kept pairs first + j, j < q, of the same
    expert (its stable rank in the group), counted against blocks of JB pairs reloaded from memory."""
    rank = tl.zeros([BLOCK_Q], dtype=tl.int32)
    for j0 in range(0, n, JB):
        j = j0 + tl.arange(0, JB)
        ej, kj = _load_pairs(ids_ptr, mask_ptr, first + j, P, E, HAS_MASK)
        same = (e[:, None] == ej[None, :]) & kj[None, :] & (j[None, :] < q[:, None])
        rank += tl.sum(same.to(tl.int32), axis=1)
    return rank


@triton.jit
def _sort_small_body(
    ids_ptr, w_ptr, mask_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr, pid,
    T, k, E, bm, L, NB, TAIL, BTAIL,
    HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_H: tl.constexpr, JB: tl.constexpr,
    PAD_C: tl.constexpr, FILL: tl.constexpr,
):
    """All T*k pairs in one program. Program 0 writes everything but the tail; program ``pid`` pads the
    tail's slice [pid*TAIL, pid*TAIL + TAIL) (and blocks [pid*BTAIL, ...))."""
    q = tl.arange(0, BLOCK_Q)
    P = T * k
    e, keep = _load_pairs(ids_ptr, mask_ptr, q, P, E, HAS_MASK)
    counts, padded, run_start = _padded_runs(e, keep, E, bm, BLOCK_H)
    total = tl.sum(padded, 0)
    pad_value = (k << 24) | T
    if pid == 0:
        rank = _rank_in_group(e, q, ids_ptr, mask_ptr, 0, P, P, E, HAS_MASK, BLOCK_Q, JB)
        dest = tl.gather(run_start, e, 0) + rank
        tl.store(sti_ptr + dest, ((q % k) << 24) | (q // k), mask=keep)
        tl.store(sw_ptr + dest, tl.load(w_ptr + q, mask=keep, other=0.0).to(tl.float32), mask=keep)
        tl.store(sei_ptr + dest // bm, e, mask=keep & (dest % bm == 0))
        _expert_pads(sti_ptr, sw_ptr, counts, padded, run_start, bm, pad_value, BLOCK_H, PAD_C)
        tl.store(nv_ptr, total)
        tl.store(nv_ptr + 1, T)
    _fill_tail(sti_ptr, sw_ptr, sei_ptr, total, pid * TAIL, pid * TAIL + TAIL, pid * BTAIL, pid * BTAIL + BTAIL,
               L, NB, bm, pad_value, FILL)


@triton.jit
def _sort_small_kernel(
    ids_ptr, w_ptr, mask_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr,
    T, k, E, bm, L, NB, TAIL, BTAIL,
    HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_H: tl.constexpr, JB: tl.constexpr,
    PAD_C: tl.constexpr, FILL: tl.constexpr,
):
    _sort_small_body(ids_ptr, w_ptr, mask_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr, tl.program_id(0),
                     T, k, E, bm, L, NB, TAIL, BTAIL, HAS_MASK, BLOCK_Q, BLOCK_H, JB, PAD_C, FILL)


@triton.jit
def _sort_count_kernel(ids_ptr, mask_ptr, hist_ptr, rank_ptr, P, E,
                       HAS_MASK: tl.constexpr, CHUNK: tl.constexpr, BLOCK_H: tl.constexpr, JB: tl.constexpr):
    """Chunk c: per-expert pair counts -> hist[c, :], each pair's stable rank among the chunk's pairs of
    its expert -> rank[p]."""
    c = tl.program_id(0)
    first = c.to(tl.int64) * CHUNK
    q = tl.arange(0, CHUNK)
    e, keep = _load_pairs(ids_ptr, mask_ptr, first + q, P, E, HAS_MASK)
    counts = tl.histogram(tl.where(keep, e, E), BLOCK_H)
    bins = tl.arange(0, BLOCK_H)
    tl.store(hist_ptr + c * E + bins, counts, mask=bins < E)
    rank = _rank_in_group(e, q, ids_ptr, mask_ptr, first, CHUNK, P, E, HAS_MASK, CHUNK, JB)
    tl.store(rank_ptr + first + q, rank, mask=first + q < P)


@triton.jit
def _sort_scan_kernel(hist_ptr, base_ptr, sti_ptr, sw_ptr, nv_ptr, T, k, E, bm, C,
                      CB: tl.constexpr, BLOCK_E: tl.constexpr, PAD_C: tl.constexpr):
    """Expert totals, padded run starts, base[c, e] = run_start[e] + pairs of e in chunks < c; the pads
    inside runs; num_valid."""
    cols = tl.arange(0, BLOCK_E)
    emask = cols < E
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for c0 in range(0, C, CB):
        cr = c0 + tl.arange(0, CB)
        m = (cr < C)[:, None] & emask[None, :]
        counts += tl.sum(tl.load(hist_ptr + cr[:, None] * E + cols[None, :], mask=m, other=0), axis=0)
    padded = (counts + bm - 1) // bm * bm
    run_start = tl.cumsum(padded, 0) - padded
    carry = run_start
    for c0 in range(0, C, CB):
        cr = c0 + tl.arange(0, CB)
        m = (cr < C)[:, None] & emask[None, :]
        offs = cr[:, None] * E + cols[None, :]
        h = tl.load(hist_ptr + offs, mask=m, other=0)
        tl.store(base_ptr + offs, carry[None, :] + tl.cumsum(h, 0) - h, mask=m)
        carry += tl.sum(h, axis=0)
    _expert_pads(sti_ptr, sw_ptr, counts, padded, run_start, bm, (k << 24) | T, BLOCK_E, PAD_C)
    tl.store(nv_ptr, tl.sum(padded, 0))
    tl.store(nv_ptr + 1, T)


@triton.jit
def _sort_scatter_kernel(
    ids_ptr, w_ptr, mask_ptr, base_ptr, rank_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr,
    T, k, E, bm, L, NB, TAIL, BTAIL,
    HAS_MASK: tl.constexpr, CHUNK: tl.constexpr, FILL: tl.constexpr,
):
    """Chunk c: each kept pair to base[c, expert] + rank; then this program's slice of the tail."""
    c = tl.program_id(0)
    p = c.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    P = T * k
    e, keep = _load_pairs(ids_ptr, mask_ptr, p, P, E, HAS_MASK)
    dest = tl.load(base_ptr + c * E + e, mask=keep, other=0) + tl.load(rank_ptr + p, mask=keep, other=0)
    tl.store(sti_ptr + dest, ((p % k) << 24).to(tl.int32) | (p // k).to(tl.int32), mask=keep)
    tl.store(sw_ptr + dest, tl.load(w_ptr + p, mask=keep, other=0.0).to(tl.float32), mask=keep)
    tl.store(sei_ptr + dest // bm, e, mask=keep & (dest % bm == 0))
    total = tl.load(nv_ptr)
    _fill_tail(sti_ptr, sw_ptr, sei_ptr, total, c * TAIL, c * TAIL + TAIL, c * BTAIL, c * BTAIL + BTAIL,
               L, NB, bm, (k << 24) | T, FILL)


def pad_tile(rows: int, block_m: int) -> int:
    """Columns of the per-expert pad tile [rows, PAD_C] (rows: a power of two)."""
    return max(1, min(triton.next_power_of_2(block_m), PAD_TILE // rows))


def pair_block(rows: int) -> int:
    """JB: pairs compared at once against ``rows`` pairs, a [rows, JB] tile of at most TILE_ELEMS."""
    return max(1, min(rows, TILE_ELEMS // rows))


def bins(num_experts: int) -> int:
    """BLOCK_H: histogram bins, one per expert and one for the dropped pairs (no value reaches past the
    bins: the GPU lowering takes only log2(bins) bits of each). At least 64: the lowering pads the bins to
    a warp's lanes."""
    return max(64, triton.next_power_of_2(num_experts + 1))


def small_path_fits(pairs: int) -> bool:
    return triton.next_power_of_2(max(pairs, 1)) <= SMALL_MAX_PAIRS


def sort_outputs(tokens: int, top_k: int, num_experts: int, block_m: int, device):
    length = sorted_length(tokens, top_k, num_experts, block_m)
    return (
        torch.empty(length, dtype=torch.int32, device=device),
        torch.empty(length, dtype=torch.float32, device=device),
        torch.empty(length // block_m, dtype=torch.int32, device=device),
        torch.empty(2, dtype=torch.int32, device=device),
    )


def tail_split(length: int, blocks: int, programs: int) -> tuple[int, int]:
    """Slice lengths (entries, blocks) when ``programs`` programs share the tail fill."""
    return triton.cdiv(max(length, 1), programs), triton.cdiv(max(blocks, 1), programs)


def small_meta(pairs: int, num_experts: int, block_m: int) -> dict:
    """Constexprs of ``_sort_small_body`` (also run by the fused route+sort kernel)."""
    block_q = triton.next_power_of_2(max(pairs, 1))
    block_h = bins(num_experts)
    return dict(BLOCK_Q=block_q, BLOCK_H=block_h, JB=pair_block(block_q), PAD_C=pad_tile(block_h, block_m), FILL=FILL)


def mask_arg(expert_mask, fallback):
    """(pointer tensor, HAS_MASK): the bool mask viewed as bytes, or any tensor as a dummy pointer."""
    return (expert_mask.view(torch.uint8), True) if expert_mask is not None else (fallback, False)


def sort_triton(
    ids: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    block_m: int,
    expert_mask: torch.Tensor | None = None,
    *,
    path: str | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``path`` ("small" | "large") and ``chunk`` (pairs per program, a power of two) override the
    automatic choice, for tests."""
    assert TOKEN_BITS == 24
    tokens, top_k = ids.shape
    pairs = tokens * top_k
    outs = sort_outputs(tokens, top_k, num_experts, block_m, ids.device)
    sti, sw, sei, nv = outs
    length, blocks = sti.numel(), sei.numel()
    ids = ids.contiguous()
    weights = weights.contiguous()
    mask, has_mask = mask_arg(expert_mask, ids)
    if path is None:
        path = "small" if small_path_fits(pairs) else "large"
    if path == "small":
        programs = triton.cdiv(max(length, 1), TAIL_BLOCK)
        tail, btail = tail_split(length, blocks, programs)
        meta = small_meta(pairs, num_experts, block_m)
        _sort_small_kernel[(programs,)](
            ids, weights, mask, sti, sw, sei, nv, tokens, top_k, num_experts, block_m, length, blocks, tail, btail,
            HAS_MASK=has_mask, num_warps=4, **meta,
        )
        return outs
    chunk = chunk or CHUNK
    chunks = max(1, triton.cdiv(pairs, chunk))
    block_e = triton.next_power_of_2(num_experts)
    work = torch.empty(2 * chunks * num_experts + max(pairs, 1), dtype=torch.int32, device=ids.device)
    hist = work[: chunks * num_experts]
    base = work[chunks * num_experts: 2 * chunks * num_experts]
    rank = work[2 * chunks * num_experts:]
    _sort_count_kernel[(chunks,)](ids, mask, hist, rank, pairs, num_experts, HAS_MASK=has_mask, CHUNK=chunk,
                                  BLOCK_H=bins(num_experts), JB=pair_block(chunk), num_warps=4)
    _sort_scan_kernel[(1,)](hist, base, sti, sw, nv, tokens, top_k, num_experts, block_m, chunks,
                            CB=max(1, min(triton.next_power_of_2(chunks), TILE_ELEMS // block_e)), BLOCK_E=block_e,
                            PAD_C=pad_tile(block_e, block_m), num_warps=8)
    tail, btail = tail_split(length, blocks, chunks)
    _sort_scatter_kernel[(chunks,)](
        ids, weights, mask, base, rank, sti, sw, sei, nv, tokens, top_k, num_experts, block_m, length, blocks,
        tail, btail, HAS_MASK=has_mask, CHUNK=chunk, FILL=FILL, num_warps=4,
    )
    return outs
