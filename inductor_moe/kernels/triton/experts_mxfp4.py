"""Triton expert GEMMs with MXFP4 weights (``inductor_moe::experts_mxfp4``): the activations stay in the
model dtype, the weights are read as packed FP4 E2M1 codes plus E8M0 block scales and dequantized in
registers, tile by tile, right before the multiply. Layout: ``inductor_moe.quant.mxfp4``.

Sorted path (``experts_mxfp4_sorted_triton``), the same two stages as ``experts.py`` over the sorted layout:
stage 1 per (block of ``block_m`` sorted rows, tile of intermediate columns) gathers the tokens, multiplies
by the dequantized gate and up rows (f32 accumulators) and applies the activation; stage 2 per (block, tile
of hidden columns) multiplies ``act`` by the dequantized ``w2`` rows, scales by the routing weight in f32
and writes row ``token * k + slot``; the k rows of a token are summed in slot order. BLOCK_K is a power of
two >= 32 and the reduction dims H and I are multiples of 32 (the op's contract), so a tile never splits a
scale block and masking works on whole bytes. Three ways to dequantize (``dequant=`` of
``experts_mxfp4_triton`` / ``experts_mxfp4_sorted_triton``, else ``$INDUCTOR_MOE_MXFP4_SORTED``, else
"bits"; ``sorted_variant``), each a DEQUANT constexpr of the same two kernels (``_mxfp4_gemm``):

- "v1" (0), the first version: ``_mxfp4_tile`` decodes a [BLOCK_N, BLOCK_K] tile element by element to f32
  (where-chains, int->float converts, interleave, one multiply per element), cast to the activation dtype
  for tl.dot. ~23-29 SASS instructions per weight in the K loop (sm_90, Triton 3.6).
- "bits" (1): ``_mxfp4_tile_bits`` reads int32 words of 8 codes and turns each pair of codes 16 bits apart
  into a bf16x2 register by bit operations (``_e2m1_bits_pair``: and, integer multiply, and: the bf16
  patterns of value * 2**-126), then two bf16x2 multiplies (by 2**126, by the block's scale), i.e. 2.6
  instructions per weight, exact for every code and scale byte (bf16 has f32's exponent range; subnormal
  bf16 operands are kept by HMUL2.BF16). The GEMM is computed transposed, W tile @ x.T, with the columns of
  both operands permuted (``_mma_lane_order``, ``_bits_act_order``; a sum over K does not care about the
  order) so that the decoded registers already are tl.dot's register operand (wgmma's A, the weight rows
  on its M >= 64, the block's tokens on its N >= 8): no layout conversion of the weights, one 16-byte load
  per row and lane. Only the last, partial K step is masked (rows are clamped, not masked). 3.5-4.5 SASS
  instructions per weight in the K loop at BLOCK_M <= 64 (TTGIR/SASS of sm_90 with Triton 3.6, compiled
  without a GPU). f32 / fp16 activations (and the interpreter, whose bf16 arithmetic is wrong) decode in
  f32 the same bit patterns. Needs packed rows readable as int32 words (``supports_bits_layout``, else
  "v1").
- "dot_scaled" (2): ``tl.dot_scaled(x, None, "bf16", codes [BLOCK_K/2, BLOCK_N], scales, "e2m1")``, which
  Triton lowers on Hopper by decoding in registers (a PRMT lookup table) and a wgmma with swapped operands:
  ~9-10 instructions per weight. bf16 activations only (f32 / fp16 run "bits"); the interpreter of Triton
  >= 3.9 runs it (exactly, in f32).

Decode path (``experts_mxfp4_decode_triton``), for a few tokens (``decode.use_decode``): GEMVs, no sort,
no tl.dot. ``_decode_up_kernel`` per (pair, tile of intermediate columns) streams its expert's gate and
up rows against the token's hidden row and writes ``act`` [T*k, I]; ``_decode_down_kernel`` per (token,
tile of hidden columns) loops over the token's k slots, so the combine happens in registers in slot order
and [T, H] is written once. Pairs whose id is outside [0, E) or masked out are skipped.

Verified on an H100 (tools/gpu_check_mxfp4.py, 112/112 cases each): "v1", the decode path and "bits" (session 5,
with ``INDUCTOR_MOE_MXFP4_SORTED=bits``). ``benchmarks/bench_mxfp4.py --sorted-variants`` on the H100, GPT-OSS-20B
layer with routing, us, v1 / bits / dot_scaled (bf16 ``experts``): T=8 729 / 220 / 308 (380), T=64 1016 / 306 /
441 (571), T=512 2404 / 656 / 1067 (835), T=4096 9906 / 3105 / 5306 (1710): "bits" is the default.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _device_reason, interpreting
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


@triton.jit
def _mma_lane_order(x, BLOCK_K: tl.constexpr):
    """Columns of ``x`` [R, BLOCK_K] reordered for the "bits" path: column ``8m + j`` (word ``m`` of the tile,
    position ``j``) goes to ``32b + 8(j // 2) + 2t + j % 2`` where ``m = t * BLOCK_K/32 + b``. A K-operand
    register of tl.dot's 16-bit layout (wgmma A from registers, mma.sync) holds two adjacent columns, and in a
    k16 step lane ``t`` of a quad holds columns 2t, 2t+1, 2t+8, 2t+9: with this order the 8 values of one
    packed word are exactly what one lane holds in two k16 steps, and a lane's BLOCK_K/32 words are
    contiguous in memory, so the decoded words need no shuffle and are loaded as one vector per row."""
    R: tl.constexpr = x.shape[0]
    x = tl.reshape(x, (R, 4, BLOCK_K // 32, 4, 2))
    x = tl.permute(x, (0, 2, 3, 1, 4))
    return tl.reshape(x, (R, BLOCK_K))


@triton.jit
def _bits_act_order(a, BLOCK_K: tl.constexpr):
    """Activation columns [M, BLOCK_K] in the order of ``_mxfp4_tile_bits``'s weight columns: element
    ``8m + a + 4h`` of each 8-column word to position ``8m + 2a + h`` (the pairing of ``_e2m1_bits_pair``),
    then ``_mma_lane_order``."""
    M: tl.constexpr = a.shape[0]
    a = tl.reshape(a, (M, BLOCK_K // 8, 2, 4))
    a = tl.permute(a, (0, 1, 3, 2))
    return _mma_lane_order(tl.reshape(a, (M, BLOCK_K)), BLOCK_K)


@triton.jit
def _e2m1_pair(w, A: tl.constexpr):
    """Nibbles ``A`` and ``A + 4`` (A in 0..3) of int32 words -> two f32, each value(code) * 2**-126
    (exact, see experts_mxfp4_decode.py's module doc). Both codes are isolated (nibble A in the low 16-bit
    half, A + 4 in the high one, the halves' distance), copied to two offsets by one multiply (no carries:
    the copies do not overlap), which puts the magnitude bits where bf16 keeps e1 e0 m (bits 6-8 of a half)
    and the sign on bit 15; the halves then become f32 patterns. ``w`` for A = 2, 3 is the word shifted right
    by 8 (the caller shares that shift)."""
    z = w & (0x000F000F << (4 * (A % 2)))
    spread = z * ((1 << (6 - 4 * (A % 2))) + (1 << (12 - 4 * (A % 2))))
    lo = ((spread << 16) & -2118123520).to(tl.float32, bitcast=True)  # 0x81C00000 as int32
    hi = (spread & -2118123520).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def _e2m1_bits_pair(src, A: tl.constexpr, scale, BF16: tl.constexpr):
    """Nibbles ``A`` and ``A + 4`` (A = 0, 1; for nibbles 2, 3 / 6, 7 pass the words shifted right by 8) of
    int32 words -> (value of nibble A, value of nibble A + 4), each ``value(code) * scale``. The two codes are
    16 bits apart, so one multiply copies each to two places without carries (as ``_e2m1_pair``) and one
    mask keeps, per 16-bit half, the sign on bit 15 and e1 e0 m on bits 8..6: a bf16 (or, shifted to the top
    of a word, f32: ``_e2m1_pair`` itself) bit pattern of exactly ``value * 2**-126`` for every code (code 1,
    0.5, is the subnormal 2**-127). Times 2**126, exact, then times the scale, exact while the product stays
    in range (bf16 has f32's exponent range): 2 bf16x2 multiplies (HMUL2) per pair when BF16, else f32."""
    if BF16:
        z = src & (0x000F000F << (4 * A))
        t = z * ((1 << (6 - 4 * A)) + (1 << (12 - 4 * A)))
        r = t & -2118090304  # 0x81C081C0
        two126 = tl.full((), 8.507059173023462e+37, tl.bfloat16)
        lo = r.to(tl.int16).to(tl.bfloat16, bitcast=True)
        hi = (r >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:  # the same patterns in the top half of an f32
        two126 = 8.507059173023462e+37
        lo, hi = _e2m1_pair(src, A)
    return lo * two126 * scale, hi * two126 * scale


@triton.jit
def _bits_load(q_base, s_base, rows, k0, K, stride_qn, stride_sn, stride_sk, BLOCK_K: tl.constexpr,
               MASK_K: tl.constexpr):
    """The raw operands of one "bits" weight tile: int32 words [R, BLOCK_K/8] and E8M0 bytes [R, BLOCK_K/32]
    (``_mxfp4_tile_bits`` without the decode, so that a loop can issue the next step's loads first)."""
    offs_w = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    w_ptrs = q_base.to(tl.pointer_type(tl.int32)) + rows[:, None] * (stride_qn // 4) + offs_w[None, :]
    offs_g = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    s_ptrs = s_base + rows[:, None] * stride_sn + offs_g[None, :] * stride_sk
    if MASK_K:
        words = tl.load(w_ptrs, mask=(offs_w < K // 8)[None, :], other=0)
        b = tl.load(s_ptrs, mask=(offs_g < K // 32)[None, :], other=127)
    else:
        words = tl.load(w_ptrs)
        b = tl.load(s_ptrs)
    return words, b


@triton.jit
def _bits_decode(words, b, BLOCK_K: tl.constexpr, BF16: tl.constexpr):
    """Words and scale bytes of ``_bits_load`` -> the [R, BLOCK_K] tile of ``_mxfp4_tile_bits``."""
    R: tl.constexpr = words.shape[0]
    b = b.to(tl.int32)
    if BF16:
        bits = tl.where(b == 0, 0x40, tl.where(b == 255, 0x7FC0, b << 7))
        scale = bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        scale = _e8m0_to_f32(b)
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (R, BLOCK_K // 32, 4)), (R, BLOCK_K // 8))
    w8 = words >> 8
    v0, v4 = _e2m1_bits_pair(words, 0, scale, BF16)
    v1, v5 = _e2m1_bits_pair(words, 1, scale, BF16)
    v2, v6 = _e2m1_bits_pair(w8, 0, scale, BF16)
    v3, v7 = _e2m1_bits_pair(w8, 1, scale, BF16)
    # position 2a + h of each word: element a + 4h (join puts the new axis last: h fastest, then a % 2, a // 2)
    w = tl.join(tl.join(tl.join(v0, v2), tl.join(v1, v3)), tl.join(tl.join(v4, v6), tl.join(v5, v7)))
    return _mma_lane_order(tl.reshape(w, (R, BLOCK_K)), BLOCK_K)


@triton.jit
def _mxfp4_tile_bits(q_base, s_base, rows, k0, K, stride_qn, stride_sn, stride_sk,
                     BLOCK_K: tl.constexpr, BF16: tl.constexpr, MASK_K: tl.constexpr):
    """[R rows, BLOCK_K] dequantized weight tile of the "bits" path, in bf16 (BF16) or f32, columns in the
    order of ``_bits_act_order``. ``rows`` must be in range (callers clamp them; the extra rows are never
    stored); columns past K are zeros when MASK_K (the last, partial K step). Loads the packed bytes as int32
    words (K-contiguous rows, byte strides multiples of 4: ``supports_bits_layout``) and the E8M0 byte b of
    each 32 columns as the bf16 (f32) number 2**(b - 127): bit pattern b << 7 (b << 23); 0x40 (1 << 22), the
    subnormal 2**-127, for b = 0; NaN for 255."""
    words, b = _bits_load(q_base, s_base, rows, k0, K, stride_qn, stride_sn, stride_sk, BLOCK_K, MASK_K)
    return _bits_decode(words, b, BLOCK_K, BF16)


@triton.jit
def _bits_load_step(x_rows, stride_xk, q_base, s_base, rows_a, rows_b, k0, K, stride_qn, stride_sn, stride_sk,
                    TWO: tl.constexpr, BLOCK_K: tl.constexpr, MASK_K: tl.constexpr):
    """Every load of one K step of the "bits" path: (activations [BLOCK_M, BLOCK_K], words and scale bytes of
    rows_a, of rows_b when TWO, else rows_a's again)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if MASK_K:
        a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=(offs_k < K)[None, :], other=0.0)
    else:
        a = tl.load(x_rows + offs_k[None, :] * stride_xk)
    wa, ba = _bits_load(q_base, s_base, rows_a, k0, K, stride_qn, stride_sn, stride_sk, BLOCK_K, MASK_K)
    if TWO:
        wb, bb = _bits_load(q_base, s_base, rows_b, k0, K, stride_qn, stride_sn, stride_sk, BLOCK_K, MASK_K)
    else:
        wb, bb = wa, ba
    return a, wa, ba, wb, bb


@triton.jit
def _bits_mma_step(a, wa, ba, wb, bb, acc_a, acc_b, TWO: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """Decode and multiply one K step of the "bits" path on transposed accumulators [BLOCK_N, BLOCK_M]:
    W tile @ x.T."""
    if UPCAST:  # the interpreter's bf16/fp16 dot is wrong: compute it in f32 there
        a = a.to(tl.float32)
    at = tl.trans(_bits_act_order(a, BLOCK_K))
    # bf16 activations: decode to bf16; else (and in the interpreter, whose bf16 math is wrong too) f32, cast
    w = _bits_decode(wa, ba, BLOCK_K, a.dtype == tl.bfloat16).to(a.dtype)
    if IEEE:
        acc_a = tl.dot(w, at, acc_a, input_precision="ieee")
    else:
        acc_a = tl.dot(w, at, acc_a)
    if TWO:
        w = _bits_decode(wb, bb, BLOCK_K, a.dtype == tl.bfloat16).to(a.dtype)
        if IEEE:
            acc_b = tl.dot(w, at, acc_b, input_precision="ieee")
        else:
            acc_b = tl.dot(w, at, acc_b)
    return acc_a, acc_b


@triton.jit
def _packed_kn(q_base, s_base, rows, row_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
               BLOCK_K: tl.constexpr):
    """The "dot_scaled" operands of rows ``rows``: packed codes [BLOCK_K/2, R] (K-major, two codes per byte
    along K, low nibble first) and E8M0 scales [R, BLOCK_K/32]; zeros / 127 out of range."""
    offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    q = tl.load(q_base + rows[None, :] * stride_qn + offs_b[:, None] * stride_qk,
                mask=row_ok[None, :] & (offs_b < K // 2)[:, None], other=0)
    offs_g = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    s = tl.load(s_base + rows[:, None] * stride_sn + offs_g[None, :] * stride_sk,
                mask=row_ok[:, None] & (offs_g < K // 32)[None, :], other=127)
    return q, s


@triton.jit
def _mxfp4_gemm(x_rows, stride_xk, row_ok, q_base, s_base, rows_a, rows_b, n_ok, K,
                stride_qn, stride_qk, stride_sn, stride_sk,
                TWO: tl.constexpr, DEQUANT: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr = False):
    """(x @ W[rows_a].T, x @ W[rows_b].T if TWO) over the whole K, f32 [BLOCK_M, BLOCK_N]: ``x_rows`` are
    the row pointers of the activations (masked by ``row_ok``), W the packed weight at ``q_base``/``s_base``.
    DEQUANT 0 ("v1"): ``_mxfp4_tile`` in f32, cast to the activation dtype, tl.dot. 1 ("bits"):
    ``_mxfp4_tile_bits`` straight to bf16 (bf16 activations off the interpreter; f32 otherwise) and the
    product computed transposed, W tile @ x.T, so that the decoded tile is tl.dot's register operand (wgmma's
    A: BLOCK_N >= 64 per warpgroup) and the block's tokens the MMA's N (16 is enough); no masks but on the
    last, partial K step: the caller passes rows (``x_rows``, ``rows_a``/``rows_b``) clamped into range.
    2 ("dot_scaled"): tl.dot_scaled(x bf16, None, "bf16", codes, scales, "e2m1")."""
    acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if DEQUANT == 1:
        acc_a = tl.trans(acc_a)
        acc_b = tl.trans(acc_b)
        k_main = K - K % BLOCK_K
        if PREFETCH:  # the loads of step i + 1 are issued before step i is decoded: two steps in flight
            if k_main > 0:
                a, wa, ba, wb, bb = _bits_load_step(x_rows, stride_xk, q_base, s_base, rows_a, rows_b, 0, K,
                                                    stride_qn, stride_sn, stride_sk, TWO, BLOCK_K, False)
                for k0 in range(BLOCK_K, k_main, BLOCK_K):
                    na, nwa, nba, nwb, nbb = _bits_load_step(x_rows, stride_xk, q_base, s_base, rows_a, rows_b,
                                                             k0, K, stride_qn, stride_sn, stride_sk, TWO,
                                                             BLOCK_K, False)
                    acc_a, acc_b = _bits_mma_step(a, wa, ba, wb, bb, acc_a, acc_b, TWO, UPCAST, IEEE, BLOCK_K)
                    a, wa, ba, wb, bb = na, nwa, nba, nwb, nbb
                acc_a, acc_b = _bits_mma_step(a, wa, ba, wb, bb, acc_a, acc_b, TWO, UPCAST, IEEE, BLOCK_K)
        else:
            for k0 in range(0, k_main, BLOCK_K):
                a, wa, ba, wb, bb = _bits_load_step(x_rows, stride_xk, q_base, s_base, rows_a, rows_b, k0, K,
                                                    stride_qn, stride_sn, stride_sk, TWO, BLOCK_K, False)
                acc_a, acc_b = _bits_mma_step(a, wa, ba, wb, bb, acc_a, acc_b, TWO, UPCAST, IEEE, BLOCK_K)
        if k_main < K:
            a, wa, ba, wb, bb = _bits_load_step(x_rows, stride_xk, q_base, s_base, rows_a, rows_b, k_main, K,
                                                stride_qn, stride_sn, stride_sk, TWO, BLOCK_K, True)
            acc_a, acc_b = _bits_mma_step(a, wa, ba, wb, bb, acc_a, acc_b, TWO, UPCAST, IEEE, BLOCK_K)
        acc_a = tl.trans(acc_a)
        acc_b = tl.trans(acc_b)
    else:
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=row_ok[:, None] & (offs_k < K)[None, :],
                        other=0.0)
            if DEQUANT == 0:
                if UPCAST:  # the interpreter's bf16/fp16 dot is wrong: compute it in f32 there
                    a = a.to(tl.float32)
                wa = _mxfp4_tile(q_base, s_base, rows_a, n_ok, k0, K, stride_qn, stride_qk, stride_sn, stride_sk,
                                 BLOCK_N, BLOCK_K)
                wa = tl.trans(wa.to(a.dtype))
                if IEEE:
                    acc_a = tl.dot(a, wa, acc_a, input_precision="ieee")
                else:
                    acc_a = tl.dot(a, wa, acc_a)
                if TWO:
                    wb = _mxfp4_tile(q_base, s_base, rows_b, n_ok, k0, K, stride_qn, stride_qk, stride_sn,
                                     stride_sk, BLOCK_N, BLOCK_K)
                    wb = tl.trans(wb.to(a.dtype))
                    if IEEE:
                        acc_b = tl.dot(a, wb, acc_b, input_precision="ieee")
                    else:
                        acc_b = tl.dot(a, wb, acc_b)
            else:
                qa, sa = _packed_kn(q_base, s_base, rows_a, n_ok, k0, K, stride_qn, stride_qk, stride_sn,
                                    stride_sk, BLOCK_K)
                acc_a = tl.dot_scaled(a, None, "bf16", qa, sa, "e2m1", acc_a)
                if TWO:
                    qb, sb = _packed_kn(q_base, s_base, rows_b, n_ok, k0, K, stride_qn, stride_qk, stride_sn,
                                        stride_sk, BLOCK_K)
                    acc_b = tl.dot_scaled(a, None, "bf16", qb, sb, "e2m1", acc_b)
    return acc_a, acc_b


@triton.jit(do_not_specialize=["T"])
def _stage1_kernel(
    x_ptr, sti_ptr, sei_ptr, nv_ptr, q_ptr, s_ptr, b_ptr, out_ptr,
    T, K, I, num_blocks,
    stride_xt, stride_xk, stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sk,
    stride_be, stride_bn, stride_om,
    alpha, limit,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr, UPCAST: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, DEQUANT: tl.constexpr = 0, PREFETCH: tl.constexpr = False,
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
    if DEQUANT == 1:  # unmasked loads of rows clamped into range (never stored)
        wg_rows, wu_rows = _gate_up_rows(tl.minimum(offs_n, I - 1), I, INTERLEAVED)
        x_rows = x_ptr + tl.minimum(token, T - 1).to(tl.int64)[:, None] * stride_xt
    else:
        wg_rows, wu_rows = gate_rows, up_rows
        x_rows = x_ptr + token.to(tl.int64)[:, None] * stride_xt
    acc_g, acc_u = _mxfp4_gemm(x_rows, stride_xk, row_ok, q_base, s_base, wg_rows, wu_rows, n_ok, K,
                               stride_qn, stride_qk, stride_sn, stride_sk, True, DEQUANT, UPCAST, IEEE,
                               BLOCK_M, BLOCK_N, BLOCK_K, PREFETCH)
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
    DEQUANT: tl.constexpr = 0, PREFETCH: tl.constexpr = False,
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
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am  # rows of the sorted layout: in range
    if DEQUANT == 1:
        w_rows = tl.minimum(offs_n, N - 1)
    else:
        w_rows = offs_n
    acc, _ = _mxfp4_gemm(a_rows, 1, row_ok, q_base, s_base, w_rows, w_rows, n_ok, K,
                         stride_qn, stride_qk, stride_sn, stride_sk, False, DEQUANT, UPCAST, IEEE,
                         BLOCK_M, BLOCK_N, BLOCK_K, PREFETCH)
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


def mxfp4_config(tokens: int, top_k: int, num_experts: int, hidden: int, inter: int,
                 variant: str = "v1") -> ExpertsConfig:
    """Tiles of the sorted path. "v1": the untuned bf16 heuristic (``configs.default_config``), with the K
    tiles a power of two >= 32 (whole scale blocks, and tl.arange over BLOCK_K/32 scales). "bits" /
    "dot_scaled": guesses from sm_90 builds (registers, shared memory, SASS per weight), timed on an H100 as
    they are (session 5) but not swept. The block's tokens are the MMA's N, so row blocks stay small while an
    expert gets a few rows (16 up to 16 rows per expert, 32 up to 40, then 64: fewer, larger blocks decode
    each weight fewer times but waste MMA work on padding, and at 64 rows the MMA already takes about as long
    as the decode), and
    BLOCK_N >= 64 per warpgroup (wgmma's M: the weight rows). "bits" stage 1 takes 64 columns (= 128 rows
    of gate and up) and stage 2 128 rows, BLOCK_K 128 (one 16-byte load of packed codes per row and lane):
    88-153 registers, 3.5-4 SASS instructions per weight, 3-5 programs of 4 warps per SM."""
    if variant == "v1":
        c = default_config(tokens, top_k, num_experts, hidden, inter)
        k1, k2 = (max(32, triton.next_power_of_2(k)) for k in (c.k1, c.k2))
        return ExpertsConfig(c.block_m, c.n1, k1, c.warps1, c.stages1, c.n2, k2, c.warps2, c.stages2, c.group_m)
    rows_per_expert = tokens * top_k / max(num_experts, 1)
    block_m = 16 if rows_per_expert <= 16 else 32 if rows_per_expert <= 40 else 64
    if block_m == 64:
        return ExpertsConfig(64, 128, 128, 8, 3, 128, 128, 8, 3, 8)
    if variant == "bits":
        return ExpertsConfig(block_m, 64, 128, 4, 3, 128, 128, 4, 3, 8)
    return ExpertsConfig(block_m, 64, 128, 4, 3, 64, 128, 4, 3, 8)


PREFETCH_ENV = "INDUCTOR_MOE_MXFP4_PREFETCH"
PREFETCH_DEFAULT = False


def prefetch_default() -> bool:
    """Whether the "bits" K loops issue the next step's loads before decoding the current one
    (``$INDUCTOR_MOE_MXFP4_PREFETCH`` = 1 / 0, else ``PREFETCH_DEFAULT``)."""
    env = os.environ.get(PREFETCH_ENV, "").strip()
    return PREFETCH_DEFAULT if env == "" else env not in ("0", "false", "no")


SORTED_VARIANTS = ("bits", "dot_scaled", "v1")
DEQUANT_CODES = {"v1": 0, "bits": 1, "dot_scaled": 2}
SORTED_ENV = "INDUCTOR_MOE_MXFP4_SORTED"
DEFAULT_SORTED = "bits"


def supports_bits_layout(*packed: torch.Tensor) -> bool:
    """Whether the "bits" path can read these packed weights [E, N, K/2] as int32 words: K contiguous, the
    other byte strides and the start multiples of 4."""
    return all(q.stride(2) == 1 and q.stride(1) % 4 == 0 and q.stride(0) % 4 == 0 and q.data_ptr() % 4 == 0
               for q in packed)


def interpreter_has_dot_scaled() -> bool:
    """Whether TRITON_INTERPRET=1 can run tl.dot_scaled (Triton >= 3.9's interpreter; 3.6's cannot)."""
    from triton.runtime import interpreter

    return hasattr(getattr(interpreter, "InterpreterBuilder", None), "create_dot_scaled")


def sorted_variant(dequant: str | None, hidden: torch.Tensor, w13_q: torch.Tensor, w2_q: torch.Tensor) -> str:
    """The sorted path's dequantization that runs: ``dequant`` if given, else ``$INDUCTOR_MOE_MXFP4_SORTED``,
    else ``DEFAULT_SORTED``; "dot_scaled" takes bf16 activations only (f32 / fp16 fall to "bits", and so does
    an interpreter without tl.dot_scaled), "bits" word-readable weights only (``supports_bits_layout``, else
    "v1")."""
    name = (dequant or os.environ.get(SORTED_ENV, "").strip().lower() or DEFAULT_SORTED)
    if name not in SORTED_VARIANTS:
        raise ValueError(f"dequant: expected one of {SORTED_VARIANTS}, got {name!r}")
    no_dot_scaled = interpreting() and not interpreter_has_dot_scaled()
    if name == "dot_scaled" and (hidden.dtype != torch.bfloat16 or no_dot_scaled):
        name = "bits"
    if name == "bits" and not supports_bits_layout(w13_q, w2_q):
        name = "v1"
    return name


def _check_k_tile(block_k: int):
    if block_k < SCALE_BLOCK or block_k & (block_k - 1):
        raise ValueError(f"BLOCK_K={block_k}: MXFP4 tiles take a power of two >= {SCALE_BLOCK}")


def experts_mxfp4_sorted_triton(
    hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13_q, w2_q, w13_s, w2_s, top_k,
    block_m, b13, b2, activation, gate_up_interleaved, alpha, limit, config: ExpertsConfig | None = None,
    dequant: str | None = None, prefetch: bool | None = None,
):
    """Both stages over the sorted layout (``inductor_moe.ops.sort``) and the combine; out [T, H].
    ``dequant``: "bits" / "dot_scaled" / "v1" (``sorted_variant``; None: the env var or the default)."""
    tokens, hidden_dim = hidden.shape
    inter = w13_q.shape[1] // 2
    variant = sorted_variant(dequant, hidden, w13_q, w2_q)
    if config is None:
        config = mxfp4_config(tokens, top_k, w13_q.shape[0], hidden_dim, inter, variant)
    _check_k_tile(config.k1)
    _check_k_tile(config.k2)
    code = DEQUANT_CODES[variant]
    if prefetch is None:
        prefetch = prefetch_default()
    prefetch = bool(prefetch) and variant == "bits"
    if variant == "bits" and hidden.stride(1) != 1:  # its loads assume K-contiguous activations
        hidden = hidden.contiguous()
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
        IEEE=ieee, BLOCK_M=block_m, BLOCK_N=config.n1, BLOCK_K=config.k1, GROUP_M=config.group_m, DEQUANT=code,
        PREFETCH=prefetch,
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
        BLOCK_M=block_m, BLOCK_N=config.n2, BLOCK_K=config.k2, GROUP_M=config.group_m, DEQUANT=code,
        PREFETCH=prefetch,
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
                         path: str | None = None, dequant: str | None = None, prefetch: bool | None = None):
    """``experts_mxfp4``: the decode path while T*k is small next to E (``decode.use_decode``), else sort
    (through the dispatch) + the sorted path. ``path`` ("decode" / "sorted"), ``config`` and the sorted
    path's ``dequant`` ("bits" / "dot_scaled" / "v1", ``sorted_variant``) and ``prefetch`` (``prefetch_default``)
    force a choice (tests, tuning)."""
    from ... import dispatch

    tokens, top_k = ids.shape
    num_experts = w13_q.shape[0]
    if path is None:
        path = "decode" if use_decode(tokens, top_k, num_experts) else "sorted"
    spec = (b13, b2, activation, gate_up_interleaved, alpha, limit)
    if path == "decode":
        from . import experts_mxfp4_decode as v2  # the default; INDUCTOR_MOE_MXFP4_DECODE=v1 keeps version 1
        if v2.enabled() and v2.supports_layout(w13_q, w2_q):
            return v2.experts_mxfp4_decode_v2(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, *spec, expert_mask)
        return experts_mxfp4_decode_triton(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, *spec, expert_mask)
    if path != "sorted":
        raise ValueError(f"path: expected 'decode' or 'sorted', got {path!r}")
    variant = sorted_variant(dequant, hidden, w13_q, w2_q)
    if config is None:
        config = mxfp4_config(tokens, top_k, num_experts, hidden.shape[1], w13_q.shape[1] // 2, variant)
    _, sort = dispatch.select("sort", ids.device, ids=ids, num_experts=num_experts, block_m=config.block_m)
    sorted_out = sort(ids, weights, num_experts, config.block_m, expert_mask)
    return experts_mxfp4_sorted_triton(hidden, *sorted_out, w13_q, w2_q, w13_s, w2_s, top_k, config.block_m, *spec,
                                       config, variant, prefetch)


def supports_experts_mxfp4(hidden=None, activation=None, **_) -> str | None:
    reason = _device_reason(hidden)  # CUDA; CPU tensors only under TRITON_INTERPRET=1 when forced (tests)
    if reason:
        return reason
    if hidden.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {hidden.dtype}"
    if activation not in ACT_CODES:
        return f"activation {activation}"
    return None
