"""MXFP4 decode path, version 2: the default decode path of ``experts_mxfp4`` (``INDUCTOR_MOE_MXFP4_DECODE=v1``
keeps the first kernels). Measured on an H200 (session 4, ``benchmarks/tune_mxfp4_decode.py``): the GPT-OSS
layer at T=1 in 50 us against 188-192 us for version 1, at T=8 291 us against 712; f32 rel L2 3.7e-7. On an
H100 (session 5) with the two loop forms below (``_check_tiles``'s flags) the GPT-OSS experts at T=1 take
39.6-41 us (2.35x the weight-bytes floor; up 21.4 us, down 15.6 us, ``tools/probe_mxfp4_decode.py``):

- PREFETCH (both kernels): each K step's weight loads are issued before the previous step is decoded, two
  steps in flight (the kernels were latency-bound: ncu showed L1TEX scoreboard stalls, under one wave);
- ROWS_OUTER (down kernel): the tile is [BLOCK_N rows, slots, G, 4] instead of [slots, BLOCK_N, G, 4], so the
  layout puts the K groups on lanes, the slots on warps and the rows in a thread's registers; the thread's
  act loads (8 f32 vectors per 16-byte word load, L1 85% busy before) then serve all its rows (ptxas merges
  the equal addresses: 12 LDG.128 per step for 4 rows instead of 36).

Same op and contract as ``experts_mxfp4.experts_mxfp4_decode_triton`` (``inductor_moe::experts_mxfp4`` for a
few tokens), written for bandwidth: a decode GEMV moves 0.53 B per weight, so at 3 TB/s an H100 SM has to
retire about 26 weights per clock, i.e. ~5 issued instructions per weight in all (4 schedulers x 32 lanes)
and ~2.5 on the integer pipe (64 lanes/clk). The first version spends ~30 per weight (nibble -> where chain
-> int->float convert -> interleave -> per-element scale multiply -> a cross-thread tl.sum every K step).

Three launches (no split-K: parallelism comes from small row tiles, so every output is one program's
deterministic sum):

1. ``_prep_x_kernel`` [T, H]: hidden -> ``xp`` f32, each 32-element group permuted so that position
   ``4i + w`` holds element ``8w + i`` (the order in which words are decoded, below), and multiplied by
   ``2**64`` when PRESCALE. Optional (``prep=False``: the up kernel gathers and converts x itself).
2. ``_up_kernel``, one program per (tile of BLOCK_N intermediate columns, pair), tile-major so that the
   pairs of a tile run together and pairs sharing an expert share its rows through L2. Streams the gate
   and up rows (GPT-OSS: interleaved rows 2n, 2n+1) over the whole K, adds the biases, applies the
   activation (clamped SwiGLU etc.: ``experts._activation``), rounds to the model dtype (as every path
   does between the GEMMs) and writes ``act`` [T*k, I] as f32 in the same permuted/prescaled order.
3. ``_down_kernel``, one program per (tile of BLOCK_N hidden columns, token), tile-major: the token's k
   slots are a tile dimension (BLOCK_S = next power of two >= k), so each K step has the rows of all k
   experts in flight at once (at T=1 there are only H rows to spread over 132 SMs); per slot
   ``w * (act @ w2[e].T + b2[e])`` in f32, then the slots are added in slot order (a masked sum per slot
   picks exactly one term), [T, H] written once. Pairs with an id outside [0, E) or a masked expert are
   skipped by both kernels (the down kernel reads a clamped expert's rows and drops them with a where).

Inner loop (``_up_load``/``_up_dot``, ``_down_load``/``_down_dot``), per K step, on a tile of ``words``
[BLOCK_N, G, 4] int32 (G = BLOCK_K/32 groups; one group = 16 packed bytes = 4 little-endian words, nibble i
of word w = element 8w + i), loaded from the uint8 rows through an int32 pointer: one 16-byte vector load per
(row, group), the row bases 16-byte aligned when the byte strides are (Triton specializes strides divisible
by 16). Steps with no K tail run unmasked (rows past the end are clamped to the last row, never stored):
masked loads would zero their registers first. ``_e2m1_pair`` (experts_mxfp4.py) decodes nibbles a and a + 4
of a word (a = 0, 1 from the word, a = 2, 3 from the word >> 8) with no lookup::

    z = w & (0x000F000F << 4a)              # nibble a in the low half, a + 4 in the high half
    t = z * (2**(6 - 4a) + 2**(12 - 4a))    # two copies, no carries: e1 e0 m on bits 6-8, s on bit 15
    lo = (t << 16) & 0x81C00000             # f32 bits: s on 31, e1 e0 m on 24..22
    hi = t & 0x81C00000

i.e. the 3 magnitude bits land in the two lowest exponent bits and the top mantissa bit, the sign in bit
31. As an f32 that is exactly ``value(code) * 2**-126`` for every code: e >= 1 gives the normal
2**(e-127) * (1 + m/2), e = 0 the subnormal m * 2**-127 (Triton emits ``mul.f32``/``fma.rn.f32`` without
.ftz, so subnormal operands are kept: the sm_90 test checks the PTX). The ``2**126`` is put back with
PRESCALE (default): ``x`` was multiplied by ``2**64`` (once per element of x, not per weight), so a product
``v * x'`` = ``value * x * 2**-62`` is a normal f32 whenever ``2**-63 <= |x| < 2**64`` and rounds exactly
like ``value * x``; the group sum is multiplied by ``2**62`` and then by the scale (E8M0 byte b -> f32 bits
``b << 23``, byte 0 -> ``1 << 22`` = 2**-127, 255 -> NaN). (Outside that range of |x|: |x| < 2**-63 loses
its product to underflow, |x| >= 2**64 overflows; PRESCALE=False multiplies every decoded weight by
``2**126`` instead: exact for any x, one more FMUL per weight.)

Op counts, from the sm_90 SASS of the K loop (cuobjdump; Triton 3.9, ptxas 12.x), per weight: decode 2.5
(per pair of weights 3 LOP3 + 2 IMAD, plus one SHF per word), 1 FFMA (the first nibble pair an FMUL),
loads 1/32 LDG.128 of weights + 1/32 scale byte + x: 8 LDG.128 per (group, K step) shared by every row a
thread holds; with the rest (address math, 4 FADD + 2 FMUL + scale decode per group, loop) the loop issues
284 instructions per 64 weights in the up kernel at (16, 256, 4) or (8, 512, 4) (gate and up rows share
x): 4.4 per weight, 8.9 per packed byte; 150 per 32 weights in the down kernel at (2, 512, 4) with 4 slots:
4.7 per weight, 9.4 per byte (version 1: ~30 per weight). The x/act operands are loaded with the words'
own shape and layout (broadcast pointers): a load of a broadcast [1, G, 4] tile in the 4-D down kernel
cost ~100 shuffles/selects per 32 weights; G = 32 (BLOCK_K = 1024) still routes x through shared memory
with barriers (16 BAR.SYNC per step in the up kernel): avoid it (``default_tiles`` and the tuner do). At 3 TB/s an H100 SM must retire ~26 weights per clock, ~4.9 issued
instructions per weight (4 schedulers x 32 lanes): the loop is about at that edge, so it needs
most of the issue slots and enough warps to hide the load latency (no software pipelining: the loads do
not feed a tl.dot). The group sums accumulate per (row, group) lane across K steps: the cross-thread
reduction over groups happens once per row (up kernel) or once per slot (down kernel), not per step.

Tiles ``(BLOCK_N, BLOCK_K, num_warps)`` per kernel are launch parameters; ``default_tiles`` picks by shape
(untuned guesses; benchmarks/tune_mxfp4_decode.py sweeps them). Requires K-contiguous packed weights whose
rows start 4-byte aligned (``supports_layout``); the hook in experts_mxfp4.py falls back to version 1
otherwise.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .experts import ACT_CODES, _activation, _gate_up_rows
from .experts_mxfp4 import _e2m1_pair, _e8m0_to_f32, _pair_expert
# K-contiguous packed rows readable as int32 words: the same test as the sorted path's "bits" loads
from .experts_mxfp4 import supports_bits_layout as supports_layout

ENV = "INDUCTOR_MOE_MXFP4_DECODE"
X_SCALE = 2.0 ** 64  # x' = x * X_SCALE (PRESCALE)
GROUP_SCALE = 2.0 ** 62  # group sum * GROUP_SCALE = sum(value * x)  (2**126 / 2**64)
W_SCALE = 2.0 ** 126  # decoded bits * W_SCALE = value (PRESCALE=False)


def enabled() -> bool:
    """Whether ``experts_mxfp4``'s decode dispatch takes version 2 (the default since it was measured on a
    GPU, session 4); ``INDUCTOR_MOE_MXFP4_DECODE=v1`` keeps the first kernels (comparisons, a way out)."""
    return os.environ.get(ENV, "").strip().lower() != "v1"


@triton.jit
def _scaled(v, PRESCALE: tl.constexpr):
    """Decoded bits (value * 2**-126) -> value when x is not prescaled (one FMUL per weight)."""
    if PRESCALE:
        return v
    return v * 8.507059173023462e+37  # 2**126


@triton.jit
def _x_nibble(x_base, g_idx, w_idx, g_ok, I: tl.constexpr, PREPPED: tl.constexpr, PRESCALE: tl.constexpr,
              MASKED: tl.constexpr):
    """x values multiplying nibble ``I`` of words (group ``g_idx`` [G, 1], word ``w_idx`` [1, 4]): element
    32g + 8w + I, f32 (times 2**64 when PRESCALE). PREPPED: read from the permuted f32 buffer (position
    32g + 4I + w, contiguous along w: one 16-byte load per group), else gathered from the model-dtype row."""
    if PREPPED:
        ptrs = x_base + g_idx * 32 + 4 * I + w_idx
    else:
        ptrs = x_base + g_idx * 32 + 8 * w_idx + I
    if MASKED:
        xv = tl.load(ptrs, mask=g_ok, other=0.0)
    else:
        xv = tl.load(ptrs)
    xv = xv.to(tl.float32)
    if not PREPPED:
        if PRESCALE:
            xv = xv * 18446744073709551616.0  # 2**64
    return xv[None, :, :]


@triton.jit
def _load_words(q_rows, g_idx, w_idx, g_ok, MASKED: tl.constexpr):
    """[BLOCK_N, G, 4] int32 words: ``q_rows`` [BLOCK_N] uint8 pointers to the rows (4-byte aligned)."""
    p = q_rows.to(tl.pointer_type(tl.int32))[:, None, None] + (g_idx * 4 + w_idx)[None, :, :]
    if MASKED:
        return tl.load(p, mask=g_ok[None, :, :], other=0)
    return tl.load(p)


@triton.jit
def _scale_bytes(s_rows, g0, KG, stride_sk, G: tl.constexpr, MASKED: tl.constexpr):
    """[BLOCK_N, G] E8M0 bytes of the groups g0 .. g0+G of rows ``s_rows`` (127, i.e. 1.0, past the end)."""
    offs = g0 + tl.arange(0, G)
    ptrs = s_rows[:, None] + offs[None, :] * stride_sk
    if MASKED:
        return tl.load(ptrs, mask=(offs < KG)[None, :], other=127)
    return tl.load(ptrs)


@triton.jit
def _apply_scales(sums, b, PRESCALE: tl.constexpr):
    """Group sums [BLOCK_N, G] times their E8M0 scales 2**(b - 127) (byte 0: 2**-127; 255: NaN), after the
    2**62 that PRESCALE left out of the products (first: no underflow before the scale)."""
    if PRESCALE:
        sums = sums * 4.611686018427388e+18  # 2**62
    return sums * _e8m0_to_f32(b)


@triton.jit
def _dot_words2(wa, wb, x_base, g_idx, w_idx, g_ok, PREPPED: tl.constexpr, PRESCALE: tl.constexpr,
                MASKED: tl.constexpr):
    xl = _x_nibble(x_base, g_idx, w_idx, g_ok, 0, PREPPED, PRESCALE, MASKED)
    xh = _x_nibble(x_base, g_idx, w_idx, g_ok, 4, PREPPED, PRESCALE, MASKED)
    wa8 = wa >> 8
    wb8 = wb >> 8
    lo, hi = _e2m1_pair(wa, 0)
    pa = _scaled(lo, PRESCALE) * xl + _scaled(hi, PRESCALE) * xh
    lo, hi = _e2m1_pair(wb, 0)
    pb = _scaled(lo, PRESCALE) * xl + _scaled(hi, PRESCALE) * xh
    for a in tl.static_range(1, 4):
        xl = _x_nibble(x_base, g_idx, w_idx, g_ok, a, PREPPED, PRESCALE, MASKED)
        xh = _x_nibble(x_base, g_idx, w_idx, g_ok, a + 4, PREPPED, PRESCALE, MASKED)
        lo, hi = _e2m1_pair(wa if a < 2 else wa8, a)
        pa += _scaled(lo, PRESCALE) * xl
        pa += _scaled(hi, PRESCALE) * xh
        lo, hi = _e2m1_pair(wb if a < 2 else wb8, a)
        pb += _scaled(lo, PRESCALE) * xl
        pb += _scaled(hi, PRESCALE) * xh
    return pa, pb


@triton.jit
def _up_load(qg, qu, sg, su, g0, KG, stride_sk, G: tl.constexpr, MASKED: tl.constexpr):
    """The weight loads of one up K step: gate and up words [BLOCK_N, G, 4] and scale bytes [BLOCK_N, G]."""
    g_idx = (g0 + tl.arange(0, G))[:, None]
    w_idx = tl.arange(0, 4)[None, :]
    g_ok = (g_idx < KG) & (w_idx < 4)
    wg = _load_words(qg, g_idx, w_idx, g_ok, MASKED)
    wu = _load_words(qu, g_idx, w_idx, g_ok, MASKED)
    bg = _scale_bytes(sg, g0, KG, stride_sk, G, MASKED)
    bu = _scale_bytes(su, g0, KG, stride_sk, G, MASKED)
    return wg, wu, bg, bu


@triton.jit
def _up_dot(wg, wu, bg, bu, x_base, g0, KG, G: tl.constexpr, PREPPED: tl.constexpr, PRESCALE: tl.constexpr,
            MASKED: tl.constexpr):
    """One K step of the gate and up rows from ``_up_load``'s operands: their scaled group sums, [BLOCK_N, G]
    each."""
    g_idx = (g0 + tl.arange(0, G))[:, None]
    w_idx = tl.arange(0, 4)[None, :]
    g_ok = (g_idx < KG) & (w_idx < 4)
    pg, pu = _dot_words2(wg, wu, x_base, g_idx, w_idx, g_ok, PREPPED, PRESCALE, MASKED)
    return _apply_scales(tl.sum(pg, axis=2), bg, PRESCALE), _apply_scales(tl.sum(pu, axis=2), bu, PRESCALE)


@triton.jit(do_not_specialize=["T"])
def _prep_x_kernel(x_ptr, xp_ptr, T, K, stride_xt, stride_xk, PRESCALE: tl.constexpr, BLOCK: tl.constexpr):
    """xp[t, 32g + 4i + w] = x[t, 32g + 8w + i] (* 2**64): one program per (token, BLOCK columns)."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < K
    v = tl.load(x_ptr + t.to(tl.int64) * stride_xt + cols * stride_xk, mask=ok, other=0.0).to(tl.float32)
    if PRESCALE:
        v = v * 18446744073709551616.0
    dest = (cols & -32) | ((cols & 7) << 2) | ((cols >> 3) & 3)
    tl.store(xp_ptr + t.to(tl.int64) * K + dest, v, mask=ok)


@triton.jit(do_not_specialize=["T"])
def _up_kernel(
    x_ptr, ids_ptr, mask_ptr, q_ptr, s_ptr, b_ptr, act_ptr,
    T, E, K, I, top_k, num_pairs,
    stride_xt, stride_qe, stride_qn, stride_se, stride_sn, stride_sk, stride_be, stride_bn,
    alpha, limit,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr,
    PREPPED: tl.constexpr, PRESCALE: tl.constexpr, ROUND_F16: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr = False,
):
    pid = tl.program_id(0)
    tile = pid // num_pairs  # tile-major: the pairs of one tile run side by side (shared experts hit L2)
    pair = pid % num_pairs
    token = pair // top_k
    expert, valid = _pair_expert(ids_ptr, mask_ptr, pair, E, HAS_MASK)
    if not valid:  # the down kernel skips the pair too
        return
    G: tl.constexpr = BLOCK_K // 32
    KG = K // 32
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    # rows past I read row I-1 (in bounds, never stored): no masks in the loop
    gate_rows, up_rows = _gate_up_rows(tl.minimum(offs_n, I - 1), I, INTERLEAVED)
    gate_rows = gate_rows.to(tl.int64)
    up_rows = up_rows.to(tl.int64)
    q_base = q_ptr + expert * stride_qe
    s_base = s_ptr + expert * stride_se
    qg = q_base + gate_rows * stride_qn
    qu = q_base + up_rows * stride_qn
    sg = s_base + gate_rows * stride_sn
    su = s_base + up_rows * stride_sn
    if PREPPED:
        x_base = x_ptr + token.to(tl.int64) * K
    else:
        x_base = x_ptr + token.to(tl.int64) * stride_xt  # unit stride along K (host check)
    acc_g = tl.zeros([BLOCK_N, G], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N, G], dtype=tl.float32)
    full = KG - KG % G
    if PREFETCH:  # each step's weight loads are issued before the previous step is decoded
        if full > 0:
            wg, wu, bg, bu = _up_load(qg, qu, sg, su, 0, KG, stride_sk, G, False)
            for g0 in range(G, full, G):
                nwg, nwu, nbg, nbu = _up_load(qg, qu, sg, su, g0, KG, stride_sk, G, False)
                dg, du = _up_dot(wg, wu, bg, bu, x_base, g0 - G, KG, G, PREPPED, PRESCALE, False)
                acc_g += dg
                acc_u += du
                wg, wu, bg, bu = nwg, nwu, nbg, nbu
            dg, du = _up_dot(wg, wu, bg, bu, x_base, full - G, KG, G, PREPPED, PRESCALE, False)
            acc_g += dg
            acc_u += du
    else:
        for g0 in range(0, full, G):
            wg, wu, bg, bu = _up_load(qg, qu, sg, su, g0, KG, stride_sk, G, False)
            dg, du = _up_dot(wg, wu, bg, bu, x_base, g0, KG, G, PREPPED, PRESCALE, False)
            acc_g += dg
            acc_u += du
    if full < KG:  # the K tail, masked
        wg, wu, bg, bu = _up_load(qg, qu, sg, su, full, KG, stride_sk, G, True)
        dg, du = _up_dot(wg, wu, bg, bu, x_base, full, KG, G, PREPPED, PRESCALE, True)
        acc_g += dg
        acc_u += du
    hg = tl.sum(acc_g, axis=1)
    hu = tl.sum(acc_u, axis=1)
    if HAS_BIAS:
        b_base = b_ptr + expert * stride_be
        hg += tl.load(b_base + gate_rows * stride_bn).to(tl.float32)
        hu += tl.load(b_base + up_rows * stride_bn).to(tl.float32)
    h = _activation(hg, hu, ACT, alpha, limit)
    if ROUND_BF16:  # the model dtype between the GEMMs, as the other paths
        h = h.to(tl.bfloat16).to(tl.float32)
    if ROUND_F16:
        h = h.to(tl.float16).to(tl.float32)
    if PRESCALE:
        h = h * 18446744073709551616.0
    dest = (offs_n & -32) | ((offs_n & 7) << 2) | ((offs_n >> 3) & 3)
    tl.store(act_ptr + pair.to(tl.int64) * I + dest, h, mask=n_ok)


@triton.jit
def _down_load(q_rows, s_rows, g0, KG, stride_sk, G: tl.constexpr, MASKED: tl.constexpr):
    """The weight loads of one down K step: words [A, B, G, 4] int32 and scale bytes [A, B, G] of the row
    pointers ``q_rows``/``s_rows`` [A, B] (one of A, B the slots, the other the rows)."""
    g_idx = (g0 + tl.arange(0, G))[:, None]
    w_idx = tl.arange(0, 4)[None, :]
    g_ok = (g_idx < KG) & (w_idx < 4)
    p = q_rows.to(tl.pointer_type(tl.int32))[:, :, None, None] + (g_idx * 4 + w_idx)[None, None, :, :]
    offs = g0 + tl.arange(0, G)
    sp = s_rows[:, :, None] + offs[None, None, :] * stride_sk
    if MASKED:
        words = tl.load(p, mask=g_ok[None, None, :, :], other=0)
        b = tl.load(sp, mask=(offs < KG)[None, None, :], other=127)
    else:
        words = tl.load(p)
        b = tl.load(sp)
    return words, b


@triton.jit
def _down_dot(words, b, a_base, g0, KG, G: tl.constexpr, PRESCALE: tl.constexpr, MASKED: tl.constexpr):
    """Scaled group sums [A, B, G] of one down K step: the words and scale bytes of ``_down_load`` against
    the act rows ``a_base`` [A, B] (pointers repeated along the rows: a load of the words' shape gets the
    words' layout, no shuffles; where rows sit in one thread's registers, its loads of equal addresses are
    one load)."""
    g_idx = (g0 + tl.arange(0, G))[:, None]
    w_idx = tl.arange(0, 4)[None, :]
    g_ok = (g_idx < KG) & (w_idx < 4)
    w8 = words >> 8
    acc = tl.zeros(words.shape, dtype=tl.float32)
    for a in tl.static_range(4):
        xp = a_base[:, :, None, None] + (g_idx * 32 + w_idx)[None, None, :, :]
        if MASKED:
            xl = tl.load(xp + 4 * a, mask=g_ok[None, None, :, :], other=0.0)
            xh = tl.load(xp + 4 * (a + 4), mask=g_ok[None, None, :, :], other=0.0)
        else:
            xl = tl.load(xp + 4 * a)
            xh = tl.load(xp + 4 * (a + 4))
        lo, hi = _e2m1_pair(words if a < 2 else w8, a)
        if a == 0:
            acc = _scaled(lo, PRESCALE) * xl + _scaled(hi, PRESCALE) * xh
        else:
            acc += _scaled(lo, PRESCALE) * xl
            acc += _scaled(hi, PRESCALE) * xh
    sums = tl.sum(acc, axis=3)
    if PRESCALE:
        sums = sums * 4.611686018427388e+18  # 2**62
    return sums * _e8m0_to_f32(b)


@triton.jit
def _down_loop(q_rows, s_rows, a_base, KG, stride_sk, G: tl.constexpr, PRESCALE: tl.constexpr,
               PREFETCH: tl.constexpr):
    """The whole K of the down GEMV -> scaled group sums [A, B, G] (summed over K steps in order). PREFETCH:
    each step's weight loads are issued before the previous step is decoded (two steps in flight)."""
    full = KG - KG % G
    part = tl.zeros([q_rows.shape[0], q_rows.shape[1], G], dtype=tl.float32)
    if PREFETCH:
        if full > 0:
            words, b = _down_load(q_rows, s_rows, 0, KG, stride_sk, G, False)
            for g0 in range(G, full, G):
                nwords, nb = _down_load(q_rows, s_rows, g0, KG, stride_sk, G, False)
                part += _down_dot(words, b, a_base, g0 - G, KG, G, PRESCALE, False)
                words, b = nwords, nb
            part += _down_dot(words, b, a_base, full - G, KG, G, PRESCALE, False)
    else:
        for g0 in range(0, full, G):
            words, b = _down_load(q_rows, s_rows, g0, KG, stride_sk, G, False)
            part += _down_dot(words, b, a_base, g0, KG, G, PRESCALE, False)
    if full < KG:
        words, b = _down_load(q_rows, s_rows, full, KG, stride_sk, G, True)
        part += _down_dot(words, b, a_base, full, KG, G, PRESCALE, True)
    return part


@triton.jit(do_not_specialize=["T"])
def _down_kernel(
    act_ptr, ids_ptr, wts_ptr, mask_ptr, q_ptr, s_ptr, b_ptr, out_ptr,
    T, E, K, N, top_k,
    stride_qe, stride_qn, stride_se, stride_sn, stride_sk, stride_be, stride_bn, stride_ot,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, PRESCALE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ROWS_OUTER: tl.constexpr = False, PREFETCH: tl.constexpr = False,
):
    pid = tl.program_id(0)
    tile = pid // T  # tile-major: tokens sharing an expert read its rows side by side
    token = pid % T
    G: tl.constexpr = BLOCK_K // 32
    KG = K // 32
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)  # in bounds, never stored
    slots = tl.arange(0, BLOCK_S)
    s_ok = slots < top_k
    pairs = token.to(tl.int64) * top_k + tl.minimum(slots, top_k - 1)
    expert = tl.load(ids_ptr + pairs).to(tl.int64)
    valid = s_ok & (expert >= 0) & (expert < E)
    expert = tl.minimum(tl.maximum(expert, 0), E - 1)  # skipped slots read expert 0..E-1 rows, never used
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + expert) != 0)
    wts = tl.load(wts_ptr + pairs)
    # [slots, rows] tiles, or [rows, slots] when ROWS_OUTER: then the layout spreads the (wide) K groups over
    # lanes and the slots over warps first, so a thread's rows share its act registers (act loads per weight
    # / BLOCK_N); the per-slot vectors broadcast along the other axis
    if ROWS_OUTER:
        SLOT_AXIS: tl.constexpr = 1
        expert2, pairs2, rows2 = expert[None, :], pairs[None, :], rows[:, None]
        valid2, wts2, slots2 = valid[None, :], wts[None, :], slots[None, :]
    else:
        SLOT_AXIS: tl.constexpr = 0
        expert2, pairs2, rows2 = expert[:, None], pairs[:, None], rows[None, :]
        valid2, wts2, slots2 = valid[:, None], wts[:, None], slots[:, None]
    q_rows = q_ptr + expert2 * stride_qe + rows2 * stride_qn
    s_rows = s_ptr + expert2 * stride_se + rows2 * stride_sn
    a_base = act_ptr + pairs2 * K + rows2 * 0  # act rows of skipped pairs hold garbage: dropped below
    y = tl.sum(_down_loop(q_rows, s_rows, a_base, KG, stride_sk, G, PRESCALE, PREFETCH), axis=2)
    if HAS_BIAS:
        y += tl.load(b_ptr + expert2 * stride_be + rows2 * stride_bn).to(tl.float32)
    y = tl.where(valid2, wts2 * y, 0.0)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s in tl.static_range(BLOCK_S):  # slot order, deterministic (each masked sum is exactly one slot)
        acc += tl.sum(tl.where(slots2 == s, y, 0.0), axis=SLOT_AXIS)
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def default_tiles(rows: int, k: int, programs: int = 1, slots: int = 1) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) of one GEMV before tuning (benchmarks/tune_mxfp4_decode.py): ``rows``
    output rows per pair (up) or token (down), ``k`` the reduction length, ``programs`` row-tile programs
    per tile (pairs for up, tokens for down), ``slots`` the slots one down program holds. BLOCK_K: the
    widest K step of <= 16 groups whose padding of the K tail stays under 7%; BLOCK_N: halved until ~1024
    programs (8 per SM on 132 SMs); warps: as many as give each thread >= 4 words (no duplicated lanes)."""
    kg = max(1, k // 32)
    g = next(g for g in (16, 8, 4, 2, 1) if (-kg % g) <= 0.07 * kg)
    block_n = 16
    while block_n > 1 and rows // block_n * programs < 1024:
        block_n //= 2
    warps = max(1, min(4, slots * block_n * g // 32))
    return block_n, 32 * g, warps


def tuned_tiles(tokens: int, top_k: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(up tiles, down tiles) from ``benchmarks/tune_mxfp4_decode.py``. Session 4 (H200; the GPT-OSS layer
    E=32 k=4 H=I=2880 at T=1 and 8, the Qwen3-shaped one E=128 k=8 H=2048 I=768 at T=8): up tiles of 8 rows
    (2 warps with 256-wide K steps, 1 warp with 128 from ~32 pairs on), down tiles of 1 row x 256 for 8
    slots. Session 5 (H100, GPT-OSS T=1, ``_check_tiles``'s flags): the up tile with prefetching (56.4 us
    against 62.8 with the same down tile) and, for 4 slots, the rows-outer down tile of 8 rows x 512 with
    prefetching (39.6 us in all against 50.5 for the best tile of session 4). Each fits any K >= BLOCK_K
    (K tails are masked); smaller K and k <= 2 (no down winner) take ``default_tiles``."""
    up = (8, 256, 2, 1) if tokens * top_k < 32 else (8, 128, 1)
    slots = triton.next_power_of_2(top_k)
    down = (8, 512, 4, 1, 1) if slots == 4 else (1, 256, 1) if slots >= 8 else None  # k <= 2: default_tiles
    return up, down


def _check_tiles(tiles):
    """(BLOCK_N, BLOCK_K, num_warps, prefetch, rows_outer) of a tiles tuple: 3 to 5 numbers, the last two
    0 / 1 flags (0 when left out; rows_outer only means something to the down kernel)."""
    if not 3 <= len(tiles) <= 5:
        raise ValueError(f"tiles {tiles}: (BLOCK_N, BLOCK_K, num_warps[, prefetch[, rows_outer]])")
    bn, bk, warps, prefetch, rows_outer = (tuple(tiles) + (0, 0))[:5]
    if bk < 32 or bk & (bk - 1) or bn < 1 or bn & (bn - 1):
        raise ValueError(f"tiles {tiles}: BLOCK_N and BLOCK_K powers of two, BLOCK_K >= 32")
    return bn, bk, warps, bool(prefetch), bool(rows_outer)


def experts_mxfp4_decode_v2(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation,
                            gate_up_interleaved, alpha, limit, expert_mask=None,
                            tiles1: tuple[int, int, int] | None = None,
                            tiles2: tuple[int, int, int] | None = None,
                            prep: bool = True, prescale: bool = True):
    """The decode path, version 2: out [T, H]. ``tiles1``/``tiles2``: (BLOCK_N, BLOCK_K, num_warps[, prefetch[,
    rows_outer]]) of the up and down kernels (default ``tuned_tiles``, else ``default_tiles``;
    ``_check_tiles``); ``prep``: permute x in its own launch (else the up kernel gathers it); ``prescale``:
    the 2**64 x scaling (else one FMUL per weight, exact for any x)."""
    tokens, hidden_dim = hidden.shape
    top_k = ids.shape[1]
    num_experts = w13_q.shape[0]
    inter = w13_q.shape[1] // 2
    device = hidden.device
    out = torch.empty(tokens, hidden_dim, dtype=hidden.dtype, device=device)
    if tokens == 0:
        return out
    if not supports_layout(w13_q, w2_q):
        raise ValueError("experts_mxfp4_decode_v2: packed weights must be K-contiguous with 4-byte aligned rows")
    flat_ids = ids.reshape(-1).contiguous()
    flat_w = weights.reshape(-1).float().contiguous()
    mask = expert_mask.view(torch.uint8) if expert_mask is not None else flat_ids
    num_pairs = tokens * top_k
    block_s = triton.next_power_of_2(top_k)
    tuned_up, tuned_down = tuned_tiles(tokens, top_k)
    if tiles1 is None:
        tiles1 = tuned_up if hidden_dim >= tuned_up[1] else default_tiles(inter, hidden_dim, num_pairs)
    if tiles2 is None:
        tiles2 = (tuned_down if tuned_down is not None and inter >= tuned_down[1]
                  else default_tiles(hidden_dim, inter, tokens, block_s))
    bn1, bk1, warps1, pf1, _ = _check_tiles(tiles1)
    bn2, bk2, warps2, pf2, outer2 = _check_tiles(tiles2)
    if prep:
        x = torch.empty(tokens, hidden_dim, dtype=torch.float32, device=device)
        _prep_x_kernel[(tokens, triton.cdiv(hidden_dim, 1024))](
            hidden, x, tokens, hidden_dim, hidden.stride(0), hidden.stride(1), PRESCALE=prescale, BLOCK=1024)
    else:
        x = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    act = torch.empty(num_pairs, inter, dtype=torch.float32, device=device)
    has_b13 = b13 is not None
    bias13 = b13 if has_b13 else w13_s
    _up_kernel[(triton.cdiv(inter, bn1) * num_pairs,)](
        x, flat_ids, mask, w13_q, w13_s, bias13, act,
        tokens, num_experts, hidden_dim, inter, top_k, num_pairs,
        x.stride(0), w13_q.stride(0), w13_q.stride(1), w13_s.stride(0), w13_s.stride(1),
        w13_s.stride(2), b13.stride(0) if has_b13 else 0, b13.stride(1) if has_b13 else 0,
        float(alpha), float(limit),
        HAS_MASK=expert_mask is not None, HAS_BIAS=has_b13, ACT=ACT_CODES[activation],
        INTERLEAVED=gate_up_interleaved, PREPPED=prep, PRESCALE=prescale,
        ROUND_F16=hidden.dtype == torch.float16, ROUND_BF16=hidden.dtype == torch.bfloat16,
        BLOCK_N=bn1, BLOCK_K=bk1, PREFETCH=pf1, num_warps=warps1,
    )
    has_b2 = b2 is not None
    bias2 = b2 if has_b2 else w2_s
    _down_kernel[(triton.cdiv(hidden_dim, bn2) * tokens,)](
        act, flat_ids, flat_w, mask, w2_q, w2_s, bias2, out,
        tokens, num_experts, inter, hidden_dim, top_k,
        w2_q.stride(0), w2_q.stride(1), w2_s.stride(0), w2_s.stride(1), w2_s.stride(2),
        b2.stride(0) if has_b2 else 0, b2.stride(1) if has_b2 else 0, out.stride(0),
        HAS_MASK=expert_mask is not None, HAS_BIAS=has_b2, PRESCALE=prescale,
        BLOCK_S=block_s, BLOCK_N=bn2, BLOCK_K=bk2, ROWS_OUTER=outer2, PREFETCH=pf2, num_warps=warps2,
    )
    return out
