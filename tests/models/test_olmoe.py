"""OLMoE (softmax -> top-k, raw weights by default, cast to the model dtype): compiled logits match
eager and every MoE block becomes one ``moe`` op, with either experts implementation."""
import expecttest
import pytest
import torch

from tests.models.tiny_moe import block_ops, check_logits, tiny_model


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_logits_fp32(impl):
    s = check_logits(tiny_model("olmoe", torch.float32, layers=2, experts_impl=impl))
    assert s["matches"] == {f"experts_{impl}": 2, "router_softmax_topk": 2, "moe_fused": 2}
    assert s["rejected"] == []


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_logits_bf16(impl):
    s = check_logits(tiny_model("olmoe", torch.bfloat16, experts_impl=impl))
    assert s["matches"] == {f"experts_{impl}": 1, "router_softmax_topk": 1, "moe_fused": 1}


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("olmoe"))
        self.assertLess(err, 1e-5)
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=False, activation='silu')""")

    def test_block_ops_renormalized_batched_mm(self):
        ops, err = block_ops(tiny_model("olmoe", norm_topk_prob=True, experts_impl="batched_mm"))
        self.assertLess(err, 1e-5)
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')""")
