"""Triton expert GEMMs with MXFP4 weights (``inductor_moe::experts_mxfp4``): the activations stay in the
model dtype, the weights are read as packed FP4 E2M1 codes plus E8M0 block scales and dequantized in
registers, tile by tile, right before the multiply. Layout: ``inductor_moe.quant.mxfp4``.

``_mxfp4_tile`` dequantizes a [BLOCK_N rows, BLOCK_K columns] tile of a packed weight: one contiguous load
of BLOCK_K/2 bytes per row (two codes per byte), the low and high nibbles decoded to f32 and interleaved
(low nibble = even column), and each run of 32 columns multiplied by its scale (one load of BLOCK_K/32
bytes per row). BLOCK_K is a multiple of 32 and the reduction dims H and I are too (the op's contract),
so a tile never splits a scale block and masking works on whole bytes.

Sorted path (``experts_mxfp4_sorted_triton``), the same two stages as ``experts.py`` over the sorted layout:
stage 1 per (block of ``block_m`` sorted rows, tile of intermediate columns) gathers the tokens, multiplies
by the dequantized gate and up rows (tl.dot, f32 accumulators) and applies the activation; stage 2 per
(block, tile of hidden columns) multiplies ``act`` by the dequantized ``w2`` rows, scales by the routing
weight in f32 and writes row ``token * k + slot``; the k rows of a token are summed in slot order.
The dequantized tile is cast to the activation dtype for tl.dot (bf16 holds every E2M1 value times a
power of two of f32's normal range exactly; fp16 only scales near 1); f32 activations get IEEE dots.

Decode path (``experts_mxfp4_decode_triton``), for a few tokens (``decode.use_decode``): GEMVs, no sort,
no tl.dot. ``_decode_up_kernel`` per (pair, tile of intermediate columns) streams its expert's gate and
up rows against the token's hidden row and writes ``act`` [T*k, I]; ``_decode_down_kernel`` per (token,
tile of hidden columns) loops over the token's k slots, so the combine happens in registers in slot order
and [T, H] is written once. Pairs whose id is outside [0, E) or masked out are skipped.

Verified on an H100 (tools/gpu_check_mxfp4.py, 112/112 cases). Not yet fast: untuned tiles (benchmarks/README.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _device_reason
from .configs import ExpertsConfig, default_config
from .decode import use_decode
from .experts import ACT_CODES, _activation, _gate_up_rows, _kernel_flags, _tile

SCALE_BLOCK = 32  # elements per E8M0 scale


@triton.jit
def _e2m1_to_f32(code):
    """4-bit E2M1 codes -> f32. With e = (code >> 1) & 3 and m = code & 1 the magnitude in quarters is
    2m for e = 0 and (2 + m) << e otherwise: 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign."""
    c = code.to(tl.int32)
    e = (c >> 1) & 3
    m = c & 1
    quarters = tl.where(e == 0, m << 1, (m + 2) << e)
    value = quarters.to(tl.float32) * 0.25
    return tl.where((c & 8) != 0, -value, value)


@triton.jit
def _e8m0_to_f32(byte):
    """E8M0 bytes -> 2**(byte - 127) as f32 bit patterns (byte 0: the subnormal 2**-127; 255: NaN)."""
    b = byte.to(tl.int32)
    bits = tl.where(b == 0, 1 << 22, b << 23)
    bits = tl.where(b == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mxfp4_tile(q_base, s_base, rows, row_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K] f32: rows ``rows`` x columns k0 .. k0+BLOCK_K of the dequantized weight (zeros
    where a row or a column is out of range)."""
    offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    b_mask = row_ok[:, None] & (offs_b < K // 2)[None, :]
    packed = tl.load(q_base + rows[:, None] * stride_qn + offs_b[None, :] * stride_qk, mask=b_mask, other=0)
    values = tl.interleave(_e2m1_to_f32(packed & 0xF), _e2m1_to_f32(packed >> 4))
    offs_g = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    g_mask = row_ok[:, None] & (offs_g < K // 32)[None, :]
    scale = _e8m0_to_f32(tl.load(s_base + rows[:, None] * stride_sn + offs_g[None, :] * stride_sk, mask=g_mask,
                                 other=127))
    values = tl.reshape(values, (BLOCK_N, BLOCK_K // 32, 32)) * scale[:, :, None]
    return tl.reshape(values, (BLOCK_N, BLOCK_K))


@triton.jit(do_not_specialize=["T"])
def _stage1_kernel(
    x_ptr, sti_ptr, sei_ptr, nv_ptr, q_ptr, s_ptr, b_ptr, out_ptr,
    T, K, I, num_blocks,
    stride_xt, stride_xk, stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sk,
    stride_be, stride_bn, stride_om,
    alpha, limit,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr, UPCAST: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(num_blocks, I, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(nv_ptr):
        return
    expert = tl.load(sei_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    token = tl.load(sti_ptr + offs_m) & 0xFFFFFF
    row_ok = token < T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    gate_rows, up_rows = _gate_up_rows(offs_n, I, INTERLEAVED)
    q_base = q_ptr + expert * stride_qe
    s_base = s_ptr + expert * stride_se
    x_rows = x_ptr + token.to(tl.int64)[:, None] * stride_xt
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16/fp16 dot is wrong: compute it in f32 there
            a = a.to(tl.float32)
        wg = _mxfp4_tile(q_base, s_base, gate_rows, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                         BLOCK_N, BLOCK_K)
        wu = _mxfp4_tile(q_base, s_base, up_rows, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                         BLOCK_N, BLOCK_K)
        wg = tl.trans(wg.to(a.dtype))
        wu = tl.trans(wu.to(a.dtype))
        if IEEE:
            acc_g = tl.dot(a, wg, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, wu, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(a, wg, acc_g)
            acc_u = tl.dot(a, wu, acc_u)
    if HAS_BIAS:
        b_base = b_ptr + expert * stride_be
        acc_g += tl.load(b_base + gate_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(b_base + up_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    h = _activation(acc_g, acc_u, ACT, alpha, limit)
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, h.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["T"])
def _stage2_kernel(
    a_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr, q_ptr, s_ptr, b_ptr, out_ptr,
    T, K, N, top_k, num_blocks,
    stride_am, stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sk, stride_be, stride_bn, stride_or,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(num_blocks, N, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(nv_ptr):
        return
    expert = tl.load(sei_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    packed_ids = tl.load(sti_ptr + offs_m)
    token = packed_ids & 0xFFFFFF
    slot = packed_ids >> 24
    row_ok = token < T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    q_base = q_ptr + expert * stride_qe
    s_base = s_ptr + expert * stride_se
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_rows + offs_k[None, :], mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
        w = _mxfp4_tile(q_base, s_base, offs_n, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                        BLOCK_N, BLOCK_K)
        w = tl.trans(w.to(a.dtype))
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert * stride_be + offs_n * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.load(sw_ptr + offs_m)[:, None]
    dest = (token.to(tl.int64) * top_k + slot)[:, None] * stride_or + offs_n[None, :]
    tl.store(out_ptr + dest, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _pair_expert(ids_ptr, mask_ptr, pair, E, HAS_MASK: tl.constexpr):
    """(expert clamped into [0, E), whether the pair is routed: id in range and not masked out)."""
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    valid = (expert >= 0) & (expert < E)
    expert = tl.minimum(tl.maximum(expert, 0), E - 1)
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + expert) != 0)
    return expert, valid


@triton.jit(do_not_specialize=["T"])
def _decode_up_kernel(
    x_ptr, ids_ptr, mask_ptr, q_ptr, s_ptr, b_ptr, act_ptr,
    T, E, K, I, top_k,
    stride_xt, stride_xk, stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sk, stride_be, stride_bn,
    alpha, limit,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tl.cdiv(I, BLOCK_N)
    pair = pid // tiles
    tile = pid % tiles
    token = pair // top_k
    expert, valid = _pair_expert(ids_ptr, mask_ptr, pair, E, HAS_MASK)
    if not valid:  # the down kernel skips this pair too
        return
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    gate_rows, up_rows = _gate_up_rows(offs_n, I, INTERLEAVED)
    q_base = q_ptr + expert * stride_qe
    s_base = s_ptr + expert * stride_se
    x_row = x_ptr + token.to(tl.int64) * stride_xt
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xv = tl.load(x_row + offs_k * stride_xk, mask=offs_k < K, other=0.0).to(tl.float32)
        wg = _mxfp4_tile(q_base, s_base, gate_rows, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                         BLOCK_N, BLOCK_K)
        wu = _mxfp4_tile(q_base, s_base, up_rows, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                         BLOCK_N, BLOCK_K)
        acc_g += tl.sum(wg * xv[None, :], axis=1)
        acc_u += tl.sum(wu * xv[None, :], axis=1)
    if HAS_BIAS:
        b_base = b_ptr + expert * stride_be
        acc_g += tl.load(b_base + gate_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)
        acc_u += tl.load(b_base + up_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)
    h = _activation(acc_g, acc_u, ACT, alpha, limit)
    tl.store(act_ptr + pair.to(tl.int64) * I + offs_n, h.to(act_ptr.dtype.element_ty), mask=n_ok)


@triton.jit(do_not_specialize=["T"])
def _decode_down_kernel(
    act_ptr, ids_ptr, wts_ptr, mask_ptr, q_ptr, s_ptr, b_ptr, out_ptr,
    T, E, K, N, top_k,
    stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sk, stride_be, stride_bn, stride_ot,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tl.cdiv(N, BLOCK_N)
    token = pid // tiles
    offs_n = (pid % tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s in range(top_k):  # slot order: deterministic, as the sorted path's combine
        pair = token.to(tl.int64) * top_k + s
        expert, valid = _pair_expert(ids_ptr, mask_ptr, pair, E, HAS_MASK)
        if valid:
            q_base = q_ptr + expert * stride_qe
            s_base = s_ptr + expert * stride_se
            part = tl.zeros([BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                a = tl.load(act_ptr + pair * K + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
                w = _mxfp4_tile(q_base, s_base, offs_n, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                                BLOCK_N, BLOCK_K)
                part += tl.sum(w * a[None, :], axis=1)
            if HAS_BIAS:
                part += tl.load(b_ptr + expert * stride_be + offs_n * stride_bn, mask=n_ok, other=0.0).to(tl.float32)
            acc += tl.load(wts_ptr + pair) * part
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def _strides(q, s):
    return (q.stride(0), q.stride(1), q.stride(2), s.stride(0), s.stride(1), s.stride(2))


def _bias(b, fallback):
    """(pointer argument, stride 0, stride 1): a dummy pointer and zero strides when there is no bias."""
    return (b, b.stride(0), b.stride(1)) if b is not None else (fallback, 0, 0)


def mxfp4_config(tokens: int, top_k: int, num_experts: int, hidden: int, inter: int) -> ExpertsConfig:
    """Tiles of the sorted path: the untuned bf16 heuristic (``configs.default_config``), with the K tiles
    a power of two >= 32 (whole scale blocks, and tl.arange over BLOCK_K/32 scales)."""
    c = default_config(tokens, top_k, num_experts, hidden, inter)
    k1, k2 = (max(32, triton.next_power_of_2(k)) for k in (c.k1, c.k2))
    return ExpertsConfig(c.block_m, c.n1, k1, c.warps1, c.stages1, c.n2, k2, c.warps2, c.stages2, c.group_m)


def _check_k_tile(block_k: int):
    if block_k < SCALE_BLOCK or block_k & (block_k - 1):
        raise ValueError(f"BLOCK_K={block_k}: MXFP4 tiles take a power of two >= {SCALE_BLOCK}")


def experts_mxfp4_sorted_triton(
    hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13_q, w2_q, w13_s, w2_s, top_k,
    block_m, b13, b2, activation, gate_up_interleaved, alpha, limit, config: ExpertsConfig | None = None,
):
    """Both stages over the sorted layout (``inductor_moe.ops.sort``) and the combine; out [T, H]."""
    tokens, hidden_dim = hidden.shape
    inter = w13_q.shape[1] // 2
    if config is None:
        config = mxfp4_config(tokens, top_k, w13_q.shape[0], hidden_dim, inter)
    _check_k_tile(config.k1)
    _check_k_tile(config.k2)
    blocks = sorted_token_ids.shape[0] // block_m
    upcast, ieee = _kernel_flags(hidden)
    act = torch.empty(sorted_token_ids.shape[0], inter, dtype=hidden.dtype, device=hidden.device)
    bias13, sb13e, sb13n = _bias(b13, w13_s)
    _stage1_kernel[(blocks * triton.cdiv(inter, config.n1),)](
        hidden, sorted_token_ids, sorted_expert_ids, num_valid, w13_q, w13_s, bias13, act,
        tokens, hidden_dim, inter, blocks,
        hidden.stride(0), hidden.stride(1), *_strides(w13_q, w13_s), sb13e, sb13n, act.stride(0),
        float(alpha), float(limit),
        HAS_BIAS=b13 is not None, ACT=ACT_CODES[activation], INTERLEAVED=gate_up_interleaved, UPCAST=upcast,
        IEEE=ieee, BLOCK_M=block_m, BLOCK_N=config.n1, BLOCK_K=config.k1, GROUP_M=config.group_m,
        num_warps=config.warps1, num_stages=config.stages1,
    )
    # pairs the sort dropped (masked experts, ids outside [0, E)) leave their rows unwritten: zeros
    rows = torch.zeros(tokens * top_k, hidden_dim, dtype=hidden.dtype, device=hidden.device)
    bias2, sb2e, sb2n = _bias(b2, w2_s)
    _stage2_kernel[(blocks * triton.cdiv(hidden_dim, config.n2),)](
        act, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w2_q, w2_s, bias2, rows,
        tokens, inter, hidden_dim, top_k, blocks,
        act.stride(0), *_strides(w2_q, w2_s), sb2e, sb2n, rows.stride(0),
        HAS_BIAS=b2 is not None, UPCAST=upcast, IEEE=ieee,
        BLOCK_M=block_m, BLOCK_N=config.n2, BLOCK_K=config.k2, GROUP_M=config.group_m,
        num_warps=config.warps2, num_stages=config.stages2,
    )
    if top_k == 1:
        return rows
    return rows.view(tokens, top_k, hidden_dim).sum(dim=1)


def decode_tiles(q: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) of a GEMV over packed ``q`` [E, N, K/2] (untuned): long runs of bytes
    along K when K is the contiguous axis, else wide N tiles."""
    return (16, 256, 4) if q.stride(2) == 1 else (64, 64, 4)


def experts_mxfp4_decode_triton(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation,
                                gate_up_interleaved, alpha, limit, expert_mask=None,
                                tiles1: tuple[int, int, int] | None = None,
                                tiles2: tuple[int, int, int] | None = None):
    """The GEMV path for a few tokens: two launches, no sort; out [T, H]."""
    tokens, hidden_dim = hidden.shape
    top_k = ids.shape[1]
    num_experts = w13_q.shape[0]
    inter = w13_q.shape[1] // 2
    out = torch.empty(tokens, hidden_dim, dtype=hidden.dtype, device=hidden.device)
    if tokens == 0:
        return out
    flat_ids = ids.reshape(-1).contiguous()
    flat_w = weights.reshape(-1).float().contiguous()
    mask = expert_mask.view(torch.uint8) if expert_mask is not None else flat_ids
    act = torch.empty(tokens * top_k, inter, dtype=hidden.dtype, device=hidden.device)
    bn1, bk1, warps1 = tiles1 or decode_tiles(w13_q)
    bn2, bk2, warps2 = tiles2 or decode_tiles(w2_q)
    _check_k_tile(bk1)
    _check_k_tile(bk2)
    bias13, sb13e, sb13n = _bias(b13, w13_s)
    _decode_up_kernel[(tokens * top_k * triton.cdiv(inter, bn1),)](
        hidden, flat_ids, mask, w13_q, w13_s, bias13, act,
        tokens, num_experts, hidden_dim, inter, top_k,
        hidden.stride(0), hidden.stride(1), *_strides(w13_q, w13_s), sb13e, sb13n,
        float(alpha), float(limit),
        HAS_MASK=expert_mask is not None, HAS_BIAS=b13 is not None, ACT=ACT_CODES[activation],
        INTERLEAVED=gate_up_interleaved, BLOCK_N=bn1, BLOCK_K=bk1, num_warps=warps1,
    )
    bias2, sb2e, sb2n = _bias(b2, w2_s)
    _decode_down_kernel[(tokens * triton.cdiv(hidden_dim, bn2),)](
        act, flat_ids, flat_w, mask, w2_q, w2_s, bias2, out,
        tokens, num_experts, inter, hidden_dim, top_k,
        *_strides(w2_q, w2_s), sb2e, sb2n, out.stride(0),
        HAS_MASK=expert_mask is not None, HAS_BIAS=b2 is not None, BLOCK_N=bn2, BLOCK_K=bk2, num_warps=warps2,
    )
    return out


def experts_mxfp4_triton(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation, gate_up_interleaved,
                         alpha, limit, expert_mask=None, config: ExpertsConfig | None = None,
                         path: str | None = None):
    """``experts_mxfp4``: the decode path while T*k is small next to E (``decode.use_decode``), else sort
    (through the dispatch) + the sorted path. ``path`` ("decode" / "sorted") and ``config`` force a
    choice (tests, tuning)."""
    from ... import dispatch

    tokens, top_k = ids.shape
    num_experts = w13_q.shape[0]
    if path is None:
        path = "decode" if use_decode(tokens, top_k, num_experts) else "sorted"
    spec = (b13, b2, activation, gate_up_interleaved, alpha, limit)
    if path == "decode":
        from . import experts_mxfp4_decode as v2  # opt-in, unverified on a GPU: INDUCTOR_MOE_MXFP4_DECODE=v2
        if v2.enabled() and v2.supports_layout(w13_q, w2_q):
            return v2.experts_mxfp4_decode_v2(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, *spec, expert_mask)
        return experts_mxfp4_decode_triton(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, *spec, expert_mask)
    if path != "sorted":
        raise ValueError(f"path: expected 'decode' or 'sorted', got {path!r}")
    if config is None:
        config = mxfp4_config(tokens, top_k, num_experts, hidden.shape[1], w13_q.shape[1] // 2)
    _, sort = dispatch.select("sort", ids.device, ids=ids, num_experts=num_experts, block_m=config.block_m)
    sorted_out = sort(ids, weights, num_experts, config.block_m, expert_mask)
    return experts_mxfp4_sorted_triton(hidden, *sorted_out, w13_q, w2_q, w13_s, w2_s, top_k, config.block_m, *spec,
                                       config)


def supports_experts_mxfp4(hidden=None, activation=None, **_) -> str | None:
    reason = _device_reason(hidden)  # CUDA; CPU tensors only under TRITON_INTERPRET=1 when forced (tests)
    if reason:
        return reason
    if hidden.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {hidden.dtype}"
    if activation not in ACT_CODES:
        return f"activation {activation}"
    return None
