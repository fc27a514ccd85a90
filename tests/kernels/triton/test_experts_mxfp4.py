"""Triton MXFP4 expert kernels (kernels/triton/experts_mxfp4.py) under TRITON_INTERPRET=1 on CPU tensors,
against the reference on the exactly dequantized weights: the in-register dequantization bit for bit, the
sorted two-stage path and the decode GEMVs in f32 (IEEE dots: 1e-5) and bf16/fp16 (UPCAST, the
interpreter's low-precision dot is wrong: 1e-2), and the op through the dispatch when forced. The kernels
are also compiled for sm_90 (no GPU needed) so that lowering errors the interpreter cannot see show here."""
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


@pytest.mark.parametrize("spec,T", [("silu", 3), ("gelu_bias", 5), ("swiglu_oai", 21)])
def test_sorted_path_f32(spec, T):
    activation, interleaved, bias = SPECS[spec]
    x, ids, weights, q, b13, b2 = _case(T, 4, 2, 64, 96, torch.float32, bias, seed=T)
    args = (x, ids, weights, *q, b13, b2, activation, interleaved, 1.702, 7.0)
    got = mx.experts_mxfp4_triton(*args, config=SMALL, path="sorted")
    assert _err(got, experts_mxfp4_ref(*args)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sorted_path_low_precision(dtype):
    x, ids, weights, q, b13, b2 = _case(13, 4, 2, 64, 64, dtype, True, seed=1)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    got = mx.experts_mxfp4_triton(*args, config=ExpertsConfig(16, 32, 64, 4, 1, 32, 64, 4, 1), path="sorted")
    # the intermediate activation is rounded to the model dtype between the two GEMMs
    assert got.dtype == dtype and _err(got, experts_mxfp4_ref(*args)) < 1e-2


def test_sorted_path_mask_and_dropped_ids():
    x, ids, weights, q, _, _ = _case(9, 6, 3, 64, 32, torch.float32, False, seed=2)
    ids = ids.long()
    ids[1, 0], ids[4, 2] = -1, 6  # outside [0, E): dropped by the sort
    mask = torch.tensor([True, False, True, True, False, True])
    args = (x, ids, weights, *q, None, None, "silu", False, 1.702, 7.0, mask)
    got = mx.experts_mxfp4_triton(*args, config=SMALL, path="sorted")
    assert _err(got, experts_mxfp4_ref(*args)) < 1e-5


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

    def build(fn, dtype, warps, **consts):
        sig = {n: "constexpr" if n in consts else PTRS.get(n, dtype) if n.endswith("_ptr") else
               "fp32" if n in ("alpha", "limit") else "i32" for n in fn.arg_names}
        src = ASTSource(fn, sig, {(fn.arg_names.index(k),): v for k, v in consts.items()})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=3))
        assert k.asm["cubin"], fn
    build(mx._stage1_kernel, "*bf16", 4, HAS_BIAS=True, ACT=4, INTERLEAVED=True, UPCAST=False, IEEE=False,
          BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8)
    build(mx._stage2_kernel, "*fp32", 8, HAS_BIAS=True, UPCAST=False, IEEE=True, BLOCK_M=64, BLOCK_N=128,
          BLOCK_K=64, GROUP_M=8)
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
                          timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
