"""FlyDSL fused route + sort for ``inductor_moe::route_sort`` on the decode path (AMD gfx942 / gfx950).

Seed 001's idea in FlyDSL: ONE launch of ONE workgroup does top-k gating for all T tokens, keeps the
(expert, weight) pairs in LDS, and sorts them into the moe_sorting layout from there; the routing results
never make a round trip through global memory between two kernels (they are still written to the
``weights`` / ``ids`` outputs, which the op returns). Phases and barriers (``route_sort_layout.py`` has
the index and LDS arithmetic, shared with the NumPy emulation in ``tests/kernels/flydsl``):

0. threads e < E zero the LDS histogram; barrier.
1. **route**: the router kernel's scheme (``route.py``: TPT lanes per token, one 16-byte load per chunk,
   k rounds of lane argmax + sub-warp butterfly over DPP / ds_swizzle / ds_bpermute (gfx942) or
   v_permlane16/32_swap (gfx950), f32 weights from the winners) in passes over the tokens. Lane 0 of a
   token stores its k weights / ids (global), its k pair keys (the expert, or E when the expert mask drops
   it) and weight bits (LDS), and ``ds_add``s 1 to the LDS histogram per kept pair; barrier.
2. **scan**: thread e pads its count to ``block_m``; DPP block scan -> run start (one barrier inside);
   the counter becomes expert e's cursor; the pads after its pairs; ``num_valid``; barrier.
3. **scatter + tail**: wave 0 walks the pairs from LDS in pair order, 64 at a time: one ballot per key bit
   finds the lanes of the same expert, ``v_mbcnt`` ranks them, a pair goes to cursor + rank, the group's
   first lane advances the cursor (stable, deterministic: no atomic decides a position). Waves 1.. pad the
   tail and set the unused blocks to -1 at the same time.

The ``sort`` contract exactly as ``sort_ref`` writes it (padding ``(k << 24) | T`` with weight 0, one global
expert id per used block, -1 past them, ``num_valid = [used, T]``, masked pairs dropped) and ``route``'s
weights / ids as ``route.py`` computes them. Output sizes depend on (T, k, E, block_m) only; T and the
sizes derived from it are kernel arguments; no host sync.

``route_sort_flydsl`` has ``route_sort_ref``'s signature. Calls the fused kernel does not take
(``route_sort_layout.fused_unfit``: T * k > 2048 pairs, LDS, a shape the router or sort kernels do not
take) and the router kernel's own exclusions (``correction_bias``, ``n_group > 1``) go to the separate
FlyDSL ``route_flydsl`` + ``sort_flydsl`` (each falls back to its reference by itself), so every call
returns ``route_sort_ref``'s results. Compiled and ISA-checked for gfx942 / gfx950 on a CPU machine;
never run on an AMD GPU (registered unverified).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from . import layout as L
from . import route as R
from . import route_sort_layout as RL
from . import sort_layout as SL
from . import toolchain
from .toolchain import compile_only_env, compile_only_unavailable


def kernel_name(plan: RL.RouteSortPlan) -> str:
    return (f"moe_route_sort_e{plan.num_experts}_k{plan.top_k}_bm{plan.block_m}_{plan.dtype}_{plan.mode}"
            f"{'_mask' if plan.has_mask else ''}_cap{plan.capacity}_{plan.arch}")


@dataclass(frozen=True)
class RouteSortKernel:
    plan: RL.RouteSortPlan
    name: str
    # @flyc.jit (logits, mask, weights, ids, sti, sw, sei, nv, n_tokens, n_passes, n_pairs, n_steps, length,
    #            n_blocks, scaling, stream)
    launch: Any


# --------------------------------------------------------------------------------------------------------
# Trace-time helpers (plain Python while FlyDSL traces: loops unroll)


def _router(f, lay: L.RouteLayout, mode: str) -> SimpleNamespace:
    """The router kernel's per-token computation (``route.py``'s steps 1-3, the same instructions in the
    same order, so ``tests/kernels/flydsl/emulate.py`` describes it): ``token(logits_rsrc, row, lane,
    lane_in_wave, scaling) -> (weights [k] Float32, ids [k] Int32)``, valid in every lane of the token."""
    fx, rocdl, T = f.fx, f.rocdl, f.T
    const_expr, range_constexpr = f.const_expr, f.range_constexpr
    E, K, V, TPT, CPT, VPT, EB = lay.num_experts, lay.top_k, lay.vec, lay.tpt, lay.cpt, lay.vpt, lay.elem_bytes
    bounds = [L.chunk_bound(j, E, lay.dtype, lay.wave) for j in range(CPT)]
    slot_const = [L.slot_expert(0, s, E, lay.dtype, lay.wave) for s in range(VPT)]

    def butterfly_argmax(lane_in_wave, key, idx):
        for distance, step in lay.steps:
            ka, kb = R._exchange(f, lane_in_wave, key, distance, step)
            ia, ib = R._exchange(f, lane_in_wave, idx, distance, step)
            key, idx = R._argmax2(ka, ia, kb, ib)
        return key, idx

    def butterfly_sum(lane_in_wave, value):
        for distance, step in lay.steps:
            a, b = R._exchange(f, lane_in_wave, value.bitcast(fx.Int32), distance, step)
            value = a.bitcast(fx.Float32) + b.bitcast(fx.Float32)
        return value

    def rcp(x):
        return fx.Float32(rocdl.rcp(T.f32, R._ir(x)))

    def ex2(x):
        return fx.Float32(rocdl.exp2(T.f32, R._ir(x)))

    def token(in_rsrc, row, lane, lane_in_wave, scaling):
        lane_base = lane * V
        base_off = row * (E * EB) + lane * (V * EB)
        keys, xs = [], []
        for j in range_constexpr(CPT):
            bits = R._load_chunk(f, in_rsrc, base_off + j * TPT * V * EB, V, lay.dtype)
            for v in range_constexpr(V):
                key = R._order_key(bits[v])
                x = bits[v].bitcast(fx.Float32)
                if const_expr(bounds[j] < TPT):
                    valid = lane < bounds[j]
                    key = valid.select(key, fx.Int32(L.KEY_EMPTY))
                    x = valid.select(x, fx.Float32(float("-inf")))
                keys.append(key)
                xs.append(x)
        win_keys, win_ids = [], []
        for r in range_constexpr(K):
            best_key = keys[0]
            best_c = fx.Int32(slot_const[0])
            for s in range_constexpr(1, VPT):
                better = keys[s] > best_key
                best_key = better.select(keys[s], best_key)
                best_c = better.select(fx.Int32(slot_const[s]), best_c)
            win_key, win_id = butterfly_argmax(lane_in_wave, best_key, lane_base + best_c)
            win_keys.append(win_key)
            win_ids.append(win_id)
            if const_expr(r + 1 < K):
                mine = win_id - lane_base
                for s in range_constexpr(VPT):
                    keys[s] = (mine == slot_const[s]).select(fx.Int32(L.KEY_EMPTY), keys[s])
        vals = [R._order_key(k_).bitcast(fx.Float32) for k_ in win_keys]
        if const_expr(mode in ("softmax_renorm", "softmax_full")):
            top = vals[0]
            exps = [fx.Float32(1.0)] + [ex2((vals[j] - top) * R.LOG2E) for j in range(1, K)]
            if const_expr(mode == "softmax_renorm"):
                denom = exps[0]
                for j in range_constexpr(1, K):
                    denom = denom + exps[j]
            else:
                part = fx.Float32(0.0)
                for s in range_constexpr(VPT):
                    part = part + ex2((xs[s] - top) * R.LOG2E)
                denom = butterfly_sum(lane_in_wave, part)
            scale = scaling * rcp(denom)
            outs = [e * scale for e in exps]
        else:
            sig = [rcp(ex2(vals[j] * -R.LOG2E) + 1.0) for j in range(K)]
            if const_expr(mode == "sigmoid_renorm"):
                denom = sig[0]
                for j in range_constexpr(1, K):
                    denom = denom + sig[j]
                scale = scaling * rcp(denom + R.SIGMOID_RENORM_EPS)
            else:
                scale = scaling
            outs = [s_ * scale for s_ in sig]
        return outs, win_ids

    return SimpleNamespace(token=token)


# --------------------------------------------------------------------------------------------------------
# Builder


def _build(plan: RL.RouteSortPlan) -> RouteSortKernel:
    from . import sort as S

    f = R._flydsl()
    flyc, fx, rocdl, T, Vector = f.flyc, f.fx, f.rocdl, f.T, f.Vector
    const_expr, range_constexpr = f.const_expr, f.range_constexpr
    d = S._device(plan.sort)  # the sort kernels' helpers: buffer access, LDS, block scan, pads, tail
    i32, lds_at = d.i32, d.lds_at
    lay = plan.route
    E, K, BM, B, W = plan.num_experts, plan.top_k, plan.block_m, plan.threads, plan.waves
    TPT, TPWG, OV = lay.tpt, lay.tokens_per_workgroup, lay.out_vec
    router = _router(f, lay, plan.mode)
    Shared = d.lds_struct(plan.lds_fields())
    name = kernel_name(plan)

    def peers(key):
        """(rank, count) of the lane among the lanes of its wave holding the same key (one ballot per bit)."""
        group = fx.Int64(-1)
        for b in range(plan.key_bits):
            bit = ((key >> b) & 1) != 0
            ballot = fx.Int64(rocdl.ballot(T.i64, R._ir(bit)))
            group = group & bit.select(ballot, ~ballot)
        below = rocdl.mbcnt_lo(T.i32, R._ir(i32(group)), R._ir(i32(0)))
        rank = i32(rocdl.mbcnt_hi(T.i32, R._ir(i32(group >> 32)), below))
        return rank, i32(fx.ctpop(R._ir(group)))

    def vec_or_scalar(values, ty):
        return values[0].ir_value() if len(values) == 1 else Vector.from_elements(values, ty).ir_value()

    @flyc.kernel(name=name, known_block_size=[B, 1, 1])
    def route_sort_kernel(logits: fx.Tensor, mask: fx.Tensor, weights: fx.Tensor, ids: fx.Tensor, sti: fx.Tensor,
                          sw: fx.Tensor, sei: fx.Tensor, nv: fx.Tensor, n_tokens: fx.Int32, n_passes: fx.Int32,
                          n_pairs: fx.Int32, n_steps: fx.Int32, length: fx.Int32, n_blocks: fx.Int32,
                          scaling: fx.Float32):
        tid = i32(fx.thread_idx.x)
        lane_in_wave = tid & (RL.WAVE - 1)
        wave = tid >> 6
        lane = tid & (TPT - 1)
        in_rsrc = d.rsrc(logits)
        w_rsrc = d.rsrc(weights)
        i_rsrc = d.rsrc(ids)
        mask_rsrc = d.rsrc(mask)
        dst = SimpleNamespace(sti=d.rsrc(sti), sw=d.rsrc(sw), sei=d.rsrc(sei))
        lds = fx.SharedAllocator().allocate(Shared).peek()
        keys_lds, wbits_lds, hist = lds.keys.ptr, lds.wbits.ptr, lds.hist.ptr
        pad = SL.pad_value(n_tokens, K)

        # 0. zero the histogram (B >= E threads)
        if tid < E:
            fx.ptr_store(i32(0), lds_at(hist, tid))
        fx.barrier()

        # 1. route every token; lane 0 of a token keeps its pairs in LDS and counts the kept ones
        for q in range(i32(0), n_passes, i32(1), unroll=1):
            token = i32(RL.token_of(q, tid, TPT, TPWG)[0])
            row = fx.min(token, n_tokens - 1)  # lanes past the last token route it again and store nothing
            outs, win_ids = router.token(in_rsrc, row, lane, lane_in_wave, scaling)
            if (lane == 0) & (token < n_tokens):
                first = RL.pair_index(token, 0, K)
                for j in range_constexpr(0, K, OV):
                    off = R._ir((first + j) * 4)
                    rocdl.raw_ptr_buffer_store(vec_or_scalar(outs[j:j + OV], fx.Float32), w_rsrc, off, R._ir(i32(0)))
                    rocdl.raw_ptr_buffer_store(vec_or_scalar(win_ids[j:j + OV], fx.Int32), i_rsrc, off, R._ir(i32(0)))
                for j in range_constexpr(K):
                    e = win_ids[j]
                    key = e
                    if const_expr(plan.has_mask):
                        flag = fx.Int8(rocdl.raw_ptr_buffer_load(T.i8, mask_rsrc, R._ir(e), R._ir(i32(0))))
                        key = (flag != 0).select(e, i32(E))
                    fx.ptr_store(key, lds_at(keys_lds, first + j))
                    fx.ptr_store(outs[j].bitcast(fx.Int32), lds_at(wbits_lds, first + j))
                    if const_expr(plan.has_mask):
                        if key < E:
                            fx.atomic_add(lds_at(hist, key), i32(1), syncscope=rocdl.SyncScope.Workgroup)
                    else:
                        fx.atomic_add(lds_at(hist, key), i32(1), syncscope=rocdl.SyncScope.Workgroup)
        fx.barrier()

        # 2. thread e: padded count -> run start (block scan); the counter becomes the cursor; pads
        count = i32(0)
        if tid < E:
            count = fx.ptr_load(lds_at(hist, tid))
        padded = SL.padded_count(count, BM)
        start, total = d.block_scan(padded, lane_in_wave, wave, W, lds.wave_total.ptr)
        if tid < E:
            fx.ptr_store(start, lds_at(hist, tid))
            d.pad_run(dst, start, count, padded, pad)
        if tid == 0:
            nv_rsrc = d.rsrc(nv)
            d.store_i32(total, nv_rsrc, 0)
            d.store_i32(n_tokens, nv_rsrc, 1)
        fx.barrier()

        # 3. wave 0 scatters the pairs in pair order; the other waves pad the tail
        if wave == RL.SCATTER_WAVE:
            for s in range(i32(0), n_steps, i32(1), unroll=1):
                p = i32(RL.walk_pair(s, lane_in_wave))
                inside = p < n_pairs
                src = inside.select(p, n_pairs - 1)
                key = inside.select(fx.ptr_load(lds_at(keys_lds, src)), i32(E))
                rank, group = peers(key)
                kept = key < E
                slot = lds_at(hist, kept.select(key, i32(0)))
                base = fx.ptr_load(slot)
                if kept:
                    dest = base + rank
                    d.store_i32(SL.packed_entry(p, K), dst.sti, dest)
                    d.store_i32(fx.ptr_load(lds_at(wbits_lds, src)), dst.sw, dest)
                    if dest % BM == 0:
                        d.store_i32(key, dst.sei, dest // BM)
                    if rank == 0:
                        fx.ptr_store(base + group, slot)
        else:
            d.fill_tail(dst, total, RL.tail_start(tid), i32(RL.tail_stride(B)), length, n_blocks, pad)

    @flyc.jit
    def launch(logits: fx.Tensor, mask: fx.Tensor, weights: fx.Tensor, ids: fx.Tensor, sti: fx.Tensor, sw: fx.Tensor,
               sei: fx.Tensor, nv: fx.Tensor, n_tokens: fx.Int32, n_passes: fx.Int32, n_pairs: fx.Int32,
               n_steps: fx.Int32, length: fx.Int32, n_blocks: fx.Int32, scaling: fx.Float32,
               stream: fx.Stream = fx.Stream(None)):
        route_sort_kernel(logits, mask, weights, ids, sti, sw, sei, nv, n_tokens, n_passes, n_pairs, n_steps, length,
                          n_blocks, scaling).launch(grid=(1, 1, 1), block=(B, 1, 1), stream=stream)

    return RouteSortKernel(plan=plan, name=name, launch=launch)


@lru_cache(maxsize=None)
def _build_cached(plan: RL.RouteSortPlan) -> RouteSortKernel:
    return _build(plan)


def build_route_sort_kernel(num_experts: int, top_k: int, block_m: int, dtype: str, arch: str, *, capacity: int,
                            mode: str = "softmax_renorm", has_mask: bool = False) -> RouteSortKernel:
    """The launcher of one (E, k, block_m, dtype, mode, mask, capacity, arch), built once per process.

    Plan errors (``ValueError`` naming the constraint) come from ``route_sort_layout.route_sort_plan``
    before FlyDSL is imported; FlyDSL traces and compiles at the first launch (or in
    ``compile_route_sort_kernel``)."""
    plan = RL.route_sort_plan(num_experts, top_k, block_m, has_mask, dtype, mode, arch, capacity)
    return _build_cached(plan)


# --------------------------------------------------------------------------------------------------------
# Compile-only (no GPU): the ISA, for the tests and for reading


def compile_route_sort_kernel(num_experts: int, top_k: int, block_m: int, dtype: str, arch: str, *, capacity: int,
                              mode: str = "softmax_renorm", has_mask: bool = False,
                              dump_dir: str | os.PathLike | None = None) -> str:
    """Compile one kernel for ``arch`` on this machine (``COMPILE_ONLY``) and return its AMDGPU assembly.

    Builds a fresh (uncached) launcher, so every call compiles and dumps. Raises RuntimeError with the
    reason when the toolchain is missing (see ``toolchain.compile_only_unavailable``)."""
    reason = compile_only_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot compile FlyDSL kernels here: {reason}")
    plan = RL.route_sort_plan(num_experts, top_k, block_m, has_mask, dtype, mode, arch, capacity)
    sizes = RL.route_sort_sizes(plan, capacity)  # placeholder sizes: the code is the same for every T
    with tempfile.TemporaryDirectory(prefix="flydsl_route_sort_") as tmp:
        out_dir = Path(dump_dir) if dump_dir is not None else Path(tmp)
        with compile_only_env(arch, out_dir):
            import flydsl.compiler as flyc

            kern = _build(plan)
            torch_dtype = {v: k for k, v in R.TORCH_DTYPES.items()}[dtype]
            args = [torch.empty((sizes.tokens, num_experts), dtype=torch_dtype),
                    torch.empty(num_experts, dtype=torch.uint8),
                    torch.empty((sizes.tokens, top_k), dtype=torch.float32),
                    torch.empty((sizes.tokens, top_k), dtype=torch.int32),
                    torch.empty(sizes.length, dtype=torch.int32), torch.empty(sizes.length, dtype=torch.float32),
                    torch.empty(sizes.blocks, dtype=torch.int32), torch.empty(2, dtype=torch.int32),
                    sizes.tokens, sizes.passes, sizes.pairs, sizes.steps, sizes.length, sizes.blocks, 1.0]
            flyc.compile(kern.launch, *args)
        return toolchain.dumped_isa(out_dir / kern.name, kern.name)


# --------------------------------------------------------------------------------------------------------
# Launcher with route_sort_ref's signature


def _device_arch(device: torch.device) -> str | None:
    return toolchain.device_arch(device)  # a module attribute: tests stand in a gfx942 device


def fused_unfit(logits: torch.Tensor, top_k: int, block_m: int, scoring: str = "softmax", renormalize: bool = True,
                order: str = "softmax_then_topk", correction_bias: torch.Tensor | None = None, n_group: int = 1,
                arch: str | None = None) -> str | None:
    """None when the one-launch kernel takes this call, else why not (``arch`` overrides the device's)."""
    arch = arch or _device_arch(logits.device)
    if arch is None:
        return f"{logits.device} is not an AMD gfx942/gfx950 GPU"
    if correction_bias is not None:
        return "correction_bias is not in the FlyDSL router"
    if n_group != 1:
        return "grouped top-k (n_group > 1) is not in the FlyDSL router"
    if logits.dtype not in R.TORCH_DTYPES:
        return f"logits dtype {logits.dtype} (the router reads bf16, f16, f32)"
    try:
        R.kernel_mode(scoring, renormalize, order)
    except ValueError as e:
        return str(e)
    tokens, experts = logits.shape
    if not L.max_row_bytes_ok(tokens, experts, R.TORCH_DTYPES[logits.dtype]):
        return "logits of 2 GiB or more (32-bit byte offsets)"
    return RL.fused_unfit(tokens, experts, top_k, block_m, R.TORCH_DTYPES[logits.dtype], arch)


def supports_route_sort(logits: torch.Tensor = None, top_k: int = None, block_m: int = None, scoring: str = "softmax",
                        order: str = "softmax_then_topk", correction_bias: torch.Tensor | None = None,
                        n_group: int = 1, renormalize: bool = True, **_) -> str | None:
    """None when the FlyDSL family takes this call: the one-launch kernel, or (past its limits) the FlyDSL
    router + sort kernels; else why not (for the dispatch). ``route_sort_flydsl`` picks between the two."""
    if _device_arch(logits.device) is None:
        return f"route_sort: {logits.device} is not an AMD gfx942/gfx950 GPU"
    fused = fused_unfit(logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group)
    if fused is None:
        return None
    from .route import supports_route

    route_reason = supports_route(logits, top_k, scoring, order, correction_bias, n_group)
    try:
        SL.check_shape(logits.shape[1], top_k, block_m)
        SL.check_offsets(logits.shape[0], top_k, logits.shape[1], block_m)
        sort_reason = None
    except ValueError as e:
        sort_reason = f"sort: {e}"
    if route_reason is None and sort_reason is None:
        return None  # route_sort_flydsl runs route_flydsl + sort_flydsl
    return f"route_sort: one launch: {fused}; separate: {route_reason or sort_reason}"


def route_sort_flydsl(logits, top_k, block_m, scoring="softmax", renormalize=True, order="softmax_then_topk",
                      correction_bias=None, n_group=1, topk_group=1, scaling=1.0, expert_mask=None):
    """``route_sort_ref``'s contract: the one-launch kernel when it fits (``fused_unfit``), else
    ``route_flydsl`` + ``sort_flydsl`` (each hands what it declines to its reference), so the results are
    always ``route_sort_ref``'s (up to the routers' f32 rounding and the order of exactly tied logits)."""
    reason = fused_unfit(logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group)
    if reason is not None:
        from ...stats import record_fallback
        from .route import route_flydsl
        from .sort import sort_flydsl

        record_fallback("route_sort", f"flydsl: one launch: {reason}; route + sort kernels")
        weights, ids = route_flydsl(logits, top_k, scoring, renormalize, order, correction_bias, n_group,
                                    topk_group, scaling)
        return (*sort_flydsl(ids, weights, logits.shape[1], block_m, expert_mask), weights, ids)
    import flydsl.expr as fx

    x = logits.contiguous()
    if x.data_ptr() % 16:  # wide loads want the row base aligned
        x = x.clone()
    tokens, num_experts = x.shape
    dtype = R.TORCH_DTYPES[x.dtype]
    arch = _device_arch(x.device)
    plan = RL.route_sort_plan(num_experts, top_k, block_m, expert_mask is not None, dtype,
                              R.kernel_mode(scoring, renormalize, order), arch, RL.capacity_tokens(tokens, top_k))
    sizes = RL.route_sort_sizes(plan, tokens)
    device = x.device
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=device)
    ids = torch.empty((tokens, top_k), dtype=torch.int32, device=device)
    sti = torch.empty(sizes.length, dtype=torch.int32, device=device)
    sw = torch.empty(sizes.length, dtype=torch.float32, device=device)
    sei = torch.empty(sizes.blocks, dtype=torch.int32, device=device)
    nv = torch.empty(2, dtype=torch.int32, device=device)
    mask = expert_mask.contiguous().view(torch.uint8) if expert_mask is not None else ids
    kern = _build_cached(plan)
    kern.launch(x, mask, weights, ids, sti, sw, sei, nv, tokens, sizes.passes, sizes.pairs, sizes.steps, sizes.length,
                sizes.blocks, float(scaling), stream=fx.Stream(torch.cuda.current_stream(device)))
    return sti, sw, sei, nv, weights, ids
