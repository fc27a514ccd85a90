"""GraniteMoE: top-k of the f32 router logits, softmax over the k values, cast to the model dtype
(``router_topk_softmax``), with either experts implementation."""
import expecttest
import pytest
import torch

from tests.models.tiny_moe import block_ops, check_logits, tiny_model


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_logits_fp32(impl):
    s = check_logits(tiny_model("granitemoe", torch.float32, layers=2, experts_impl=impl))
    assert s["matches"] == {f"experts_{impl}": 2, "router_topk_softmax": 2, "moe_fused": 2}
    assert s["rejected"] == []


@pytest.mark.slow
def test_logits_bf16():
    s = check_logits(tiny_model("granitemoe", torch.bfloat16))
    assert s["matches"] == {"experts_grouped_mm": 1, "router_topk_softmax": 1, "moe_fused": 1}


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("granitemoe"))
        self.assertLess(err, 1e-5)
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=False, order='topk_then_softmax', activation='silu')""")
