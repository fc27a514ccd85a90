"""Compile-only tests: the FlyDSL two-stage MoE GEMMs (kernels/flydsl/experts.py) compiled for gfx942 and
gfx950 on this CPU machine, including the layer shapes of design.md section 4, and their ISA checked
against the tile plan (experts_layout.py):

- MFMA ``v_mfma_f32_16x16x16_bf16`` only; per wave ``m_tiles * mats * 4`` per K-step inside the K loop
  and the same again in the peeled last step;
- the K loop (one back-edge) holds the ping-pong step: the next step's global loads (A: a_loads x 16 B,
  B: 2 x 16 B per output matrix), 2 ``ds_read_b128`` per row tile from the current buffer, a_loads
  ``ds_write_b128`` into the other one, one ``s_barrier``;
- LDS = exactly the two planned buffers (group segment), no scratch, no spills, VGPRs within 128;
- the epilogues: stage 1 one v_exp / v_rcp / buffer_store_short per accumulator element (SiLU * up to
  the bf16 intermediate), stage 2 one buffer_store_dword per element (the per-slot f32 rows).

GPT-OSS (2880/2880, E32, k4): its H and I are multiples of 64, so the GEMMs compile at that shape; the
layer itself is declined by ``supports_experts_sorted`` (biases, the clamped ``gate * sigmoid(1.702 gate)
* (up + 1)`` activation, interleaved gate/up): tested here and in test_experts_emulation.py.

Needs ``flydsl==0.4.2`` and an ld.lld (``bash .ci/setup_flydsl.sh``); skips with the reason otherwise.
Every shape compiles in a few seconds; the ISA is compiled once per session (module-scoped cache).
"""
import re

import pytest
import torch

from inductor_moe.kernels.flydsl import experts_layout as XL
from inductor_moe.kernels.flydsl.toolchain import compile_only_unavailable

_REASON = compile_only_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"FlyDSL compile-only: {_REASON}")

# (H, I, top_k, block_m): design.md section 4 layers, plus a one-K-step shape (no loop)
LAYERS = {"qwen3": (2048, 768, 8, 32), "gpt_oss": (2880, 2880, 4, 32), "mixtral": (4096, 14336, 2, 64),
          "tiny": (64, 64, 1, 16)}
CASES = [(name, arch) for name in LAYERS for arch in XL.ARCHS]
SLOW = [((2048, 768, 8, 16), "gfx942"), ((2048, 768, 8, 64), "gfx950"), ((4096, 14336, 2, 32), "gfx950"),
        ((128, 192, 9, 16), "gfx942")]
MFMA = "v_mfma_f32_16x16x16_bf16"


@pytest.fixture(scope="module")
def isa_cache(tmp_path_factory):
    cache = {}

    def get(shape, arch):
        key = (shape, arch)
        if key not in cache:
            from inductor_moe.kernels.flydsl.experts import compile_experts_kernels

            cache[key] = compile_experts_kernels(*shape, arch, dump_dir=tmp_path_factory.mktemp("isa"))
        return cache[key]

    return get


def _lines(isa: str, name: str) -> list[str]:
    """The kernel's instructions and labels (directives and comments dropped)."""
    start = isa.index(f"\n{name}:\n")
    end = isa.index(".Lfunc_end", start)
    out = []
    for ln in isa[start:end].splitlines()[2:]:
        s = ln.split(";")[0].strip()
        if re.match(r"^\.LBB\d+_\d+:$", s) or re.match(r"^[a-z_][a-z0-9_]*(\s|$)", s):
            out.append(s)
    return out


def _count(lines, pattern) -> int:
    return sum(1 for ln in lines if re.search(pattern, ln))


def _loops(lines) -> list[list[str]]:
    """Bodies of the loops: from a label to a later branch back to it."""
    where = {ln[:-1]: i for i, ln in enumerate(lines) if ln.endswith(":")}
    loops = []
    for i, ln in enumerate(lines):
        m = re.match(r"^s_cbranch_\w+ (\.LBB\d+_\d+)$|^s_branch (\.LBB\d+_\d+)$", ln)
        if m:
            target = m.group(1) or m.group(2)
            if target in where and where[target] < i:
                loops.append(lines[where[target]:i + 1])
    return loops


def _meta(isa: str, name: str, key: str) -> int:
    entries = isa[isa.index("amdhsa.kernels:"):].split("\n  - ")
    (entry,) = [e for e in entries if re.search(rf"^\s*\.name:\s+{name}\s*$", e, re.M)]
    m = re.search(rf"^\s*\.{key}:\s+(\d+)\s*$", entry, re.M)
    assert m, f".{key} missing from {name}'s metadata"
    return int(m.group(1))


def _check(shape, arch, isa_by_stage):
    from inductor_moe.kernels.flydsl.experts import kernel_name

    plan = XL.experts_plan(*shape, arch)
    facts = {}
    for stage, isa in isa_by_stage.items():
        name = kernel_name(plan, stage)
        assert re.search(rf'\.amdgcn_target "amdgcn-amd-amdhsa-[a-z]*-{arch}"', isa)
        lines = _lines(isa, name)
        ks = plan.k_steps(stage)
        per_step = plan.mfma_per_kstep_wave(stage)
        mats, mt, a_loads = plan.mats(stage), plan.m_tiles, plan.a_loads
        steps_in_code = 2 if ks > 1 else 1  # the loop body and the peeled last step

        # MFMA: bf16 16x16x16 only, as many as the plan predicts
        assert _count(lines, r"^v_mfma") == _count(lines, rf"^{MFMA}\b") == steps_in_code * per_step, (name,)
        # LDS ping-pong: 2 x b128 reads per row tile and step, one b128 write per A load (prologue + loop)
        assert _count(lines, r"^ds_read_b128\b") == _count(lines, r"^ds_read") == steps_in_code * 2 * mt, name
        assert _count(lines, r"^ds_write_b128\b") == _count(lines, r"^ds_write") == steps_in_code * a_loads, name
        assert _count(lines, r"^s_barrier") == steps_in_code, name
        gs = _meta(isa, name, "group_segment_fixed_size")
        assert gs == plan.lds_bytes == 2 * plan.lds_buffer_bytes, (name, gs)
        # global loads: 16-byte A chunks and B halves per step; dword loads of sort entries / ids / num_valid
        assert _count(lines, r"^buffer_load_dwordx4\b") == steps_in_code * (a_loads + 2 * mats), name
        loops = _loops(lines)
        if ks > 2:  # at 2 steps the loop runs once and is folded away
            (loop,) = loops
            assert _count(loop, rf"^{MFMA}\b") == per_step, name
            assert _count(loop, r"^buffer_load_dwordx4\b") == a_loads + 2 * mats, name
            assert _count(loop, r"^ds_read_b128\b") == 2 * mt and _count(loop, r"^ds_write_b128\b") == a_loads
            assert _count(loop, r"^s_barrier") == 1, name
        else:
            assert loops == [], name
        # epilogues
        elems = 4 * mt
        if stage == 1:
            assert _count(lines, r"^v_exp_f32") == _count(lines, r"^v_rcp_f32") == elems, name
            assert _count(lines, r"^buffer_store_short\b") == _count(lines, r"^buffer_store") == elems, name
            assert _count(lines, r"^buffer_load_dword\b") == 2 + a_loads, name  # expert, num_valid, entries
        else:
            assert _count(lines, r"^buffer_store_dword\b") == _count(lines, r"^buffer_store") == elems, name
            assert _count(lines, r"^buffer_load_dword\b") == 2 + 2 * elems, name  # + entry and weight per row
        assert not _count(lines, r"^(scratch_|flat_|global_)"), "no scratch / flat / global memory access"
        assert not _count(lines, r"^s_(swappc|setpc|call)"), "no calls"
        # resources
        assert _meta(isa, name, "private_segment_fixed_size") == 0
        assert _meta(isa, name, "vgpr_spill_count") == 0 and _meta(isa, name, "sgpr_spill_count") == 0
        assert re.search(rf"\.set \.L{re.escape(name)}\.private_seg_size, 0\b", isa)
        vgprs = _meta(isa, name, "vgpr_count")
        assert vgprs <= 128, (name, vgprs)
        facts[stage] = dict(vgpr=vgprs, lds=gs, mfma=_count(lines, rf"^{MFMA}\b"), size=len(lines))
    return facts


@pytest.mark.parametrize("layer,arch", CASES, ids=lambda c: str(c))
def test_isa_keeps_the_plan(layer, arch, isa_cache):
    shape = LAYERS[layer]
    _check(shape, arch, isa_cache(shape, arch))


@pytest.mark.slow
@pytest.mark.parametrize("shape,arch", SLOW, ids=lambda c: str(c))
def test_isa_keeps_the_plan_more_tiles(shape, arch, isa_cache):
    _check(shape, arch, isa_cache(shape, arch))


def test_gpt_oss_layer_is_declined_with_its_reason():
    from inductor_moe.kernels.flydsl.experts import supports_experts_sorted

    x = torch.zeros(4, 2880, dtype=torch.bfloat16)
    w13 = torch.zeros(32, 5760, 2880, dtype=torch.bfloat16, device="meta")
    w2 = torch.zeros(32, 2880, 2880, dtype=torch.bfloat16, device="meta")
    reason = supports_experts_sorted(hidden=x, w13=w13, w2=w2, top_k=4, block_m=32, activation="swiglu_oai",
                                     b13=torch.zeros(32, 5760), b2=torch.zeros(32, 2880), gate_up_interleaved=True)
    assert reason is not None and "biases" in reason


def test_builder_is_cached_and_checks_the_plan_first():
    from inductor_moe.kernels.flydsl.experts import build_experts_kernels

    a = build_experts_kernels(2048, 768, 8, 32, "gfx942")
    assert build_experts_kernels(2048, 768, 8, 32, "gfx942") is a
    assert a.names == ("moe_experts_s1_h2048_i768_k8_bm32_gfx942", "moe_experts_s2_h2048_i768_k8_bm32_gfx942")
    with pytest.raises(ValueError, match="block_m"):
        build_experts_kernels(2048, 768, 8, 128, "gfx942")
    with pytest.raises(ValueError, match="multiple of 64"):
        build_experts_kernels(2048, 96, 8, 32, "gfx942")
    with pytest.raises(ValueError, match="arch"):
        build_experts_kernels(2048, 768, 8, 32, "gfx90a")
