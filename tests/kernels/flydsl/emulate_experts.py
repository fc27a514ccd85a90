"""NumPy emulation of the FlyDSL two-stage MoE GEMMs (inductor_moe/kernels/flydsl/experts.py).

Walks the kernels' grid and lanes with the index functions of ``experts_layout.py`` (the ones the kernel
builder traces): the block-valid test on ``num_valid`` and the expert id, the gather decode of sort
entries, the thread -> (row, chunk) A loads, the LDS ping-pong write and read offsets into one flat LDS
array, the packed weight offsets of ``experts.preshuffle``, the lane -> k order of the MFMA operands,
the accumulator -> (row, column) epilogue mapping, SiLU(gate) * up rounded to bf16, the routing weight,
and the per-slot combine buffer summed over k.

The only model of hardware here is the MFMA ``v_mfma_f32_16x16x16_bf16`` (CDNA3/CDNA4 ISA guides):
lane l's A operand element j is A[l % 16][4 (l // 16) + j], its B operand element j is B[4 (l // 16) + j]
[l % 16], and accumulator element r is D[4 (l // 16) + r][l % 16]; products are summed in f32.
"""
import numpy as np
import torch

from inductor_moe.kernels.flydsl import experts_layout as XL
from inductor_moe.kernels.flydsl.experts import preshuffle

LOG2E = 1.4426950408889634
_LANES = np.arange(XL.WAVE)
_TIDS = np.arange(XL.THREADS)


def mfma_16x16x16(a_ops: np.ndarray, b_ops: np.ndarray) -> np.ndarray:
    """One MFMA per wave: a_ops, b_ops [waves, 64 lanes, 4] -> D [waves, 64 lanes, 4] (accumulator layout)."""
    waves = a_ops.shape[0]
    g, c = _LANES // 16, _LANES % 16
    a = np.zeros((waves, 16, 16), np.float32)
    b = np.zeros((waves, 16, 16), np.float32)
    for j in range(4):
        a[:, c, 4 * g + j] = a_ops[:, :, j]
        b[:, 4 * g + j, c] = b_ops[:, :, j]
    d = a @ b
    out = np.empty((waves, XL.WAVE, 4), np.float32)
    for r in range(4):
        out[:, :, r] = d[:, 4 * g + r, c]
    return out


def _bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def _gemm(plan: XL.ExpertsPlan, stage: int, a_src: np.ndarray, a_off: list, w_packed: np.ndarray, b_base: int,
          n_block: int, stats: dict) -> np.ndarray:
    """The K loop of one workgroup (all 4 waves at once): returns accs [mats, m_tiles, waves, 64, 4]."""
    K = plan.hidden if stage == 1 else plan.inter
    KS = plan.k_steps(stage)
    lds = np.full(2 * plan.lds_buffer_elems, np.nan, np.float32)  # NaN: reading an unwritten slot shows
    rows = [XL.a_load_row(plan, _TIDS, j) for j in range(plan.a_loads)]
    chunk = XL.a_load_chunk(_TIDS)
    waves = np.arange(XL.WAVES)
    tiles = XL.weight_tiles(plan, stage, n_block, waves)  # per mat: [waves]
    accs = np.zeros((plan.mats(stage), plan.m_tiles, XL.WAVES, XL.WAVE, 4), np.float32)

    def load_a(ks):
        idx = [off + ks * XL.TILE_K for off in a_off]  # [threads] first element of the 8
        return [a_src[i[:, None] + np.arange(XL.A_VEC)] for i in idx]

    def write_a(buf, regs):
        for j in range(plan.a_loads):
            off = XL.lds_write_offset(plan, buf, rows[j], chunk)
            lds[off[:, None] + np.arange(XL.A_VEC)] = regs[j]
            stats["lds_writes"] += XL.THREADS

    def load_b(ks):
        out = []
        for tile in tiles:
            off = b_base + XL.b_lane_offset(tile[:, None], ks, _LANES[None, :], K)  # [waves, lanes]
            out.append(w_packed[off[..., None] + np.arange(XL.LANE_K)])  # [waves, lanes, 16]
        return out

    def compute(buf, b_regs):
        for mt in range(plan.m_tiles):
            off = XL.lds_read_offset(plan, buf, mt, _LANES)  # [lanes]
            a_lane = lds[off[:, None] + np.arange(XL.LANE_K)]  # [lanes, 16]; the same for every wave
            assert not np.isnan(a_lane).any(), "read an LDS slot no thread wrote"
            for sub in range(XL.KSUB):
                a4 = np.broadcast_to(a_lane[None, :, 4 * sub:4 * sub + 4], (XL.WAVES, XL.WAVE, 4))
                for mat, b in enumerate(b_regs):
                    accs[mat, mt] += mfma_16x16x16(a4, b[:, :, 4 * sub:4 * sub + 4])
                    stats["mfma"] += XL.WAVES

    # the kernel's schedule: prologue, KS - 1 steps with the prefetch of the next one, the peeled last step
    write_a(0, load_a(0))
    b_regs = load_b(0)
    for ks in range(KS - 1):
        a_next, b_next = load_a(ks + 1), load_b(ks + 1)
        compute(ks & 1, b_regs)
        write_a((ks + 1) & 1, a_next)
        b_regs = b_next
    compute((KS - 1) & 1, b_regs)
    return accs


def emulate_experts_sorted(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2,
                           top_k, block_m, arch="gfx942", stats=None):
    """The kernels' result for ``experts_sorted`` (bf16 [T, H]); ``stats`` (a dict) gets counters."""
    stats = stats if stats is not None else {}
    stats.update(mfma=0, lds_writes=0, blocks_run=0, inter_writes=0, slot_writes=0)
    tokens, H = hidden.shape
    I = w13.shape[1] // 2
    plan = XL.experts_plan(H, I, top_k, block_m, arch)
    x = hidden.float().reshape(-1).numpy()
    w13p = preshuffle(w13).float().reshape(-1).numpy()
    w2p = preshuffle(w2).float().reshape(-1).numpy()
    sti = sorted_token_ids.numpy().astype(np.int64)
    sw = sorted_weights.float().numpy()
    sei = sorted_expert_ids.numpy().astype(np.int64)
    valid_entries = int(num_valid[0])
    length = sti.size
    n_blocks = length // block_m
    inter = np.full(length * I, np.nan, np.float32)  # torch.empty in the launcher
    slots = np.zeros(tokens * top_k * H, np.float32)
    lanes = _LANES[None, :]
    waves = np.arange(XL.WAVES)[:, None]

    # stage 1
    for block in range(n_blocks):
        expert = sei[block]
        if not XL.block_valid(block, expert, valid_entries, block_m):
            continue
        stats["blocks_run"] += 1
        a_off = []
        for j in range(plan.a_loads):
            token, _slot = XL.decode_entry(sti[XL.sorted_pos(block, XL.a_load_row(plan, _TIDS, j), block_m)])
            a_off.append(XL.gather_row(token, tokens) * H + XL.a_global_col(0, _TIDS))
        for n_block in range(plan.n_tiles(1)):
            accs = _gemm(plan, 1, x, a_off, w13p, expert * XL.expert_weight_elems(plan, 1), n_block, stats)
            col = XL.acc_col(n_block, waves, lanes)  # [waves, lanes]
            for mt in range(plan.m_tiles):
                for r in range(4):
                    g, u = accs[0, mt, :, :, r], accs[1, mt, :, :, r]
                    silu = g * (1.0 / (np.exp2(g * np.float32(-LOG2E)) + 1.0))
                    pos = XL.sorted_pos(block, XL.acc_row(mt, lanes, r), block_m)
                    inter[(pos * I + col).reshape(-1)] = _bf16(silu * u).reshape(-1)
                    stats["inter_writes"] += XL.THREADS

    # stage 2
    for block in range(n_blocks):
        expert = sei[block]
        if not XL.block_valid(block, expert, valid_entries, block_m):
            continue
        a_off = [XL.sorted_pos(block, XL.a_load_row(plan, _TIDS, j), block_m) * I + XL.a_global_col(0, _TIDS)
                 for j in range(plan.a_loads)]
        for n_block in range(plan.n_tiles(2)):
            accs = _gemm(plan, 2, inter, a_off, w2p, expert * XL.expert_weight_elems(plan, 2), n_block, stats)
            col = XL.acc_col(n_block, waves, lanes)
            for mt in range(plan.m_tiles):
                for r in range(4):
                    pos = XL.sorted_pos(block, XL.acc_row(mt, lanes, r), block_m) + 0 * waves
                    token, slot = XL.decode_entry(sti[pos])
                    value = accs[0, mt, :, :, r] * sw[pos]
                    keep = token < tokens
                    off = (XL.slot_row(token, slot, top_k) * H + col) * keep
                    slots[off[keep]] = value[keep]
                    stats["slot_writes"] += int(keep.sum())
    out = torch.from_numpy(slots).view(tokens, top_k, H).sum(dim=1)
    return out.to(hidden.dtype)


def kernel_numerics_oracle(hidden, ids, weights, w13, w2):
    """What the kernels compute, written plainly per (token, slot): f32 GEMMs, the intermediate rounded to
    bf16, the routing weight in f32, the k rows summed in slot order."""
    tokens, top_k = ids.shape
    out = torch.zeros(tokens, top_k, hidden.shape[1])
    I = w13.shape[1] // 2
    for t in range(tokens):
        for s in range(top_k):
            e = int(ids[t, s])
            gu = hidden[t].float() @ w13[e].float().t()
            g, u = gu[:I], gu[I:]
            h = (g * torch.reciprocal(torch.exp2(g * -LOG2E) + 1.0) * u).to(torch.bfloat16).float()
            out[t, s] = (h @ w2[e].float().t()) * weights[t, s].float()
    return out.sum(dim=1).to(hidden.dtype)
