"""``torch.ops.inductor_moe.experts_mxfp4``: against the f64 naive loop on weights decoded by the plain
Python decoder (tests/quant/naive_mxfp4.py), composition with ``experts`` on dequantized weights, opcheck,
torch.compile, the dispatch, and argument checks (eager and fake) that name the argument."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing._internal.optests.generate_tests import ALL_TEST_UTILS

import inductor_moe
from inductor_moe import dispatch
from inductor_moe.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4

from ..quant.naive_mxfp4 import naive_dequantize
from .naive import naive_experts

OPS = torch.ops.inductor_moe
H, I = 64, 32  # the smallest multiples of 32 that still give 2 scale blocks along H


def case(tokens=5, num_experts=4, top_k=2, dtype=torch.float32, biases=False, seed=0, id_dtype=torch.int32):
    """hidden, ids, weights, (w13_q, w2_q, w13_s, w2_s), b13, b2 with distinct ids per row."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, H, generator=g).to(dtype)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(tokens)]) if tokens else \
        torch.empty(0, top_k, dtype=torch.long)
    weights = torch.rand(tokens, top_k, generator=g)
    # rows with different magnitudes so the scales differ between blocks
    w13 = torch.randn(num_experts, 2 * I, H, generator=g) * torch.exp2(torch.randint(-4, 0, (num_experts, 2 * I, 1),
                                                                                    generator=g).float())
    w2 = torch.randn(num_experts, H, I, generator=g) * 0.2
    q13, s13 = quantize_mxfp4(w13)
    q2, s2 = quantize_mxfp4(w2)
    b13 = torch.randn(num_experts, 2 * I, generator=g).to(dtype) * 0.2 if biases else None
    b2 = torch.randn(num_experts, H, generator=g).to(dtype) * 0.2 if biases else None
    return hidden, ids.to(id_dtype), weights, (q13, q2, s13, s2), b13, b2


SPECS = {
    "silu": dict(activation="silu"),
    "gelu_tanh": dict(activation="gelu_tanh"),
    "swiglu_oai": dict(activation="swiglu_oai", gate_up_interleaved=True, alpha=1.5, limit=1.0),
}
BIASES = {"silu": False, "gelu_tanh": True, "swiglu_oai": True}  # GPT-OSS has biases


@pytest.mark.parametrize("dtype,spec", [(torch.float32, s) for s in SPECS] + [
    (torch.bfloat16, "swiglu_oai"), (torch.float16, "silu")], ids=str)
@pytest.mark.parametrize("tokens", [0, 1, 6])
def test_vs_naive(tokens, dtype, spec):
    biases = BIASES[spec]
    hidden, ids, weights, q, b13, b2 = case(tokens, dtype=dtype, biases=biases, seed=tokens)
    out = OPS.experts_mxfp4(hidden, ids, weights, *q, b13, b2, **SPECS[spec])
    w13, w2 = naive_dequantize(q[0], q[2]), naive_dequantize(q[1], q[3])
    want = naive_experts(hidden, ids, weights, w13, w2, b13, b2, **SPECS[spec])
    assert out.dtype == dtype and out.shape == (tokens, H)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(out.double(), want, **tol)


def test_mask_out_of_range_ids_and_int64():
    """Masked experts and ids outside [0, E) contribute nothing, as in ``experts``."""
    hidden, ids, weights, q, _, _ = case(7, num_experts=6, top_k=3, id_dtype=torch.int64, seed=3)
    ids[0, 1], ids[2, 0] = -1, 6
    mask = torch.tensor([True, False, True, True, False, True])
    out = OPS.experts_mxfp4(hidden, ids, weights, *q, expert_mask=mask)
    want = naive_experts(hidden, ids, weights, naive_dequantize(q[0], q[2]), naive_dequantize(q[1], q[3]),
                         expert_mask=mask)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_equals_experts_on_dequantized_weights():
    hidden, ids, weights, q, b13, b2 = case(9, dtype=torch.bfloat16, biases=True, seed=4)
    spec = SPECS["swiglu_oai"]
    out = OPS.experts_mxfp4(hidden, ids, weights, *q, b13, b2, **spec)
    w13, w2 = dequantize_mxfp4(q[0], q[2], torch.bfloat16), dequantize_mxfp4(q[1], q[3], torch.bfloat16)
    torch.testing.assert_close(out, OPS.experts(hidden, ids, weights, w13, w2, b13, b2, **spec), rtol=0, atol=0)


def test_strided_packed_weights():
    """Packed weights and scales as views at a storage offset (GPT-OSS blocks [E, N, K/32, 16] viewed as
    [E, N, K/2], or a slice of a larger buffer) give the same result as contiguous ones."""
    hidden, ids, weights, q, _, _ = case(4, seed=5)
    views = []
    for t in q:
        big = torch.zeros(t.shape[0] + 1, t.shape[1], t.shape[2] + 8, dtype=torch.uint8)
        big[1:, :, 8:] = t
        views.append(big[1:, :, 8:])
    assert not views[0].is_contiguous()
    blocks = q[0].view(q[0].shape[0], 2 * I, H // 32, 16)
    torch.testing.assert_close(OPS.experts_mxfp4(hidden, ids, weights, *views),
                               OPS.experts_mxfp4(hidden, ids, weights, blocks.flatten(2), *q[1:]), rtol=0, atol=0)


def test_compiles():
    hidden, ids, weights, q, b13, b2 = case(6, biases=True, seed=6)
    spec = SPECS["swiglu_oai"]

    def fn(x, ids, weights):
        return OPS.experts_mxfp4(x * 2, ids, weights, *q, b13, b2, **spec) + 1

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(hidden, ids, weights), fn(hidden, ids, weights))


def test_cpu_calls_use_the_reference_and_triton_is_verified():
    assert dispatch.registered("experts_mxfp4")[-1] == "reference"
    hidden = torch.zeros(2, H)
    assert dispatch.select("experts_mxfp4", hidden.device, hidden=hidden, activation="silu")[0] == "reference"
    if ("experts_mxfp4", "triton") in dispatch._REGISTRY:  # tools/gpu_check_mxfp4.py: 112/112 on an H100
        assert dispatch._REGISTRY[("experts_mxfp4", "triton")].verified is True


# ------------------------------------------------------------------------------------------------------ opcheck
def _opcheck_cases():
    """Optional tensors given (int64 ids, biases, mask, GPT-OSS activation) and left out, f32 and bf16, at
    T=5 and at T=1 (a size-1 token dim, specialized under dynamic shapes)."""
    cases = []
    for tokens, num_experts, top_k, full_dtype, plain_dtype in ((5, 8, 3, torch.float32, torch.bfloat16),
                                                                (1, 4, 2, torch.bfloat16, torch.float32)):
        hidden, ids, weights, q, b13, b2 = case(tokens, num_experts, top_k, full_dtype, biases=True, seed=7)
        mask = torch.arange(num_experts) % 3 != 1
        cases.append(((hidden, ids.long(), weights, *q, b13, b2), dict(expert_mask=mask, **SPECS["swiglu_oai"])))
        hidden, ids, weights, q, _, _ = case(tokens, num_experts, top_k, plain_dtype, seed=8)
        cases.append(((hidden, ids, weights, *q), {}))
    return cases


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("test_util", list(ALL_TEST_UTILS))
@pytest.mark.parametrize("index", range(len(OPCHECK_CASES)))
def test_opcheck(index, test_util):
    args, kwargs = OPCHECK_CASES[index]
    torch.library.opcheck(OPS.experts_mxfp4.default, args, kwargs, test_utils=test_util)


# -------------------------------------------------------------------------------------------------- bad inputs
def _args(**over):
    hidden, ids, weights, (q13, q2, s13, s2), _, _ = case(3, 4, 2, seed=8)
    args = dict(hidden=hidden, ids=ids, weights=weights, w13_q=q13, w2_q=q2, w13_s=s13, w2_s=s2, b13=None, b2=None)
    kwargs = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return tuple(args.values()), kwargs


def _u8(*shape):
    return torch.zeros(*shape, dtype=torch.uint8)


E = 4
BAD_INPUTS = {
    "hidden_int": (dict(hidden=torch.zeros(3, H, dtype=torch.int32)), TypeError, "hidden"),
    "hidden_f64": (dict(hidden=torch.zeros(3, H, dtype=torch.float64)), TypeError, "hidden"),
    "hidden_rank": (dict(hidden=torch.zeros(3, H, 1)), ValueError, "hidden"),
    "hidden_not_32": (dict(hidden=torch.zeros(3, 48), w13_q=_u8(E, 2 * I, 24), w13_s=_u8(E, 2 * I, 1),
                           w2_q=_u8(E, 48, I // 2), w2_s=_u8(E, 48, 1)), ValueError, "hidden"),
    "w13_q_float": (dict(w13_q=torch.zeros(E, 2 * I, H // 2)), TypeError, "w13_q"),
    "w13_q_rank": (dict(w13_q=_u8(2 * I, H // 2)), ValueError, "w13_q"),
    "w13_q_unpacked_H": (dict(w13_q=_u8(E, 2 * I, H)), ValueError, "w13_q"),
    "w13_q_odd_2I": (dict(w13_q=_u8(E, 2 * I + 1, H // 2)), ValueError, "w13_q"),
    "I_not_32": (dict(w13_q=_u8(E, 32, H // 2), w13_s=_u8(E, 32, H // 32), w2_q=_u8(E, H, 8), w2_s=_u8(E, H, 0)),
                 ValueError, "w13_q"),
    "w13_s_shape": (dict(w13_s=_u8(E, 2 * I, H // 16)), ValueError, "w13_s"),
    "w13_s_rows": (dict(w13_s=_u8(E, I, H // 32)), ValueError, "w13_s"),
    "w13_s_int32": (dict(w13_s=torch.zeros(E, 2 * I, H // 32, dtype=torch.int32)), TypeError, "w13_s"),
    "w2_q_E": (dict(w2_q=_u8(E + 1, H, I // 2)), ValueError, "w2_q"),
    "w2_q_unpacked_I": (dict(w2_q=_u8(E, H, I)), ValueError, "w2_q"),
    "w2_q_bf16": (dict(w2_q=torch.zeros(E, H, I // 2, dtype=torch.bfloat16)), TypeError, "w2_q"),
    "w2_s_shape": (dict(w2_s=_u8(E, H, 2)), ValueError, "w2_s"),
    "w2_s_e8m0": (dict(w2_s=_u8(E, H, I // 32).view(torch.float8_e8m0fnu)), TypeError, "w2_s"),
    "b13_shape": (dict(b13=torch.zeros(E, I)), ValueError, "b13"),
    "b13_int": (dict(b13=torch.zeros(E, 2 * I, dtype=torch.int32)), TypeError, "b13"),
    "b2_shape": (dict(b2=torch.zeros(E, I)), ValueError, "b2"),
    "ids_float": (dict(ids=torch.zeros(3, 2)), TypeError, "ids"),
    "ids_tokens": (dict(ids=torch.zeros(4, 2, dtype=torch.int32), weights=torch.zeros(4, 2)), ValueError, "ids"),
    "top_k_gt_E": (dict(ids=torch.zeros(3, 5, dtype=torch.int32), weights=torch.zeros(3, 5)), ValueError, "ids"),
    "weights_shape": (dict(weights=torch.zeros(3, 1)), ValueError, "weights"),
    "activation": (dict(activation="swish"), ValueError, "activation"),
    "limit": (dict(activation="swiglu_oai", limit=0.0), ValueError, "limit"),
    "mask_dtype": (dict(expert_mask=torch.ones(E)), TypeError, "expert_mask"),
    "mask_shape": (dict(expert_mask=torch.ones(E + 1, dtype=torch.bool)), ValueError, "expert_mask"),
}


def _to_fake(x, mode):
    return mode.from_tensor(x) if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input(name):
    over, exc, arg = BAD_INPUTS[name]
    args, kwargs = _args(**dict(over))
    with pytest.raises(exc, match=rf"^{arg}: "):
        OPS.experts_mxfp4(*args, **kwargs)
    mode = FakeTensorMode()
    args = tuple(_to_fake(a, mode) for a in args)
    kwargs = {k: _to_fake(v, mode) for k, v in kwargs.items()}
    with mode, pytest.raises(exc, match=rf"^{arg}: "):
        OPS.experts_mxfp4(*args, **kwargs)


def test_bad_input_base_is_valid():
    args, kwargs = _args()
    assert OPS.experts_mxfp4(*args, **kwargs).shape == (3, H)


def test_error_messages_say_what_is_expected():
    args, _ = _args(w13_s=_u8(E, 2 * I, 3))
    with pytest.raises(ValueError, match=r"w13_s: expected shape \(4, 64, 2\) \(\[E, 2I, H/32\]"):
        OPS.experts_mxfp4(*args)
    args, _ = _args(hidden=torch.zeros(3, 40))
    with pytest.raises(ValueError, match="multiple of 32"):
        OPS.experts_mxfp4(*args)


def test_package_exports():
    assert callable(inductor_moe.quant.quantize_mxfp4) and callable(inductor_moe.quant.dequantize_mxfp4)
