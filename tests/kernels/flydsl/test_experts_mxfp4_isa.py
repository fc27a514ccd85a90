"""Compile-only tests: the FlyDSL A16W4 MoE GEMMs (kernels/flydsl/experts_mxfp4.py) compiled for gfx942 and
gfx950 on this CPU machine, and their ISA checked against the tile plan (mxfp4_layout.py): one kernel per
stage, the MFMA of the arch (gfx942 v_mfma_f32_16x16x16_bf16, gfx950 v_mfma_f32_16x16x32_bf16) exactly
``plan.mfma_per_iter`` times (the K loop is a loop, not unrolled), the dequantization (gfx942: 10
v_perm_b32 per FP4 dword; gfx950: 4 v_cvt_scalef32_pk_bf16_fp4), the planned buffer loads and stores,
no LDS (the plan uses none), no scratch, no spills, registers for 4+ waves per SIMD.

Shapes: GPT-OSS-20B (H = I = 2880 = 90 * 32: 45 iterations of 2 scale blocks; 2880 = 22.5 * 128 columns,
so the last workgroup column is masked) and a small one (64/64) for both archs; Qwen3-30B-A3B and an odd
block count (H = 288: 9 blocks, 1 per iteration) are @slow. Needs ``flydsl==0.4.2`` and an ld.lld
(``bash .ci/setup_flydsl.sh``); skips with the reason otherwise.
"""
import re

import pytest

from inductor_moe.kernels.flydsl import mxfp4_layout as XL
from inductor_moe.kernels.flydsl.toolchain import compile_only_unavailable

_REASON = compile_only_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"FlyDSL compile-only: {_REASON}")

# (E, H, I, arch)
FAST = [(32, 2880, 2880, a) for a in ("gfx942", "gfx950")] + [(8, 64, 64, a) for a in ("gfx942", "gfx950")]
SLOW = [(128, 2048, 768, "gfx942"), (128, 2048, 768, "gfx950"), (16, 288, 160, "gfx942")]
CASES = [pytest.param(c, id="-".join(map(str, c))) for c in FAST] + [
    pytest.param(c, id="-".join(map(str, c)), marks=pytest.mark.slow) for c in SLOW]

_isa_cache = {}


def _isa(case, tmp_path_factory):
    if case not in _isa_cache:
        from inductor_moe.kernels.flydsl.experts_mxfp4 import compile_experts_mxfp4_kernels

        e, h, i, arch = case
        _isa_cache[case] = compile_experts_mxfp4_kernels(e, h, i, arch, dump_dir=tmp_path_factory.mktemp("isa"))
    return _isa_cache[case]


def _body(isa: str, name: str) -> list[str]:
    start = isa.index(f"\n{name}:\n")
    end = isa.index(".Lfunc_end", start)
    lines = isa[start:end].splitlines()[2:]
    return [ln.strip() for ln in lines if re.match(r"\s+[a-z_][a-z0-9_]*(\s|$)", ln)]


def _count(lines, pattern) -> int:
    return sum(1 for ln in lines if re.search(pattern, ln))


def _meta(isa: str, name: str, key: str) -> int:
    entries = isa[isa.index("amdhsa.kernels:"):].split("\n  - ")
    (entry,) = [e for e in entries if re.search(rf"^\s*\.name:\s+{name}\s*$", e, re.M)]
    m = re.search(rf"^\s*\.{key}:\s+(\d+)\s*$", entry, re.M)
    assert m, f".{key} missing from {name}'s metadata"
    return int(m.group(1))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage", XL.STAGES)
def test_isa_keeps_the_plan(case, stage, tmp_path_factory):
    experts, hidden, inter, arch = case
    plan = XL.mxfp4_plan(stage, experts, hidden, inter, arch)
    isa = _isa(case, tmp_path_factory)[stage]
    name = plan.name()
    assert re.search(rf'\.amdgcn_target "amdgcn-amd-amdhsa-[a-z]*-{arch}"', isa)
    assert _count(isa.splitlines(), r"^\s*\.amdhsa_kernel ") == 1
    body = _body(isa, name)

    # MFMA: the arch's bf16 instruction, once per (row tile, column tile, accumulator, MFMA of a block) of
    # one iteration: the K loop stays a loop
    mfma = plan.mfma.replace("v_mfma_f32_16x16x16_bf16", "v_mfma_f32_16x16x16_?bf16")
    assert _count(body, rf"^{mfma}\b") == _count(body, r"^v_mfma") == plan.mfma_per_iter, name
    assert not _count(body, r"^v_mfma_scale"), "no scaled MFMA: the activations stay bf16"
    if plan.iters > 1:
        assert _count(body, r"^s_cbranch_scc[01]\b"), "the K loop's back edge"

    # dequantization: one FP4 dword per (accumulator, scale block) per iteration
    words = plan.accumulators * plan.kb
    if arch == "gfx942":
        assert _count(body, r"^v_perm_b32\b") == 10 * words, name  # 2 gathers, 4 lookups, 4 interleaves
        assert not _count(body, r"^v_cvt_scalef32")
    else:
        assert _count(body, r"^v_cvt_scalef32_pk_bf16_fp4\b") == 4 * words, name
    # the E8M0 scale folded into the partial sums in f32
    assert _count(body, r"^v_(pk_)?(mul|fma)_f32\b") >= plan.accumulators * XL.M_TILES * plan.kb, name

    # memory: the planned buffer loads per iteration plus the block's ids; stores of the epilogue
    loads = plan.loads_per_iter
    assert _count(body, r"^buffer_load_dwordx4\b") == loads["dwordx4"], name
    assert _count(body, r"^buffer_load_ubyte\b") == loads["ubyte"], name
    ids = 2 + (XL.M_TILES if stage == 1 else 2 * XL.M_TILES * 4)  # nv, sei; tokens (stage 2: + weights)
    assert _count(body, r"^buffer_load_dword\b") == loads["dword"] + ids, name
    outs = XL.N_TILES * XL.M_TILES * 4
    if stage == 1:
        assert _count(body, r"^buffer_store_short\b") == outs and _count(body, r"^v_exp_f32") == outs
    else:
        assert _count(body, r"^buffer_store_dword\b") == outs
    assert _count(body, r"^buffer_store") == outs
    assert not _count(body, r"^(scratch_|flat_|global_)"), "no scratch / flat / global memory access"
    assert not _count(body, r"^s_(swappc|setpc|call)"), "no calls"

    # LDS: none planned, none used
    assert _meta(isa, name, "group_segment_fixed_size") == plan.lds_bytes == 0
    assert not _count(body, r"^ds_")

    # resources
    assert _meta(isa, name, "private_segment_fixed_size") == 0
    assert _meta(isa, name, "vgpr_spill_count") == 0 and _meta(isa, name, "sgpr_spill_count") == 0
    assert _meta(isa, name, "vgpr_count") <= 128, name  # 4 waves per SIMD
    assert _meta(isa, name, "agpr_count") == 0


def test_builder_is_cached_and_checks_the_plan_first():
    from inductor_moe.kernels.flydsl.experts_mxfp4 import build_experts_mxfp4_kernel

    a = build_experts_mxfp4_kernel(2, 32, 2880, 2880, "gfx950")
    assert build_experts_mxfp4_kernel(2, 32, 2880, 2880, "gfx950") is a
    assert a.name == "moe_mxfp4_s2_e32_n2880_k2880_gfx950"
    with pytest.raises(ValueError, match="hidden"):
        build_experts_mxfp4_kernel(1, 8, 48, 64, "gfx942")
    with pytest.raises(ValueError, match="arch"):
        build_experts_mxfp4_kernel(1, 8, 64, 64, "gfx90a")
