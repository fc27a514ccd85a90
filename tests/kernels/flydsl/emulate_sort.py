"""NumPy emulation of the FlyDSL moe_sorting kernels (inductor_moe/kernels/flydsl/sort.py), wave by wave.

Built on the same ``sort_layout`` functions as the kernel builder: the plan and run-time sizes, each wave's
segment (``pair_index``), the pair key (ids outside [0, E), masked experts and lanes past P -> E; int64
ids read as (low, high) words), the peers of a lane from one ballot per key bit, its rank (peers on lower
lanes, as ``v_mbcnt``) and the group count (``v_bcnt``), the leader's update of its wave's LDS row, the
block scan (DPP ``row_shr`` sources with bound_ctrl, ``v_readlane`` of the row ends, wave totals), the scan
kernel's (row, col) thread grid and chunk ranges, the pads after each run, and every thread's share of the
tail; on the tiny path the one wave's counters (``tiny_expert``), its leaders' plain count stores, the wave
scan, the leaders' pads and the dwordx4 tail stores. Every store goes through ``_Memory``, which counts writes
per element: the outputs must be written exactly once, as the kernels promise (no write order matters). It
needs neither FlyDSL nor a GPU.
"""
import numpy as np
import torch

from inductor_moe.kernels.flydsl import sort_layout as SL

LANES = np.arange(SL.WAVE, dtype=np.uint64)
LANE_BIT = np.left_shift(np.uint64(1), LANES)
ALL_LANES = np.uint64(2**64 - 1)


class _Memory:
    """The kernels' buffers: inputs as flat arrays, outputs with a write count per element."""

    def __init__(self, ids, weights, expert_mask, sizes):
        self.tokens = ids.shape[0]
        flat = ids.contiguous().reshape(-1)
        self.words = flat.view(torch.int32).numpy() if flat.dtype == torch.int64 else flat.numpy()
        self.wide = flat.dtype == torch.int64
        self.weights = weights.to(torch.float32).contiguous().reshape(-1).numpy()
        self.mask = None if expert_mask is None else expert_mask.to(torch.uint8).numpy()
        self.sti = np.zeros(sizes.length, np.int64)
        self.sw = np.zeros(sizes.length, np.float32)
        self.sei = np.zeros(sizes.blocks, np.int64)
        self.nv = np.zeros(2, np.int64)
        self.writes = {name: np.zeros(len(getattr(self, name)), np.int64) for name in ("sti", "sw", "sei", "nv")}

    def store(self, name, index, values):
        index = np.asarray(index, np.int64).reshape(-1)
        target = getattr(self, name)
        assert ((index >= 0) & (index < len(target))).all(), f"{name}: store out of bounds"
        target[index] = np.broadcast_to(values, index.shape)
        np.add.at(self.writes[name], index, 1)

    def check_written_once(self):
        for name, count in self.writes.items():
            assert (count == 1).all(), f"{name}: elements written {sorted(set(count.tolist()))} times, not once"


def _pair_keys(plan, mem, p, n_pairs):
    """The kernel's ``pair_key`` load and filter, for any array of pair indices: key = expert or E."""
    inside = p < n_pairs
    q = np.where(inside, p, n_pairs - 1)
    if n_pairs == 0:  # T = 0 (sort_flydsl hands it to sort_ref): the clamped index -1 reads 0 out of bounds
        q = np.zeros_like(q)
        mem = type("Empty", (), {"wide": False, "words": np.zeros(1, np.int32), "mask": mem.mask})
    if mem.wide:
        e, high = mem.words[2 * q], mem.words[2 * q + 1]
        ok = (high == 0) & (e >= 0) & (e < plan.num_experts)
    else:
        e = mem.words[q]
        ok = (e >= 0) & (e < plan.num_experts)
    keep = inside & ok
    e = np.where(keep, e, 0)
    if plan.has_mask:
        keep = keep & (mem.mask[e] != 0)
    return np.where(keep, e, plan.num_experts).astype(np.int64)


def _peers(keys, bits):
    """(rank, count) of each lane of [..., 64] steps from one ballot per key bit, checked against the true
    groups of equal keys."""
    peers = np.full(keys.shape, ALL_LANES, np.uint64)
    for b in range(bits):
        bit = ((keys >> b) & 1).astype(bool)
        ballot = np.bitwise_or.reduce(np.where(bit, LANE_BIT, np.uint64(0)), axis=-1, keepdims=True)
        peers &= np.where(bit, ballot, ~ballot)
    same = keys[..., :, None] == keys[..., None, :]
    assert (peers == np.bitwise_or.reduce(np.where(same, LANE_BIT, np.uint64(0)), axis=-1)).all()
    rank = np.bitwise_count(peers & (LANE_BIT - np.uint64(1))).astype(np.int64)
    return rank, np.bitwise_count(peers).astype(np.int64)


def _walk(plan, sizes, mem, chunks, waves):
    """Yield (chunk, wave, pair, key, rank, count) arrays [chunks, waves, 64] for each step of the segments."""
    c = np.arange(chunks)[:, None, None]
    w = np.arange(waves)[None, :, None]
    lane = np.arange(SL.WAVE)[None, None, :]
    for step in range(sizes.steps):
        p = SL.pair_index(c, w, step, lane, sizes.steps, waves)
        key = _pair_keys(plan, mem, p, sizes.pairs)
        rank, count = _peers(key, plan.key_bits)
        yield np.broadcast_to(c, p.shape), np.broadcast_to(w, p.shape), p, key, rank, count


def _count_rows(plan, sizes, mem, chunks, waves):
    """Every wave's LDS row after its counting walk: hist [chunks, waves, E]."""
    hist = np.zeros((chunks, waves, plan.num_experts), np.int64)
    for c, w, _p, key, rank, count in _walk(plan, sizes, mem, chunks, waves):
        lead = (rank == 0) & (key < plan.num_experts)
        np.add.at(hist, (c[lead], w[lead], key[lead]), count[lead])
    return hist


def _scatter(plan, sizes, mem, pos, chunks, waves):
    """The scatter walk: pos [chunks, waves, E] = next position of each wave's pairs of each expert."""
    E, bm = plan.num_experts, plan.block_m
    for c, w, p, key, rank, count in _walk(plan, sizes, mem, chunks, waves):
        kept = key < E
        base = pos[c, w, np.where(kept, key, 0)]
        dest = (base + rank)[kept]
        mem.store("sti", dest, SL.packed_entry(p[kept], plan.top_k))
        mem.store("sw", dest, mem.weights[p[kept]])
        first = dest % bm == 0
        mem.store("sei", dest[first] // bm, key[kept][first])
        lead = kept & (rank == 0)
        pos[c[lead], w[lead], key[lead]] += count[lead]


def _block_scan(values):
    """(exclusive prefix sum over the workgroup's threads, total) as DPP row_shr + v_readlane + LDS do it."""
    v = values.reshape(-1, SL.WAVE).astype(np.int64)
    for shift in SL.SCAN_SHIFTS:
        src = np.array([SL.dpp_row_shr_source(lane, shift) for lane in range(SL.WAVE)])
        v = v + np.where(src >= 0, v[:, np.clip(src, 0, None)], 0)
    ends = v[:, list(SL.ROW_LAST_LANES)]
    row = np.arange(SL.WAVE) // SL.ROW_LANES
    for r in range(1, len(SL.ROW_LAST_LANES)):
        v = v + np.where(row >= r, ends[:, r - 1:r], 0)
    wave_total = ends.sum(1)
    before = np.cumsum(wave_total) - wave_total
    exclusive = v - values.reshape(v.shape) + before[:, None]
    assert (exclusive.reshape(-1) == np.cumsum(values) - values).all()
    return exclusive.reshape(-1), int(wave_total.sum())


def _ranges(starts, stops, stride):
    """Concatenated ``range(start, stop, stride)`` of every thread (vectorized)."""
    starts, stops = np.broadcast_arrays(np.asarray(starts, np.int64), np.asarray(stops, np.int64))
    counts = np.maximum(0, -(-(stops - starts) // stride))
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets * stride


def _runs(plan, mem, counts, threads, pad):
    """Per-expert padded runs from one thread per expert: starts, pads after each run, num_valid."""
    padded = SL.padded_count(counts, plan.block_m)
    values = np.zeros(threads, np.int64)
    values[:plan.num_experts] = padded
    start, total = _block_scan(values)
    start = start[:plan.num_experts]
    pads = _ranges(start + counts, start + padded, 1)
    mem.store("sti", pads, pad)
    mem.store("sw", pads, 0.0)
    mem.store("nv", [0, 1], [total, mem.tokens])
    return start, total


def _tail(plan, sizes, mem, total, chunks, threads):
    """Every thread's share of the tail: entries from num_valid[0] on, blocks from num_valid[0] / block_m."""
    c, tid = np.meshgrid(np.arange(chunks), np.arange(threads), indexing="ij")
    first = SL.tail_start(c, tid, threads).reshape(-1)
    stride = SL.tail_stride(chunks, threads)
    entries = _ranges(total + first, sizes.length, stride)
    mem.store("sti", entries, sizes.pad_value)
    mem.store("sw", entries, 0.0)
    mem.store("sei", _ranges(total // plan.block_m + first, sizes.blocks, stride), -1)


def _small(plan, sizes, mem):
    waves = plan.small_waves
    hist = _count_rows(plan, sizes, mem, 1, waves)[0]  # [waves, E]
    counts = hist.sum(0)
    start, total = _runs(plan, mem, counts, plan.small_threads, sizes.pad_value)
    pos = (np.cumsum(hist, 0) - hist + start[None, :])[None]
    _scatter(plan, sizes, mem, pos, 1, waves)
    _tail(plan, sizes, mem, total, 1, plan.small_threads)


def _tiny(plan, sizes, mem):
    """ONE wave, lane l holds pair l; LDS ``start`` [64 * epl]: counters, then run starts."""
    E, bm, epl = plan.num_experts, plan.block_m, plan.tiny_epl
    assert sizes.pairs <= SL.WAVE and sizes.steps == 1 and sizes.chunks == 1
    lane = np.arange(SL.WAVE)
    counter = SL.tiny_expert(lane[:, None], np.arange(epl)[None, :], epl)  # [64, epl]
    assert sorted(counter.reshape(-1).tolist()) == list(range(SL.WAVE * epl)), "counters: one lane each"
    assert counter.reshape(-1)[:E].tolist() == list(range(E)), "counters must follow expert order"
    lds = np.full(SL.WAVE * epl, -(1 << 40), np.int64)  # uninitialized LDS: a poison value

    # 1. one pair per lane: key, rank, count; counters to 0, each group's leader stores its count
    p = SL.pair_index(0, 0, 0, lane, 1, 1)
    key = _pair_keys(plan, mem, p, sizes.pairs)
    rank, count = _peers(key[None, :], plan.key_bits)
    rank, count = rank[0], count[0]
    kept = key < E
    lds[counter] = 0
    lead = kept & (rank == 0)
    assert len(set(key[lead].tolist())) == lead.sum(), "one leader per expert: plain stores, no race"
    lds[key[lead]] = count[lead]

    # 2. each lane: its counters padded; the wave scan of their sums; counters -> run starts
    padded = SL.padded_count(lds[counter], bm)  # [64, epl]
    before, total = _block_scan(padded.sum(1))  # one wave: the DPP + readlane half only
    lds[counter] = before[:, None] + np.cumsum(padded, 1) - padded
    mem.store("nv", [0, 1], [total, mem.tokens])

    # 3. kept pairs to start + rank (block ids on a block's first entry); leaders pad their runs; the tail
    base = lds[key[kept]]
    dest = base + rank[kept]
    mem.store("sti", dest, SL.packed_entry(p[kept], plan.top_k))
    mem.store("sw", dest, mem.weights[p[kept]])
    first = dest % bm == 0
    mem.store("sei", dest[first] // bm, key[kept][first])
    lead_base, lead_count = lds[key[lead]], count[lead]
    pads = _ranges(lead_base + lead_count, lead_base + SL.padded_count(lead_count, bm), 1)
    mem.store("sti", pads, sizes.pad_value)
    mem.store("sw", pads, 0.0)
    vec = plan.tiny_tail_vec
    if vec > 1:
        assert total % vec == 0 and sizes.length % vec == 0, "dwordx4 tail stores must stay aligned"
    firsts = _ranges(total + SL.tiny_tail_start(lane, vec), sizes.length, SL.tiny_tail_stride(vec))
    entries = (firsts[:, None] + np.arange(vec)[None, :]).reshape(-1)
    mem.store("sti", entries, sizes.pad_value)
    mem.store("sw", entries, 0.0)
    mem.store("sei", _ranges(total // bm + SL.tail_start(0, lane, SL.WAVE), sizes.blocks,
                             SL.tail_stride(1, SL.WAVE)), -1)


def _large(plan, sizes, mem):
    E, C, W = plan.num_experts, sizes.chunks, SL.CHUNK_WAVES
    experts = [tid + j * SL.CHUNK_THREADS for j in range(plan.experts_per_chunk_thread)
               for tid in range(SL.CHUNK_THREADS)]
    assert sorted(e for e in experts if e < E) == list(range(E)), "count threads must fold every expert once"

    # 1. count: ws[c, e]
    ws = _count_rows(plan, sizes, mem, C, W).sum(1)

    # 2. scan: (row, col) threads over their chunk ranges, run starts, ws -> first positions
    rows, cols = plan.scan_rows, plan.scan_cols
    assert sizes.chunks_per_row == SL.chunks_per_row(C, rows)
    part = np.zeros((rows, cols), np.int64)
    ranges = {}
    for tid in range(SL.SCAN_THREADS):
        row, col = SL.scan_coords(tid, E)
        if col < E and row < rows:
            ranges[row, col] = SL.scan_chunk_range(row, C, rows)
            part[row, col] = ws[slice(*ranges[row, col]), col].sum()
    covered = sorted(c for (row, col), (c0, c1) in ranges.items() if col == 0 for c in range(c0, c1))
    assert covered == list(range(C)), "scan rows must walk every chunk once"
    part = part[:, :E]
    counts = part.sum(0)
    start, total = _runs(plan, mem, counts, SL.SCAN_THREADS, sizes.pad_value)
    part_before = np.cumsum(part, 0) - part
    base = np.zeros_like(ws)
    for (row, col), (c0, c1) in ranges.items():
        running = part_before[row, col] + start[col]
        for c in range(c0, c1):
            base[c, col] = running
            running += ws[c, col]

    # 3. scatter: recount, rows -> ws[c, e] + earlier waves' counts, scatter, the tail
    hist = _count_rows(plan, sizes, mem, C, W)
    pos = base[:, None, :] + np.cumsum(hist, 1) - hist
    _scatter(plan, sizes, mem, pos, C, W)
    _tail(plan, sizes, mem, int(mem.nv[0]), C, SL.CHUNK_THREADS)


def emulate_sort(ids: torch.Tensor, weights: torch.Tensor, num_experts: int, block_m: int,
                 expert_mask: torch.Tensor | None = None, path: str | None = None, arch: str = "gfx942"):
    """(sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid) as the kernels compute them;
    ``path`` forces a path (default: ``sort_layout.path_for``)."""
    tokens, top_k = ids.shape
    ids_dtype = {torch.int32: "i32", torch.int64: "i64"}[ids.dtype]
    plan = SL.sort_plan(num_experts, top_k, block_m, expert_mask is not None, ids_dtype, arch)
    sizes = SL.sort_sizes(plan, tokens, path)
    mem = _Memory(ids, weights, expert_mask, sizes)
    {"tiny": _tiny, "small": _small, "large": _large}[sizes.path](plan, sizes, mem)
    mem.check_written_once()
    return (torch.from_numpy(mem.sti.astype(np.int32)), torch.from_numpy(mem.sw),
            torch.from_numpy(mem.sei.astype(np.int32)), torch.from_numpy(mem.nv.astype(np.int32)))
