"""convert_experts_to_mxfp4 on tiny HF models: the converted experts compute exactly what the original
module computes with the dequantized weights; compiled, the router is still matched; unsupported shapes are
reported and left alone."""
import copy

import pytest
import torch

import inductor_moe
from inductor_moe.quant import convert_experts_to_mxfp4, dequantize_mxfp4, is_mxfp4_experts, quantize_mxfp4
from tests.models.tiny_moe import logits, tiny_model


def _dequantized_copy(model):
    """The original model with every expert weight replaced by dequantize(quantize(w)) (same layout)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(getattr(m, "gate_up_proj", None), torch.Tensor):
                for name in ("gate_up_proj", "down_proj"):
                    w = getattr(m, name)
                    wt = w.transpose(1, 2) if getattr(m, "is_transposed", False) else w
                    deq = dequantize_mxfp4(*quantize_mxfp4(wt.contiguous()), dtype=w.dtype)
                    w.copy_(deq.transpose(1, 2) if getattr(m, "is_transposed", False) else deq)
    return ref


@pytest.mark.parametrize("family,overrides", [
    ("qwen3_moe", dict(moe_intermediate_size=32)),
    ("gpt_oss", dict(intermediate_size=32)),           # transposed storage, biases, interleaved clamped SwiGLU
])
def test_converted_model_equals_dequantized_weights(family, overrides):
    model = tiny_model(family, torch.float32, layers=2, **overrides)
    ref = _dequantized_copy(model)
    before = sum(p.numel() for p in model.parameters())
    report = convert_experts_to_mxfp4(model)
    assert sorted(set(report.values())) == ["mxfp4"] and len(report) == 2
    experts = [m for m in model.modules() if is_mxfp4_experts(m)]
    assert len(experts) == 2 and all(not hasattr(m, "gate_up_proj") for m in experts)
    assert sum(p.numel() for p in model.parameters()) < before
    assert experts[0].w13_q.dtype == torch.uint8
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    got, want = logits(model, ids), logits(ref, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert convert_experts_to_mxfp4(model) == {k: "already mxfp4" for k in report}


def test_compiled_converted_model_keeps_router_match():
    model = tiny_model("qwen3_moe", torch.float32, moe_intermediate_size=32)
    convert_experts_to_mxfp4(model)
    inductor_moe.reset_stats()
    torch._dynamo.reset()
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    want = logits(model, ids)
    got = logits(torch.compile(model, backend="inductor_moe"), ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert inductor_moe.stats()["matches"].get("router_softmax_topk") == 1


def test_unsupported_shape_is_reported_and_left_alone():
    model = tiny_model("qwen3_moe", torch.float32)    # moe_intermediate_size=16: not a multiple of 32
    report = convert_experts_to_mxfp4(model)
    (reason,) = set(report.values())
    assert "multiples of 32" in reason
    assert not any(is_mxfp4_experts(m) for m in model.modules())


def test_model_without_experts_is_an_error():
    with pytest.raises(ValueError, match="model"):
        convert_experts_to_mxfp4(torch.nn.Linear(4, 4))
