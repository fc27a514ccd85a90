"""Compile-only tests: the FlyDSL moe_sorting kernels compiled for gfx942 and gfx950 on this CPU machine,
and their ISA checked against the plan (kernels/flydsl/sort.py, sort_layout.py): one kernel on the tiny and
small paths and three on the large one, the LDS histogram (ds_ instructions, LDS size from the plan), the barriers,
one DPP row_shr scan with its four v_readlanes where a scan is planned, one v_mbcnt pair and two v_bcnt per
walk over the pairs, the buffer loads and stores each kernel plans (and no other memory access), no
scratch, no spills, and a plausible size. The tiny path (one wave) promises NO s_barrier (its
``fx.barrier()`` calls lower to wave barriers), one ballot walk, one wave scan (DPP row_shr 1/2/4/8 + four
v_readlane), its 64 * ceil(E / 64) i32 LDS counters, and dwordx4 tail stores when block_m % 4 == 0.

Needs ``flydsl==0.4.2`` and an ld.lld (``bash .ci/setup_flydsl.sh``); skips with the reason otherwise.
"""
import re

import pytest

from inductor_moe.kernels.flydsl import sort_layout as SL
from inductor_moe.kernels.flydsl.toolchain import compile_only_unavailable

_REASON = compile_only_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"FlyDSL compile-only: {_REASON}")

# (E, k, block_m, path, has_mask, ids dtype) compiled for both archs, and a few variants for one each
BOTH = [(128, 8, 32, "small", False, "i32"), (32, 4, 64, "small", False, "i32"), (8, 2, 16, "small", False, "i32"),
        (128, 8, 32, "large", False, "i32")]
ONE = [(257, 9, 32, "small", True, "i32", "gfx942"), (512, 10, 128, "large", False, "i64", "gfx950"),
       (8, 2, 1, "large", True, "i64", "gfx942")]
# the tiny path: (128, 8) on both archs always; (32, 4) and (256, 8) on both archs, and the scalar-tail
# variant with a mask and int64 ids, under -m slow (CI compile time)
TINY = [(128, 8, 32, "tiny", False, "i32")]
TINY_SLOW = [(32, 4, 64, "tiny", False, "i32"), (256, 8, 16, "tiny", False, "i32")]
TINY_ONE = [(257, 9, 1, "tiny", True, "i64", "gfx950")]
CASES = ([c + (a,) for c in BOTH + TINY for a in ("gfx942", "gfx950")] + ONE + TINY_ONE
         + [pytest.param(c + (a,), marks=pytest.mark.slow) for c in TINY_SLOW for a in ("gfx942", "gfx950")])

_isa_cache = {}


def _isa(case, tmp_path_factory):
    if case not in _isa_cache:
        from inductor_moe.kernels.flydsl.sort import compile_sort_kernels

        e, k, bm, path, mask, ids, arch = case
        _isa_cache[case] = compile_sort_kernels(e, k, bm, arch, path=path, has_mask=mask, ids_dtype=ids,
                                                dump_dir=tmp_path_factory.mktemp("isa"))
    return _isa_cache[case]


def _body(isa: str, name: str) -> list[str]:
    """The kernel's instructions (labels, directives and comments dropped)."""
    start = isa.index(f"\n{name}:\n")
    end = isa.index(".Lfunc_end", start)
    lines = isa[start:end].splitlines()[2:]
    return [ln.strip() for ln in lines if re.match(r"\s+[a-z_][a-z0-9_]*(\s|$)", ln)]


def _count(lines, pattern) -> int:
    return sum(1 for ln in lines if re.search(pattern, ln))


def _meta(isa: str, name: str, key: str) -> int:
    """A field of the kernel's entry in the amdhsa.kernels metadata."""
    entries = isa[isa.index("amdhsa.kernels:"):].split("\n  - ")
    (entry,) = [e for e in entries if re.search(rf"^\s*\.name:\s+{name}\s*$", e, re.M)]
    m = re.search(rf"^\s*\.{key}:\s+(\d+)\s*$", entry, re.M)
    assert m, f".{key} missing from {name}'s metadata"
    return int(m.group(1))


def _threads(isa: str, name: str) -> int:
    entries = isa[isa.index("amdhsa.kernels:"):].split("\n  - ")
    (entry,) = [e for e in entries if re.search(rf"^\s*\.name:\s+{name}\s*$", e, re.M)]
    return int(re.search(r"\.reqd_workgroup_size:\s+- (\d+)", entry).group(1))


def _plan(plan: SL.SortPlan, kind: str) -> dict:
    """What each kernel is designed to hold: walks over the pairs, block scans, barriers, threads, LDS
    fields, and buffer loads / stores (dword, dwordx2, ubyte)."""
    ids_load = "x2" if plan.ids_dtype == "i64" else "dword"
    pads = 2 if plan.block_m > 1 else 0  # block_m = 1 has no pads inside runs
    ept = plan.experts_per_chunk_thread
    loads = {"dword": 0, "x2": 0, "ubyte": 0}
    stores = {"dword": 0, "x2": 0, "x4": 0}
    if kind == "tiny":  # one wave, no s_barrier: fx.barrier() is a wave barrier there
        walks, scans, barriers, threads, lds = 1, 1, 0, SL.WAVE, plan.tiny_lds()
        loads["dword"] += 1  # weights
        stores.update(dword=3 + pads, x2=1)  # entry, weight, block id; pads; num_valid
        if plan.tiny_tail_vec == 4:
            stores.update(dword=stores["dword"] + 1, x4=2)  # tail blocks; tail entries and weights, 4 a store
        else:
            stores.update(dword=stores["dword"] + 3)
    elif kind == "small":
        walks, scans, barriers, threads, lds = 2, 1, 3, plan.small_threads, plan.small_lds()
        loads["dword"] += 1  # weights
        stores.update(dword=3 + pads + 3, x2=1)  # entry, weight, block id; pads; tail (2 + blocks); num_valid
    elif kind == "count":
        walks, scans, barriers, threads, lds = 1, 0, 1, SL.CHUNK_THREADS, plan.chunk_lds()
        stores.update(dword=ept)  # ws[c, e]
    elif kind == "scan":
        walks, scans, barriers, threads, lds = 0, 1, 3, SL.SCAN_THREADS, plan.scan_lds()
        loads["dword"] += 2  # ws in both passes
        stores.update(dword=1 + pads, x2=1)  # ws; pads; num_valid
    else:  # scatter
        walks, scans, barriers, threads, lds = 2, 0, 2, SL.CHUNK_THREADS, plan.chunk_lds()
        loads["dword"] += 1 + ept + 1  # weights, ws[c, e], num_valid[0]
        stores.update(dword=6)  # entry, weight, block id; tail
    loads[ids_load] += walks
    loads["ubyte"] += walks if plan.has_mask else 0
    walk_size = 8 * plan.key_bits + 40  # ~6 VALU per ballot bit, loads, rank and count
    size = {"tiny": 120 + walk_size + 16 * plan.tiny_epl,
            "small": 150 + 2 * walk_size + 12 * plan.small_waves, "count": 50 + walk_size + 10 * ept,
            "scan": 150 + 4 * plan.scan_rows, "scatter": 150 + 2 * walk_size + 10 * ept}[kind]
    return dict(walks=walks, scans=scans, barriers=barriers, threads=threads, lds=lds, loads=loads,
                stores=stores, size=size)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_isa_keeps_the_plan(case, tmp_path_factory):
    from inductor_moe.kernels.flydsl.sort import kernel_names

    experts, top_k, block_m, path, has_mask, ids_dtype, arch = case
    plan = SL.sort_plan(experts, top_k, block_m, has_mask, ids_dtype, arch)
    isa = _isa(case, tmp_path_factory)
    assert re.search(rf'\.amdgcn_target "amdgcn-amd-amdhsa-[a-z]*-{arch}"', isa)
    names = kernel_names(plan, path)
    kinds = (path,) if path in ("tiny", "small") else ("count", "scan", "scatter")
    assert _count(isa.splitlines(), r"^\s*\.amdhsa_kernel ") == len(names) == len(kinds)

    for name, kind in zip(names, kinds):
        want = _plan(plan, kind)
        body = _body(isa, name)
        assert _threads(isa, name) == want["threads"], name

        # LDS: the histogram rows (and scan slots) of the plan, read and written with ds_ instructions
        gs = _meta(isa, name, "group_segment_fixed_size")
        assert 4 * sum(want["lds"].values()) <= gs <= SL.lds_bytes(want["lds"]), (name, gs, want["lds"])
        assert _count(body, r"^ds_(read|load)") and _count(body, r"^ds_(write|store)"), name
        assert _count(body, r"^s_barrier") == want["barriers"], name

        # cross-lane: the ballots' ranks and counts, the DPP scans; nothing through ds_bpermute / swizzle
        assert _count(body, r"^v_mbcnt_lo_u32_b32") == _count(body, r"^v_mbcnt_hi_u32_b32") == want["walks"], name
        assert _count(body, r"^v_bcnt_u32_b32") == 2 * want["walks"], name
        for shift in SL.SCAN_SHIFTS:
            assert _count(body, rf"row_shr:{shift}\b") == want["scans"], (name, shift)
        assert all("_dpp" in ln for ln in body if "row_shr" in ln)
        for lane in SL.ROW_LAST_LANES:
            assert _count(body, rf"^v_readlane_b32 s\d+, v\d+, {lane}$") == want["scans"], (name, lane)
        assert not _count(body, r"^ds_(bpermute|permute|swizzle)"), name

        # memory: the planned buffer loads and stores, nothing else touches global memory
        loads, stores = want["loads"], want["stores"]
        assert _count(body, r"^buffer_load_dword\b") == loads["dword"], name
        assert _count(body, r"^buffer_load_dwordx2\b") == loads["x2"], name
        assert _count(body, r"^buffer_load_ubyte\b") == loads["ubyte"], name
        assert _count(body, r"^buffer_load") == sum(loads.values()), name
        assert _count(body, r"^buffer_store_dword\b") == stores["dword"], name
        assert _count(body, r"^buffer_store_dwordx2\b") == stores["x2"], name
        assert _count(body, r"^buffer_store_dwordx4\b") == stores["x4"], name
        assert _count(body, r"^buffer_store") == sum(stores.values()), name
        assert not _count(body, r"^(scratch_|flat_|global_)"), "no scratch / flat / global memory access"
        assert not _count(body, r"^s_(swappc|setpc|call)"), "no calls into device libraries"

        # resources: no spills, no scratch, registers for 8 waves per SIMD
        assert _meta(isa, name, "private_segment_fixed_size") == 0
        assert _meta(isa, name, "vgpr_spill_count") == 0 and _meta(isa, name, "sgpr_spill_count") == 0
        assert re.search(rf"\.set \.L{re.escape(name)}\.private_seg_size, 0\b", isa)
        assert _meta(isa, name, "vgpr_count") <= 64, name
        assert _meta(isa, name, "agpr_count") == 0

        # size: within -30% / +50% of the plan's estimate
        assert 0.7 * want["size"] <= len(body) <= 1.5 * want["size"], (name, len(body), want["size"])


def test_builder_is_cached_and_checks_the_plan_first():
    # building traces nothing yet: FlyDSL compiles at the first launch (or compile_sort_kernels)
    from inductor_moe.kernels.flydsl.sort import build_sort_kernel

    a = build_sort_kernel(128, 8, 32, "gfx942", path="small")
    assert build_sort_kernel(128, 8, 32, "gfx942", path="small") is a
    b = build_sort_kernel(128, 8, 32, "gfx942", path="large", has_mask=True, ids_dtype="i64")
    assert b.names[0].startswith("moe_sort_count_e128_k8_bm32_i64_mask") and len(b.names) == 3
    t = build_sort_kernel(128, 8, 32, "gfx942", path="tiny")
    assert t.names == ("moe_sort_tiny_e128_k8_bm32_i32_gfx942",) and t is not a
    with pytest.raises(ValueError, match="num_experts"):
        build_sort_kernel(513, 8, 32, "gfx942", path="small")
    with pytest.raises(ValueError, match="path"):
        build_sort_kernel(8, 2, 16, "gfx942", path="medium")
