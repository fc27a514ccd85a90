"""NumPy emulation of the FlyDSL fused route+sort kernel (inductor_moe/kernels/flydsl/route_sort.py), phase
by phase, thread by thread where it matters.

Built on the same ``route_sort_layout`` functions as the kernel builder: the plan (threads, LDS capacity),
the run-time sizes (passes, scatter steps, lengths), the pass/thread -> (token, lane) map, the pair index
of a token's slots, the scatter wave's walk, and the tail split over waves 1... The router's per-token
arithmetic is ``emulate.emulate_route`` (the router kernel's emulation, on the same lane layout); the block
scan, the ballot peers/rank/count and the strided ranges are ``emulate_sort``'s. The LDS arrays and every
output are ``_Memory`` buffers that count writes per element (outputs must be written exactly once, the
LDS pair arrays once per pair before any read) and check every LDS read hits a written element. It needs
neither FlyDSL nor a GPU.
"""
import numpy as np
import torch

from inductor_moe.kernels.flydsl import route_sort_layout as RL
from inductor_moe.kernels.flydsl import sort_layout as SL
from inductor_moe.kernels.flydsl.route import TORCH_DTYPES, kernel_mode

from .emulate import emulate_route
from .emulate_sort import _block_scan, _peers, _ranges

GARBAGE = -0x5A5A5A5A  # what unwritten LDS holds (never read: checked)


class _Memory:
    """Output buffers with a write count per element, and the kernel's LDS arrays."""

    def __init__(self, plan: RL.RouteSortPlan, sizes: RL.RouteSortSizes):
        t, k = sizes.tokens, plan.top_k
        self.out = {"weights": np.zeros(t * k, np.float32), "ids": np.zeros(t * k, np.int64),
                    "sti": np.zeros(sizes.length, np.int64), "sw": np.zeros(sizes.length, np.float32),
                    "sei": np.zeros(sizes.blocks, np.int64), "nv": np.zeros(2, np.int64)}
        self.writes = {name: np.zeros(len(a), np.int64) for name, a in self.out.items()}
        fields = plan.lds_fields()
        self.lds = {name: np.full(n, GARBAGE, np.int64) for name, n in fields.items()}
        self.lds_writes = {name: np.zeros(n, np.int64) for name, n in fields.items()}

    def store(self, name, index, values):
        index = np.asarray(index, np.int64).reshape(-1)
        target = self.out[name]
        assert ((index >= 0) & (index < len(target))).all(), f"{name}: store out of bounds"
        target[index] = np.broadcast_to(values, index.shape)
        np.add.at(self.writes[name], index, 1)

    def lds_store(self, name, index, values):
        index = np.asarray(index, np.int64).reshape(-1)
        assert ((index >= 0) & (index < len(self.lds[name]))).all(), f"LDS {name}: store out of bounds"
        self.lds[name][index] = np.broadcast_to(values, index.shape)
        np.add.at(self.lds_writes[name], index, 1)

    def lds_load(self, name, index):
        index = np.asarray(index, np.int64)
        assert ((index >= 0) & (index < len(self.lds[name]))).all(), f"LDS {name}: load out of bounds"
        assert (self.lds_writes[name][index] > 0).all(), f"LDS {name}: load of an element never written"
        return self.lds[name][index]

    def check_written_once(self):
        for name, count in self.writes.items():
            assert (count == 1).all(), f"{name}: elements written {sorted(set(count.tolist()))} times, not once"


def _route(plan, sizes, mem, w_tok, id_tok, expert_mask):
    """Phase 1: the passes' thread map; lane 0 of each token stores its pairs (global, LDS) and counts."""
    lay, E, k = plan.route, plan.num_experts, plan.top_k
    tid = np.arange(plan.threads)
    served = np.zeros((sizes.tokens, lay.tpt), np.int64)
    for q in range(sizes.passes):
        token, lane = RL.token_of(q, tid, lay.tpt, lay.tokens_per_workgroup)
        assert (token >= q * lay.tokens_per_workgroup).all() and (lane < lay.tpt).all()
        real = token < sizes.tokens
        np.add.at(served, (token[real], lane[real]), 1)
        t = token[real & (lane == 0)]  # the storing lanes
        first = RL.pair_index(t, 0, k)
        pairs = (first[:, None] + np.arange(k)[None, :]).reshape(-1)
        assert (pairs == RL.pair_index(t[:, None], np.arange(k)[None, :], k).reshape(-1)).all()
        ids = id_tok[t].reshape(-1).astype(np.int64)
        mem.store("weights", pairs, w_tok[t].reshape(-1))
        mem.store("ids", pairs, ids)
        keys = ids if expert_mask is None else np.where(expert_mask[ids], ids, E)
        mem.lds_store("keys", pairs, keys)
        mem.lds_store("wbits", pairs, w_tok[t].reshape(-1).view(np.int32))
        kept = keys < E
        np.add.at(mem.lds["hist"], keys[kept], 1)  # ds_add_u32: the order of the adds does not matter
    assert (served == 1).all(), "every token must be served by exactly TPT lanes over the passes"


def _scan(plan, sizes, mem):
    """Phase 2: counts -> padded -> block scan -> cursors; pads after each run; num_valid."""
    E = plan.num_experts
    count = mem.lds_load("hist", np.arange(E))
    padded = SL.padded_count(count, plan.block_m)
    values = np.zeros(plan.threads, np.int64)
    values[:E] = padded
    start, total = _block_scan(values)
    start = start[:E]
    mem.lds_store("hist", np.arange(E), start)
    pads = _ranges(start + count, start + padded, 1)
    mem.store("sti", pads, sizes.pad_value)
    mem.store("sw", pads, 0.0)
    mem.store("nv", [0, 1], [total, sizes.tokens])
    return total


def _scatter(plan, sizes, mem):
    """Phase 3, wave 0: walk the pairs from LDS in pair order, 64 per step."""
    E, bm, k = plan.num_experts, plan.block_m, plan.top_k
    lane = np.arange(RL.WAVE)
    for step in range(sizes.steps):
        p = RL.walk_pair(step, lane)
        inside = p < sizes.pairs
        src = np.where(inside, p, sizes.pairs - 1)
        key = np.where(inside, mem.lds_load("keys", src), E)
        rank, count = _peers(key, plan.key_bits)
        kept = key < E
        base = mem.lds_load("hist", np.where(kept, key, 0))
        dest = (base + rank)[kept]
        mem.store("sti", dest, SL.packed_entry(p[kept], k))
        mem.store("sw", dest, mem.lds_load("wbits", src[kept]).astype(np.int32).view(np.float32))
        first = dest % bm == 0
        mem.store("sei", dest[first] // bm, key[kept][first])
        lead = kept & (rank == 0)
        mem.lds_store("hist", key[lead], (base + count)[lead])


def _tail(plan, sizes, mem, total):
    """Phase 3, waves 1..: entries from num_valid[0] on become padding, blocks past it -1."""
    tid = np.arange(RL.WAVE, plan.threads)
    first = RL.tail_start(tid)
    stride = RL.tail_stride(plan.threads)
    assert sorted(first.tolist()) == list(range(stride)), "the tail threads must cover every residue once"
    mem.store("sti", _ranges(total + first, sizes.length, stride), sizes.pad_value)
    mem.store("sw", _ranges(total + first, sizes.length, stride), 0.0)
    mem.store("sei", _ranges(total // plan.block_m + first, sizes.blocks, stride), -1)


def emulate_route_sort(logits: torch.Tensor, top_k: int, block_m: int, scoring="softmax", renormalize=True,
                       order="softmax_then_topk", scaling=1.0, expert_mask: torch.Tensor | None = None,
                       arch="gfx942"):
    """(sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, weights, ids) as the one-launch
    kernel computes them (route_sort_ref's output order and dtypes). The call must fit the kernel."""
    tokens, experts = logits.shape
    dtype = TORCH_DTYPES[logits.dtype]
    reason = RL.fused_unfit(tokens, experts, top_k, block_m, dtype, arch)
    assert reason is None, reason
    mode = kernel_mode(scoring, renormalize, order)
    plan = RL.route_sort_plan(experts, top_k, block_m, expert_mask is not None, dtype, mode, arch,
                              RL.capacity_tokens(tokens, top_k))
    sizes = RL.route_sort_sizes(plan, tokens)
    mem = _Memory(plan, sizes)
    mask = None if expert_mask is None else expert_mask.numpy().astype(bool)

    # 0. zero the histogram (threads e < E; the workgroup has at least E threads)
    assert plan.threads >= experts
    mem.lds_store("hist", np.arange(experts), 0)
    # 1. route (the router kernel's arithmetic on the same lane layout, for this workgroup size)
    w_tok, id_tok = emulate_route(logits, top_k, scoring, renormalize, order, scaling, arch, plan.threads)
    _route(plan, sizes, mem, w_tok.numpy(), id_tok.numpy(), mask)
    assert (mem.lds_writes["keys"][:sizes.pairs] == 1).all() and not mem.lds_writes["keys"][sizes.pairs:].any()
    # 2. scan
    total = _scan(plan, sizes, mem)
    # 3. scatter (wave 0) and tail (waves 1..)
    _scatter(plan, sizes, mem)
    _tail(plan, sizes, mem, total)
    mem.check_written_once()
    o = mem.out
    return (torch.from_numpy(o["sti"].astype(np.int32)), torch.from_numpy(o["sw"]),
            torch.from_numpy(o["sei"].astype(np.int32)), torch.from_numpy(o["nv"].astype(np.int32)),
            torch.from_numpy(o["weights"].reshape(tokens, top_k)),
            torch.from_numpy(o["ids"].astype(np.int32).reshape(tokens, top_k)))
