"""Mixtral (softmax -> top-k -> always renormalize, weights in f32) and its experts in both traceable
implementations: compiled logits match eager and every MoE block becomes one ``moe`` op."""
import expecttest
import pytest
import torch

from tests.models.tiny_moe import block_ops, check_logits, tiny_model

FUSED = {"router_softmax_topk": 1, "moe_fused": 1}


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_logits_fp32(impl):
    s = check_logits(tiny_model("mixtral", torch.float32, layers=2, experts_impl=impl))
    assert s["matches"] == {f"experts_{impl}": 2, "router_softmax_topk": 2, "moe_fused": 2}
    assert s["rejected"] == []


def test_logits_bf16():
    s = check_logits(tiny_model("mixtral", torch.bfloat16))
    assert s["matches"] == {"experts_grouped_mm": 1, **FUSED} and s["rejected"] == []


@pytest.mark.slow
def test_dynamic_shapes_batched_mm():
    model = tiny_model("mixtral", torch.float32, experts_impl="batched_mm")
    s = check_logits(model, shapes=[(2, 3), (3, 5), (2, 8)], dynamic=True)
    assert s["graphs"]["seen"] == 1 and s["matches"]["moe_fused"] == 1 and s["rejected"] == []


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("mixtral"))
        self.assertLess(err, 1e-5)
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')""")
