"""NumPy emulation of the FlyDSL A16W4 MoE GEMMs (inductor_moe/kernels/flydsl/experts_mxfp4.py), lane by lane.

Built on the same ``mxfp4_layout`` functions as the kernel builder: the tile plan (block of 32 sorted rows x
128 columns per workgroup, 4 waves x 2 column tiles, 2 row tiles, ``kb`` scale blocks per K-loop
iteration), every lane's byte offsets (activation rows, FP4 dwords, E8M0 bytes), the lane -> (row, k)
operand mapping and the C layout of the MFMAs, the in-register dequantization (``e2m1_word_to_bf16x8``
run on NumPy with a NumPy ``v_perm_b32``; gfx950's ``v_cvt_scalef32_pk_bf16_fp4`` by its definition), the
E8M0 -> f32 bits, the per-block partial sums folded as ``acc + partial * scale``, and the epilogues
(SiLU(gate) * up rounded to bf16; routing weight, row ``token * k + slot``, combine in slot order).
Memory is flat byte arrays read with buffer-load semantics (an access past the end reads 0). The sort is
``sort_ref`` (block_m 32): the FlyDSL sort has its own emulation. Needs neither FlyDSL nor a GPU.
"""
import numpy as np
import torch

from inductor_moe.kernels.flydsl import mxfp4_layout as XL
from inductor_moe.kernels.reference.sort import sort_ref
from inductor_moe.quant.mxfp4 import code_values

TID = np.arange(XL.THREADS)
WAVE_OF = TID // XL.WAVE
LANE_OF = TID % XL.WAVE
E2M1_BF16_ALL = np.array([int(v) for v in code_values(torch.arange(16), torch.bfloat16).view(torch.int16)
                          .numpy().view(np.uint16)], np.uint32)


def perm_np(s0, s1, sel):
    """v_perm_b32 on uint32 arrays (selector bytes 0..7)."""
    s0, s1, sel = (np.asarray(v, np.int64) & 0xFFFFFFFF for v in (s0, s1, sel))
    s0, s1, sel = np.broadcast_arrays(s0, s1, sel)
    data = (s0.astype(np.uint64) << np.uint64(32)) | s1.astype(np.uint64)
    out = np.zeros(s0.shape, np.int64)
    for i in range(4):
        b = (sel >> (8 * i)) & 0xFF
        assert (b <= 7).all()
        out |= ((data >> (8 * b).astype(np.uint64)) & np.uint64(0xFF)).astype(np.int64) << (8 * i)
    return out


def _shr(x, n):
    return (np.asarray(x, np.int64) & 0xFFFFFFFF) >> n


def _where(cond, a, b):
    return np.where(cond, a, b)


def dequant_words(words, arch):
    """[...] dwords of 8 FP4 codes -> list of 4 [...] dwords of bf16 pairs, as the kernel computes them."""
    words = np.asarray(words, np.int64) & 0xFFFFFFFF
    if arch == "gfx950":  # v_cvt_scalef32_pk_bf16_fp4, scale 1.0: byte j -> (code lo, code hi) as bf16
        out = []
        for j in range(4):
            byte = (words >> (8 * j)) & 0xFF
            out.append(E2M1_BF16_ALL[byte & 15].astype(np.int64) | (E2M1_BF16_ALL[byte >> 4].astype(np.int64) << 16))
        return out
    return [np.asarray(w, np.int64) & 0xFFFFFFFF for w in XL.e2m1_word_to_bf16x8(words, perm_np, _shr)]


def _bf16_pairs_to_f32(dwords):
    """list of [...] dwords (bf16 pairs) -> [..., 2 * len] f32 values, element order low half first."""
    vals = []
    for d in dwords:
        d = np.asarray(d, np.int64)
        vals.append(((d & 0xFFFF) << 16).astype(np.uint32).view(np.float32))
        vals.append((((d >> 16) & 0xFFFF) << 16).astype(np.uint32).view(np.float32))
    return np.stack(vals, -1)


class _Buffer:
    """A flat byte buffer read as a raw buffer resource: accesses past num_records read 0."""

    def __init__(self, tensor):
        self.bytes = tensor.contiguous().view(torch.uint8).reshape(-1).numpy() if tensor.numel() else np.zeros(0, np.uint8)
        self.size = self.bytes.size

    def load(self, off, nbytes):
        """[...] offsets -> [..., nbytes] uint8 (zeros where off + nbytes > size)."""
        off = np.asarray(off, np.int64)
        assert (off % min(nbytes, 4) == 0).all(), "unaligned buffer load"
        ok = (off >= 0) & (off + nbytes <= self.size)
        idx = np.where(ok, off, 0)[..., None] + np.arange(nbytes)
        data = self.bytes[np.clip(idx, 0, max(self.size - 1, 0))] if self.size else np.zeros(idx.shape, np.uint8)
        return np.where(ok[..., None], data, 0).astype(np.uint8)

    def dwords(self, off, n=1):
        return self.load(off, 4 * n).view(np.uint32).astype(np.int64)  # [..., n]

    def ubyte(self, off):
        return self.load(off, 1)[..., 0].astype(np.int64)


def _mfma(a_vals, b_vals, c, mfma_k):
    """One v_mfma_f32_16x16x{16,32}_bf16 per wave. a_vals / b_vals [waves, 64, v] (v = mfma_k / 4 values per
    lane: lane l holds A[l % 16, (l // 16) * v + e] and B[(l // 16) * v + e, l % 16]); c [waves, 64, 4]
    (lane l element i = C[4 (l // 16) + i, l % 16]). Returns the new c."""
    w = a_vals.shape[0]
    v = mfma_k // 4
    lane = np.arange(XL.WAVE)
    row, grp = XL.lane_row(lane), XL.lane_group(lane)
    A = np.zeros((w, 16, mfma_k))
    B = np.zeros((w, mfma_k, 16))
    for e in range(v):
        A[:, row, grp * v + e] = a_vals[:, :, e]
        B[:, grp * v + e, row] = b_vals[:, :, e]
    C = np.einsum("wmk,wkn->wmn", A, B)  # exact products, f64 sums
    out = np.empty_like(c)
    for i in range(4):
        out[:, :, i] = (c[:, :, i].astype(np.float64) + C[:, XL.c_row(lane, i), row]).astype(np.float32)
    return out


def _workgroup(plan, mem, mblock, nblock, expert, a_rows, w_rows):
    """Accumulators [acc][m_tile] -> [waves, 64, 4] f32 of one workgroup (all its waves at once)."""
    lane = LANE_OF.reshape(XL.WAVES, XL.WAVE)
    K = plan.k
    n_acc = len(w_rows)
    a_base = [XL.a_byte_offset(a_rows[m], 0, lane) for m in range(XL.M_TILES)]
    q_base = [XL.q_byte_offset(expert, r, 0, lane, plan.n_rows, K) for r in w_rows]
    s_base = [XL.s_byte_offset(expert, r, 0, plan.n_rows, K) for r in w_rows]
    accs = [[np.zeros((XL.WAVES, XL.WAVE, 4), np.float32) for _ in range(XL.M_TILES)] for _ in range(n_acc)]
    v = plan.mfma_vals
    for it in range(plan.iters):
        kb0 = it * plan.kb
        for b in range(plan.kb):
            a_vals = [_bf16_pairs_to_f32(list(np.moveaxis(mem.a.dwords(a_base[m] + (kb0 + b) * XL.SCALE_BLOCK * 2, 4),
                                                          -1, 0))) for m in range(XL.M_TILES)]
            for a in range(n_acc):
                words = mem.q.dwords(q_base[a] + (kb0 + b) * (XL.SCALE_BLOCK // 2))[..., 0]
                b_vals = _bf16_pairs_to_f32(dequant_words(words, plan.arch))
                scale = XL.e8m0_f32_bits(mem.s.ubyte(s_base[a] + kb0 + b), _where)
                scale = np.asarray(scale, np.int64).astype(np.uint32).view(np.float32)
                for m in range(XL.M_TILES):
                    part = np.zeros((XL.WAVES, XL.WAVE, 4), np.float32)
                    for j in range(plan.mfma_per_block):
                        part = _mfma(a_vals[m][..., j * v:(j + 1) * v], b_vals[..., j * v:(j + 1) * v], part,
                                     plan.mfma_k)
                    with np.errstate(over="ignore", invalid="ignore"):
                        accs[a][m] = (accs[a][m] + part * scale[..., None]).astype(np.float32)
    return accs


class _Mem:
    pass


def emulate_experts_mxfp4(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, expert_mask=None, arch="gfx942",
                          return_act=False):
    """out [T, H] (hidden's dtype) as the two kernels and the combine compute it (bf16 hidden, silu,
    chunked gate/up, no biases: what ``supports_experts_mxfp4`` accepts)."""
    tokens, top_k = ids.shape
    E, two_i, _ = w13_q.shape
    H, I = hidden.shape[1], two_i // 2
    p1 = XL.mxfp4_plan(1, E, H, I, arch)
    p2 = XL.mxfp4_plan(2, E, H, I, arch)
    sti, sw, sei, nv = sort_ref(ids, weights, E, XL.BLOCK_M, expert_mask)
    sti, sw, sei = sti.numpy().astype(np.int64), sw.numpy(), sei.numpy().astype(np.int64)
    nv0 = int(nv[0])
    length = sti.shape[0]
    wave = WAVE_OF.reshape(XL.WAVES, XL.WAVE)
    lane = LANE_OF.reshape(XL.WAVES, XL.WAVE)
    i_idx = np.arange(4)

    # stage 1
    m1 = _Mem()
    m1.a, m1.q, m1.s = _Buffer(hidden.to(torch.bfloat16)), _Buffer(w13_q), _Buffer(w13_s)
    act = np.zeros((length, I), np.float32)  # rows of blocks past num_valid are never written (nor read)
    act_written = np.zeros((length, I), np.int64)
    for mblock in range(len(sei)):
        row0 = mblock * XL.BLOCK_M
        if not row0 < nv0:
            continue
        expert = int(sei[mblock])
        a_rows = [(sti[row0 + XL.block_row(m, lane)] & 0xFFFFFF) * (H * 2) for m in range(XL.M_TILES)]
        for nblock in range(p1.n_blocks):
            cols = [XL.tile_column(nblock, wave, nt, lane) for nt in range(XL.N_TILES)]
            w_rows = [np.minimum(c, I - 1) for c in cols]
            w_rows += [r + I for r in w_rows]
            accs = _workgroup(p1, m1, mblock, nblock, expert, a_rows, w_rows)
            for nt in range(XL.N_TILES):
                for m in range(XL.M_TILES):
                    g = torch.from_numpy(accs[nt][m])
                    u = torch.from_numpy(accs[XL.N_TILES + nt][m])
                    h = (g * torch.sigmoid(g) * u).to(torch.bfloat16).float().numpy()
                    rows = row0 + m * XL.MFMA_M + XL.c_row(lane[..., None], i_idx)  # [waves, 64, 4]
                    colb = np.broadcast_to(cols[nt][..., None], rows.shape)
                    ok = colb < I
                    act[rows[ok], colb[ok]] = h[ok]
                    np.add.at(act_written, (rows[ok], colb[ok]), 1)
    for mblock in range(len(sei)):
        if mblock * XL.BLOCK_M < nv0:
            assert (act_written[mblock * XL.BLOCK_M:(mblock + 1) * XL.BLOCK_M] == 1).all(), "act not written once"

    # stage 2
    m2 = _Mem()
    m2.a = _Buffer(torch.from_numpy(act).to(torch.bfloat16))
    m2.q, m2.s = _Buffer(w2_q), _Buffer(w2_s)
    out_rows = np.zeros((tokens * top_k, H), np.float32)
    written = np.zeros((tokens * top_k, H), np.int64)
    for mblock in range(len(sei)):
        row0 = mblock * XL.BLOCK_M
        if not row0 < nv0:
            continue
        expert = int(sei[mblock])
        a_rows = [(row0 + XL.block_row(m, lane)) * (I * 2) for m in range(XL.M_TILES)]
        for nblock in range(p2.n_blocks):
            cols = [XL.tile_column(nblock, wave, nt, lane) for nt in range(XL.N_TILES)]
            w_rows = [np.minimum(c, H - 1) for c in cols]
            accs = _workgroup(p2, m2, mblock, nblock, expert, a_rows, w_rows)
            for m in range(XL.M_TILES):
                rows = row0 + m * XL.MFMA_M + XL.c_row(lane[..., None], i_idx)
                packed = sti[rows]
                token, slot = packed & 0xFFFFFF, packed >> 24
                dest = XL.pair_row(token, slot, top_k)
                for nt in range(XL.N_TILES):
                    colb = np.broadcast_to(cols[nt][..., None], rows.shape)
                    ok = (token < tokens) & (colb < H)
                    out_rows[dest[ok], colb[ok]] = (accs[nt][m] * sw[rows])[ok]
                    np.add.at(written, (dest[ok], colb[ok]), 1)
    assert (written <= 1).all(), "a stage-2 output element was written twice"
    out = torch.from_numpy(out_rows).view(tokens, top_k, H).sum(dim=1).to(hidden.dtype)
    return (out, act) if return_act else out
