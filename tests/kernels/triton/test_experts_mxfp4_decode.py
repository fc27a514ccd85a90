"""MXFP4 decode path version 2 (kernels/triton/experts_mxfp4_decode.py, opt-in with
INDUCTOR_MOE_MXFP4_DECODE=v2) under TRITON_INTERPRET=1 on CPU tensors: the word decode and the scaled group
sums bit for bit (every byte value, scale bytes 0 / 1 / 127 / 254 / 255), the whole op against
``experts_mxfp4_ref`` (f32: 1e-5; bf16/fp16: 1e-2, act rounded to the model dtype between the GEMMs as the
reference does not) over both activations' layouts, biases, k = 1..4, T = 1..4, K and row tails, the
x-prep and prescale variants, ids out of range and the expert mask, scale-edge weights; the dispatch hook
(old path without the env var); and the kernels compiled for sm_90 (16-byte weight loads, no .ftz)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests (GPU machines: benchmarks/tune_mxfp4_decode.py checks every config)",
                allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from inductor_moe.kernels.reference.experts_mxfp4 import experts_mxfp4_ref  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4 as mx  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4_decode as v2  # noqa: E402
from inductor_moe.quant.mxfp4 import code_values, scale_values  # noqa: E402

from .test_experts_mxfp4 import _case, _err  # noqa: E402  (the same cases as the other MXFP4 kernels)

SPECS = {  # activation, interleaved, bias
    "silu": ("silu", False, False),
    "gelu_bias": ("gelu", False, True),
    "swiglu_oai": ("swiglu_oai", True, True),
}
TAILS = dict(tiles1=(64, 64, 4), tiles2=(64, 64, 4))  # H = I = 96: a masked K step and a half row tile


@triton.jit
def _probe(q_ptr, s_ptr, xp_ptr, out_ptr, K, stride_qn, stride_sn, BLOCK_N: tl.constexpr, G: tl.constexpr,
           PRESCALE: tl.constexpr, MASKED: tl.constexpr):
    """Scaled group sums [BLOCK_N, K/32] of packed rows against a prepped x (one K step per G groups)."""
    rows = tl.arange(0, BLOCK_N).to(tl.int64)[None, :]  # one slot
    KG = K // 32
    for g0 in range(0, KG, G):
        words, b = v2._down_load(q_ptr + rows * stride_qn, s_ptr + rows * stride_sn, g0, KG, 1, G, MASKED)
        sums = v2._down_dot(words, b, xp_ptr + rows * 0, g0, KG, G, PRESCALE, MASKED)
        cols = g0 + tl.arange(0, G)
        tl.store(out_ptr + rows[:, :, None] * KG + cols[None, None, :], sums, mask=(cols < KG)[None, None, :])


@pytest.mark.parametrize("prescale,masked,G", [(True, False, 2), (False, True, 4), (True, True, 4)])
def test_group_sums_exact(prescale, masked, G):
    """Every byte value (both nibbles, both signs, -0) under scale bytes 0 (2**-127, subnormal) to 254 and
    255 (NaN), against x = 2**(j % 8 + p): every product and partial sum is exact in f32, so the result
    must equal the f64 sum rounded once to f32. K = 96: with G = 4 the last step is masked."""
    n, k = 16, 96
    packed = (torch.arange(n * k // 2) * 7 % 256).to(torch.uint8).view(n, k // 2)
    packed[0, :16] = torch.arange(0, 256, 17, dtype=torch.uint8)  # 0x00, 0x11, ..., 0xFF
    packed[1, :48] = torch.arange(48, dtype=torch.uint8) * 5 + 13
    scale_bytes = [0, 1, 60, 126, 127, 128, 200, 254, 255, 0, 127, 254, 1, 252, 2, 127]
    scales = torch.tensor(scale_bytes * 3, dtype=torch.uint8)[: n * 3].view(3, n).t().contiguous()
    p = torch.tensor([-20.0, 0.0, -40.0]).repeat_interleave(32)  # per group: products in f32's range
    x = torch.exp2(torch.arange(k) % 8 + p).view(1, k)
    xp = torch.empty(1, k)
    v2._prep_x_kernel[(1, 1)](x, xp, 1, k, x.stride(0), x.stride(1), PRESCALE=prescale, BLOCK=128)
    out = torch.full((n, k // 32), 7.0)
    _probe[(1,)](packed, scales, xp, out, k, packed.stride(0), scales.stride(0), BLOCK_N=n, G=G,
                 PRESCALE=prescale, MASKED=masked)
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(n, k)
    prods = code_values(codes, torch.float64) * x.double()
    want = (prods.view(n, 3, 32).sum(-1) * scale_values(scales, torch.float64)).float()
    assert torch.equal(out.isnan(), want.isnan())
    ok = ~want.isnan()
    assert torch.equal(out[ok], want[ok])
    w = want[ok]
    assert (w != 0).sum() > 30 and ((w != 0) & (w.abs() < 2.0 ** -126)).any()  # subnormal results covered


@pytest.mark.parametrize("dtype,spec,T,k,prep,prescale", [
    (torch.float32, "silu", 1, 1, True, True),
    (torch.float32, "swiglu_oai", 3, 4, False, False),
    (torch.float32, "gelu_bias", 2, 3, True, False),
    (torch.bfloat16, "swiglu_oai", 2, 2, True, True),
    (torch.bfloat16, "silu", 4, 3, False, True),
    (torch.float16, "swiglu_oai", 1, 4, True, True),
], ids=lambda v: str(v).replace("torch.", ""))
def test_v2_matches_reference(dtype, spec, T, k, prep, prescale):
    activation, interleaved, bias = SPECS[spec]
    x, ids, weights, q, b13, b2 = _case(T, 8, k, 96, 96, dtype, bias, seed=T * 10 + k)
    args = (x, ids, weights, *q, b13, b2, activation, interleaved, 1.702, 7.0)
    got = v2.experts_mxfp4_decode_v2(*args, **TAILS, prep=prep, prescale=prescale)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got.dtype == dtype and got.shape == x.shape
    assert _err(got, experts_mxfp4_ref(*args)) < tol


@pytest.mark.parametrize("H,I,up,down", [
    (160, 224, (16, 32, 1), (4, 32, 1)),  # 5 and 7 full K steps
    (96, 96, (16, 64, 1), (8, 64, 4)),  # one full step and a tail
    (64, 64, (16, 64, 1), (4, 64, 4)),  # one step, no loop body
], ids=["loops", "step+tail", "one step"])
@pytest.mark.parametrize("k", [3, 4])
def test_v2_prefetch_and_rows_outer(H, I, up, down, k):
    """The loop forms of ``_check_tiles``'s flags do the same arithmetic in the same order as the plain
    loops: prefetching (next step's weight loads first) in both kernels and the rows-outer down tile (rows in
    a thread's registers, sharing its act loads) give the plain result bit for bit, and match the reference."""
    x, ids, weights, q, b13, b2 = _case(2, 8, k, H, I, torch.float32, True, seed=H + k)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    plain = v2.experts_mxfp4_decode_v2(*args, tiles1=up, tiles2=down)
    assert _err(plain, experts_mxfp4_ref(*args)) < 1e-5
    for pf, outer in ((1, 0), (0, 1), (1, 1)):
        got = v2.experts_mxfp4_decode_v2(*args, tiles1=up + (pf,), tiles2=down + (pf, outer))
        assert torch.equal(got, plain), (pf, outer)


def test_v2_default_tiles_bf16():
    x, ids, weights, q, b13, b2 = _case(1, 8, 4, 64, 64, torch.bfloat16, True, seed=7)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    got = v2.experts_mxfp4_decode_v2(*args)
    assert _err(got, experts_mxfp4_ref(*args)) < 1e-2


@pytest.mark.slow  # ~2-4 min a case on the interpreter
@pytest.mark.parametrize("T,k", [(1, 4), (2, 8), (8, 4)])
def test_v2_tuned_tiles(T, k):
    """The GPU-tuned tiles (``tuned_tiles``, with their prefetch / rows-outer flags) on a K that fits them,
    with a K tail of one group."""
    up, down = v2.tuned_tiles(T, k)
    assert down is not None
    K = max(up[1], down[1]) + 32
    x, ids, weights, q, b13, b2 = _case(T, 8, k, K, K, torch.float32, True, seed=T + k)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    assert _err(v2.experts_mxfp4_decode_v2(*args), experts_mxfp4_ref(*args)) < 1e-5


def test_v2_mask_and_ids_out_of_range():
    x, ids, weights, q, b13, b2 = _case(3, 6, 3, 64, 64, torch.float32, True, seed=2)
    ids = ids.long()
    ids[1, 0], ids[2, 2] = -1, 6  # outside [0, E): contribute nothing
    mask = torch.tensor([True, False, True, True, False, True])
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0, mask)
    got = v2.experts_mxfp4_decode_v2(*args, tiles1=(16, 32, 4), tiles2=(32, 64, 2))
    want = experts_mxfp4_ref(*args)
    assert _err(got, want) < 1e-5
    every = torch.ones(6, dtype=torch.bool)
    assert _err(got, experts_mxfp4_ref(*args[:-1], every)) > 1e-3  # the mask did something


@pytest.mark.parametrize("prescale", [True, False])
def test_v2_scale_edges(prescale):
    """Scale bytes 0 (2**-127, subnormal), 127 (1) and 254 (2**127) inside a layer: a 254 group of w13 with
    codes up to +-0.5 against x = 2**-60 (products 2**66, in range for the 2**64 prescale; the clamped
    SwiGLU keeps the output finite), whole 0 and 127 groups elsewhere."""
    T, E, k, H, I = 2, 4, 2, 64, 64
    x, ids, weights, q, b13, b2 = _case(T, E, k, H, I, torch.float32, True, seed=11)
    q13, q2, s13, s2 = (t.clone() for t in q)
    s13[:, :, 0] = 254
    q13[:, :, :16] &= 0x99  # codes 0, 1 (0.5), 8 (-0), 9 (-0.5) in both nibbles
    x[:, :32] = 2.0 ** -60
    s13[:, 1::3, 1] = 0
    s13[:, 2::3, 1] = 127
    s2[:, ::2, 0] = 127
    s2[:, 1::4, 1] = 0
    args = (x, ids, weights, q13, q2, s13, s2, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    want = experts_mxfp4_ref(*args)
    got = v2.experts_mxfp4_decode_v2(*args, tiles1=(16, 32, 4), tiles2=(16, 32, 4), prescale=prescale)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert _err(got, want) < 1e-5


def test_v2_zero_tokens_bad_tiles_and_layout():
    x, ids, weights, q, _, _ = _case(0, 4, 2, 32, 32, torch.float32, False)
    spec = (None, None, "silu", False, 1.702, 7.0)
    assert v2.experts_mxfp4_decode_v2(x, ids, weights, *q, *spec).shape == (0, 32)
    x, ids, weights, q, _, _ = _case(1, 4, 2, 64, 64, torch.float32, False)
    with pytest.raises(ValueError, match="tiles"):
        v2.experts_mxfp4_decode_v2(x, ids, weights, *q, *spec, tiles1=(16, 16, 4))
    with pytest.raises(ValueError, match="tiles"):
        v2.experts_mxfp4_decode_v2(x, ids, weights, *q, *spec, tiles2=(16, 64, 4, 1, 1, 1))
    big = torch.zeros(4, 128, 33, dtype=torch.uint8)
    odd = big[:, :, 1:]  # rows 33 bytes apart, starting 1 byte in: no int32 words
    assert not v2.supports_layout(odd) and v2.supports_layout(q[0], q[1])
    with pytest.raises(ValueError, match="aligned"):
        v2.experts_mxfp4_decode_v2(x, ids, weights, odd, *q[1:], *spec)
    for rows, k in ((2880, 2880), (768, 2048), (2048, 768), (64, 64)):
        bn, bk, _ = v2.default_tiles(rows, k)
        assert bk >= 32 and not bk & (bk - 1) and not bn & (bn - 1) and bk <= max(32, triton.next_power_of_2(k))


def test_dispatch_hook(monkeypatch):
    """The decode path is v2 unless INDUCTOR_MOE_MXFP4_DECODE=v1 asks for the old kernel pair or the packed
    layout cannot be read as int32 words; the sorted path never changes."""
    calls = []
    monkeypatch.setattr(mx, "experts_mxfp4_decode_triton", lambda *a, **k: calls.append("v1"))
    monkeypatch.setattr(v2, "experts_mxfp4_decode_v2", lambda *a, **k: calls.append("v2"))
    monkeypatch.setattr(mx, "experts_mxfp4_sorted_triton", lambda *a, **k: calls.append("sorted"))
    x, ids, weights, q, _, _ = _case(1, 32, 4, 32, 32, torch.float32, False)
    spec = (None, None, "silu", False, 1.702, 7.0)
    monkeypatch.delenv(v2.ENV, raising=False)
    mx.experts_mxfp4_triton(x, ids, weights, *q, *spec)
    monkeypatch.setenv(v2.ENV, "v1")
    mx.experts_mxfp4_triton(x, ids, weights, *q, *spec)
    monkeypatch.setenv(v2.ENV, "v2")
    mx.experts_mxfp4_triton(x, ids, weights, *q, *spec)
    mx.experts_mxfp4_triton(x, ids, weights, *q, *spec, path="sorted")
    odd = torch.zeros(32, 64, 17, dtype=torch.uint8)[:, :, 1:]
    mx.experts_mxfp4_triton(x, ids, weights, odd, *q[1:], *spec)
    assert calls == ["v2", "v1", "v2", "sorted", "v1"]


def test_v2_through_the_hook(monkeypatch):
    monkeypatch.setenv(v2.ENV, "v2")
    x, ids, weights, q, b13, b2 = _case(1, 8, 2, 64, 64, torch.float32, True, seed=5)
    args = (x, ids, weights, *q, b13, b2, "swiglu_oai", True, 1.702, 7.0)
    calls = []
    original = v2.experts_mxfp4_decode_v2
    monkeypatch.setattr(v2, "experts_mxfp4_decode_v2", lambda *a, **k: calls.append(1) or original(*a, **k))
    got = mx.experts_mxfp4_triton(*args)
    assert calls == [1] and _err(got, experts_mxfp4_ref(*args)) < 1e-5


COMPILE_SM90 = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import inductor_moe.kernels.triton.experts_mxfp4_decode as v2

    PTRS = {"q_ptr": "*u8", "s_ptr": "*u8", "ids_ptr": "*i32", "mask_ptr": "*u8", "wts_ptr": "*fp32",
            "act_ptr": "*fp32", "xp_ptr": "*fp32"}
    DIV16 = ("stride_qe", "stride_qn", "K", "I", "N", "stride_ot", "stride_xt")  # as Triton specializes them

    def build(fn, dtype, warps, **consts):
        names = fn.arg_names
        sig = {n: "constexpr" if n in consts else PTRS.get(n, dtype) if n.endswith("_ptr") else
               "fp32" if n in ("alpha", "limit") else "i32" for n in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
                 if n.endswith("_ptr") or n in DIV16}
        src = ASTSource(fn, sig, {(names.index(k),): v for k, v in consts.items()}, attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=3))
        assert k.asm["cubin"], fn
        return k.asm["ptx"]
    for prep in (True, False):
        ptx = build(v2._up_kernel, "*bf16", 4, HAS_MASK=True, HAS_BIAS=True, ACT=4, INTERLEAVED=True,
                    PREPPED=prep, PRESCALE=prep, ROUND_F16=False, ROUND_BF16=True, BLOCK_N=16, BLOCK_K=256)
        assert "ld.global.v4.b32" in ptx and ".ftz" not in ptx, "up"
    ptx = build(v2._up_kernel, "*bf16", 2, HAS_MASK=True, HAS_BIAS=True, ACT=4, INTERLEAVED=True, PREPPED=True,
                PRESCALE=True, ROUND_F16=False, ROUND_BF16=True, BLOCK_N=8, BLOCK_K=256, PREFETCH=True)
    assert "ld.global.v4.b32" in ptx and ".ftz" not in ptx, "up, prefetch"
    for bn, outer, pf in ((2, False, False), (8, True, True), (8, True, False)):
        ptx = build(v2._down_kernel, "*bf16", 4, HAS_MASK=True, HAS_BIAS=True, PRESCALE=True, BLOCK_S=4,
                    BLOCK_N=bn, BLOCK_K=512, ROWS_OUTER=outer, PREFETCH=pf)
        assert "ld.global.v4.b32" in ptx and ".ftz" not in ptx, ("down", outer, pf)
    build(v2._prep_x_kernel, "*bf16", 4, PRESCALE=True, BLOCK=1024)
    print("compiled")
""")


def test_kernels_compile_for_sm90():
    """The real compiler on the v2 kernels: they lower, the packed weights are read with 16-byte vector
    loads, and no f32 op flushes subnormals (the E2M1 decode relies on them)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    done = subprocess.run([sys.executable, "-c", COMPILE_SM90], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
