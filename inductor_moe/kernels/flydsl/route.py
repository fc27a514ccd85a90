"""FlyDSL top-k gating kernel for ``inductor_moe::route`` (AMD Instinct gfx942 / gfx950).

One pass over the logits, everything in registers, no LDS and no barrier:

1. **Load.** Each token is served by ``TPT`` consecutive lanes (several tokens per workgroup); lane ``l``
   loads its chunks of ``V`` experts with one buffer load each (16 bytes, ``buffer_load_dwordx4``, when
   ``E`` allows), converts them to f32 and to an *order key*: the f32 bits as a signed int that compares as
   the float does (``layout.float_key``). Slots past ``E`` (the layout pads each token to
   ``TPT * chunks_per_thread * V`` slots) get ``KEY_EMPTY``, below every float, so any ``E`` works.
2. **Top-k.** ``k`` rounds of: a lane's argmax over its slots (increasing expert order, so the lowest
   expert wins a tie), then a sub-warp butterfly argmax over the token's lanes on (key, expert) pairs
   (larger key, then lower expert), then the winner's slot is set to ``KEY_EMPTY``. The butterfly uses
   DPP moves inside a 16-lane row (quad_perm, row_half_mirror, row_ror:8), then ds_swizzle / ds_bpermute
   (gfx942) or v_permlane16_swap / v_permlane32_swap (gfx950) across rows. The selection runs on the
   logits: softmax and sigmoid are increasing, so it picks what ``torch.topk`` on the scores picks (up to
   the order of exact ties, which here is always the lower expert first).
3. **Weights (f32).** The first winner is the row max, so no separate max pass:
   ``e_j = exp2((x_j - x_0) * log2 e)``. Renormalized ``softmax_then_topk`` and ``topk_then_softmax``
   are the same function, ``e_j / sum_j e_j``; ``softmax_then_topk`` without renormalization divides by
   the full row sum, a butterfly sum over the lanes of ``exp2((x - x_0) * log2 e)``. Sigmoid scoring (no
   correction bias) is ``1 / (1 + exp2(-x_j * log2 e))``, renormalized with DeepSeek's epsilon.
   Then times ``scaling``.
4. **Store.** The token's lane 0 writes its ``k`` weights and ids with stores of up to 16 bytes.

Not handled by the kernel (``route_flydsl`` hands them to the reference): ``correction_bias``, grouped
top-k (``n_group > 1``), dtypes other than bf16/f16/f32, more than 2048 experts.

``build_route_kernel`` (cached) builds the FlyDSL launcher for one (E, k, dtype, arch, mode);
``route_flydsl`` has ``route_ref``'s signature and launches it; ``compile_route_kernel`` compiles one
without a GPU and returns its ISA (the compile-only tests read it). Layout arithmetic: ``layout.py``.
"""

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from . import layout as L
from . import toolchain
from .toolchain import compile_only_env, compile_only_unavailable

MODES = ("softmax_renorm", "softmax_full", "sigmoid", "sigmoid_renorm")
TORCH_DTYPES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
LOG2E = 1.4426950408889634
SIGMOID_RENORM_EPS = 1e-20  # route_ref's epsilon for renormalized sigmoid scores


def kernel_mode(scoring: str = "softmax", renormalize: bool = True, order: str = "softmax_then_topk") -> str:
    """The kernel variant computing route_ref's weights for these arguments."""
    if scoring == "sigmoid":
        if order != "softmax_then_topk":
            raise ValueError("order: sigmoid scoring takes order='softmax_then_topk'")
        return "sigmoid_renorm" if renormalize else "sigmoid"
    if scoring != "softmax":
        raise ValueError(f"scoring: expected 'softmax' or 'sigmoid', got {scoring!r}")
    if order == "topk_then_softmax" or renormalize:
        return "softmax_renorm"  # softmax over the k chosen logits == renormalized softmax_then_topk
    if order != "softmax_then_topk":
        raise ValueError(f"order: expected 'softmax_then_topk' or 'topk_then_softmax', got {order!r}")
    return "softmax_full"


def kernel_name(layout: L.RouteLayout, mode: str) -> str:
    return f"moe_route_e{layout.num_experts}_k{layout.top_k}_{layout.dtype}_{mode}_{layout.arch}"


@dataclass(frozen=True)
class RouteKernel:
    layout: L.RouteLayout
    mode: str
    name: str
    launch: Any  # @flyc.jit (logits, weights, ids, n_tokens, n_groups, scaling, stream)


# --------------------------------------------------------------------------------------------------------
# Trace-time helpers: plain Python that runs while FlyDSL traces the kernel (its loops unroll).
# ``f`` is the namespace of FlyDSL modules from ``_flydsl()``.


def _flydsl() -> SimpleNamespace:
    """FlyDSL's modules, imported on first build (importing this module does not import FlyDSL)."""
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


def _order_key(bits):
    """f32 bits (Int32) -> signed key that orders as the float does (layout.float_key); its own inverse."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _load_chunk(f, rsrc, byte_offset, vec: int, dtype: str):
    """Load ``vec`` experts at ``byte_offset`` with one buffer load; returns their f32 bits (Int32s)."""
    fx, T, Vector = f.fx, f.T, f.Vector
    nbytes = vec * L.DTYPES[dtype]
    zero = fx.Int32(0).ir_value()
    if nbytes >= 4:
        words = nbytes // 4
        ty = T.i32 if words == 1 else T.vec(words, T.i32)
        raw = f.rocdl.raw_ptr_buffer_load(ty, rsrc, _ir(byte_offset), zero)
        word_list = [fx.Int32(raw)] if words == 1 else [Vector(raw)[i] for i in range(words)]
        if dtype == "f32":
            return word_list
        if dtype == "bf16":  # element 2w is the low half of word w; f32 bits = bf16 bits << 16
            out = []
            for w in word_list:
                out += [w << 16, w & -65536]
            return out
        vals = Vector(raw) if words > 1 else Vector.from_elements([fx.Int32(raw)], fx.Int32)  # f16
        halves = vals.bitcast(fx.Float16).to(fx.Float32)
        return [halves[i].bitcast(fx.Int32) for i in range(vec)]
    raw = fx.Int16(f.rocdl.raw_ptr_buffer_load(T.i16, rsrc, _ir(byte_offset), zero))  # one 16-bit element
    if dtype == "bf16":  # the sign extension's high bits shift out
        return [raw.to(fx.Int32) << 16]
    return [raw.bitcast(fx.Float16).to(fx.Float32).bitcast(fx.Int32)]


def _argmax2(ka, ia, kb, ib):
    """The better of two (key, expert) pairs: larger key, then lower expert."""
    take_b = (kb > ka) | ((kb == ka) & (ib < ia))
    return take_b.select(kb, ka), take_b.select(ib, ia)


_DPP_CTRL = {"dpp_quad_perm": {1: L.DPP_QUAD_PERM_XOR1, 2: L.DPP_QUAD_PERM_XOR2},
             "dpp_row_half_mirror": {4: L.DPP_ROW_HALF_MIRROR}, "dpp_row_ror8": {8: L.DPP_ROW_ROR8}}


def _exchange(f, lane_in_wave, value, distance: int, step: str):
    """One butterfly exchange of an Int32 (``step`` from ``layout.butterfly_step``). Returns (a, b), the
    lane's own value and its partner's in some order: the combines applied to them are symmetric."""
    fx, rocdl, T = f.fx, f.rocdl, f.T
    if step in _DPP_CTRL:  # v_mov_b32_dpp, all rows and banks, bound_ctrl off
        moved = rocdl.update_dpp(T.i32, _ir(value), _ir(value), _DPP_CTRL[step][distance], 0xF, 0xF, False)
        return value, fx.Int32(moved)
    if step == "ds_swizzle":
        return value, fx.Int32(rocdl.ds_swizzle(T.i32, _ir(value), fx.Int32(L.SWIZZLE_XOR16).ir_value()))
    if step == "ds_bpermute":
        addr = (lane_in_wave ^ distance) << 2
        return value, fx.Int32(rocdl.ds_bpermute(T.i32, _ir(addr), _ir(value)))
    if step in ("permlane16_swap", "permlane32_swap"):
        # gfx950: swapping rows (halves) of two copies of the value gives each lane {own, partner}
        pair_ty = f.ir.Type.parse("!llvm.struct<(i32, i32)>")
        op = rocdl.permlane16_swap if step == "permlane16_swap" else rocdl.permlane32_swap
        pair = op(pair_ty, _ir(value), _ir(value), False, False)
        return (fx.Int32(f.llvm.extractvalue(T.i32, pair, [0])), fx.Int32(f.llvm.extractvalue(T.i32, pair, [1])))
    raise ValueError(f"step: unknown butterfly instruction {step!r}")


# --------------------------------------------------------------------------------------------------------
# Builder


def _build(lay: L.RouteLayout, mode: str) -> RouteKernel:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    f = _flydsl()
    flyc, fx, rocdl, T, Vector = f.flyc, f.fx, f.rocdl, f.T, f.Vector
    const_expr, range_constexpr = f.const_expr, f.range_constexpr

    E, K, V, TPT, CPT, VPT = lay.num_experts, lay.top_k, lay.vec, lay.tpt, lay.cpt, lay.vpt
    EB, OV, TPWG, WAVE = lay.elem_bytes, lay.out_vec, lay.tokens_per_workgroup, lay.wave
    STEPS = lay.steps
    LOG2_TPT = TPT.bit_length() - 1
    bounds = [L.chunk_bound(j, E, lay.dtype, WAVE) for j in range(CPT)]
    # constant part of each slot's expert (layout.slot_expert(lane, s) == lane * V + slot_const[s])
    slot_const = [L.slot_expert(0, s, E, lay.dtype, WAVE) for s in range(VPT)]
    assert all(L.slot_expert(TPT - 1, s, E, lay.dtype, WAVE) == (TPT - 1) * V + c for s, c in enumerate(slot_const))
    name = kernel_name(lay, mode)

    def butterfly_argmax(lane_in_wave, key, idx):
        for distance, step in STEPS:
            ka, kb = _exchange(f, lane_in_wave, key, distance, step)
            ia, ib = _exchange(f, lane_in_wave, idx, distance, step)
            key, idx = _argmax2(ka, ia, kb, ib)
        return key, idx

    def butterfly_sum(lane_in_wave, value):
        for distance, step in STEPS:
            a, b = _exchange(f, lane_in_wave, value.bitcast(fx.Int32), distance, step)
            value = a.bitcast(fx.Float32) + b.bitcast(fx.Float32)
        return value

    def rcp(x):  # v_rcp_f32
        return fx.Float32(rocdl.rcp(T.f32, _ir(x)))

    def ex2(x):  # v_exp_f32 (results below 2^-126 flush to 0, far under any tolerance of a routing weight)
        return fx.Float32(rocdl.exp2(T.f32, _ir(x)))

    @flyc.kernel(name=name, known_block_size=[lay.block_threads, 1, 1])
    def route_kernel(logits: fx.Tensor, weights: fx.Tensor, ids: fx.Tensor, n_tokens: fx.Int32,
                     scaling: fx.Float32):
        tid = fx.Int32(fx.thread_idx.x)
        bid = fx.Int32(fx.block_idx.x)
        token = bid * TPWG + (tid >> LOG2_TPT)
        lane = tid & (TPT - 1)
        lane_in_wave = tid & (WAVE - 1)
        row = fx.min(token, n_tokens - 1)  # tokens past the end read the last row and store nothing

        in_rsrc = rocdl.get_buffer_rsrc(fx.get_iter(rocdl.make_buffer_tensor(logits)))
        w_rsrc = rocdl.get_buffer_rsrc(fx.get_iter(rocdl.make_buffer_tensor(weights)))
        i_rsrc = rocdl.get_buffer_rsrc(fx.get_iter(rocdl.make_buffer_tensor(ids)))

        # 1. load: chunk j of this lane is chunk j * TPT + lane of the row
        lane_base = lane * V
        base_off = row * (E * EB) + lane * (V * EB)
        keys = []
        xs = []
        for j in range_constexpr(CPT):
            bits = _load_chunk(f, in_rsrc, base_off + j * TPT * V * EB, V, lay.dtype)
            for v in range_constexpr(V):
                key = _order_key(bits[v])
                x = bits[v].bitcast(fx.Float32)
                if const_expr(bounds[j] < TPT):  # a partial chunk: lanes past the row's end hold padding
                    valid = lane < bounds[j]
                    key = valid.select(key, fx.Int32(L.KEY_EMPTY))
                    x = valid.select(x, fx.Float32(float("-inf")))
                keys.append(key)
                xs.append(x)

        # 2. top-k: lane argmax, butterfly argmax, retire the winner
        win_keys = []
        win_ids = []
        for _k in range_constexpr(K):
            best_key = keys[0]
            best_c = fx.Int32(slot_const[0])
            for s in range_constexpr(1, VPT):
                better = keys[s] > best_key
                best_key = better.select(keys[s], best_key)
                best_c = better.select(fx.Int32(slot_const[s]), best_c)
            win_key, win_id = butterfly_argmax(lane_in_wave, best_key, lane_base + best_c)
            win_keys.append(win_key)
            win_ids.append(win_id)
            if const_expr(_k + 1 < K):
                mine = win_id - lane_base  # the winner's slot constant, if this lane holds it
                for s in range_constexpr(VPT):
                    keys[s] = (mine == slot_const[s]).select(fx.Int32(L.KEY_EMPTY), keys[s])

        # 3. weights in f32
        vals = [_order_key(k_).bitcast(fx.Float32) for k_ in win_keys]
        if const_expr(mode in ("softmax_renorm", "softmax_full")):
            top = vals[0]
            exps = [fx.Float32(1.0)] + [ex2((vals[j] - top) * LOG2E) for j in range(1, K)]
            if const_expr(mode == "softmax_renorm"):
                denom = exps[0]
                for j in range_constexpr(1, K):
                    denom = denom + exps[j]
            else:
                part = fx.Float32(0.0)
                for s in range_constexpr(VPT):
                    part = part + ex2((xs[s] - top) * LOG2E)
                denom = butterfly_sum(lane_in_wave, part)
            scale = scaling * rcp(denom)
            outs = [e * scale for e in exps]
        else:
            sig = [rcp(ex2(vals[j] * -LOG2E) + 1.0) for j in range(K)]
            if const_expr(mode == "sigmoid_renorm"):
                denom = sig[0]
                for j in range_constexpr(1, K):
                    denom = denom + sig[j]
                scale = scaling * rcp(denom + SIGMOID_RENORM_EPS)
            else:
                scale = scaling
            outs = [s_ * scale for s_ in sig]

        # 4. store: lane 0 of each token writes its k weights and ids
        if (lane == 0) & (token < n_tokens):
            out_base = token * (K * 4)
            for q in range_constexpr(0, K, OV):
                off = (out_base + q * 4).ir_value()
                if const_expr(OV == 1):
                    w_data = outs[q].ir_value()
                    i_data = win_ids[q].ir_value()
                else:
                    w_data = Vector.from_elements([outs[q + u] for u in range(OV)], fx.Float32).ir_value()
                    i_data = Vector.from_elements([win_ids[q + u] for u in range(OV)], fx.Int32).ir_value()
                rocdl.raw_ptr_buffer_store(w_data, w_rsrc, off, fx.Int32(0).ir_value())
                rocdl.raw_ptr_buffer_store(i_data, i_rsrc, off, fx.Int32(0).ir_value())

    @flyc.jit
    def launch(logits: fx.Tensor, weights: fx.Tensor, ids: fx.Tensor, n_tokens: fx.Int32, n_groups: fx.Int32,
               scaling: fx.Float32, stream: fx.Stream = fx.Stream(None)):
        route_kernel(logits, weights, ids, n_tokens, scaling).launch(
            grid=(n_groups, 1, 1), block=(lay.block_threads, 1, 1), stream=stream)

    return RouteKernel(layout=lay, mode=mode, name=name, launch=launch)


@lru_cache(maxsize=None)
def _build_cached(num_experts, top_k, dtype, arch, mode, block_threads) -> RouteKernel:
    return _build(L.route_layout(num_experts, top_k, dtype, arch, block_threads), mode)


def build_route_kernel(num_experts: int, top_k: int, dtype: str, arch: str, *, mode: str = "softmax_renorm",
                       block_threads: int = L.DEFAULT_BLOCK_THREADS) -> RouteKernel:
    """The launcher for one (E, k, dtype, arch, mode), built once per process (lru_cached).

    ``dtype``: "bf16" | "f16" | "f32" (the logits'); ``mode``: see ``kernel_mode``. Layout errors
    (``ValueError`` naming the constraint) come from ``layout.route_layout`` before FlyDSL is imported.
    """
    L.route_layout(num_experts, top_k, dtype, arch, block_threads)  # fail early, before importing flydsl
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return _build_cached(num_experts, top_k, dtype, arch, mode, block_threads)


# --------------------------------------------------------------------------------------------------------
# Compile-only (no GPU): the ISA, for the tests and for reading


def compile_route_kernel(num_experts: int, top_k: int, dtype: str, arch: str, *, mode: str = "softmax_renorm",
                         block_threads: int = L.DEFAULT_BLOCK_THREADS, dump_dir: str | os.PathLike | None = None
                         ) -> str:
    """Compile one kernel for ``arch`` on this machine (``COMPILE_ONLY``) and return its AMDGPU assembly.

    Builds a fresh (uncached) launcher, so every call compiles and dumps. Raises RuntimeError with the
    reason when the toolchain is missing (see ``toolchain.compile_only_unavailable``).
    """
    reason = compile_only_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot compile FlyDSL kernels here: {reason}")
    lay = L.route_layout(num_experts, top_k, dtype, arch, block_threads)
    with tempfile.TemporaryDirectory(prefix="flydsl_route_") as tmp:
        out_dir = Path(dump_dir) if dump_dir is not None else Path(tmp)
        with compile_only_env(arch, out_dir):
            import flydsl.compiler as flyc

            kern = _build(lay, mode)
            torch_dtype = {v: k for k, v in TORCH_DTYPES.items()}[dtype]
            placeholder = torch.empty((1, num_experts), dtype=torch_dtype)
            w = torch.empty((1, top_k), dtype=torch.float32)
            i = torch.empty((1, top_k), dtype=torch.int32)
            flyc.compile(kern.launch, placeholder, w, i, 1, 1, 1.0)
        return toolchain.dumped_isa(out_dir / kern.name, kern.name)


# --------------------------------------------------------------------------------------------------------
# Launcher with route_ref's signature


def _device_arch(device: torch.device) -> str | None:
    return toolchain.device_arch(device)  # a module attribute: tests stand in a gfx942 device


def supports_route(logits: torch.Tensor, top_k: int, scoring: str = "softmax", order: str = "softmax_then_topk",
                   correction_bias: torch.Tensor | None = None, n_group: int = 1, **_) -> str | None:
    """None when the FlyDSL kernel takes this call, else why not (for the dispatch)."""
    if correction_bias is not None:
        return "route: correction_bias is not in the FlyDSL kernel"
    if n_group != 1:
        return "route: grouped top-k (n_group > 1) is not in the FlyDSL kernel"
    if logits.dtype not in TORCH_DTYPES:
        return f"route: logits dtype {logits.dtype} (the kernel reads bf16, f16, f32)"
    if _device_arch(logits.device) is None:
        return f"route: {logits.device} is not an AMD gfx942/gfx950 GPU"
    try:
        L.route_layout(logits.shape[1], top_k, TORCH_DTYPES[logits.dtype], _device_arch(logits.device))
    except ValueError as e:
        return f"route: {e}"
    if not L.max_row_bytes_ok(logits.shape[0], logits.shape[1], TORCH_DTYPES[logits.dtype]):
        return "route: logits of 2 GiB or more (32-bit byte offsets)"
    return None


def route_flydsl(
    logits: torch.Tensor,
    top_k: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``route_ref``'s contract on the FlyDSL kernel; calls it declines go to ``route_ref``."""
    reason = supports_route(logits, top_k, scoring, order, correction_bias, n_group)
    if reason is not None:
        from ...stats import record_fallback
        from ..reference import route_ref

        record_fallback("route", f"flydsl: {reason}")
        return route_ref(logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group,
                         scaling)
    import flydsl.expr as fx

    x = logits.contiguous()
    if x.data_ptr() % 16:  # wide loads want the row base aligned
        x = x.clone()
    tokens, num_experts = x.shape
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((tokens, top_k), dtype=torch.int32, device=x.device)
    if tokens == 0:
        return weights, ids
    dtype = TORCH_DTYPES[x.dtype]
    kern = build_route_kernel(num_experts, top_k, dtype, _device_arch(x.device),
                              mode=kernel_mode(scoring, renormalize, order))
    groups = L.grid_size(tokens, num_experts, dtype, kern.layout.wave, kern.layout.block_threads)
    kern.launch(x, weights, ids, tokens, groups, float(scaling),
                stream=fx.Stream(torch.cuda.current_stream(x.device)))
    return weights, ids
