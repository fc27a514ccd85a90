"""FlyDSL two-stage bf16 MoE GEMMs for ``inductor_moe::experts_sorted`` (AMD Instinct gfx942 / gfx950).

Input is the ``sort`` layout (``design.md`` section 2): ``sorted_token_ids`` entries ``(slot << 24) |
token`` grouped by expert in ``block_m`` blocks (padding ``(k << 24) | T``), one expert id per block (-1
past ``num_valid[0] / block_m``), ``num_valid`` int32[2] read on the device (no host sync).

- **Stage 1** (grid ``(L / block_m, I / 64)``): a workgroup gathers its block's hidden rows, multiplies
  them with the expert's gate rows and up rows of w13 ([E, 2I, H], gate rows then up rows) for 64
  columns of I, applies SiLU(gate) * up in f32 in the epilogue and writes bf16 rows of the intermediate
  ``[L, I]`` (row = sorted position, L = len(sorted_token_ids)).
- **Stage 2** (grid ``(L / block_m, H / 64)``): the down GEMM of the block's intermediate rows with w2
  ([E, H, I]) for 64 columns of H, times ``sorted_weights`` (f32) in the epilogue.
- **Combine: deterministic, no atomics.** Stage 2 writes each real entry's f32 row to a per-slot buffer
  ``[T * k, H]`` (zeroed) at row ``token * k + slot``; padding rows store nothing. The launcher then sums
  the k rows of each token in slot order (``view(T, k, H).sum(1)``, one torch reduction) and casts to
  bf16, which is the reference's order of summation.

GEMM core (both stages, ``experts_layout.py`` has the plan and every offset): 256 threads = 4 waves, wave
``w`` owns 16 output columns of the 64 and all ``block_m`` rows; ``v_mfma_f32_16x16x16_bf16`` (the
``bf16_1k`` MFMA, on gfx942 and gfx950); K-steps of 64. Weights are preshuffled ONCE per weight version
through ``weight_cache`` (kind ``flydsl.experts.preshuffle``) into ``[E, N/16, K/64, 64 lanes, 16]`` so
each lane's B operand for a K-step is 32 contiguous bytes and a wave's is one 2 KiB run; they are streamed
from global memory into registers, the next K-step's while the current one is multiplied. Activations go
through LDS with a **ping-pong double buffer**: step i+1 is loaded from global memory into registers
while step i is read from LDS buffer ``i % 2`` and multiplied, then written to buffer ``(i + 1) % 2``;
one barrier per step; the last step is peeled.

Declined (``supports_experts_sorted`` gives the reason; ``experts_sorted_flydsl`` hands these to
``experts_sorted_ref``): separate up weights ``w3``, biases, activations other than ``silu``, the GPT-OSS
interleaved gate/up layout, dtypes other than bf16 (hidden, w13, w2), H or I not multiples of 64, ``block_m`` not in
{16, 32, 64}, top_k > 127, buffers whose byte offsets reach 2**31, devices other than AMD gfx942/gfx950.

``build_experts_kernels`` (cached) builds the two launchers of one plan (H, I, k, block_m, arch);
``experts_sorted_flydsl`` has ``experts_sorted_ref``'s signature; ``compile_experts_kernels`` compiles
both stages without a GPU and returns their ISA (the compile-only tests read it). The kernels have been
compiled and their ISA checked, never run on an AMD GPU (compile-verified only).
"""
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from . import experts_layout as XL
from . import toolchain
from .toolchain import compile_only_env, compile_only_unavailable

LOG2E = 1.4426950408889634
PRESHUFFLE_KIND = "flydsl.experts.preshuffle"


def kernel_name(plan: XL.ExpertsPlan, stage: int) -> str:
    return f"moe_experts_s{stage}_h{plan.hidden}_i{plan.inter}_k{plan.top_k}_bm{plan.block_m}_{plan.arch}"


@dataclass(frozen=True)
class ExpertsKernels:
    """The launchers of one plan (FlyDSL traces and compiles each at its first call)."""

    plan: XL.ExpertsPlan
    names: tuple  # (stage 1 kernel, stage 2 kernel)
    # @flyc.jit (hidden, w13p, sti, sei, nv, inter, n_tokens, n_blocks, stream)
    stage1: Any
    # @flyc.jit (inter, w2p, sti, sw, sei, nv, slots, n_tokens, n_blocks, stream)
    stage2: Any


# --------------------------------------------------------------------------------------------------------
# weight preshuffle (host, once per weight version)


def preshuffle(weight: torch.Tensor) -> torch.Tensor:
    """[E, N, K] -> the packed [E, N*K] layout of ``experts_layout.packed_index`` (a new contiguous tensor).

    Element ((nt * K/64 + kt) * 64 + lane) * 16 + e of an expert holds W[nt*16 + lane%16, kt*64 +
    16*(lane//16) + e]."""
    e, n, k = weight.shape
    if n % XL.MFMA_N or k % XL.TILE_K:
        raise ValueError(f"preshuffle: [E, N, K] = {list(weight.shape)} needs N % 16 == 0 and K % 64 == 0")
    w = weight.reshape(e, n // XL.MFMA_N, XL.MFMA_N, k // XL.TILE_K, XL.TILE_K // XL.LANE_K, XL.LANE_K)
    # (e, nt, c, kt, g, el) -> (e, nt, kt, g, c, el): lane = g * 16 + c
    return w.permute(0, 1, 3, 4, 2, 5).contiguous().reshape(e, n * k)


def packed_weights(w13: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The preshuffled w13 and w2, packed once per weight version (``weight_cache``)."""
    from .. import weight_cache

    return (weight_cache.get(w13, PRESHUFFLE_KIND, preshuffle), weight_cache.get(w2, PRESHUFFLE_KIND, preshuffle))


# --------------------------------------------------------------------------------------------------------
# device code


def _flydsl() -> SimpleNamespace:
    """FlyDSL's modules, imported on first build (importing this module does not import FlyDSL)."""
    import flydsl.compiler as flyc
    import flydsl.expr as fx
    from flydsl.expr import range_constexpr, rocdl
    from flydsl.expr.typing import T, Vector

    return SimpleNamespace(flyc=flyc, fx=fx, range_constexpr=range_constexpr, rocdl=rocdl, T=T, Vector=Vector)


def _ir(v):
    return v.ir_value() if hasattr(v, "ir_value") else v


def _gemm_core(plan: XL.ExpertsPlan, stage: int) -> SimpleNamespace:
    """Trace-time helpers of one stage's GEMM: loads, LDS ping-pong, MFMAs (straight-line code)."""
    f = _flydsl()
    fx, rocdl, T, Vector, range_constexpr = f.fx, f.rocdl, f.T, f.Vector, f.range_constexpr
    i32 = fx.Int32
    K = plan.hidden if stage == 1 else plan.inter
    MATS = plan.mats(stage)

    def rsrc(tensor):
        return rocdl.get_buffer_rsrc(fx.get_iter(rocdl.make_buffer_tensor(tensor)))

    def load_i32(res, index):
        return i32(rocdl.raw_ptr_buffer_load(T.i32, res, _ir(i32(index) * 4), _ir(i32(0))))

    def load_16b(res, elem):
        """8 bf16 (16 bytes) at bf16 element offset ``elem``: one buffer_load_dwordx4."""
        raw = rocdl.raw_ptr_buffer_load(T.vec(4, T.i32), res, _ir(i32(elem) * XL.BF16_BYTES), _ir(i32(0)))
        return Vector(raw).bitcast(fx.Int16)

    def load_a(res, a_off, k_step):
        """This thread's global A chunks of K-step ``k_step`` (a_off: element offsets at k-step 0)."""
        return [load_16b(res, off + k_step * XL.TILE_K) for off in a_off]

    def load_b(res, b_base, tiles, lane, k_step):
        """The lane's B operands of one K-step: per output matrix, 16 bf16 as two 8-element halves."""
        out = []
        for tile in tiles:
            off = b_base + XL.b_lane_offset(tile, k_step, lane, K)
            out.append([load_16b(res, off), load_16b(res, off + 8)])
        return out

    def write_a(lds, buf, rows, tid, regs):
        for j in range_constexpr(plan.a_loads):
            off = XL.lds_write_offset(plan, buf, rows[j], XL.a_load_chunk(tid))
            fx.ptr_store(regs[j].ir_value(), lds + fx.Int64(off))

    def mfma(a4, b4, c):
        return Vector(rocdl.mfma_f32_16x16x16bf16_1k(T.vec(4, T.f32), [a4, b4, c, 0, 0, 0]))

    def quarter(halves, sub):
        """Elements 4*sub .. 4*sub+3 of a lane's 16 (two 8-element halves)."""
        h = halves[sub // 2]
        q = 4 * (sub % 2)
        return h.shuffle(h, [q, q + 1, q + 2, q + 3])

    def compute(lds, buf, lane, b_regs, accs):
        """One K-step: A operands from LDS buffer ``buf``, B from registers; accs[mat][m_tile]."""
        new = [list(row) for row in accs]
        for mt in range_constexpr(plan.m_tiles):
            off = XL.lds_read_offset(plan, buf, mt, lane)
            a_halves = [Vector(fx.ptr_load(lds + fx.Int64(off + 8 * h), T.vec(8, T.i16))) for h in range(2)]
            for sub in range_constexpr(XL.KSUB):
                a4 = quarter(a_halves, sub)
                for mat in range_constexpr(MATS):
                    new[mat][mt] = mfma(a4, quarter(b_regs[mat], sub), new[mat][mt])
        return new

    def zero_accs():
        z = Vector.filled(4, 0.0, fx.Float32)
        return [[z for _ in range(plan.m_tiles)] for _ in range(MATS)]

    @f.flyc.jit
    def gemm(lds, a_res, a_off, rows, b_res, b_base, tiles, tid, lane):
        """The K loop with the LDS ping-pong; returns accs[mat][m_tile] (v4f32, MFMA 16x16 C layout)."""
        KS = plan.k_steps(stage)
        a_regs = load_a(a_res, a_off, 0)
        b_regs = load_b(b_res, b_base, tiles, lane, 0)
        write_a(lds, 0, rows, tid, a_regs)
        fx.barrier()
        accs = zero_accs()
        for ks in range(i32(0), i32(KS - 1), i32(1), unroll=1):
            a_next = load_a(a_res, a_off, ks + 1)
            b_next = load_b(b_res, b_base, tiles, lane, ks + 1)
            accs = compute(lds, ks & 1, lane, b_regs, accs)
            write_a(lds, (ks + 1) & 1, rows, tid, a_next)
            fx.barrier()
            b_regs = b_next
        return compute(lds, (KS - 1) & 1, lane, b_regs, accs)

    return SimpleNamespace(rsrc=rsrc, load_i32=load_i32, gemm=gemm, i32=i32)


def _lds_struct(plan: XL.ExpertsPlan):
    fx = _flydsl().fx
    annotations = {"a": fx.Array[fx.Int16, 2 * plan.lds_buffer_elems, 16]}  # both ping-pong buffers
    return fx.struct(type("ExpertsShared", (), {"__annotations__": annotations}))


def _build_stage1(plan: XL.ExpertsPlan):
    f = _flydsl()
    flyc, fx, rocdl, T, range_constexpr = f.flyc, f.fx, f.rocdl, f.T, f.range_constexpr
    core = _gemm_core(plan, 1)
    i32 = core.i32
    H, I, BM = plan.hidden, plan.inter, plan.block_m
    NT = plan.n_tiles(1)
    W_ELEMS = XL.expert_weight_elems(plan, 1)
    Shared = _lds_struct(plan)
    name = kernel_name(plan, 1)

    @flyc.kernel(name=name, known_block_size=[XL.THREADS, 1, 1])
    def experts_stage1(hidden: fx.Tensor, w13p: fx.Tensor, sti: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor,
                       inter: fx.Tensor, n_tokens: fx.Int32):
        block = i32(fx.block_idx.x)
        n_block = i32(fx.block_idx.y)
        tid = i32(fx.thread_idx.x)
        lane = tid & (XL.WAVE - 1)
        wave = tid >> 6
        sti_rsrc = core.rsrc(sti)
        expert = core.load_i32(core.rsrc(sei), block)
        valid_entries = core.load_i32(core.rsrc(nv), 0)
        if XL.block_valid(block, expert, valid_entries, BM):
            lds = fx.SharedAllocator().allocate(Shared).peek().a.ptr
            rows = [XL.a_load_row(plan, tid, j) for j in range(plan.a_loads)]
            a_off = []
            for j in range_constexpr(plan.a_loads):
                token, _slot = XL.decode_entry(core.load_i32(sti_rsrc, XL.sorted_pos(block, rows[j], BM)))
                a_off.append(XL.gather_row(token, n_tokens) * H + XL.a_global_col(0, tid))
            tiles = XL.weight_tiles(plan, 1, n_block, wave)
            accs = core.gemm(lds, core.rsrc(hidden), a_off, rows, core.rsrc(w13p), expert * W_ELEMS, tiles,
                             tid, lane)
            # epilogue: SiLU(gate) * up in f32 -> bf16 intermediate row (sorted position)
            out_rsrc = core.rsrc(inter)
            col = XL.acc_col(n_block, wave, lane)
            for mt in range_constexpr(plan.m_tiles):
                for r in range_constexpr(4):
                    g = accs[0][mt][r]
                    u = accs[1][mt][r]
                    e = fx.Float32(rocdl.exp2(T.f32, _ir(g * (-LOG2E))))
                    silu = g * fx.Float32(rocdl.rcp(T.f32, _ir(e + 1.0)))
                    h = (silu * u).to(fx.BFloat16).bitcast(fx.Int16)
                    pos = XL.sorted_pos(block, XL.acc_row(mt, lane, r), BM)
                    rocdl.raw_ptr_buffer_store(_ir(h), out_rsrc, _ir((pos * I + col) * XL.BF16_BYTES),
                                               _ir(i32(0)))

    @flyc.jit
    def launch(hidden: fx.Tensor, w13p: fx.Tensor, sti: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor,
               inter: fx.Tensor, n_tokens: fx.Int32, n_blocks: fx.Int32, stream: fx.Stream = fx.Stream(None)):
        experts_stage1(hidden, w13p, sti, sei, nv, inter, n_tokens).launch(
            grid=(n_blocks, NT, 1), block=(XL.THREADS, 1, 1), stream=stream)

    return name, launch


def _build_stage2(plan: XL.ExpertsPlan):
    f = _flydsl()
    flyc, fx, rocdl, range_constexpr = f.flyc, f.fx, f.rocdl, f.range_constexpr
    core = _gemm_core(plan, 2)
    i32 = core.i32
    H, I, BM, K = plan.hidden, plan.inter, plan.block_m, plan.top_k
    NT = plan.n_tiles(2)
    W_ELEMS = XL.expert_weight_elems(plan, 2)
    Shared = _lds_struct(plan)
    name = kernel_name(plan, 2)

    @flyc.kernel(name=name, known_block_size=[XL.THREADS, 1, 1])
    def experts_stage2(inter: fx.Tensor, w2p: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor,
                       nv: fx.Tensor, slots: fx.Tensor, n_tokens: fx.Int32):
        block = i32(fx.block_idx.x)
        n_block = i32(fx.block_idx.y)
        tid = i32(fx.thread_idx.x)
        lane = tid & (XL.WAVE - 1)
        wave = tid >> 6
        expert = core.load_i32(core.rsrc(sei), block)
        valid_entries = core.load_i32(core.rsrc(nv), 0)
        if XL.block_valid(block, expert, valid_entries, BM):
            lds = fx.SharedAllocator().allocate(Shared).peek().a.ptr
            rows = [XL.a_load_row(plan, tid, j) for j in range(plan.a_loads)]
            a_off = [XL.sorted_pos(block, rows[j], BM) * I + XL.a_global_col(0, tid) for j in range(plan.a_loads)]
            tiles = XL.weight_tiles(plan, 2, n_block, wave)
            accs = core.gemm(lds, core.rsrc(inter), a_off, rows, core.rsrc(w2p), expert * W_ELEMS, tiles, tid,
                             lane)
            # epilogue: times the routing weight (f32), to the entry's per-slot row; padding stores nothing
            sti_rsrc, sw_rsrc, out_rsrc = core.rsrc(sti), core.rsrc(sw), core.rsrc(slots)
            col = XL.acc_col(n_block, wave, lane)
            for mt in range_constexpr(plan.m_tiles):
                for r in range_constexpr(4):
                    pos = XL.sorted_pos(block, XL.acc_row(mt, lane, r), BM)
                    token, slot = XL.decode_entry(core.load_i32(sti_rsrc, pos))
                    weight = core.load_i32(sw_rsrc, pos).bitcast(fx.Float32)
                    value = accs[0][mt][r] * weight
                    if token < n_tokens:
                        off = (XL.slot_row(token, slot, K) * H + col) * 4
                        rocdl.raw_ptr_buffer_store(_ir(value), out_rsrc, _ir(off), _ir(i32(0)))

    @flyc.jit
    def launch(inter: fx.Tensor, w2p: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor,
               slots: fx.Tensor, n_tokens: fx.Int32, n_blocks: fx.Int32, stream: fx.Stream = fx.Stream(None)):
        experts_stage2(inter, w2p, sti, sw, sei, nv, slots, n_tokens).launch(
            grid=(n_blocks, NT, 1), block=(XL.THREADS, 1, 1), stream=stream)

    return name, launch


def _build(plan: XL.ExpertsPlan) -> ExpertsKernels:
    name1, stage1 = _build_stage1(plan)
    name2, stage2 = _build_stage2(plan)
    return ExpertsKernels(plan=plan, names=(name1, name2), stage1=stage1, stage2=stage2)


@lru_cache(maxsize=None)
def _build_cached(plan: XL.ExpertsPlan) -> ExpertsKernels:
    return _build(plan)


def build_experts_kernels(hidden: int, inter: int, top_k: int, block_m: int, arch: str) -> ExpertsKernels:
    """The two launchers of one (H, I, k, block_m, arch), built once per process.

    Plan errors (``ValueError`` naming the constraint) come from ``experts_layout.experts_plan`` before
    FlyDSL is imported; FlyDSL traces and compiles at the first launch (or in ``compile_experts_kernels``)."""
    return _build_cached(XL.experts_plan(hidden, inter, top_k, block_m, arch))


# --------------------------------------------------------------------------------------------------------
# Compile-only (no GPU): the ISA, for the tests and for reading


def _placeholder_args(plan: XL.ExpertsPlan, stage: int) -> list:
    """Small CPU tensors and ints in the launcher's argument order (compile-only: nothing is read; tensor
    layouts are dynamic, so the sizes do not enter the code)."""
    bf16 = torch.bfloat16
    n = 4 * plan.block_m
    sti = torch.empty(n, dtype=torch.int32)
    sei = torch.empty(4, dtype=torch.int32)
    nv = torch.empty(2, dtype=torch.int32)
    if stage == 1:
        return [torch.empty(64, dtype=bf16), torch.empty(64, dtype=bf16), sti, sei, nv, torch.empty(64, dtype=bf16),
                1, 4]
    return [torch.empty(64, dtype=bf16), torch.empty(64, dtype=bf16), sti, torch.empty(n, dtype=torch.float32), sei,
            nv, torch.empty(64, dtype=torch.float32), 1, 4]


def compile_experts_kernels(hidden: int, inter: int, top_k: int, block_m: int, arch: str, *,
                            stages=(1, 2), dump_dir: str | os.PathLike | None = None) -> dict[int, str]:
    """Compile the stages for ``arch`` on this machine (``COMPILE_ONLY``) and return {stage: AMDGPU
    assembly of its module} (the kernel is named ``kernel_name(plan, stage)``).

    Builds fresh (uncached) launchers, so every call compiles and dumps. Raises RuntimeError with the
    reason when the toolchain is missing (see ``toolchain.compile_only_unavailable``)."""
    reason = compile_only_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot compile FlyDSL kernels here: {reason}")
    plan = XL.experts_plan(hidden, inter, top_k, block_m, arch)
    out = {}
    for stage in stages:
        with tempfile.TemporaryDirectory(prefix=f"flydsl_experts{stage}_") as tmp:
            out_dir = Path(dump_dir) / f"stage{stage}" if dump_dir is not None else Path(tmp)
            with compile_only_env(arch, out_dir):
                import flydsl.compiler as flyc

                name, launch = (_build_stage1 if stage == 1 else _build_stage2)(plan)
                flyc.compile(launch, *_placeholder_args(plan, stage))
            out[stage] = toolchain.dumped_isa(out_dir, name)
    return out


# --------------------------------------------------------------------------------------------------------
# Launcher with experts_sorted_ref's signature


def _device_arch(device: torch.device) -> str | None:
    return toolchain.device_arch(device)  # a module attribute: tests stand in a gfx942 device


def supports_experts_sorted(hidden: torch.Tensor = None, w13: torch.Tensor = None, w2: torch.Tensor = None,
                            activation: str = "silu", top_k: int = None, block_m: int = None, b13=None, b2=None,
                            gate_up_interleaved: bool = False, sorted_token_ids: torch.Tensor = None,
                            w3: torch.Tensor = None, **_) -> str | None:
    """None when the FlyDSL kernels take this call, else why not (for the dispatch)."""
    if w3 is not None:
        return "experts_sorted: separate up weights (w3) are not supported by the FlyDSL kernels (w13 only)"
    if b13 is not None or b2 is not None:
        return "experts_sorted: biases (b13/b2) are not supported by the FlyDSL kernels"
    if activation != "silu":
        return f"experts_sorted: activation {activation!r} (the FlyDSL kernels do silu only)"
    if gate_up_interleaved:
        return "experts_sorted: interleaved gate/up (GPT-OSS layout) is not supported by the FlyDSL kernels"
    for name, t in (("hidden", hidden), ("w13", w13), ("w2", w2)):
        if t is not None and t.dtype != torch.bfloat16:
            return f"experts_sorted: {name} dtype {t.dtype} (the FlyDSL kernels take bfloat16)"
    if hidden is None or w13 is None or w2 is None:
        return "experts_sorted: hidden, w13 and w2 are needed to decide"
    tokens, hidden_dim = hidden.shape
    num_experts, two_inter, _ = w13.shape
    try:
        XL.check_shape(hidden_dim, two_inter // 2, top_k, block_m)
        length = (sorted_token_ids.numel() if sorted_token_ids is not None
                  else -(-(tokens * top_k + num_experts * (block_m - 1)) // block_m) * block_m)
        XL.check_offsets(tokens, num_experts, hidden_dim, two_inter // 2, top_k, length)
    except ValueError as e:
        return f"experts_sorted: {e}"
    if _device_arch(hidden.device) is None:
        return f"experts_sorted: {hidden.device} is not an AMD gfx942/gfx950 GPU"
    return None


def experts_sorted_flydsl(
    hidden: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    sorted_weights: torch.Tensor,
    sorted_expert_ids: torch.Tensor,
    num_valid: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    block_m: int,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
    activation: str,
    gate_up_interleaved: bool,
    alpha: float,
    limit: float,
    w3: torch.Tensor | None = None,
) -> torch.Tensor:
    """``experts_sorted_ref``'s contract on the FlyDSL kernels; calls they decline go to the reference
    (and so does T = 0). ``w3`` (separate up weights) is always declined."""
    from ..reference.experts import experts_sorted_ref

    reason = supports_experts_sorted(hidden=hidden, w13=w13, w2=w2, activation=activation, top_k=top_k,
                                     block_m=block_m, b13=b13, b2=b2, gate_up_interleaved=gate_up_interleaved,
                                     sorted_token_ids=sorted_token_ids, w3=w3)
    tokens, hidden_dim = hidden.shape
    if reason is not None or tokens == 0:
        if reason is not None:
            from ...stats import record_fallback

            record_fallback("experts_sorted", f"flydsl: {reason}")
        args = (hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m, b13,
                b2, activation, gate_up_interleaved, alpha, limit)
        return experts_sorted_ref(*args) if w3 is None else experts_sorted_ref(*args, w3=w3)
    import flydsl.expr as fx

    arch = _device_arch(hidden.device)
    inter_dim = w13.shape[1] // 2
    kern = build_experts_kernels(hidden_dim, inter_dim, top_k, block_m, arch)
    w13p, w2p = packed_weights(w13, w2)
    device = hidden.device
    length = sorted_token_ids.numel()
    n_blocks = length // block_m
    x = hidden.contiguous().view(-1)
    sti = sorted_token_ids.to(torch.int32).contiguous()
    sw = sorted_weights.to(torch.float32).contiguous()
    sei = sorted_expert_ids.to(torch.int32).contiguous()
    nv = num_valid.to(torch.int32).contiguous()
    inter = torch.empty(length * inter_dim, dtype=torch.bfloat16, device=device)
    slots = torch.zeros(tokens * top_k * hidden_dim, dtype=torch.float32, device=device)
    stream = fx.Stream(torch.cuda.current_stream(device))
    kern.stage1(x, w13p.view(-1), sti, sei, nv, inter, tokens, n_blocks, stream=stream)
    kern.stage2(inter, w2p.view(-1), sti, sw, sei, nv, slots, tokens, n_blocks, stream=stream)
    return slots.view(tokens, top_k, hidden_dim).sum(dim=1).to(hidden.dtype)
