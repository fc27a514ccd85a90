"""FlyDSL A16W4 MoE GEMMs for ``inductor_moe::experts_mxfp4`` (AMD Instinct gfx942 / gfx950): bf16
activations x MXFP4 weights (FP4 E2M1 codes, one E8M0 scale per 32), over the sorted layout.

Two launches after the sort (design.md section 2; block_m = 32), one tile configuration (``mxfp4_layout``):

- **stage 1** (gate_up GEMM + SiLU(gate) * up): workgroup = one 32-row block of ``sorted_token_ids`` x
  128 intermediate columns; its rows gather ``hidden[token]`` (padding rows read past the buffer's end,
  which buffer loads return as 0); per scale block of 32 along H it multiplies by the dequantized gate
  rows n and up rows I + n of its expert, then writes ``act`` [L, I] bf16 (row = sorted position).
- **stage 2** (down GEMM, routing weight): workgroup = one block x 128 hidden columns; ``act`` times the
  dequantized w2 rows, times ``sorted_weights`` in f32, written to row ``token * k + slot`` of an f32
  [T*k, H] buffer. **Combine**: the k rows of a token are summed in slot order afterwards (torch ``sum``
  over a [T, k, H] view): deterministic, no atomics, the reference's order of additions per token.

Dequantization is in registers and unscaled: an E2M1 code is exactly a bf16 (gfx942: ``v_perm_b32``
table lookups, ``mxfp4_layout.e2m1_word_to_bf16x8``; gfx950: ``v_cvt_scalef32_pk_bf16_fp4`` with scale
1.0), then bf16 MFMA (gfx942 ``v_mfma_f32_16x16x16_bf16``, two per tile and scale block; gfx950
``v_mfma_f32_16x16x32_bf16``, one). Each MFMA's reduction stays inside one scale block, so the E8M0
scale 2**(s - 127) multiplies the block's partial sums in f32 (``acc += partial * scale``) instead of
each weight: exact scale handling (E8M0 0 = 2**-127, 255 = NaN) at 2 v_pk_mul_f32 + 2 v_pk_add_f32
per 16x16 tile and block.
gfx950's scaled MFMA (``v_mfma_scale_f32_*_f8f6f4``) is not used: it needs both operands in
fp8/fp6/fp4, and the activations stay bf16 here.

The weights are read in the quantizer's layout ([E, N, K/2] codes, [E, N, K/32] scales) with 32-bit
buffer offsets: no repacking, so no ``weight_cache`` entry. No LDS: every operand goes global ->
registers (the four waves of a workgroup read the same activation lines, served by L1/L2).

Declined (``supports_experts_mxfp4`` gives the reason; the dispatch falls back): biases, activations other
than "silu", GPT-OSS's interleaved gate/up, hidden dtypes other than bf16, non-contiguous weights, weight
tensors of 2 GiB or more (32-bit buffer offsets), non-AMD devices.

Compiled for gfx942 and gfx950 on a CPU machine and ISA-checked (``compile_experts_mxfp4_kernels``);
never run on an AMD GPU.
"""

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from . import mxfp4_layout as XL
from . import toolchain
from .toolchain import compile_only_env, compile_only_unavailable

LOG2E = 1.4426950408889634


def _s32(v: int) -> int:
    """An unsigned 32-bit constant as the signed int FlyDSL's Int32 takes."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


@dataclass(frozen=True)
class Mxfp4Kernel:
    """The launcher of one stage of one plan (FlyDSL traces and compiles it at its first call)."""

    plan: XL.Mxfp4Plan
    name: str
    # stage 1: @flyc.jit (x, sti, sei, nv, q, s, act, n_mblocks, stream)
    # stage 2: @flyc.jit (act, sti, sw, sei, nv, q, s, rows, n_tokens, top_k, n_mblocks, stream)
    launch: Any


def _flydsl() -> SimpleNamespace:
    import flydsl.compiler as flyc
    import flydsl.expr as fx
    from flydsl._mlir import ir
    from flydsl._mlir.dialects import llvm
    from flydsl.expr import const_expr, range_constexpr, rocdl
    from flydsl.expr.typing import T, Vector

    return SimpleNamespace(flyc=flyc, fx=fx, ir=ir, llvm=llvm, const_expr=const_expr,
                           range_constexpr=range_constexpr, rocdl=rocdl, T=T, Vector=Vector)


def _ir(v):
    return v.ir_value() if hasattr(v, "ir_value") else v


def _device(plan: XL.Mxfp4Plan) -> SimpleNamespace:
    """Trace-time helpers of one plan (straight-line code, inlined)."""
    f = _flydsl()
    fx, rocdl, T, Vector, llvm = f.fx, f.rocdl, f.T, f.Vector, f.llvm
    gfx950 = plan.arch == "gfx950"

    def i32(v):
        return fx.Int32(_s32(v)) if isinstance(v, int) else fx.Int32(v)

    zero = fx.Int32(0)

    def rsrc(tensor):
        return rocdl.get_buffer_rsrc(fx.get_iter(rocdl.make_buffer_tensor(tensor)))

    def load(ty, res, off):
        return rocdl.raw_ptr_buffer_load(ty, res, _ir(off), _ir(zero))

    def load_i32(res, off):
        return fx.Int32(load(T.i32, res, off))

    def load_u8(res, off):
        return fx.Int8(load(T.i8, res, off)).to(fx.Int32) & 0xFF

    def store(value, res, off):
        rocdl.raw_ptr_buffer_store(_ir(value), res, _ir(off), _ir(zero))

    def uniform(v):
        return fx.Int32(rocdl.readfirstlane(T.i32, _ir(v)))

    def perm(s0, s1, sel):
        """v_perm_b32 (llvm.amdgcn.perm)."""
        return fx.Int32(llvm.call_intrinsic(T.i32, "llvm.amdgcn.perm", [_ir(i32(s0)), _ir(i32(s1)), _ir(i32(sel))],
                                            [], []))

    def shr(x, n):
        return fx.Int32(x).shrui(fx.Int32(n))

    def where(cond, a, b):
        return cond.select(i32(a), i32(b))

    def dequant(word):
        """8 FP4 codes (one dword) -> 4 dwords of bf16 pairs, unscaled."""
        if gfx950:
            one = fx.Float32(1.0)
            out = []
            for j in range(4):  # byte j: elements 2j (low nibble), 2j + 1
                pair = Vector(rocdl.cvt_scalef32_pk_bf16_fp4(T.vec(2, T.bf16), _ir(word), _ir(one), j))
                out.append(pair.bitcast(fx.Int32)[0])
            return out
        return XL.e2m1_word_to_bf16x8(word, perm, shr)

    def frag(dwords):
        """MFMA operand from dwords of bf16 pairs: <4 x i16> (16x16x16) or <8 x bf16> (16x16x32)."""
        v = Vector.from_elements([i32(d) for d in dwords], fx.Int32)
        return v.bitcast(fx.BFloat16) if gfx950 else v.bitcast(fx.Int16)

    def mfma(a, b, c):
        if gfx950:
            return Vector(rocdl.mfma_f32_16x16x32_bf16(T.vec(4, T.f32), [a, b, c, 0, 0, 0]))
        return Vector(rocdl.mfma_f32_16x16x16bf16_1k(T.vec(4, T.f32), [a, b, c, 0, 0, 0]))

    def zeros4():
        return Vector.from_elements([fx.Float32(0.0)] * 4, fx.Float32)

    def block_product(a_words, b_words):
        """Partial [16 x 16] tile of one scale block: 1 (gfx950) or 2 (gfx942) MFMAs into a fresh C."""
        c = zeros4()
        vals = plan.mfma_vals // 2  # dwords per operand
        for j in range(plan.mfma_per_block):
            c = mfma(frag(a_words[j * vals:(j + 1) * vals]), frag(b_words[j * vals:(j + 1) * vals]), c)
        return c

    def fold(acc, partial, scale):
        """acc + partial * scale, elementwise (f32)."""
        return Vector.from_elements([acc[i] + partial[i] * scale for i in range(4)], fx.Float32)

    def scale_f32(byte):
        return XL.e8m0_f32_bits(byte, where).bitcast(fx.Float32)

    def silu_mul(g, u):
        return g * fx.Float32(rocdl.rcp(T.f32, _ir(fx.Float32(rocdl.exp2(T.f32, _ir(g * -LOG2E))) + 1.0))) * u

    return SimpleNamespace(i32=i32, rsrc=rsrc, load=load, load_i32=load_i32, load_u8=load_u8, store=store,
                           uniform=uniform, dequant=dequant, block_product=block_product, fold=fold,
                           scale_f32=scale_f32, zeros4=zeros4, silu_mul=silu_mul)


def _k_setup(d, plan: XL.Mxfp4Plan, lane, a_rows, expert, w_rows):
    """Loop-invariant byte offsets of a lane: ``a_rows`` [M_TILES] activation row offsets, ``w_rows`` weight
    rows of the lane's column tiles (stage 1: gate tiles then up tiles). Returns (a, q, s) bases and the
    zero accumulators [acc][m_tile]."""
    K = plan.k
    q_base = [XL.q_byte_offset(expert, r, 0, lane, plan.n_rows, K) for r in w_rows]
    s_base = [XL.s_byte_offset(expert, r, 0, plan.n_rows, K) for r in w_rows]
    a_base = [XL.a_byte_offset(a_rows[m], 0, lane) for m in range(XL.M_TILES)]
    accs = [[d.zeros4() for _ in range(XL.M_TILES)] for _ in w_rows]
    return (a_base, q_base, s_base), accs


def _k_step(f, d, plan: XL.Mxfp4Plan, it, bases, res, accs):
    """One K-loop iteration (``plan.kb`` scale blocks): loads, dequant, MFMAs, scale folds. ``res`` =
    (activation, codes, scales) buffer resources. Returns the new accumulators."""
    T, Vector = f.T, f.Vector
    a_base, q_base, s_base = bases
    a_res, q_res, s_res = res
    n_acc = len(q_base)
    kb0 = it * plan.kb
    a_words = []
    for m in range(XL.M_TILES):
        per_block = []
        for b in range(plan.kb):
            v = Vector(d.load(T.vec(4, T.i32), a_res, a_base[m] + (kb0 + b) * (XL.SCALE_BLOCK * 2)))
            per_block.append([v[i] for i in range(4)])
        a_words.append(per_block)
    b_words, scales = [], []
    for a in range(n_acc):
        pb, ps = [], []
        for b in range(plan.kb):
            pb.append(d.dequant(d.load_i32(q_res, q_base[a] + (kb0 + b) * (XL.SCALE_BLOCK // 2))))
            ps.append(d.scale_f32(d.load_u8(s_res, s_base[a] + kb0 + b)))
        b_words.append(pb)
        scales.append(ps)
    new = []
    for a in range(n_acc):
        row = []
        for m in range(XL.M_TILES):
            acc = accs[a][m]
            for b in range(plan.kb):
                acc = d.fold(acc, d.block_product(a_words[m][b], b_words[a][b]), scales[a][b])
            row.append(acc)
        new.append(row)
    return new


def _build(plan: XL.Mxfp4Plan) -> Mxfp4Kernel:
    f = _flydsl()
    flyc, fx, range_constexpr = f.flyc, f.fx, f.range_constexpr
    d = _device(plan)
    name = plan.name()
    N, K = plan.n, plan.k

    if plan.stage == 1:
        @flyc.kernel(name=name, known_block_size=[XL.THREADS, 1, 1])
        def stage1(x: fx.Tensor, sti: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor, q: fx.Tensor, s: fx.Tensor,
                   act: fx.Tensor):
            mblock = fx.Int32(fx.block_idx.x)
            nblock = fx.Int32(fx.block_idx.y)
            tid = fx.Int32(fx.thread_idx.x)
            lane = tid & (XL.WAVE - 1)
            wave = d.uniform(tid >> 6)
            sti_res, sei_res, nv_res = d.rsrc(sti), d.rsrc(sei), d.rsrc(nv)
            row0 = mblock * XL.BLOCK_M
            if row0 < d.load_i32(nv_res, 0):
                expert = d.uniform(d.load_i32(sei_res, mblock * 4))
                a_rows = []
                for m in range_constexpr(XL.M_TILES):
                    token = d.load_i32(sti_res, (row0 + XL.block_row(m, lane)) * 4) & 0xFFFFFF
                    a_rows.append(token * (K * 2))  # padding (token = T) reads past the end: zeros
                w_rows = []
                cols = []
                for nt in range_constexpr(XL.N_TILES):
                    col = fx.min(XL.tile_column(nblock, wave, nt, lane), N - 1)
                    cols.append(XL.tile_column(nblock, wave, nt, lane))
                    w_rows.append(col)
                for nt in range_constexpr(XL.N_TILES):
                    w_rows.append(w_rows[nt] + N)  # up rows
                bases, accs = _k_setup(d, plan, lane, a_rows, expert, w_rows)
                res = (d.rsrc(x), d.rsrc(q), d.rsrc(s))
                for it in range(fx.Int32(0), fx.Int32(plan.iters), fx.Int32(1), unroll=1):
                    accs = _k_step(f, d, plan, it, bases, res, accs)
                act_res = d.rsrc(act)
                for nt in range_constexpr(XL.N_TILES):
                    if cols[nt] < N:
                        for m in range_constexpr(XL.M_TILES):
                            g, u = accs[nt][m], accs[XL.N_TILES + nt][m]
                            for i in range_constexpr(4):
                                row = row0 + m * XL.MFMA_M + XL.c_row(lane, i)
                                h = d.silu_mul(g[i], u[i]).to(fx.BFloat16)
                                d.store(h, act_res, (row * N + cols[nt]) * 2)

        @flyc.jit
        def launch(x: fx.Tensor, sti: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor, q: fx.Tensor, s: fx.Tensor,
                   act: fx.Tensor, n_mblocks: fx.Int32, stream: fx.Stream = fx.Stream(None)):
            stage1(x, sti, sei, nv, q, s, act).launch(grid=(n_mblocks, plan.n_blocks, 1), block=(XL.THREADS, 1, 1),
                                                      stream=stream)

        return Mxfp4Kernel(plan=plan, name=name, launch=launch)

    @flyc.kernel(name=name, known_block_size=[XL.THREADS, 1, 1])
    def stage2(act: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor, q: fx.Tensor,
               s: fx.Tensor, rows: fx.Tensor, n_tokens: fx.Int32, top_k: fx.Int32):
        mblock = fx.Int32(fx.block_idx.x)
        nblock = fx.Int32(fx.block_idx.y)
        tid = fx.Int32(fx.thread_idx.x)
        lane = tid & (XL.WAVE - 1)
        wave = d.uniform(tid >> 6)
        sti_res, sei_res, nv_res = d.rsrc(sti), d.rsrc(sei), d.rsrc(nv)
        row0 = mblock * XL.BLOCK_M
        if row0 < d.load_i32(nv_res, 0):
            expert = d.uniform(d.load_i32(sei_res, mblock * 4))
            a_rows = [(row0 + XL.block_row(m, lane)) * (K * 2) for m in range(XL.M_TILES)]
            w_rows = []
            cols = []
            for nt in range_constexpr(XL.N_TILES):
                cols.append(XL.tile_column(nblock, wave, nt, lane))
                w_rows.append(fx.min(cols[nt], N - 1))
            bases, accs = _k_setup(d, plan, lane, a_rows, expert, w_rows)
            res = (d.rsrc(act), d.rsrc(q), d.rsrc(s))
            for it in range(fx.Int32(0), fx.Int32(plan.iters), fx.Int32(1), unroll=1):
                accs = _k_step(f, d, plan, it, bases, res, accs)
            sw_res, rows_res = d.rsrc(sw), d.rsrc(rows)
            for m in range_constexpr(XL.M_TILES):
                for i in range_constexpr(4):
                    row = row0 + m * XL.MFMA_M + XL.c_row(lane, i)
                    packed = d.load_i32(sti_res, row * 4)
                    token = packed & 0xFFFFFF
                    slot = d.i32(packed).shrui(fx.Int32(24))
                    weight = d.load_i32(sw_res, row * 4).bitcast(fx.Float32)
                    dest = XL.pair_row(token, slot, top_k) * N
                    for nt in range_constexpr(XL.N_TILES):
                        if (token < n_tokens) & (cols[nt] < N):
                            d.store(accs[nt][m][i] * weight, rows_res, (dest + cols[nt]) * 4)

    @flyc.jit
    def launch(act: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor, q: fx.Tensor,
               s: fx.Tensor, rows: fx.Tensor, n_tokens: fx.Int32, top_k: fx.Int32, n_mblocks: fx.Int32,
               stream: fx.Stream = fx.Stream(None)):
        stage2(act, sti, sw, sei, nv, q, s, rows, n_tokens, top_k).launch(
            grid=(n_mblocks, plan.n_blocks, 1), block=(XL.THREADS, 1, 1), stream=stream)

    return Mxfp4Kernel(plan=plan, name=name, launch=launch)


@lru_cache(maxsize=None)
def _build_cached(plan: XL.Mxfp4Plan) -> Mxfp4Kernel:
    return _build(plan)


def build_experts_mxfp4_kernel(stage: int, num_experts: int, hidden: int, inter: int, arch: str) -> Mxfp4Kernel:
    """The launcher of one stage for (E, H, I, arch), built once per process (lru_cached). Plan errors
    (``ValueError``) come from ``mxfp4_layout.mxfp4_plan`` before FlyDSL is imported."""
    return _build_cached(XL.mxfp4_plan(stage, num_experts, hidden, inter, arch))


# --------------------------------------------------------------------------------------------------------
# Compile-only (no GPU): the ISA, for the tests and for reading


def _placeholder_args(plan: XL.Mxfp4Plan, hidden: int, inter: int, tokens: int = 4, top_k: int = 2) -> list:
    from ..reference.sort import sorted_length

    E = plan.num_experts
    length = sorted_length(tokens, top_k, E, XL.BLOCK_M)
    sti = torch.empty(length, dtype=torch.int32)
    sw = torch.empty(length, dtype=torch.float32)
    sei = torch.empty(length // XL.BLOCK_M, dtype=torch.int32)
    nv = torch.empty(2, dtype=torch.int32)
    if plan.stage == 1:
        q = torch.empty((E, 2 * inter, hidden // 2), dtype=torch.uint8)
        s = torch.empty((E, 2 * inter, hidden // 32), dtype=torch.uint8)
        x = torch.empty((tokens, hidden), dtype=torch.bfloat16)
        act = torch.empty((length, inter), dtype=torch.bfloat16)
        return [x, sti, sei, nv, q, s, act, length // XL.BLOCK_M]
    q = torch.empty((E, hidden, inter // 2), dtype=torch.uint8)
    s = torch.empty((E, hidden, inter // 32), dtype=torch.uint8)
    act = torch.empty((length, inter), dtype=torch.bfloat16)
    rows = torch.empty((tokens * top_k, hidden), dtype=torch.float32)
    return [act, sti, sw, sei, nv, q, s, rows, tokens, top_k, length // XL.BLOCK_M]


def compile_experts_mxfp4_kernels(num_experts: int, hidden: int, inter: int, arch: str, *, stages=(1, 2),
                                  dump_dir: str | os.PathLike | None = None) -> dict[int, str]:
    """Compile the stages for ``arch`` on this machine (``COMPILE_ONLY``); {stage: AMDGPU assembly}.
    Fresh (uncached) launchers, so every call compiles. RuntimeError when the toolchain is missing."""
    reason = compile_only_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot compile FlyDSL kernels here: {reason}")
    out = {}
    for stage in stages:
        plan = XL.mxfp4_plan(stage, num_experts, hidden, inter, arch)
        with tempfile.TemporaryDirectory(prefix="flydsl_mxfp4_") as tmp:
            out_dir = Path(dump_dir) / f"s{stage}" if dump_dir is not None else Path(tmp)
            with compile_only_env(arch, out_dir):
                import flydsl.compiler as flyc

                kern = _build(plan)
                flyc.compile(kern.launch, *_placeholder_args(plan, hidden, inter))
            out[stage] = toolchain.dumped_isa(out_dir, kern.name)
    return out


# --------------------------------------------------------------------------------------------------------
# Launcher with experts_mxfp4_ref's signature


def _device_arch(device: torch.device) -> str | None:
    return toolchain.device_arch(device)  # a module attribute: tests stand in a gfx942 device


def supports_experts_mxfp4(hidden=None, w13_q=None, w2_q=None, activation=None, top_k=None, b13=None, b2=None,
                           gate_up_interleaved=False, w13_s=None, w2_s=None, **_) -> str | None:
    """None when the FlyDSL kernels take this call, else why not (for the dispatch)."""
    if hidden is None or w13_q is None or w2_q is None:
        return "experts_mxfp4: needs hidden, w13_q and w2_q"
    if b13 is not None or b2 is not None:
        return "experts_mxfp4: biases are not in the FlyDSL kernels"
    if activation not in (None, "silu"):
        return f"experts_mxfp4: activation {activation!r} (the FlyDSL kernels do silu)"
    if gate_up_interleaved:
        return "experts_mxfp4: interleaved gate/up (GPT-OSS SwiGLU) is not in the FlyDSL kernels"
    if hidden.dtype != torch.bfloat16:
        return f"experts_mxfp4: hidden dtype {hidden.dtype} (the FlyDSL kernels take bf16)"
    for name, t in (("w13_q", w13_q), ("w2_q", w2_q), ("w13_s", w13_s), ("w2_s", w2_s)):
        if t is not None and not t.is_contiguous():
            return f"experts_mxfp4: {name} is not contiguous (the kernels read the quantizer's layout)"
    try:
        XL.check_dims(w13_q.shape[0], hidden.shape[1], w13_q.shape[1] // 2)
        if top_k is not None:
            XL.row_bytes_limit(hidden.shape[0], top_k, w13_q.shape[0], hidden.shape[1], w13_q.shape[1] // 2)
    except ValueError as e:
        return f"experts_mxfp4: {e}"
    if _device_arch(hidden.device) is None:
        return f"experts_mxfp4: {hidden.device} is not an AMD gfx942/gfx950 GPU"
    return None


def experts_mxfp4_flydsl(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13_q: torch.Tensor,
    w2_q: torch.Tensor,
    w13_s: torch.Tensor,
    w2_s: torch.Tensor,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
    activation: str,
    gate_up_interleaved: bool,
    alpha: float,
    limit: float,
    expert_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``experts_mxfp4_ref``'s contract: sort (through the dispatch, block_m = 32), stage 1, stage 2, and
    the combine in slot order. Calls the kernels decline go to the reference."""
    reason = supports_experts_mxfp4(hidden=hidden, w13_q=w13_q, w2_q=w2_q, w13_s=w13_s, w2_s=w2_s,
                                    activation=activation, top_k=ids.shape[1], b13=b13, b2=b2,
                                    gate_up_interleaved=gate_up_interleaved)
    if reason is not None:
        from ...stats import record_fallback
        from ..reference.experts_mxfp4 import experts_mxfp4_ref

        record_fallback("experts_mxfp4", f"flydsl: {reason}")
        return experts_mxfp4_ref(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, expert_mask)
    import flydsl.expr as fx

    from ... import dispatch

    tokens, top_k = ids.shape
    num_experts, hidden_dim, inter = w13_q.shape[0], hidden.shape[1], w13_q.shape[1] // 2
    if tokens == 0:
        return torch.zeros_like(hidden)
    arch = _device_arch(hidden.device)
    _, sort = dispatch.select("sort", ids.device, ids=ids, num_experts=num_experts, block_m=XL.BLOCK_M)
    sti, sw, sei, nv = sort(ids, weights, num_experts, XL.BLOCK_M, expert_mask)
    x = hidden.contiguous()
    n_mblocks = sei.shape[0]
    act = torch.empty((sti.shape[0], inter), dtype=torch.bfloat16, device=x.device)
    # pairs the sort dropped (masked experts, ids outside [0, E)) leave their rows unwritten: zeros
    rows = torch.zeros((tokens * top_k, hidden_dim), dtype=torch.float32, device=x.device)
    stream = fx.Stream(torch.cuda.current_stream(x.device))
    k1 = build_experts_mxfp4_kernel(1, num_experts, hidden_dim, inter, arch)
    k1.launch(x, sti, sei, nv, w13_q, w13_s, act, n_mblocks, stream=stream)
    k2 = build_experts_mxfp4_kernel(2, num_experts, hidden_dim, inter, arch)
    k2.launch(act, sti, sw, sei, nv, w2_q, w2_s, rows, tokens, top_k, n_mblocks, stream=stream)
    return rows.view(tokens, top_k, hidden_dim).sum(dim=1).to(hidden.dtype)
