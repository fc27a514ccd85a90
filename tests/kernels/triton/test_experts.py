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
