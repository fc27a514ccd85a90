"""The FlyDSL A16W4 MoE GEMMs' algorithm and layout, checked without FlyDSL: a NumPy emulation built on
``mxfp4_layout.py`` (tests/kernels/flydsl/emulate_mxfp4.py: every lane's offsets, the v_perm_b32 / cvt
dequantization, the MFMA operand and C layouts, per-scale-block partial sums times the E8M0 scale, the
epilogues, the slot-order combine) reproduces ``experts_mxfp4_ref`` on the production (E, k) set at small
H / I, on both archs' dequant paths, with masked columns, odd scale-block counts, expert masks, dropped
ids and extreme scales; and the dequantization is exact on every code and every scale byte."""
import numpy as np
import pytest
import torch

from inductor_moe.kernels.flydsl import mxfp4_layout as XL
from inductor_moe.kernels.reference.experts_mxfp4 import experts_mxfp4_ref
from inductor_moe.quant.mxfp4 import code_values, quantize_mxfp4, scale_values

from .emulate_mxfp4 import dequant_words, emulate_experts_mxfp4, perm_np

PRODUCTION = [(8, 2), (16, 1), (32, 4), (60, 4), (64, 6), (64, 8), (128, 4), (128, 8), (160, 8), (256, 8), (257, 9),
              (384, 8), (512, 10)]


def _case(E, k, H, I, T, seed=0, wscale=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).bfloat16()
    logits = torch.randn(T, E, generator=g)
    w, ids = torch.softmax(logits, -1).topk(k)
    w13q, w13s = quantize_mxfp4(torch.randn(E, 2 * I, H, generator=g) * wscale)
    w2q, w2s = quantize_mxfp4(torch.randn(E, H, I, generator=g) * wscale)
    return x, ids.int(), w, w13q, w2q, w13s, w2s


def _check(args, arch, expert_mask=None):
    ref = experts_mxfp4_ref(*args, None, None, "silu", False, 1.702, 7.0, expert_mask)
    emu = emulate_experts_mxfp4(*args, expert_mask=expert_mask, arch=arch)
    assert emu.dtype == ref.dtype and emu.shape == ref.shape
    # act is rounded to bf16 between the stages (the reference keeps f32): bf16-level agreement
    tol = 2e-2 * max(ref.float().abs().max().item(), 1e-3)
    torch.testing.assert_close(emu.float(), ref.float(), atol=tol, rtol=2e-2)


# gfx942's v_perm dequant on the whole set; gfx950 differs only in the cvt path: a subset covers it
ARCH_CASES = [(ek, "gfx942") for ek in PRODUCTION] + [(ek, "gfx950") for ek in PRODUCTION if ek[0] in (8, 128, 257, 512)]


@pytest.mark.parametrize("ek,arch", ARCH_CASES, ids=lambda v: v if isinstance(v, str) else f"e{v[0]}k{v[1]}")
def test_production_set(ek, arch):
    E, k = ek
    _check(_case(E, k, 64, 64, T=6, seed=E * 31 + k), arch)


@pytest.mark.parametrize("arch", ["gfx942", "gfx950"])
def test_masked_columns_and_odd_blocks(arch):
    # I = 160: 1.25 workgroup columns (masked); H = 288: 9 scale blocks, one per K iteration
    _check(_case(4, 2, 288, 160, T=5, seed=3), arch)


def test_expert_mask_and_dropped_ids():
    x, ids, w, *wts = _case(16, 4, 64, 96, T=9, seed=5)
    ids[0, 1] = -1
    ids[3, 0] = 99
    mask = torch.ones(16, dtype=torch.bool)
    mask[ids[1, 0]] = False
    _check((x, ids, w, *wts), "gfx942", expert_mask=mask)


def test_extreme_scales():
    x, ids, w, w13q, w2q, w13s, w2s = _case(8, 2, 64, 64, T=4, seed=7)
    w13s = torch.randint(100, 140, w13s.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    w2s = w2s.clone()
    w2s[..., 0] = 0  # 2**-127 (f32 subnormal)
    _check((x, ids, w, w13q, w2q, w13s, w2s), "gfx942")


@pytest.mark.parametrize("arch", ["gfx942", "gfx950"])
def test_dequant_is_exact_on_every_byte(arch):
    # every byte value in every position of a dword
    b = np.arange(256, dtype=np.int64)
    words = np.concatenate([b << (8 * j) for j in range(4)] + [np.random.default_rng(0).integers(0, 2**32, 4096)])
    out = dequant_words(words, arch)
    got = torch.from_numpy(np.stack(out, -1).astype(np.uint32).view(np.int32)).view(torch.int16).view(torch.bfloat16)
    codes = torch.from_numpy(np.stack([(words >> (4 * i)) & 15 for i in range(8)], -1))
    want = code_values(codes, torch.bfloat16)
    assert torch.equal(got.view(torch.int16).reshape(-1, 8), want.view(torch.int16))  # -0 included


def test_e8m0_bits_match_scale_values():
    s = np.arange(256, dtype=np.int64)
    bits = XL.e8m0_f32_bits(s, np.where).astype(np.uint32).view(np.float32)
    want = scale_values(torch.arange(256, dtype=torch.uint8)).numpy()
    np.testing.assert_array_equal(bits, want)


def test_perm_and_offsets_follow_the_quantizer_layout():
    assert perm_np(0x0F0E0D0C, 0x03020100, 0x07000501) == XL.perm_py(0x0F0E0D0C, 0x03020100, 0x07000501) == 0x0F000D01
    # lane (group g) of column tile row r reads codes k = 32 b + 8 g .. + 7 and scale (r, b)
    E, N, K = 3, 40, 96
    q, s = quantize_mxfp4(torch.randn(E, N, K))
    flat_q, flat_s = q.reshape(-1).numpy(), s.reshape(-1).numpy()
    for lane in (0, 17, 38, 63):
        for e, r, b in ((0, 0, 0), (2, 39, 2), (1, 5, 1)):
            off = XL.q_byte_offset(e, r, b, lane, N, K)
            g = XL.lane_group(lane)
            assert bytes(flat_q[off:off + 4]) == bytes(q[e, r, 16 * b + 4 * g:16 * b + 4 * g + 4].numpy())
            assert flat_s[XL.s_byte_offset(e, r, b, N, K)] == s[e, r, b]
    assert XL.a_byte_offset(1000, 2, 63) == 1000 + (64 + 24) * 2


def test_plan():
    p = XL.mxfp4_plan(1, 32, 2880, 2880, "gfx942")
    assert (p.kb, p.iters, p.n_blocks, p.mfma_per_iter) == (2, 45, 23, 32)
    p = XL.mxfp4_plan(2, 32, 2880, 2880, "gfx950")
    assert (p.kb, p.iters, p.n_blocks, p.mfma_per_iter, p.lds_bytes) == (2, 45, 23, 8, 0)
    assert XL.mxfp4_plan(2, 8, 64, 288, "gfx942").kb == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        XL.mxfp4_plan(1, 8, 48, 64, "gfx942")
    with pytest.raises(ValueError, match="2\\*\\*31"):
        XL.mxfp4_plan(1, 256, 7168, 2048, "gfx950")


def test_supports_declines_with_reasons():
    from inductor_moe.kernels.flydsl.experts_mxfp4 import supports_experts_mxfp4

    x, ids, w, w13q, w2q, w13s, w2s = _case(8, 2, 64, 64, T=2)
    kw = dict(hidden=x, w13_q=w13q, w2_q=w2q, w13_s=w13s, w2_s=w2s, activation="silu", top_k=2)
    assert "GPU" in supports_experts_mxfp4(**kw)  # CPU tensors
    assert "bias" in supports_experts_mxfp4(**kw, b13=torch.zeros(8, 128))
    assert "interleaved" in supports_experts_mxfp4(**kw, gate_up_interleaved=True)
    assert "activation" in supports_experts_mxfp4(**{**kw, "activation": "swiglu_oai"})
    assert "dtype" in supports_experts_mxfp4(**{**kw, "hidden": x.float()})
