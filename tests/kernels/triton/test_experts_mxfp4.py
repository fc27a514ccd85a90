"""Triton MXFP4 expert kernels (kernels/triton/experts_mxfp4.py) under TRITON_INTERPRET=1 on CPU tensors,
against the reference on the exactly dequantized weights: the in-register dequantization bit for bit (the
"v1" and "bits" tiles), the sorted two-stage path in each dequantization variant ("v1", "bits",
"dot_scaled") and the decode GEMVs in f32 (IEEE dots: 1e-5) and bf16/fp16 (UPCAST, the interpreter's
low-precision dot is wrong: 1e-2), and the op through the dispatch when forced. The interpreter runs the
"bits" decode in f32 (its bf16 arithmetic is wrong too): the bf16 decode is checked on a GPU only. The
kernels are also compiled for sm_90 (no GPU needed) so that lowering errors the interpreter cannot see show
here."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests (GPU machines check the kernels with tools/gpu_check_mxfp4.py)",
                allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import inductor_moe  # noqa: E402
from inductor_moe.kernels.reference import route_ref  # noqa: E402
from inductor_moe.kernels.reference.experts_mxfp4 import experts_mxfp4_ref  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4 as mx  # noqa: E402
from inductor_moe.kernels.triton.configs import ExpertsConfig  # noqa: E402
from inductor_moe.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4  # noqa: E402

SMALL = ExpertsConfig(16, 32, 32, 4, 1, 32, 64, 4, 1)  # several tiles per dim, a K tail at I = 96
VARIANTS = ["v1", "bits", "dot_scaled"]
# "bits" / "dot_scaled" tiles: N tails at 96 and K tails at 96 (BLOCK_K 64) and at 64 (BLOCK_K 128 > K)
SMALL_BY_VARIANT = {"v1": SMALL, "bits": ExpertsConfig(16, 64, 64, 4, 1, 64, 128, 4, 1),
                    "dot_scaled": ExpertsConfig(16, 64, 64, 4, 1, 64, 128, 4, 1)}


def _case(T, E, k, H, I, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    logits = torch.randn(T, E, generator=g)
    # per-row magnitudes spread over 2**-6 .. 2**-1: different scales per row and block
    w13 = torch.randn(E, 2 * I, H, generator=g) * torch.exp2(-torch.randint(1, 7, (E, 2 * I, 1), generator=g).float())
    w2 = torch.randn(E, H, I, generator=g) * 0.2
    q13, s13 = quantize_mxfp4(w13)
    q2, s2 = quantize_mxfp4(w2)
    b13 = (torch.randn(E, 2 * I, generator=g) * 0.2).to(dtype) if bias else None
    b2 = (torch.randn(E, H, generator=g) * 0.2).to(dtype) if bias else None
    weights, ids = route_ref(logits, k)
    return x, ids, weights, (q13, q2, s13, s2), b13, b2


def _err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


SPECS = {  # activation, interleaved, bias
    "silu": ("silu", False, False),
    "gelu_bias": ("gelu", False, True),
    "swiglu_oai": ("swiglu_oai", True, True),
}


@triton.jit
def _tile_probe(q_ptr, s_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.arange(0, BLOCK_N)
    for k0 in range(0, K, BLOCK_K):
        w = mx._mxfp4_tile(q_ptr, s_ptr, rows, rows < N, k0, K, K // 2, 1, K // 32, 1, BLOCK_N, BLOCK_K)
        cols = k0 + tl.arange(0, BLOCK_K)
        tl.store(out_ptr + rows[:, None] * K + cols[None, :], w, mask=(rows < N)[:, None] & (cols < K)[None, :])


@pytest.mark.parametrize("block_k", [32, 64, 128])
def test_dequant_tile_is_exact(block_k):
    """Every byte value (both nibbles, both signs, -0) under scales from 2**-127 (byte 0, an f32 subnormal)
    to 2**125 and NaN (255), with K = 96 so that BLOCK_K = 64 and 128 leave a masked tail."""
    n, k = 11, 96
    packed = (torch.arange(n * k // 2) * 7 % 256).to(torch.uint8).view(n, k // 2)
    packed[0, :16] = torch.arange(0, 256, 17, dtype=torch.uint8)  # 0x00, 0x11, ..., 0xFF
    scales = torch.tensor([0, 1, 60, 100, 126, 127, 128, 150, 200, 252, 255] * 3, dtype=torch.uint8)[: n * 3]
    scales = scales.view(n, 3)
    out = torch.full((n, k), 7.0)
    _tile_probe[(1,)](packed, scales, out, n, k, BLOCK_N=16, BLOCK_K=block_k)
    want = dequantize_mxfp4(packed, scales)
    assert torch.equal(out.isnan(), want.isnan())
    same = ~want.isnan()
    assert torch.equal(out[same], want[same])
    assert torch.equal(out[same].signbit(), want[same].signbit())


@triton.jit
def _bits_tile_probe(q_ptr, s_ptr, out_ptr, N, K, KP, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The decoded tiles, as the kernels make them (rows clamped, the last K step masked), into out [N, KP]
    (KP = K rounded up to BLOCK_K), columns in the "bits" order."""
    offs_n = tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)
    cols = tl.arange(0, BLOCK_K)
    k_main = K - K % BLOCK_K
    for k0 in range(0, k_main, BLOCK_K):
        w = mx._mxfp4_tile_bits(q_ptr, s_ptr, rows, k0, K, K // 2, K // 32, 1, BLOCK_K, False, False)
        tl.store(out_ptr + offs_n[:, None] * KP + k0 + cols[None, :], w, mask=(offs_n < N)[:, None])
    if k_main < K:
        w = mx._mxfp4_tile_bits(q_ptr, s_ptr, rows, k_main, K, K // 2, K // 32, 1, BLOCK_K, False, True)
        tl.store(out_ptr + offs_n[:, None] * KP + k_main + cols[None, :], w, mask=(offs_n < N)[:, None])


@triton.jit
def _order_probe(x_ptr, out_ptr, BLOCK_K: tl.constexpr):
    """Where ``_bits_act_order`` puts each column: out[j] = the column placed at position j."""
    x = tl.load(x_ptr + tl.arange(0, 2)[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :])
    y = mx._bits_act_order(x, BLOCK_K)
    tl.store(out_ptr + tl.arange(0, 2)[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :], y)


def _bits_column_order(block_k):
    x = torch.arange(block_k, dtype=torch.int32).repeat(2, 1).contiguous()
    out = torch.empty_like(x)
    _order_probe[(1,)](x, out, BLOCK_K=block_k)
    assert torch.equal(out[0], out[1])
    order = out[0].long()
    assert torch.equal(order.sort().values, torch.arange(block_k))  # a permutation
    return order


@pytest.mark.parametrize("block_k", [32, 64, 128, 256])
def test_bits_column_order(block_k):
    """``_bits_act_order`` matches the lanes of tl.dot's 16-bit register operand: position 32b + 8i + 2t + h
    (lane t of a quad, k16 half i // 2) holds column 8(t * BLOCK_K/32 + b) + c with c = j // 2 + 4 (j % 2),
    j = 2i + h: the 8 values of one packed word, a lane's words contiguous."""
    order = _bits_column_order(block_k)
    nb = block_k // 32
    for pos in range(block_k):
        b, rest = divmod(pos, 32)
        i, rest = divmod(rest, 8)
        t, h = divmod(rest, 2)
        j = 2 * i + h
        assert order[pos] == 8 * (t * nb + b) + j // 2 + 4 * (j % 2)


@pytest.mark.parametrize("block_k,k", [(32, 96), (64, 96), (128, 96), (128, 256)])
def test_bits_tile_is_exact(block_k, k):
    """The "bits" decode (the interpreter runs its f32 form: the bit patterns of value * 2**-126, times 2**126,
    times the scale) against ``dequantize_mxfp4``, bit for bit: every byte value (both nibbles, both signs,
    -0) under the scale bytes 0 (the subnormal 2**-127), 1, 127, 254 (2**127: codes >= 2 overflow to inf,
    as in the reference), 255 (NaN) and others; K tails (96 = 1.5 * 64, 96 < 128) decode to zeros past K."""
    n = 11
    g = torch.Generator().manual_seed(block_k + k)
    packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.int32).to(torch.uint8)
    packed[0, :16] = torch.arange(0, 256, 17, dtype=torch.uint8)  # 0x00, 0x11, ..., 0xFF
    packed[1, :16] = torch.arange(16, dtype=torch.uint8) * 16 + torch.arange(16, dtype=torch.uint8).flip(0)
    edge = torch.tensor([0, 1, 127, 254, 255, 60, 100, 126, 128, 150, 200], dtype=torch.uint8)
    scales = edge[torch.arange(n * (k // 32)) % len(edge)].view(n, k // 32).contiguous()
    kp = triton.cdiv(k, block_k) * block_k
    out = torch.full((n, kp), 7.0)
    _bits_tile_probe[(1,)](packed, scales, out, n, k, kp, BLOCK_N=16, BLOCK_K=block_k)
    order = _bits_column_order(block_k)
    got = torch.empty_like(out)
    for k0 in range(0, kp, block_k):  # position j of a tile holds column order[j]
        got[:, k0 + order] = out[:, k0:k0 + block_k]
    assert torch.all(got[:, k:] == 0)  # past K: zeros
    got = got[:, :k]
    want = dequantize_mxfp4(packed, scales)
    assert torch.equal(got.isnan(), want.isnan())
    same = ~want.isnan()
    assert torch.equal(got[same], want[same])
    assert torch.equal(got[same].signbit(), want[same].signbit())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("spec,T", [("silu", 3), ("gelu_bias", 5), ("swiglu_oai", 21)])
def test_sorted_path_f32(spec, T, variant):
    activation, interleaved, bias = SPECS[spec]
    x, ids, weights, q, b13, b2 = _case(T, 4, 2, 64, 96, torch.float32, bias, seed=T)
    args = (x, ids, weights, *q, b13, b2, activation, interleaved, 1.702, 7.0)
    got = mx.experts_mxfp4_triton(*args, config=SMALL_BY_VARIANT[variant], path="sorted", dequant=variant)
    assert _err(got, experts_mxfp4_ref(*args)) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sorted_path_low_precision(dtype, variant):
    x, ids, weights, q, b13, b2 = _case(13, 4, 2, 64, 96, dtype, True, seed=1)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    got = mx.experts_mxfp4_triton(*args, config=SMALL_BY_VARIANT[variant], path="sorted", dequant=variant)
    # the intermediate activation is rounded to the model dtype between the two GEMMs
    assert got.dtype == dtype and _err(got, experts_mxfp4_ref(*args)) < 1e-2


@pytest.mark.parametrize("H,I,k1,k2", [(160, 96, 32, 32), (96, 224, 64, 64), (64, 64, 64, 64)],
                         ids=["5+3 steps", "1+tail, 3+tail", "one step each"])
def test_bits_prefetch_matches_plain_loop(H, I, k1, k2, monkeypatch):
    """The prefetching K loop of "bits" (next step's loads issued first) does the same arithmetic in the same
    order as the plain loop: equal results, bit for bit, for several full steps, a full step and a tail, and
    a single step (no loop body); ``$INDUCTOR_MOE_MXFP4_PREFETCH`` picks the default."""
    x, ids, weights, q, b13, b2 = _case(11, 4, 2, H, I, torch.float32, True, seed=H)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    config = ExpertsConfig(16, 64, k1, 4, 1, 64, k2, 4, 1)
    plain = mx.experts_mxfp4_triton(*args, config=config, path="sorted", dequant="bits", prefetch=False)
    monkeypatch.setenv(mx.PREFETCH_ENV, "1")
    assert mx.prefetch_default()
    pf = mx.experts_mxfp4_triton(*args, config=config, path="sorted", dequant="bits")
    assert torch.equal(pf, plain)
    assert _err(pf, experts_mxfp4_ref(*args)) < 1e-5
    monkeypatch.setenv(mx.PREFETCH_ENV, "0")
    assert not mx.prefetch_default()


def _edge_weights(E, N, K, g):
    """Packed weights with every code and the scale bytes 0, 1, 127 and a few normal ones; blocks with the
    scale byte 254 (2**127) hold only +-0 codes so that the GEMMs stay finite."""
    packed = torch.randint(0, 256, (E, N, K // 2), generator=g, dtype=torch.int32).to(torch.uint8)
    choice = torch.tensor([0, 1, 127, 254, 120, 125, 129])
    scales = choice[torch.randint(0, len(choice), (E, N, K // 32), generator=g)].to(torch.uint8)
    huge = (scales == 254).repeat_interleave(16, dim=-1)
    packed = torch.where(huge, packed & 0x88, packed)
    return packed, scales


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sorted_path_edge_codes_and_scales(variant, dtype):
    """Every E2M1 code and the edge scale bytes through both GEMMs (GPT-OSS activation, biases, N and K
    tails: H = 96, I = 160)."""
    g = torch.Generator().manual_seed(11)
    T, E, k, H, I = 19, 4, 2, 96, 160
    x = torch.randn(T, H, generator=g).to(dtype)
    q13, s13 = _edge_weights(E, 2 * I, H, g)
    q2, s2 = _edge_weights(E, H, I, g)
    b13 = (torch.randn(E, 2 * I, generator=g) * 0.2).to(dtype)
    b2 = (torch.randn(E, H, generator=g) * 0.2).to(dtype)
    weights, ids = route_ref(torch.randn(T, E, generator=g), k)
    args = (x, ids, weights, q13, q2, s13, s2, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    config = ExpertsConfig(16, 64, 64, 4, 1, 64, 128, 4, 1)
    got = mx.experts_mxfp4_triton(*args, config=config, path="sorted", dequant=variant)
    want = experts_mxfp4_ref(*args)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert _err(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sorted_path_mask_and_dropped_ids(variant):
    x, ids, weights, q, _, _ = _case(9, 6, 3, 64, 32, torch.float32, False, seed=2)
    ids = ids.long()
    ids[1, 0], ids[4, 2] = -1, 6  # outside [0, E): dropped by the sort
    mask = torch.tensor([True, False, True, True, False, True])
    args = (x, ids, weights, *q, None, None, "silu", False, 1.702, 7.0, mask)
    got = mx.experts_mxfp4_triton(*args, config=SMALL_BY_VARIANT[variant], path="sorted", dequant=variant)
    assert _err(got, experts_mxfp4_ref(*args)) < 1e-5


def test_sorted_variant_choice(monkeypatch):
    """``dequant`` > $INDUCTOR_MOE_MXFP4_SORTED > "bits"; "dot_scaled" needs bf16 activations, "bits"
    word-readable packed weights; non-contiguous activations are copied for "bits"."""
    x, ids, weights, q, _, _ = _case(5, 4, 2, 64, 64, torch.float32, False, seed=7)
    xb = x.to(torch.bfloat16)
    monkeypatch.delenv(mx.SORTED_ENV, raising=False)
    assert mx.sorted_variant(None, xb, q[0], q[1]) == "bits"
    monkeypatch.setenv(mx.SORTED_ENV, "dot_scaled")  # Triton 3.6's interpreter has no tl.dot_scaled: "bits"
    assert mx.sorted_variant(None, xb, q[0], q[1]) == ("dot_scaled" if mx.interpreter_has_dot_scaled() else "bits")
    assert mx.sorted_variant(None, x, q[0], q[1]) == "bits"  # f32: no dot_scaled
    assert mx.sorted_variant("v1", xb, q[0], q[1]) == "v1"
    monkeypatch.setenv(mx.SORTED_ENV, "fast")
    with pytest.raises(ValueError, match="dequant"):
        mx.sorted_variant(None, xb, q[0], q[1])
    monkeypatch.delenv(mx.SORTED_ENV)
    odd = torch.zeros(q[0].shape[0], q[0].shape[1], q[0].shape[2] + 2, dtype=torch.uint8)[:, :, 1:-1]
    assert not mx.supports_bits_layout(odd) and mx.sorted_variant("bits", xb, odd, q[1]) == "v1"
    calls = []
    original = mx._stage1_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*a, **k):
                calls.append((a[0].stride(1), k["DEQUANT"]))
                return original[grid](*a, **k)
            return launch

    monkeypatch.setattr(mx, "_stage1_kernel", Spy())
    xt = x.t().contiguous().t()  # stride(1) != 1
    spec = (None, None, "silu", False, 1.702, 7.0)
    got = mx.experts_mxfp4_triton(xt, ids, weights, *q, *spec, config=SMALL_BY_VARIANT["bits"], path="sorted")
    assert calls == [(1, mx.DEQUANT_CODES["bits"])]
    assert _err(got, experts_mxfp4_ref(x, ids, weights, *q, *spec)) < 1e-5


@pytest.mark.parametrize("spec", ["silu", "swiglu_oai"])
def test_decode_path_f32(spec):
    activation, interleaved, bias = SPECS[spec]
    x, ids, weights, q, b13, b2 = _case(2, 8, 3, 64, 96, torch.float32, bias, seed=3)
    ids = ids.clone()
    ids[1, 2] = 9  # outside [0, E): skipped
    mask = torch.ones(8, dtype=torch.bool)
    mask[ids[0, 1]] = False
    args = (x, ids, weights, *q, b13, b2, activation, interleaved, 1.702, 7.0, mask)
    got = mx.experts_mxfp4_decode_triton(*args, tiles1=(64, 64, 4), tiles2=(32, 32, 4))
    assert _err(got, experts_mxfp4_ref(*args)) < 1e-5


def test_decode_path_bf16_default_tiles():
    x, ids, weights, q, b13, b2 = _case(1, 8, 2, 64, 64, torch.bfloat16, True, seed=4)
    args = (x, ids, weights, *q, b13, b2, "gelu_tanh", False, 1.702, 7.0)
    got = mx.experts_mxfp4_triton(*args)  # T=1: the decode path, default tiles (BLOCK_K 256 > K: masked)
    assert got.dtype == torch.bfloat16 and _err(got, experts_mxfp4_ref(*args)) < 1e-2


def test_strided_packed_weights():
    """Packed weights and scales read through their strides (slices of larger buffers)."""
    x, ids, weights, q, _, _ = _case(5, 4, 2, 64, 64, torch.float32, False, seed=5)
    views = []
    for t in q:
        big = torch.zeros(t.shape[0], t.shape[1] + 2, t.shape[2] + 4, dtype=torch.uint8)
        big[:, 2:, 4:] = t
        views.append(big[:, 2:, 4:])
    spec = (None, None, "silu", False, 1.702, 7.0)
    want = experts_mxfp4_ref(x, ids, weights, *q, *spec)
    got = mx.experts_mxfp4_triton(x, ids, weights, *views, *spec, config=SMALL, path="sorted")
    assert _err(got, want) < 1e-5
    got = mx.experts_mxfp4_decode_triton(x, ids, weights, *views, *spec, tiles1=(64, 64, 4), tiles2=(64, 64, 4))
    assert _err(got, want) < 1e-5


def test_zero_tokens_and_bad_tiles():
    x, ids, weights, q, _, _ = _case(0, 4, 2, 32, 32, torch.float32, False)
    spec = (None, None, "silu", False, 1.702, 7.0)
    assert mx.experts_mxfp4_triton(x, ids, weights, *q, *spec).shape == (0, 32)
    assert mx.experts_mxfp4_decode_triton(x, ids, weights, *q, *spec).shape == (0, 32)
    x, ids, weights, q, _, _ = _case(3, 4, 2, 32, 32, torch.float32, False)
    with pytest.raises(ValueError, match="BLOCK_K=16"):
        mx.experts_mxfp4_triton(x, ids, weights, *q, *spec, config=ExpertsConfig(16, 16, 16, 4, 1, 16, 32, 4, 1),
                                path="sorted")
    with pytest.raises(ValueError, match="path"):
        mx.experts_mxfp4_triton(x, ids, weights, *q, *spec, path="fast")


def test_path_choice_and_config(monkeypatch):
    """T*k small next to E: the decode GEMVs; otherwise sort + the sorted path (E=32, k=4: only T=1)."""
    calls = []
    from inductor_moe.kernels.triton import experts_mxfp4_decode as v2

    monkeypatch.setattr(mx, "experts_mxfp4_decode_triton", lambda *a, **k: calls.append(("decode v1", len(a[0]))))
    monkeypatch.setattr(v2, "experts_mxfp4_decode_v2", lambda *a, **k: calls.append(("decode", len(a[0]))))
    monkeypatch.setattr(mx, "experts_mxfp4_sorted_triton", lambda *a, **k: calls.append(("sorted", len(a[0]))))
    monkeypatch.delenv(v2.ENV, raising=False)
    for T in (1, 2, 40):
        x, ids, weights, q, _, _ = _case(T, 32, 4, 32, 32, torch.float32, False)
        mx.experts_mxfp4_triton(x, ids, weights, *q, None, None, "silu", False, 1.702, 7.0)
    assert calls == [("decode", 1), ("sorted", 2), ("sorted", 40)]
    for tokens in (1, 64, 100000):
        c = mx.mxfp4_config(tokens, 4, 32, 2880, 2880)
        assert c.k1 >= 32 and c.k2 >= 32 and not c.k1 & (c.k1 - 1) and not c.k2 & (c.k2 - 1)
        for variant in ("bits", "dot_scaled"):  # wgmma: the weight rows are M, >= 64 per warpgroup
            c = mx.mxfp4_config(tokens, 4, 32, 2880, 2880, variant)
            assert c.block_m >= 16 and c.n1 >= 16 * c.warps1 and c.n2 >= 16 * c.warps2 and c.k1 % 32 == 0


def test_op_runs_triton_when_forced():
    x, ids, weights, q, b13, b2 = _case(6, 4, 2, 64, 32, torch.float32, True, seed=6)
    spec = dict(activation="swiglu_oai", gate_up_interleaved=True)
    calls = []
    original = mx.experts_mxfp4_sorted_triton
    mx.experts_mxfp4_sorted_triton = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with inductor_moe.force_backend("triton"):
            got = torch.ops.inductor_moe.experts_mxfp4(x, ids, weights, *q, b13, b2, **spec)
    finally:
        mx.experts_mxfp4_sorted_triton = original
    assert calls == [1]
    want = experts_mxfp4_ref(x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    assert _err(got, want) < 1e-5
    assert mx.supports_experts_mxfp4(hidden=x, activation="silu") is not None  # not forced: CPU declined
    with inductor_moe.force_backend("triton"):
        assert mx.supports_experts_mxfp4(hidden=x, activation="silu") is None
        assert "dtype" in mx.supports_experts_mxfp4(hidden=x.double(), activation="silu")
        assert "activation" in mx.supports_experts_mxfp4(hidden=x, activation="tanh")


COMPILE_SM90 = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import inductor_moe.kernels.triton.experts_mxfp4 as mx

    PTRS = {"q_ptr": "*u8", "s_ptr": "*u8", "sti_ptr": "*i32", "sei_ptr": "*i32", "nv_ptr": "*i32",
            "sw_ptr": "*fp32", "ids_ptr": "*i32", "mask_ptr": "*u8", "wts_ptr": "*fp32"}
    # as the JIT specializes the GPT-OSS layer (H = I = 2880): unit strides are constants, pointers and ints
    # divisible by 16 carry the hint, the rest (T, scale row stride 90, ...) are plain i32
    NOT16 = {"T", "num_blocks", "stride_sn", "stride_bn", "top_k", "E"}

    def build(fn, dtype, warps, **consts):
        sig = {n: "constexpr" if n in consts else PTRS.get(n, dtype) if n.endswith("_ptr") else
               "fp32" if n in ("alpha", "limit") else "i32" for n in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if sig[n] not in ("constexpr", "fp32") and n not in NOT16}
        src = ASTSource(fn, sig, {(fn.arg_names.index(k),): v for k, v in consts.items()}, attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=3))
        assert k.asm["cubin"], fn
        return k

    def loop_converts(k):
        ttgir = k.asm["ttgir"]
        loop = ttgir[ttgir.index("scf.for"):]
        return [line for line in loop.splitlines() if "ttg.convert_layout" in line and "dot_op" in line]

    unit = dict(stride_qk=1, stride_sk=1)
    build(mx._stage1_kernel, "*bf16", 4, HAS_BIAS=True, ACT=4, INTERLEAVED=True, UPCAST=False, IEEE=False,
          BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, DEQUANT=0)
    build(mx._stage2_kernel, "*fp32", 8, HAS_BIAS=True, UPCAST=False, IEEE=True, BLOCK_M=64, BLOCK_N=128,
          BLOCK_K=64, GROUP_M=8, DEQUANT=0)
    for dtype, ieee in (("*bf16", False), ("*fp32", True), ("*fp16", False)):
        for dq, bm, bn, bk, warps in ((1, 16, 128, 128, 4), (1, 64, 128, 128, 8), (2, 16, 64, 128, 4)):
            if dtype != "*bf16" and (dq == 2 or bm == 64):
                continue  # dot_scaled: bf16 activations only; f32 / fp16: one tile shape
            k1 = build(mx._stage1_kernel, dtype, warps, stride_xk=1, **unit, HAS_BIAS=True, ACT=4,
                       INTERLEAVED=True, UPCAST=False, IEEE=ieee, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                       DEQUANT=dq)
            k2 = build(mx._stage2_kernel, dtype, warps, **unit, HAS_BIAS=True, UPCAST=False, IEEE=ieee,
                       BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, DEQUANT=dq)
            if dq == 1 and bm == 16:  # the prefetching K loop lowers too
                build(mx._stage2_kernel, dtype, warps, **unit, HAS_BIAS=True, UPCAST=False, IEEE=ieee,
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, DEQUANT=dq, PREFETCH=True)
            if dq == 1 and dtype == "*bf16":  # the decoded words are the dot operand as they are
                assert not loop_converts(k1) and not loop_converts(k2), loop_converts(k1) + loop_converts(k2)
                assert "warp_group_dot" in k1.asm["ttgir"] and "warp_group_dot" in k2.asm["ttgir"]
    build(mx._decode_up_kernel, "*bf16", 4, HAS_MASK=True, HAS_BIAS=True, ACT=0, INTERLEAVED=False,
          BLOCK_N=16, BLOCK_K=256)
    build(mx._decode_down_kernel, "*bf16", 4, HAS_MASK=True, HAS_BIAS=True, BLOCK_N=16, BLOCK_K=256)
    print("compiled")
""")


def test_kernels_compile_for_sm90():
    """The real compiler (TTIR -> PTX -> cubin through the ptxas bundled with Triton) on every kernel: the
    interpreter accepts code that does not lower (layouts of interleave/reshape/trans, dtypes of tl.dot)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    done = subprocess.run([sys.executable, "-c", COMPILE_SM90], env=env, cwd=root, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
