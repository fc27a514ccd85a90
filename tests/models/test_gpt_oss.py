"""GPT-OSS: top-k of the biased router logits, softmax over the k values (``router_topk_softmax``).
Its experts (transposed weights with biases, interleaved gate/up, clamped swiglu) are matched in both
the ``grouped_mm`` form (the default, prefill) and the ``batched_mm`` form (generate()'s decode pick)."""
import expecttest
import pytest
import torch

from tests.models.tiny_moe import block_ops, check_logits, tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grouped_mm_logits(dtype):
    s = check_logits(tiny_model("gpt_oss", dtype))
    assert s["matches"] == {"experts_grouped_mm": 1, "router_topk_softmax": 1, "moe_fused": 1}
    assert s["rejected"] == []


def test_batched_mm_logits_fp32():
    s = check_logits(tiny_model("gpt_oss", torch.float32, experts_impl="batched_mm"))
    assert s["matches"] == {"experts_batched_mm": 1, "router_topk_softmax": 1, "moe_fused": 1}
    assert s["rejected"] == []


def test_batched_mm_logits_bf16():
    s = check_logits(tiny_model("gpt_oss", torch.bfloat16, experts_impl="batched_mm"))
    assert s["matches"] == {"experts_batched_mm": 1, "router_topk_softmax": 1, "moe_fused": 1}


@pytest.mark.slow
def test_batched_mm_two_layers_several_shapes():
    model = tiny_model("gpt_oss", torch.float32, layers=2, experts_impl="batched_mm")
    s = check_logits(model, shapes=[(1, 1), (2, 5), (3, 7)])
    graphs = s["graphs"]["seen"]
    assert s["matches"] == {k: 2 * graphs for k in ("experts_batched_mm", "router_topk_softmax", "moe_fused")}


class TestSnapshot(expecttest.TestCase):
    def test_block_ops_grouped_mm(self):
        ops, err = block_ops(tiny_model("gpt_oss"))
        self.assertLess(err, 1e-5)
        self.assertExpectedInline("\n".join(ops), """inductor_moe.moe(2, scoring='softmax', renormalize=False, order='topk_then_softmax', activation='swiglu_oai', gate_up_interleaved=True, alpha=1.702, limit=7.0)""")

    def test_block_ops_batched_mm(self):
        ops, err = block_ops(tiny_model("gpt_oss", experts_impl="batched_mm"))
        self.assertLess(err, 1e-5)
        self.assertExpectedInline("\n".join(ops), """inductor_moe.moe(2, scoring='softmax', renormalize=False, order='topk_then_softmax', activation='swiglu_oai', gate_up_interleaved=True, alpha=1.702, limit=7.0)""")
