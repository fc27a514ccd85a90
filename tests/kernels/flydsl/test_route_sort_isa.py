"""Compile-only tests: the FlyDSL fused route+sort kernel compiled for gfx942 and gfx950 on this CPU machine,
and its ISA checked against the plan (kernels/flydsl/route_sort.py, route_sort_layout.py): one kernel of
``plan.threads`` threads; LDS exactly the plan's (pair keys + weight bits for ``capacity * k`` pairs, E
counters, one total per wave); 4 barriers (histogram zeroed, routing done, block scan, scan done); the
router's butterfly (DPP quad_perm / row_half_mirror / row_ror:8, ds_swizzle + ds_bpermute on gfx942,
v_permlane16/32_swap on gfx950) 2k times per step (+1 for the full softmax sum); k ``ds_add_u32`` (the
histogram) and 2k dwords of LDS stores (the pairs); the scan's DPP row_shr and four v_readlanes; the
scatter wave's one v_mbcnt pair and two v_bcnt; the planned buffer loads and stores and nothing else; no
scratch, no spills, at most 64 VGPRs.

Needs ``flydsl==0.4.2`` and an ld.lld (``bash .ci/setup_flydsl.sh``); skips with the reason otherwise. The
default set (Qwen3-30B (128, 8), GPT-OSS (32, 4), DeepSeek-size (256, 8) with a mask, both archs) compiles in
~15 s; ``-m slow`` adds the edge shapes.
"""
import re

import pytest

from inductor_moe.kernels.flydsl import layout as L
from inductor_moe.kernels.flydsl import route_sort_layout as RL
from inductor_moe.kernels.flydsl.toolchain import compile_only_unavailable

_REASON = compile_only_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"FlyDSL compile-only: {_REASON}")

# (E, k, block_m, logits dtype, mode, has_mask, capacity tokens)
BOTH = [(128, 8, 32, "bf16", "softmax_renorm", False, 16),  # Qwen3-30B-A3B decode
        (32, 4, 64, "bf16", "softmax_renorm", False, 8),  # GPT-OSS (topk_then_softmax == renormalized)
        (256, 8, 32, "bf16", "sigmoid_renorm", True, 16)]  # DeepSeek-size, expert parallel
SLOW = [(257, 9, 32, "bf16", "softmax_renorm", True, 16, "gfx942"),  # odd E: 2-byte loads, 5 waves
        (512, 10, 128, "f16", "softmax_full", False, 16, "gfx950"),  # 8 waves, full-row softmax sum
        (8, 2, 16, "f32", "softmax_full", False, 1024, "gfx942"),  # 2 lanes per token, up to 8 passes
        (64, 6, 16, "bf16", "softmax_renorm", True, 8, "gfx950"),
        (16, 1, 16, "bf16", "sigmoid", False, 2048, "gfx942")]  # the largest capacity: 16 KiB of LDS
CASES = [c + (a,) for c in BOTH for a in ("gfx942", "gfx950")] + [pytest.param(c, marks=pytest.mark.slow) for c in SLOW]

LOAD = {16: "buffer_load_dwordx4", 8: "buffer_load_dwordx2", 4: "buffer_load_dword", 2: "buffer_load_[us]short"}
STORE = {4: "buffer_store_dwordx4", 2: "buffer_store_dwordx2", 1: "buffer_store_dword"}
CROSS_LANE = {
    "dpp_row_half_mirror": r"row_half_mirror",
    "dpp_row_ror8": r"row_ror:8",
    "ds_swizzle": r"\bds_swizzle_b32\b",
    "ds_bpermute": r"\bds_bpermute_b32\b",
    "permlane16_swap": r"\bv_permlane16_swap_b32",
    "permlane32_swap": r"\bv_permlane32_swap_b32",
}
DS_DWORDS = {"b32": 1, "b64": 2, "b96": 3, "b128": 4}

_isa_cache = {}


def _case_id(c):
    return "-".join(map(str, c))


def _isa(case, tmp_path_factory):
    if case not in _isa_cache:
        from inductor_moe.kernels.flydsl.route_sort import compile_route_sort_kernel

        e, k, bm, dt, mode, mask, cap, arch = case
        _isa_cache[case] = compile_route_sort_kernel(e, k, bm, dt, arch, capacity=cap, mode=mode, has_mask=mask,
                                                     dump_dir=tmp_path_factory.mktemp("isa"))
    return _isa_cache[case]


def _body(isa: str, name: str) -> list[str]:
    start = isa.index(f"\n{name}:\n")
    end = isa.index(".Lfunc_end", start)
    lines = isa[start:end].splitlines()[2:]
    return [ln.strip() for ln in lines if re.match(r"\s+[a-z_][a-z0-9_]*(\s|$)", ln)]


def _count(lines, pattern) -> int:
    return sum(1 for ln in lines if re.search(pattern, ln))


def _meta(isa: str, key: str) -> int:
    m = re.search(rf"^\s*(?:- )?\.{key}:\s+(\d+)\s*$", isa, re.M)
    assert m, f".{key} missing from the metadata"
    return int(m.group(1))


def _ds_dwords(body, op: str) -> int:
    """Dwords moved by the LDS ``op`` ("write" / "read") instructions (ds_write2 moves two elements)."""
    total = 0
    for ln in body:
        m = re.match(rf"ds_{op}(2(?:st64)?)?_(b32|b64|b96|b128)\b", ln)
        if m:
            total += DS_DWORDS[m.group(2)] * (2 if m.group(1) else 1)
    return total


def _estimate(plan: RL.RouteSortPlan) -> int:
    """Rough instruction count: the router's (test_route_isa's estimate), then per slot a few LDS stores,
    atomics (and a mask load), the scan and pads (~200), the scatter walk (~8 per key bit + 40)."""
    lay, k = plan.route, plan.top_k
    steps = len(lay.steps)
    route = k * (5 * lay.vpt + 10 * steps) + 4 * lay.vpt + 10 * k
    if plan.mode == "softmax_full":
        route += 6 * lay.vpt + 10 * steps
    return route + 6 * k + (10 * k if plan.has_mask else 0) + 200 + 8 * plan.key_bits + 40


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_isa_keeps_the_plan(case, tmp_path_factory):
    from inductor_moe.kernels.flydsl.route_sort import kernel_name

    experts, top_k, block_m, dtype, mode, has_mask, capacity, arch = case
    plan = RL.route_sort_plan(experts, top_k, block_m, has_mask, dtype, mode, arch, capacity)
    lay = plan.route
    isa = _isa(case, tmp_path_factory)
    name = kernel_name(plan)
    assert re.search(rf'\.amdgcn_target "amdgcn-amd-amdhsa-[a-z]*-{arch}"', isa)
    assert _count(isa.splitlines(), r"^\s*\.amdhsa_kernel ") == 1
    assert int(re.search(r"\.reqd_workgroup_size:\s+- (\d+)", isa).group(1)) == plan.threads
    body = _body(isa, name)

    # LDS: exactly the plan's allocation; the phases' barriers; the histogram's atomics; the pairs' stores
    assert _meta(isa, "group_segment_fixed_size") == plan.lds_bytes() <= RL.LDS_BUDGET[arch]
    assert _count(body, r"^s_barrier\b") == RL.BARRIERS
    assert _count(body, r"^ds_add_u32\b") == top_k, "one LDS atomic add per slot of a token"
    assert not _count(body, r"^ds_(add_rtn|cmpst|wrxchg|min|max|inc|dec)"), "no other LDS atomics"
    # 2k dwords of pairs (keys + weight bits) + zeroing the counters, the wave total, two cursor writes
    assert _ds_dwords(body, "write") == 2 * top_k + 4
    # count, key, cursor, weight bits + the wave totals
    assert _ds_dwords(body, "read") == 4 + plan.waves

    # cross-lane: the router's butterfly 2k times per step (+1 for the full softmax sum), the scan's DPP
    # row_shr once each and four v_readlanes, the scatter's v_mbcnt pair and two v_bcnt
    exchanges = 2 * top_k + (1 if mode == "softmax_full" else 0)
    used = set()
    for distance, step in lay.steps:
        used.add(step)
        if step == "dpp_quad_perm":
            ctrl = "quad_perm:[1,0,3,2]" if distance == 1 else "quad_perm:[2,3,0,1]"
            assert _count(body, re.escape(ctrl)) == exchanges, (step, distance)
        else:
            assert _count(body, CROSS_LANE[step]) == exchanges, step
    for step, pattern in CROSS_LANE.items():
        if step not in used:
            assert _count(body, pattern) == 0, f"unexpected {step}"
    if arch == "gfx942":
        assert not used & {"permlane16_swap", "permlane32_swap"}
    else:
        assert not used & {"ds_swizzle", "ds_bpermute"}
    for shift in (1, 2, 4, 8):
        assert _count(body, rf"row_shr:{shift}\b") == 1, shift
    assert all("_dpp" in ln for ln in body if "quad_perm" in ln or "row_" in ln)
    for lane in (15, 31, 47, 63):
        assert _count(body, rf"^v_readlane_b32 s\d+, v\d+, {lane}$") == 1, lane
    assert _count(body, r"^v_mbcnt_lo_u32_b32") == _count(body, r"^v_mbcnt_hi_u32_b32") == 1
    assert _count(body, r"^v_bcnt_u32_b32") == 2

    # memory: the router's chunk loads (+ k mask bytes); weights/ids stores; scatter (entry, weight, block
    # id), pads (2), tail (3) dword stores and num_valid (dwordx2); nothing else touches memory
    load = LOAD[lay.vec * lay.elem_bytes]
    assert _count(body, rf"^{load}\b") == lay.cpt, load
    assert _count(body, r"^buffer_load_ubyte\b") == (top_k if has_mask else 0)
    assert _count(body, r"^buffer_load") == lay.cpt + (top_k if has_mask else 0)
    stores = {1: 3 + 2 + 3, 2: 1, 4: 0}
    stores[lay.out_vec] += 2 * (top_k // lay.out_vec)
    for width, count in stores.items():
        assert _count(body, rf"^{STORE[width]}\b") == count, STORE[width]
    assert _count(body, r"^buffer_store") == sum(stores.values())
    assert not _count(body, r"^(scratch_|flat_|global_)"), "no scratch / flat / global memory access"
    assert not _count(body, r"^s_(swappc|setpc|call)"), "no calls into device libraries"

    # resources: no spills, no scratch
    assert _meta(isa, "private_segment_fixed_size") == 0
    assert _meta(isa, "vgpr_spill_count") == 0 and _meta(isa, "sgpr_spill_count") == 0
    assert re.search(rf"\.set \.L{re.escape(name)}\.private_seg_size, 0\b", isa)
    assert ".amdhsa_private_segment_fixed_size 0" in isa
    assert _meta(isa, "vgpr_count") <= 64
    assert _meta(isa, "agpr_count") == 0

    est = _estimate(plan)
    assert 0.75 * est <= len(body) <= 1.5 * est, (len(body), est)


def test_builder_is_cached_and_checks_the_plan_first():
    from inductor_moe.kernels.flydsl.route_sort import build_route_sort_kernel

    a = build_route_sort_kernel(128, 8, 32, "bf16", "gfx942", capacity=16)
    assert build_route_sort_kernel(128, 8, 32, "bf16", "gfx942", capacity=16) is a
    assert a.name == "moe_route_sort_e128_k8_bm32_bf16_softmax_renorm_cap16_gfx942"
    assert a.plan.route == L.route_layout(128, 8, "bf16", "gfx942", 256)
    with pytest.raises(ValueError, match="top_k"):
        build_route_sort_kernel(8, 9, 32, "bf16", "gfx942", capacity=8)
    with pytest.raises(ValueError, match="num_experts"):
        build_route_sort_kernel(1024, 8, 32, "bf16", "gfx942", capacity=8)
    with pytest.raises(ValueError, match="capacity"):
        build_route_sort_kernel(128, 8, 32, "bf16", "gfx942", capacity=257)
