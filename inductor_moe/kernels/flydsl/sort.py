"""FlyDSL moe_sorting kernels for ``inductor_moe::sort`` (AMD Instinct gfx942 / gfx950).

The ``sort`` contract exactly (``inductor_moe/ops/sort.py``; bit-exact with ``sort_ref``): (token, slot)
pairs grouped by expert in ascending expert id, each run padded to ``block_m``, (token, slot) ascending
inside a run, entries ``(slot << 24) | token``, padding ``(k << 24) | T`` with weight 0, one global
expert id per used block and -1 past ``num_valid[0]``, ``num_valid = [padded entries used, T]``; pairs
with an id outside [0, E) or a masked-out expert are dropped. Output sizes depend on (T, k, E, block_m)
only; T and the sizes derived from it are kernel arguments; no host sync (CUDA/HIP-graph capturable).

No atomic decides where a pair goes, so the result is deterministic. A wave takes 64 pairs at a time
(one per lane); the lanes holding the same expert find each other with one ``ballot`` per bit of the
expert id, a lane's rank among them is ``v_mbcnt`` of its peers below it, and the group's lowest lane
adds the group's size to the wave's LDS histogram row. Since waves own consecutive segments of pairs,
"earlier waves' counts + earlier steps' counts + rank" is a pair's stable position inside its expert.
Prefix sums over experts are block scans: DPP ``row_shr`` 1/2/4/8 inside 16-lane rows, ``v_readlane``
of the row totals, one LDS slot per wave. Index arithmetic, the paths and every size are in
``sort_layout.py`` (shared with the NumPy emulation in ``tests/kernels/flydsl``).

Paths by P = T * k pairs (``sort_layout.path_for``: tiny -> small -> large):

- **tiny** (P <= ``TINY_MAX_PAIRS``, 64; decode: T <= 8 at k = 8, T <= 16 at k <= 4): ONE launch of ONE
  wave, built for latency: lane l holds pair l (its id loaded once, its weight loaded before the scan),
  ballots give its rank and group count; ``ceil(E / 64)`` consecutive LDS expert counters per lane are
  zeroed and each group's leader stores its count (no read-modify-write, no atomics); each lane pads its
  counters, a wave scan (DPP row_shr + 4 ``v_readlane``, no LDS slot) turns them into run starts; lane 0
  writes ``num_valid``; a kept pair writes its entry at run start + rank, its leader the run's pads; the
  tail in dwordx4 stores when block_m % 4 == 0. No ``s_barrier``: the two ``fx.barrier()`` calls lower to
  wave barriers in a one-wave workgroup (LDS operations of one wave complete in order). LDS: 256 bytes
  per 64 experts.
- **small** (64 < P <= ``SMALL_MAX_PAIRS``, 2048; larger decode): ONE launch of one workgroup (256 threads, or one
  per expert above 256 experts): LDS histogram rows, barrier, per-expert totals + block scan -> run
  starts, pads inside runs, ``num_valid``, barrier, scatter, the tail.
- **large**: three launches with an int32 workspace [chunks, E] (chunks <= 64): ``count`` (per-workgroup
  expert counts), ``scan`` (one workgroup: run starts, each chunk's first position per expert, pads inside
  runs, ``num_valid``), ``scatter`` (recount, scatter, the tail in slices).

Limits (``supports_sort`` declines the rest, so the dispatch falls back): E <= 512, k <= min(E, 127),
any ``block_m`` >= 1, ids int32 or int64, weights of any float dtype (cast to f32 on the host, as the
reference does), every buffer byte offset < 2**31 (L * 4 and T * k * 8 for int64 ids), AMD gfx942/gfx950.

``build_sort_kernel`` (cached) builds the launcher of one (E, k, block_m, mask, ids dtype, arch, path),
path in ``sort_layout.PATHS`` (tiny, small, large);
``sort_flydsl`` has ``sort_ref``'s signature and launches it (T = 0, all padding, goes to ``sort_ref``);
``compile_sort_kernels`` compiles one path without a GPU and returns its ISA (the compile-only tests read
it). The kernels have been compiled and their ISA checked, never run on an AMD GPU.
"""

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from . import sort_layout as SL
from . import toolchain
from .toolchain import compile_only_env, compile_only_unavailable

IDS_TORCH = {torch.int32: "i32", torch.int64: "i64"}


def kernel_names(plan: SL.SortPlan, path: str) -> tuple[str, ...]:
    """Names of the kernels a path launches, in launch order."""
    tag = (f"e{plan.num_experts}_k{plan.top_k}_bm{plan.block_m}_{plan.ids_dtype}"
           f"{'_mask' if plan.has_mask else ''}_{plan.arch}")
    kinds = (path,) if path in ("tiny", "small") else ("count", "scan", "scatter")
    return tuple(f"moe_sort_{kind}_{tag}" for kind in kinds)


@dataclass(frozen=True)
class SortKernel:
    """The launcher of one path of one plan (FlyDSL traces and compiles it at its first call)."""

    plan: SL.SortPlan
    path: str
    names: tuple  # kernel names in launch order
    # tiny:  @flyc.jit (ids, weights, mask, sti, sw, sei, nv, n_tokens, n_pairs, length, n_blocks, stream)
    # small: @flyc.jit (ids, weights, mask, sti, sw, sei, nv, n_tokens, n_pairs, steps, length, n_blocks, stream)
    # large: @flyc.jit (ids, weights, mask, sti, sw, sei, nv, ws, n_tokens, n_pairs, steps, length, n_blocks,
    #                   n_chunks, chunks_per_row, stream)
    launch: Any


def _flydsl() -> SimpleNamespace:
    """FlyDSL's modules, imported on first build (importing this module does not import FlyDSL)."""
    import flydsl.compiler as flyc
    import flydsl.expr as fx
    from flydsl.expr import range_constexpr, rocdl
    from flydsl.expr.typing import T, Vector

    return SimpleNamespace(flyc=flyc, fx=fx, range_constexpr=range_constexpr, rocdl=rocdl, T=T, Vector=Vector)


def _ir(v):
    return v.ir_value() if hasattr(v, "ir_value") else v


def _device(plan: SL.SortPlan) -> SimpleNamespace:
    """Device helpers of one plan: plain trace-time functions (straight-line code) and ``@flyc.jit``
    functions (their loops and branches become scf.for / scf.if), inlined into the kernels that call them."""
    f = _flydsl()
    flyc, fx, rocdl, T, Vector = f.flyc, f.fx, f.rocdl, f.T, f.Vector
    E, K, BM = plan.num_experts, plan.top_k, plan.block_m

    def i32(v):
        return fx.Int32(v)

    def rsrc(tensor):
        return rocdl.get_buffer_rsrc(fx.get_iter(rocdl.make_buffer_tensor(tensor)))

    def load_i32(res, index):
        return i32(rocdl.raw_ptr_buffer_load(T.i32, res, _ir(i32(index) * 4), _ir(i32(0))))

    def store_i32(value, res, index):
        rocdl.raw_ptr_buffer_store(_ir(i32(value)), res, _ir(i32(index) * 4), _ir(i32(0)))

    def lds_at(base, index):
        return base + fx.Int64(index)

    def zero_row(row, lane):
        """Wave-private LDS row of E counters to 0 (lanes past E store the same 0 into the last one)."""
        for j in range(-(-E // SL.WAVE)):
            fx.ptr_store(i32(0), lds_at(row, fx.min(lane + j * SL.WAVE, E - 1)))

    def pair_key(src, p, n_pairs):
        """(key, rank, count) of the lane's pair ``p`` in its step: key = the expert when kept, else E (an
        id outside [0, E), a masked expert, or a lane past P); rank = peers (same key) on lower lanes;
        count = peers in the step."""
        inside = p < n_pairs
        q = inside.select(p, n_pairs - 1)
        if plan.ids_dtype == "i32":
            e = load_i32(src.ids, q)
            ok = (e >= 0) & (e < E)
        else:  # little-endian int64: in [0, E) iff the high word is 0 and the low word is in [0, E)
            words = Vector(rocdl.raw_ptr_buffer_load(T.vec(2, T.i32), src.ids, _ir(q * 8), _ir(i32(0))))
            e = words[0]
            ok = (words[1] == 0) & (e >= 0) & (e < E)
        keep = inside & ok
        e = keep.select(e, i32(0))
        if plan.has_mask:
            flag = fx.Int8(rocdl.raw_ptr_buffer_load(T.i8, src.mask, _ir(e), _ir(i32(0))))
            keep = keep & (flag != 0)
        key = keep.select(e, i32(E))
        peers = fx.Int64(-1)
        for b in range(plan.key_bits):
            bit = ((key >> b) & 1) != 0
            ballot = fx.Int64(rocdl.ballot(T.i64, _ir(bit)))
            peers = peers & bit.select(ballot, ~ballot)
        below = rocdl.mbcnt_lo(T.i32, _ir(i32(peers)), _ir(i32(0)))
        rank = i32(rocdl.mbcnt_hi(T.i32, _ir(i32(peers >> 32)), below))
        count = i32(fx.ctpop(_ir(peers)))
        return key, rank, count

    @flyc.jit
    def count_segment(src, row, first, steps, n_pairs, lane):
        """Add the pairs of this wave's segment to its LDS row (each group's leader adds its count)."""
        for s in range(i32(0), steps, i32(1), unroll=1):
            key, rank, count = pair_key(src, first + s * SL.WAVE + lane, n_pairs)
            if (rank == 0) & (key < E):
                slot = lds_at(row, key)
                fx.ptr_store(fx.ptr_load(slot) + count, slot)

    @flyc.jit
    def scatter_segment(src, dst, row, first, steps, n_pairs, lane):
        """Re-walk the segment: a kept pair goes to its expert's next position (row) + its rank; the pair
        on a block's first entry writes the block's expert id; the leader advances the row."""
        for s in range(i32(0), steps, i32(1), unroll=1):
            p = first + s * SL.WAVE + lane
            key, rank, count = pair_key(src, p, n_pairs)
            kept = key < E
            slot = lds_at(row, kept.select(key, i32(0)))
            base = fx.ptr_load(slot)
            if kept:
                dest = base + rank
                store_i32(SL.packed_entry(p, K), dst.sti, dest)
                store_i32(load_i32(src.weights, p), dst.sw, dest)
                if dest % BM == 0:
                    store_i32(key, dst.sei, dest // BM)
                if rank == 0:
                    fx.ptr_store(base + count, slot)

    @flyc.jit
    def pad_run(dst, start, count, padded, pad):
        """The pads after an expert's pairs: entries [start + count, start + padded)."""
        for i in range(start + count, start + padded, i32(1), unroll=1):
            store_i32(pad, dst.sti, i)
            store_i32(0, dst.sw, i)

    @flyc.jit
    def fill_tail(dst, total, start, stride, length, n_blocks, pad):
        """This thread's share of the tail: entries total + start, + stride, ... < length become padding;
        blocks total / block_m + start, ... < n_blocks get expert -1."""
        for i in range(total + start, length, stride, unroll=1):
            store_i32(pad, dst.sti, i)
            store_i32(0, dst.sw, i)
        for b in range(total // BM + start, n_blocks, stride, unroll=1):
            store_i32(-1, dst.sei, b)

    def wave_scan(value, lane):
        """(exclusive prefix sum of ``value`` over the wave's 64 lanes, the wave's sum: wave-uniform, an SGPR).
        DPP ``row_shr`` 1/2/4/8 inside 16-lane rows, ``v_readlane`` of the four row ends. No LDS, no barrier."""
        v = value
        for shift in SL.SCAN_SHIFTS:  # inclusive scan of each 16-lane row
            v = v + i32(rocdl.update_dpp(T.i32, _ir(i32(0)), _ir(v), SL.DPP_ROW_SHR[shift], 0xF, 0xF, True))
        rows = [i32(rocdl.readlane(T.i32, _ir(v), _ir(i32(lane_)))) for lane_ in SL.ROW_LAST_LANES]
        row = lane >> 4
        for r in range(1, 4):
            v = v + (row >= r).select(rows[r - 1], i32(0))
        return v - value, rows[0] + rows[1] + rows[2] + rows[3]

    def block_scan(value, lane, wave, waves, wave_total):
        """(exclusive prefix sum of ``value`` over the workgroup's threads, the sum of all). One barrier."""
        v, wave_sum = wave_scan(value, lane)
        fx.ptr_store(wave_sum, lds_at(wave_total, wave))
        fx.barrier()
        before = i32(0)
        total = i32(0)
        for w in range(waves):
            t = fx.ptr_load(lds_at(wave_total, w))
            before = before + (wave > w).select(t, i32(0))
            total = total + t
        return v + before, total

    @flyc.jit
    def fill_tail_vec4(dst, total, lane, length, n_blocks, pad):
        """The tiny path's tail when block_m % 4 == 0 (total and length multiples of 4): dwordx4 stores of
        4 pads / 4 zero weights from entry total + 4 * lane, stride 256; blocks one per lane, stride 64."""
        pads = Vector.filled(4, pad, fx.Int32)
        zeros = Vector.filled(4, 0, fx.Int32)
        vec = SL.tiny_tail_vec(BM)
        for i in range(total + SL.tiny_tail_start(lane, vec), length, i32(SL.tiny_tail_stride(vec)), unroll=1):
            rocdl.raw_ptr_buffer_store(_ir(pads), dst.sti, _ir(i * 4), _ir(i32(0)))
            rocdl.raw_ptr_buffer_store(_ir(zeros), dst.sw, _ir(i * 4), _ir(i32(0)))
        for b in range(total // BM + SL.tail_start(0, lane, SL.WAVE), n_blocks, i32(SL.WAVE), unroll=1):
            store_i32(-1, dst.sei, b)

    def lds_struct(fields: dict):
        """An LDS struct of 16-byte aligned i32 arrays (sizes from the plan, see sort_layout.lds_bytes)."""
        annotations = {name: fx.Array[fx.Int32, n, 16] for name, n in fields.items()}
        return fx.struct(type("SortShared", (), {"__annotations__": annotations}))

    return SimpleNamespace(i32=i32, rsrc=rsrc, load_i32=load_i32, store_i32=store_i32, lds_at=lds_at,
                           zero_row=zero_row, count_segment=count_segment, scatter_segment=scatter_segment,
                           pad_run=pad_run, fill_tail=fill_tail, block_scan=block_scan,
                           lds_struct=lds_struct, pair_key=pair_key, wave_scan=wave_scan,
                           fill_tail_vec4=fill_tail_vec4)


def _build_tiny(plan: SL.SortPlan) -> SortKernel:
    """ONE wave, one pair per lane (P <= 64): see sort_layout's ``tiny`` path."""
    f = _flydsl()
    flyc, fx = f.flyc, f.fx
    d = _device(plan)
    i32, lds_at = d.i32, d.lds_at
    E, BM, EPL = plan.num_experts, plan.block_m, plan.tiny_epl
    (name,) = kernel_names(plan, "tiny")
    Shared = d.lds_struct(plan.tiny_lds())

    def counter(start, lane, j):
        return lds_at(start, SL.tiny_expert(lane, j, EPL))

    def zero_counters(start, lane):
        for j in range(EPL):
            fx.ptr_store(i32(0), counter(start, lane, j))

    def scan_counters(start, lane):
        """Counters -> run starts (exclusive prefix of the padded counts in expert order); returns the total
        (wave-uniform)."""
        padded = [SL.padded_count(fx.ptr_load(counter(start, lane, j)), BM) for j in range(EPL)]
        own = padded[0]
        for j in range(1, EPL):
            own = own + padded[j]
        run, total = d.wave_scan(own, lane)
        for j in range(EPL):
            fx.ptr_store(run, counter(start, lane, j))
            run = run + padded[j]
        return total

    def tail(dst, total, lane, length, n_blocks, pad):
        if plan.tiny_tail_vec == 4:
            d.fill_tail_vec4(dst, total, lane, length, n_blocks, pad)
        else:
            d.fill_tail(dst, total, SL.tail_start(0, lane, SL.WAVE), i32(SL.tail_stride(1, SL.WAVE)), length,
                        n_blocks, pad)

    @flyc.kernel(name=name, known_block_size=[SL.WAVE, 1, 1])
    def sort_tiny(ids: fx.Tensor, weights: fx.Tensor, mask: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor,
                  sei: fx.Tensor, nv: fx.Tensor, n_tokens: fx.Int32, n_pairs: fx.Int32, length: fx.Int32,
                  n_blocks: fx.Int32):
        lane = i32(fx.thread_idx.x)
        src = SimpleNamespace(ids=d.rsrc(ids), weights=d.rsrc(weights), mask=d.rsrc(mask))
        dst = SimpleNamespace(sti=d.rsrc(sti), sw=d.rsrc(sw), sei=d.rsrc(sei))
        start = fx.SharedAllocator().allocate(Shared).peek().start.ptr
        pad = SL.pad_value(n_tokens, plan.top_k)

        # 1. the lane's pair: key, rank and group count from the ballots; its weight loaded now (its
        #    latency hides behind the scan); counters to 0, each group's leader stores its count
        p = lane
        key, rank, count = d.pair_key(src, p, n_pairs)
        kept = key < E
        weight = d.load_i32(src.weights, kept.select(p, i32(0)))
        zero_counters(start, lane)
        if (rank == 0) & kept:
            fx.ptr_store(count, lds_at(start, key))
        fx.barrier()  # one wave: a wave barrier (no s_barrier), orders the compiler only

        # 2. the lane's counters padded, wave scan of their sums -> run starts (overwrite the counters)
        total = scan_counters(start, lane)
        if lane == 0:
            nv_rsrc = d.rsrc(nv)
            d.store_i32(total, nv_rsrc, 0)
            d.store_i32(n_tokens, nv_rsrc, 1)
        fx.barrier()

        # 3. the pair to its run start + rank (and its block's expert id on a block's first entry); the
        #    leader pads its run; the tail
        if kept:
            base = fx.ptr_load(lds_at(start, key))
            dest = base + rank
            d.store_i32(SL.packed_entry(p, plan.top_k), dst.sti, dest)
            d.store_i32(weight, dst.sw, dest)
            if dest % BM == 0:
                d.store_i32(key, dst.sei, dest // BM)
            if rank == 0:
                d.pad_run(dst, base, count, SL.padded_count(count, BM), pad)
        tail(dst, total, lane, length, n_blocks, pad)

    @flyc.jit
    def launch(ids: fx.Tensor, weights: fx.Tensor, mask: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor,
               nv: fx.Tensor, n_tokens: fx.Int32, n_pairs: fx.Int32, length: fx.Int32, n_blocks: fx.Int32,
               stream: fx.Stream = fx.Stream(None)):
        sort_tiny(ids, weights, mask, sti, sw, sei, nv, n_tokens, n_pairs, length, n_blocks).launch(
            grid=(1, 1, 1), block=(SL.WAVE, 1, 1), stream=stream)

    return SortKernel(plan=plan, path="tiny", names=(name,), launch=launch)


def _build_small(plan: SL.SortPlan) -> SortKernel:
    f = _flydsl()
    flyc, fx, range_constexpr = f.flyc, f.fx, f.range_constexpr
    d = _device(plan)
    i32, lds_at = d.i32, d.lds_at
    E, B, W = plan.num_experts, plan.small_threads, plan.small_waves
    (name,) = kernel_names(plan, "small")
    Shared = d.lds_struct(plan.small_lds())

    @flyc.kernel(name=name, known_block_size=[B, 1, 1])
    def sort_small(ids: fx.Tensor, weights: fx.Tensor, mask: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor,
                   sei: fx.Tensor, nv: fx.Tensor, n_tokens: fx.Int32, n_pairs: fx.Int32, steps: fx.Int32,
                   length: fx.Int32, n_blocks: fx.Int32):
        tid = i32(fx.thread_idx.x)
        lane = tid & (SL.WAVE - 1)
        wave = tid >> 6
        src = SimpleNamespace(ids=d.rsrc(ids), weights=d.rsrc(weights), mask=d.rsrc(mask))
        dst = SimpleNamespace(sti=d.rsrc(sti), sw=d.rsrc(sw), sei=d.rsrc(sei))
        lds = fx.SharedAllocator().allocate(Shared).peek()
        hist = lds.hist.ptr
        pad = SL.pad_value(n_tokens, plan.top_k)

        # 1. each wave counts its segment into its row
        row = lds_at(hist, wave * E)
        d.zero_row(row, lane)
        first = SL.wave_first_pair(0, wave, steps, W)
        d.count_segment(src, row, first, steps, n_pairs, lane)
        fx.barrier()

        # 2. thread e: expert e's total, its rows -> exclusive prefix over the waves, run start (block scan)
        count = i32(0)
        if tid < E:
            for w in range_constexpr(W):
                slot = lds_at(hist, w * E + tid)
                h = fx.ptr_load(slot)
                fx.ptr_store(count, slot)
                count = count + h
        padded = SL.padded_count(count, plan.block_m)
        start, total = d.block_scan(padded, lane, wave, W, lds.wave_total.ptr)
        if tid < E:
            for w in range_constexpr(W):
                slot = lds_at(hist, w * E + tid)
                fx.ptr_store(fx.ptr_load(slot) + start, slot)
            d.pad_run(dst, start, count, padded, pad)
        if tid == 0:
            nv_rsrc = d.rsrc(nv)
            d.store_i32(total, nv_rsrc, 0)
            d.store_i32(n_tokens, nv_rsrc, 1)
        fx.barrier()

        # 3. scatter, then this thread's share of the tail
        d.scatter_segment(src, dst, row, first, steps, n_pairs, lane)
        d.fill_tail(dst, total, SL.tail_start(0, tid, B), i32(SL.tail_stride(1, B)), length, n_blocks, pad)

    @flyc.jit
    def launch(ids: fx.Tensor, weights: fx.Tensor, mask: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor,
               nv: fx.Tensor, n_tokens: fx.Int32, n_pairs: fx.Int32, steps: fx.Int32, length: fx.Int32,
               n_blocks: fx.Int32, stream: fx.Stream = fx.Stream(None)):
        sort_small(ids, weights, mask, sti, sw, sei, nv, n_tokens, n_pairs, steps, length, n_blocks).launch(
            grid=(1, 1, 1), block=(B, 1, 1), stream=stream)

    return SortKernel(plan=plan, path="small", names=(name,), launch=launch)


def _build_large(plan: SL.SortPlan) -> SortKernel:
    f = _flydsl()
    flyc, fx, range_constexpr = f.flyc, f.fx, f.range_constexpr
    d = _device(plan)
    i32, lds_at = d.i32, d.lds_at
    E, CW, CT = plan.num_experts, SL.CHUNK_WAVES, SL.CHUNK_THREADS
    EPT = plan.experts_per_chunk_thread
    ROWS, COLS = plan.scan_rows, plan.scan_cols
    LOG2_COLS = COLS.bit_length() - 1
    count_name, scan_name, scatter_name = kernel_names(plan, "large")
    ChunkShared = d.lds_struct(plan.chunk_lds())
    ScanShared = d.lds_struct(plan.scan_lds())

    @flyc.kernel(name=count_name, known_block_size=[CT, 1, 1])
    def sort_count(ids: fx.Tensor, mask: fx.Tensor, ws: fx.Tensor, n_pairs: fx.Int32, steps: fx.Int32):
        """ws[c, e] = pairs of expert e in chunk c."""
        c = i32(fx.block_idx.x)
        tid = i32(fx.thread_idx.x)
        lane = tid & (SL.WAVE - 1)
        wave = tid >> 6
        src = SimpleNamespace(ids=d.rsrc(ids), mask=d.rsrc(mask))
        ws_rsrc = d.rsrc(ws)
        hist = fx.SharedAllocator().allocate(ChunkShared).peek().hist.ptr
        row = lds_at(hist, wave * E)
        d.zero_row(row, lane)
        d.count_segment(src, row, SL.wave_first_pair(c, wave, steps, CW), steps, n_pairs, lane)
        fx.barrier()
        for j in range_constexpr(EPT):
            e = tid + j * CT
            if e < E:
                total = i32(0)
                for w in range_constexpr(CW):
                    total = total + fx.ptr_load(lds_at(hist, w * E + e))
                d.store_i32(total, ws_rsrc, c * E + e)

    @flyc.kernel(name=scan_name, known_block_size=[SL.SCAN_THREADS, 1, 1])
    def sort_scan(ws: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, nv: fx.Tensor, n_tokens: fx.Int32,
                  n_chunks: fx.Int32, chunks_per_row: fx.Int32):
        """Run starts; ws[c, e] -> first position of chunk c's pairs of expert e; pads; num_valid."""
        tid = i32(fx.thread_idx.x)
        lane = tid & (SL.WAVE - 1)
        wave = tid >> 6
        row_id = tid >> LOG2_COLS
        col = tid & (COLS - 1)
        ws_rsrc = d.rsrc(ws)
        dst = SimpleNamespace(sti=d.rsrc(sti), sw=d.rsrc(sw))
        lds = fx.SharedAllocator().allocate(ScanShared).peek()
        part = lds.part.ptr
        pad = SL.pad_value(n_tokens, plan.top_k)
        c0 = fx.min(n_chunks, row_id * chunks_per_row)  # [c0, c1): sort_layout.scan_chunk_range
        c1 = fx.min(n_chunks, c0 + chunks_per_row)
        mine = (col < E) & (row_id < ROWS)

        # 1. thread (row, col): pairs of expert col in the row's chunks
        if mine:
            acc = i32(0)
            for c in range(c0, c1, i32(1), unroll=1):
                acc = acc + d.load_i32(ws_rsrc, c * E + col)
            fx.ptr_store(acc, lds_at(part, tid))
        fx.barrier()

        # 2. thread e: total over the rows (rows -> exclusive prefix), run start by a block scan
        count = i32(0)
        if tid < E:
            for r in range_constexpr(ROWS):
                slot = lds_at(part, r * COLS + tid)
                h = fx.ptr_load(slot)
                fx.ptr_store(count, slot)
                count = count + h
        padded = SL.padded_count(count, plan.block_m)
        start, total = d.block_scan(padded, lane, wave, SL.SCAN_THREADS // SL.WAVE, lds.wave_total.ptr)
        if tid < E:
            fx.ptr_store(start, lds_at(lds.run_start.ptr, tid))
            d.pad_run(dst, start, count, padded, pad)
        if tid == 0:
            nv_rsrc = d.rsrc(nv)
            d.store_i32(total, nv_rsrc, 0)
            d.store_i32(n_tokens, nv_rsrc, 1)
        fx.barrier()

        # 3. thread (row, col): ws[c, col] -> run start + pairs of col in chunks before c
        if mine:
            running = fx.ptr_load(lds_at(part, tid)) + fx.ptr_load(lds_at(lds.run_start.ptr, col))
            for c in range(c0, c1, i32(1), unroll=1):
                h = d.load_i32(ws_rsrc, c * E + col)
                d.store_i32(running, ws_rsrc, c * E + col)
                running = running + h

    @flyc.kernel(name=scatter_name, known_block_size=[CT, 1, 1])
    def sort_scatter(ids: fx.Tensor, weights: fx.Tensor, mask: fx.Tensor, ws: fx.Tensor, sti: fx.Tensor,
                     sw: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor, n_tokens: fx.Int32, n_pairs: fx.Int32,
                     steps: fx.Int32, length: fx.Int32, n_blocks: fx.Int32, n_chunks: fx.Int32):
        """Recount, rows -> ws[c, e] + earlier waves' counts, scatter; this workgroup's share of the tail."""
        c = i32(fx.block_idx.x)
        tid = i32(fx.thread_idx.x)
        lane = tid & (SL.WAVE - 1)
        wave = tid >> 6
        src = SimpleNamespace(ids=d.rsrc(ids), weights=d.rsrc(weights), mask=d.rsrc(mask))
        dst = SimpleNamespace(sti=d.rsrc(sti), sw=d.rsrc(sw), sei=d.rsrc(sei))
        ws_rsrc = d.rsrc(ws)
        hist = fx.SharedAllocator().allocate(ChunkShared).peek().hist.ptr
        row = lds_at(hist, wave * E)
        first = SL.wave_first_pair(c, wave, steps, CW)
        d.zero_row(row, lane)
        d.count_segment(src, row, first, steps, n_pairs, lane)
        fx.barrier()
        for j in range_constexpr(EPT):
            e = tid + j * CT
            if e < E:
                base = d.load_i32(ws_rsrc, c * E + e)
                for w in range_constexpr(CW):
                    slot = lds_at(hist, w * E + e)
                    h = fx.ptr_load(slot)
                    fx.ptr_store(base, slot)
                    base = base + h
        fx.barrier()
        d.scatter_segment(src, dst, row, first, steps, n_pairs, lane)
        total = d.load_i32(d.rsrc(nv), 0)
        pad = SL.pad_value(n_tokens, plan.top_k)
        d.fill_tail(dst, total, SL.tail_start(c, tid, CT), SL.tail_stride(n_chunks, CT), length, n_blocks, pad)

    @flyc.jit
    def launch(ids: fx.Tensor, weights: fx.Tensor, mask: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor,
               nv: fx.Tensor, ws: fx.Tensor, n_tokens: fx.Int32, n_pairs: fx.Int32, steps: fx.Int32,
               length: fx.Int32, n_blocks: fx.Int32, n_chunks: fx.Int32, chunks_per_row: fx.Int32,
               stream: fx.Stream = fx.Stream(None)):
        sort_count(ids, mask, ws, n_pairs, steps).launch(grid=(n_chunks, 1, 1), block=(CT, 1, 1), stream=stream)
        sort_scan(ws, sti, sw, nv, n_tokens, n_chunks, chunks_per_row).launch(
            grid=(1, 1, 1), block=(SL.SCAN_THREADS, 1, 1), stream=stream)
        sort_scatter(ids, weights, mask, ws, sti, sw, sei, nv, n_tokens, n_pairs, steps, length, n_blocks,
                     n_chunks).launch(grid=(n_chunks, 1, 1), block=(CT, 1, 1), stream=stream)

    return SortKernel(plan=plan, path="large", names=(count_name, scan_name, scatter_name), launch=launch)


_BUILDERS = {"tiny": lambda plan: _build_tiny(plan), "small": lambda plan: _build_small(plan),
             "large": lambda plan: _build_large(plan)}


@lru_cache(maxsize=None)
def _build_cached(plan: SL.SortPlan, path: str) -> SortKernel:
    return _BUILDERS[path](plan)


def build_sort_kernel(num_experts: int, top_k: int, block_m: int, arch: str, *, path: str,
                      has_mask: bool = False, ids_dtype: str = "i32") -> SortKernel:
    """The launcher of one (E, k, block_m, mask, ids dtype, arch, path), built once per process.

    Plan errors (``ValueError`` naming the constraint) come from ``sort_layout.sort_plan`` before FlyDSL
    is imported; FlyDSL traces and compiles at the first launch (or in ``compile_sort_kernels``)."""
    plan = SL.sort_plan(num_experts, top_k, block_m, has_mask, ids_dtype, arch)
    if path not in SL.PATHS:
        raise ValueError(f"path: must be one of {SL.PATHS}, got {path!r}")
    return _build_cached(plan, path)


# --------------------------------------------------------------------------------------------------------
# Compile-only (no GPU): the ISA, for the tests and for reading


def compile_sort_kernels(num_experts: int, top_k: int, block_m: int, arch: str, *, path: str,
                         has_mask: bool = False, ids_dtype: str = "i32",
                         dump_dir: str | os.PathLike | None = None) -> str:
    """Compile one path for ``arch`` on this machine (``COMPILE_ONLY``) and return the AMDGPU assembly of
    its module (every kernel of the path: ``kernel_names``).

    Builds a fresh (uncached) launcher, so every call compiles and dumps. Raises RuntimeError with the
    reason when the toolchain is missing (see ``toolchain.compile_only_unavailable``)."""
    reason = compile_only_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot compile FlyDSL kernels here: {reason}")
    plan = SL.sort_plan(num_experts, top_k, block_m, has_mask, ids_dtype, arch)
    placeholder_tokens = (SL.TINY_MAX_PAIRS if path == "tiny" else SL.SMALL_MAX_PAIRS) // top_k
    sizes = SL.sort_sizes(plan, placeholder_tokens, path)  # placeholder sizes: the code is the same
    with tempfile.TemporaryDirectory(prefix="flydsl_sort_") as tmp:
        out_dir = Path(dump_dir) if dump_dir is not None else Path(tmp)
        with compile_only_env(arch, out_dir):
            import flydsl.compiler as flyc

            if path not in SL.PATHS:
                raise ValueError(f"path: must be one of {SL.PATHS}, got {path!r}")
            kern = _BUILDERS[path](plan)
            args = _placeholder_args(plan, sizes)
            flyc.compile(kern.launch, *args)
        return toolchain.dumped_isa(out_dir, *kern.names)


def _placeholder_args(plan: SL.SortPlan, sizes: SL.SortSizes) -> list:
    """CPU tensors and ints in the launcher's argument order (compile-only: nothing is read)."""
    ids_t = {"i32": torch.int32, "i64": torch.int64}[plan.ids_dtype]
    ids = torch.empty((sizes.tokens, plan.top_k), dtype=ids_t)
    weights = torch.empty((sizes.tokens, plan.top_k), dtype=torch.float32)
    mask = torch.empty(plan.num_experts, dtype=torch.uint8)
    sti = torch.empty(sizes.length, dtype=torch.int32)
    sw = torch.empty(sizes.length, dtype=torch.float32)
    sei = torch.empty(sizes.blocks, dtype=torch.int32)
    nv = torch.empty(2, dtype=torch.int32)
    if sizes.path == "tiny":
        return [ids, weights, mask, sti, sw, sei, nv, sizes.tokens, sizes.pairs, sizes.length, sizes.blocks]
    if sizes.path == "small":
        return [ids, weights, mask, sti, sw, sei, nv, sizes.tokens, sizes.pairs, sizes.steps, sizes.length,
                sizes.blocks]
    ws = torch.empty(sizes.chunks * plan.num_experts, dtype=torch.int32)
    return [ids, weights, mask, sti, sw, sei, nv, ws, sizes.tokens, sizes.pairs, sizes.steps, sizes.length,
            sizes.blocks, sizes.chunks, sizes.chunks_per_row]


# --------------------------------------------------------------------------------------------------------
# Launcher with sort_ref's signature


def _device_arch(device: torch.device) -> str | None:
    return toolchain.device_arch(device)  # a module attribute: tests stand in a gfx942 device


def supports_sort(ids: torch.Tensor = None, num_experts: int = None, block_m: int = None, **_) -> str | None:
    """None when the FlyDSL kernels take this call, else why not (for the dispatch)."""
    if ids.dtype not in IDS_TORCH:
        return f"sort: ids dtype {ids.dtype} (the kernels read int32, int64)"
    tokens, top_k = ids.shape
    try:
        SL.check_shape(num_experts, top_k, block_m, IDS_TORCH[ids.dtype])
        SL.check_offsets(tokens, top_k, num_experts, block_m, IDS_TORCH[ids.dtype])
    except ValueError as e:
        return f"sort: {e}"
    if _device_arch(ids.device) is None:
        return f"sort: {ids.device} is not an AMD gfx942/gfx950 GPU"
    return None


def sort_flydsl(
    ids: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    block_m: int,
    expert_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sort_ref``'s contract on the FlyDSL kernels; calls they decline go to ``sort_ref`` (and so does
    T = 0, whose outputs are all padding)."""
    from ..reference import sort_ref

    reason = supports_sort(ids=ids, num_experts=num_experts, block_m=block_m)
    if reason is not None:
        from ...stats import record_fallback

        record_fallback("sort", f"flydsl: {reason}")
        return sort_ref(ids, weights, num_experts, block_m, expert_mask)
    tokens, top_k = ids.shape
    if tokens == 0:
        return sort_ref(ids, weights, num_experts, block_m, expert_mask)
    import flydsl.expr as fx

    arch = _device_arch(ids.device)
    plan = SL.sort_plan(num_experts, top_k, block_m, expert_mask is not None, IDS_TORCH[ids.dtype], arch)
    sizes = SL.sort_sizes(plan, tokens)
    device = ids.device
    ids_c = ids.contiguous()
    w = weights.to(torch.float32).contiguous()
    mask = expert_mask.contiguous().view(torch.uint8) if expert_mask is not None else ids_c
    sti = torch.empty(sizes.length, dtype=torch.int32, device=device)
    sw = torch.empty(sizes.length, dtype=torch.float32, device=device)
    sei = torch.empty(sizes.blocks, dtype=torch.int32, device=device)
    nv = torch.empty(2, dtype=torch.int32, device=device)
    kern = build_sort_kernel(num_experts, top_k, block_m, arch, path=sizes.path, has_mask=plan.has_mask,
                             ids_dtype=plan.ids_dtype)
    stream = fx.Stream(torch.cuda.current_stream(device))
    if sizes.path == "tiny":
        kern.launch(ids_c, w, mask, sti, sw, sei, nv, tokens, sizes.pairs, sizes.length, sizes.blocks, stream=stream)
    elif sizes.path == "small":
        kern.launch(ids_c, w, mask, sti, sw, sei, nv, tokens, sizes.pairs, sizes.steps, sizes.length, sizes.blocks,
                    stream=stream)
    else:
        ws = torch.empty(sizes.chunks * num_experts, dtype=torch.int32, device=device)
        kern.launch(ids_c, w, mask, sti, sw, sei, nv, ws, tokens, sizes.pairs, sizes.steps, sizes.length,
                    sizes.blocks, sizes.chunks, sizes.chunks_per_row, stream=stream)
    return sti, sw, sei, nv
