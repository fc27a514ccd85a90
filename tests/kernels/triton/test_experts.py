"""Triton expert GEMMs under TRITON_INTERPRET=1 on CPU tensors, against the reference kernels.
f32 dots are exact in the interpreter; bf16 inputs run with the kernels' UPCAST flag (the interpreter's
bf16 dot is wrong), so bf16 tensor-core numerics are checked on the GPU (tools/gpu_check.py)."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests (GPU machines check the kernels with tools/gpu_check.py)", allow_module_level=True)

from inductor_moe.kernels.reference import experts_ref, experts_sorted_ref, route_ref, sort_ref  # noqa: E402
from inductor_moe.kernels.triton.configs import ExpertsConfig  # noqa: E402
from inductor_moe.kernels.triton.experts import experts_sorted_triton, experts_triton, moe_triton  # noqa: E402

SMALL = ExpertsConfig(16, 16, 16, 4, 1, 16, 16, 4, 1)  # several tiles per dim even at tiny sizes


def _case(T, E, k, H, I, dtype, bias, interleaved_layout=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    logits = torch.randn(T, E, generator=g)
    w13 = (torch.randn(E, 2 * I, H, generator=g) * 0.2).to(dtype)
    if interleaved_layout:  # GPT-OSS storage [E, H, 2I], passed as a strided view
        w13 = w13.transpose(1, 2).contiguous().transpose(1, 2)
    w2 = (torch.randn(E, H, I, generator=g) * 0.2).to(dtype)
    b13 = (torch.randn(E, 2 * I, generator=g) * 0.2).to(dtype) if bias else None
    b2 = (torch.randn(E, H, generator=g) * 0.2).to(dtype) if bias else None
    return x, logits, w13, w2, b13, b2


def _err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("activation,interleaved,bias", [
    ("silu", False, False), ("gelu", False, True), ("gelu_tanh", False, False), ("relu", False, False),
    ("swiglu_oai", True, True),
])
@pytest.mark.parametrize("T", [1, 5, 19])
def test_experts_sorted_matches_reference_f32(activation, interleaved, bias, T):
    E, k, H, I = 4, 2, 40, 24
    x, logits, w13, w2, b13, b2 = _case(T, E, k, H, I, torch.float32, bias, interleaved)
    weights, ids = route_ref(logits, k)
    sorted_out = sort_ref(ids, weights, E, 16)
    args = (w13, w2, k, 16, b13, b2, activation, interleaved, 1.702, 7.0)
    got = experts_sorted_triton(x, *sorted_out, *args, config=SMALL)
    want = experts_sorted_ref(x, *sorted_out, *args)
    assert _err(got, want) < 1e-5


@pytest.mark.parametrize("group_m", [1, 2, 4, 64])
def test_grouped_program_order_covers_every_tile(group_m):
    """The grouped order (_tile) with groups that do and do not divide the row blocks."""
    T, E, k, H, I = 23, 5, 3, 48, 40
    x, logits, w13, w2, _, _ = _case(T, E, k, H, I, torch.float32, False, seed=1)
    weights, ids = route_ref(logits, k)
    sorted_out = sort_ref(ids, weights, E, 16)
    assert sorted_out[0].shape[0] // 16 % group_m or group_m == 1  # a partial last group where possible
    config = ExpertsConfig(16, 16, 16, 4, 1, 16, 16, 4, 1, group_m=group_m)
    args = (w13, w2, k, 16, None, None, "silu", False, 1.702, 7.0)
    got = experts_sorted_triton(x, *sorted_out, *args, config=config)
    assert _err(got, experts_sorted_ref(x, *sorted_out, *args)) < 1e-5


def test_experts_expert_mask_and_int64_ids():
    T, E, k, H, I = 9, 6, 3, 32, 16
    x, logits, w13, w2, _, _ = _case(T, E, k, H, I, torch.float32, False)
    weights, ids = route_ref(logits, k)
    mask = torch.tensor([True, False, True, True, False, True])
    args = (w13, w2, None, None, "silu", False, 1.702, 7.0, mask)
    got = experts_triton(x, ids.long(), weights, *args)
    want = experts_ref(x, ids.long(), weights, *args)
    assert _err(got, want) < 1e-5


def test_moe_matches_reference_bf16_upcast():
    T, E, k, H, I = 7, 8, 2, 32, 16
    x, logits, w13, w2, _, _ = _case(T, E, k, H, I, torch.bfloat16, False)
    route = ("softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    got = moe_triton(x, logits, w13, w2, k, None, None, *route, "silu", False, 1.702, 7.0)
    weights, ids = route_ref(logits, k)
    want = experts_ref(x, ids, weights, w13, w2, None, None, "silu", False, 1.702, 7.0)
    # the intermediate activation is rounded to bf16 between the two GEMMs
    assert got.dtype == torch.bfloat16 and _err(got, want) < 1e-2


def test_zero_tokens():
    x, logits, w13, w2, _, _ = _case(0, 4, 2, 16, 16, torch.float32, False)
    weights, ids = route_ref(logits, 2)
    out = experts_triton(x, ids, weights, w13, w2, None, None, "silu", False, 1.702, 7.0)
    assert out.shape == (0, 16)


def _split(w13, inter, strided_w3=False):
    """gpt-fast's separate w1 (gate) / w3 (up) weights; ``strided_w3`` stores w3 as [E, H, I] and passes the
    transposed view, so the up rows have strides of their own."""
    w1, w3 = w13[:, :inter].contiguous(), w13[:, inter:].contiguous()
    if strided_w3:
        w3 = w3.transpose(1, 2).contiguous().transpose(1, 2)
    return w1, w3


@pytest.mark.parametrize("bias,strided_w3", [(False, False), (True, True)], ids=["plain", "bias_strided_w3"])
@pytest.mark.parametrize("T", [1, 19])
def test_experts_sorted_separate_w3_f32(bias, strided_w3, T):
    """w13 = gate [E, I, H] plus w3 = up [E, I, H]: the same as the fused [gate | up] weights."""
    E, k, H, I = 4, 2, 40, 24
    x, logits, w13, w2, b13, b2 = _case(T, E, k, H, I, torch.float32, bias)
    w1, w3 = _split(w13, I, strided_w3)
    weights, ids = route_ref(logits, k)
    sorted_out = sort_ref(ids, weights, E, 16)
    tail = (k, 16, b13, b2, "silu", False, 1.702, 7.0)
    got = experts_sorted_triton(x, *sorted_out, w1, w2, *tail, config=SMALL, w3=w3)
    want = experts_sorted_ref(x, *sorted_out, w13, w2, *tail)
    assert _err(got, want) < 1e-5


@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "fp16"])
def test_ops_with_w3_run_on_triton(T, dtype):
    """The ``experts`` and ``moe`` ops with ``w3`` through the dispatch, forced onto the Triton kernels (T=1:
    the decode path of ``moe``; T=9: the sorted path), against the reference on the fused weights."""
    import inductor_moe

    E, k, H, I = 8, 2, 32, 16
    x, logits, w13, w2, _, _ = _case(T, E, k, H, I, dtype, False)
    w1, w3 = _split(w13, I)
    weights, ids = route_ref(logits, k)
    inductor_moe.reset_stats()
    with inductor_moe.force_backend("triton"):
        got_experts = torch.ops.inductor_moe.experts(x, ids, weights, w1, w2, w3=w3)
        got_moe = torch.ops.inductor_moe.moe(x, logits, w1, w2, k, w3=w3)
    assert inductor_moe.stats()["fallbacks"] == []
    want = experts_ref(x, ids, weights, w13, w2, None, None, "silu", False, 1.702, 7.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert _err(got_experts, want) < tol and _err(got_moe, want) < tol
