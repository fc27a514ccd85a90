"""Compile-only tests: the FlyDSL router compiled for gfx942 and gfx950 on this CPU machine, and its ISA
checked against what the design promises (kernels/flydsl/route.py): the butterfly's cross-lane
instructions and how many, one wide load per chunk, vector stores, no LDS, no scratch, a plausible size.

Needs ``flydsl==0.4.2`` and an ld.lld (``bash .ci/setup_flydsl.sh``); skips with the reason otherwise.
"""
import re

import pytest

from inductor_moe.kernels.flydsl import layout as L
from inductor_moe.kernels.flydsl.toolchain import compile_only_unavailable

_REASON = compile_only_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"FlyDSL compile-only: {_REASON}")

# (E, k, dtype, mode) compiled for both archs, and a few more variants for one each
BOTH = [(128, 8, "bf16", "softmax_renorm"), (32, 4, "bf16", "softmax_renorm"), (257, 9, "bf16", "softmax_renorm")]
ONE = [(512, 10, "f16", "softmax_full", "gfx942"), (60, 4, "f32", "sigmoid_renorm", "gfx950"),
       (8, 2, "bf16", "softmax_full", "gfx942"), (160, 8, "f32", "softmax_renorm", "gfx950")]
CASES = [(e, k, d, m, a) for (e, k, d, m) in BOTH for a in ("gfx942", "gfx950")] + ONE

LOAD = {16: "buffer_load_dwordx4", 8: "buffer_load_dwordx2", 4: "buffer_load_dword", 2: "buffer_load_[us]short"}
STORE = {4: "buffer_store_dwordx4", 2: "buffer_store_dwordx2", 1: "buffer_store_dword"}
CROSS_LANE = {  # butterfly instruction -> how it reads in the ISA
    "dpp_quad_perm": None,  # counted per control below
    "dpp_row_half_mirror": r"row_half_mirror",
    "dpp_row_ror8": r"row_ror:8",
    "ds_swizzle": r"\bds_swizzle_b32\b",
    "ds_bpermute": r"\bds_bpermute_b32\b",
    "permlane16_swap": r"\bv_permlane16_swap_b32",
    "permlane32_swap": r"\bv_permlane32_swap_b32",
}

_isa_cache = {}


def _isa(case, tmp_path_factory):
    if case not in _isa_cache:
        from inductor_moe.kernels.flydsl.route import compile_route_kernel

        e, k, d, m, a = case
        _isa_cache[case] = compile_route_kernel(e, k, d, a, mode=m, dump_dir=tmp_path_factory.mktemp("isa"))
    return _isa_cache[case]


def _body(isa: str, name: str) -> list[str]:
    """The kernel's instructions (labels, directives and comments dropped)."""
    start = isa.index(f"\n{name}:\n")
    end = isa.index("s_endpgm", start)
    lines = isa[start:end + len("s_endpgm")].splitlines()[2:]
    return [ln.strip() for ln in lines if re.match(r"\s+[a-z_][a-z0-9_]*(\s|$)", ln)]


def _count(lines, pattern) -> int:
    return sum(1 for ln in lines if re.search(pattern, ln))


def _meta(isa: str, key: str) -> int:
    m = re.search(rf"^\s*(?:- )?\.{key}:\s+(\d+)\s*$", isa, re.M)
    assert m, f".{key} missing from the metadata"
    return int(m.group(1))


def _estimate(lay: L.RouteLayout, mode: str) -> int:
    """Rough VALU/SALU instruction count: per round a lane argmax (~3 per slot), a butterfly (~10 per step),
    retiring the winner (~2 per slot); loads and keys (~4 per slot); ~10 per weight."""
    steps = len(lay.steps)
    per_round = 3 * lay.vpt + 10 * steps + 2 * lay.vpt
    extra = 4 * lay.vpt + 10 * lay.top_k + (6 * lay.vpt + 10 * steps if mode == "softmax_full" else 0)
    return lay.top_k * per_round + extra


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_isa_keeps_the_design(case, tmp_path_factory):
    from inductor_moe.kernels.flydsl.route import kernel_name

    experts, top_k, dtype, mode, arch = case
    lay = L.route_layout(experts, top_k, dtype, arch)
    isa = _isa(case, tmp_path_factory)
    name = kernel_name(lay, mode)
    assert re.search(rf'\.amdgcn_target "amdgcn-amd-amdhsa-[a-z]*-{arch}"', isa)
    body = _body(isa, name)

    # cross-lane: every butterfly step exchanges the (key, expert) pair once per round (and the row sum
    # once more for softmax_then_topk without renormalization); nothing else crosses lanes
    exchanges = 2 * top_k + (1 if mode == "softmax_full" else 0)
    swaps = {"permlane16_swap", "permlane32_swap"}
    for distance, step in lay.steps:
        if step == "dpp_quad_perm":
            ctrl = "quad_perm:[1,0,3,2]" if distance == 1 else "quad_perm:[2,3,0,1]"
            assert _count(body, re.escape(ctrl)) == exchanges, (step, distance)
        else:
            assert _count(body, CROSS_LANE[step]) == exchanges, step
    used = {s for _, s in lay.steps}
    for step, pattern in CROSS_LANE.items():
        if step not in used and pattern is not None:
            assert _count(body, pattern) == 0, f"unexpected {step}"
    if lay.tpt == 1:
        assert not any("_dpp" in ln or ln.startswith("ds_") for ln in body), "one lane per token: no exchange"
    if arch == "gfx942":
        assert not used & swaps
    elif lay.tpt == 64:
        assert {"permlane16_swap", "permlane32_swap"} <= used and not _count(body, r"^ds_")
    assert all("_dpp" in ln for ln in body if "quad_perm" in ln or "row_" in ln)

    # memory: one wide load per chunk, k/out_vec vector stores per output, nothing else touches memory
    load = LOAD[lay.vec * lay.elem_bytes]
    assert _count(body, rf"^{load}\b") == lay.cpt, load
    assert _count(body, r"^buffer_load") == lay.cpt
    store = STORE[lay.out_vec]
    assert _count(body, rf"^{store}\b") == 2 * (top_k // lay.out_vec), store
    assert _count(body, r"^buffer_store") == 2 * (top_k // lay.out_vec)
    assert not _count(body, r"^(scratch_|flat_|global_)"), "no scratch / flat / global memory access"
    assert not _count(body, r"^ds_(read|write|load|store)"), "no LDS traffic"
    assert not _count(body, r"^s_barrier"), "no barrier: reductions stay in the wave"
    assert not _count(body, r"^s_(swappc|setpc|call)"), "no calls into device libraries"

    # resources: no spills, no scratch, no LDS, registers for full occupancy-ish
    assert _meta(isa, "private_segment_fixed_size") == 0
    assert _meta(isa, "group_segment_fixed_size") == 0
    assert _meta(isa, "vgpr_spill_count") == 0 and _meta(isa, "sgpr_spill_count") == 0
    assert re.search(rf"\.set \.L{re.escape(name)}\.private_seg_size, 0\b", isa)
    assert ".amdhsa_private_segment_fixed_size 0" in isa
    assert "ScratchSize" not in isa or re.search(r"ScratchSize:\s*0\b", isa)
    assert _meta(isa, "vgpr_count") <= 64, "the kernel should fit 64 VGPRs (8 waves per SIMD)"
    assert _meta(isa, "agpr_count") == 0

    # size: within -25% / +50% of the design's estimate
    est = _estimate(lay, mode)
    assert 0.75 * est <= len(body) <= 1.5 * est, (len(body), est)


def test_builder_is_cached_and_checks_layout_first():
    # building traces nothing yet: FlyDSL compiles at the first launch (or compile_route_kernel)
    from inductor_moe.kernels.flydsl.route import build_route_kernel

    a = build_route_kernel(128, 8, "bf16", "gfx942")
    assert build_route_kernel(128, 8, "bf16", "gfx942") is a
    assert a.layout.tpt == 16 and a.name.startswith("moe_route_e128_k8_bf16")
    with pytest.raises(ValueError, match="top_k"):
        build_route_kernel(8, 9, "bf16", "gfx942")
    with pytest.raises(ValueError, match="mode"):
        build_route_kernel(8, 2, "bf16", "gfx942", mode="nope")
