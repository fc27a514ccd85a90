"""Qwen3-MoE with ``_experts_implementation = "batched_mm"`` (repeat_interleave, W[expert_ids] gathers,
two bmms, weighted view(T, k, H).sum(1); transformers 5.17 also clamps the ids): the experts become one
``experts`` op, fused with the router into ``moe``."""
import expecttest
import pytest
import torch

import inductor_moe
from tests.models.tiny_moe import block_fn, block_ops, check_logits, moe_block
from tests.utils import rel_l2, tiny_qwen3_moe

MATCHES = ("experts_batched_mm", "router_softmax_topk", "moe_fused")


@pytest.mark.parametrize("norm_topk_prob", [True, False], ids=["renorm", "raw"])
def test_logits_fp32(norm_topk_prob):
    model = tiny_qwen3_moe(torch.float32, norm_topk_prob=norm_topk_prob, experts_impl="batched_mm")
    s = check_logits(model)
    assert s["matches"] == dict.fromkeys(MATCHES, 2) and s["rejected"] == []


def test_logits_bf16():
    s = check_logits(tiny_qwen3_moe(torch.bfloat16, layers=1, experts_impl="batched_mm"))
    assert s["matches"] == dict.fromkeys(MATCHES, 1) and s["rejected"] == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dynamic_shapes_block(dtype):
    fn = block_fn(moe_block(tiny_qwen3_moe(dtype, layers=1, experts_impl="batched_mm")))
    compiled = torch.compile(fn, backend="inductor_moe", dynamic=True)
    with torch.no_grad():
        for tokens in [(2, 3), (3, 5), (1, 9)]:
            x = torch.randn(*tokens, 32, dtype=dtype)
            assert rel_l2(compiled(x), fn(x)) <= (1e-5 if dtype == torch.float32 else 3e-2)
    s = inductor_moe.stats()
    assert s["matches"] == dict.fromkeys(MATCHES, s["graphs"]["seen"]) and s["rejected"] == []


@pytest.mark.slow
def test_logits_many_shapes():
    model = tiny_qwen3_moe(torch.float32, experts_impl="batched_mm")
    s = check_logits(model, shapes=[(1, 1), (1, 9), (2, 5), (3, 7)])
    assert s["matches"] == dict.fromkeys(MATCHES, 2 * s["graphs"]["seen"])


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        for dtype in (torch.float32, torch.bfloat16):
            torch._dynamo.reset()
            ops, err = block_ops(tiny_qwen3_moe(dtype, layers=1, experts_impl="batched_mm"))
            self.assertLess(err, 1e-5 if dtype == torch.float32 else 3e-2)
            # only the router mm and the fused op remain: no topk, gathers or bmms
            self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')""")

    def test_without_inductor_moe_graph_keeps_bmm(self):
        from tests.utils import capture_graphs

        fn = block_fn(moe_block(tiny_qwen3_moe(torch.float32, layers=1, experts_impl="batched_mm")))
        with capture_graphs() as graphs, torch.no_grad():
            torch.compile(fn)(torch.randn(2, 3, 32))
        self.assertEqual(graphs[0].count("aten.bmm"), 2)
        self.assertIn("aten.topk", graphs[0])
        self.assertEqual(inductor_moe.stats()["matches"], {})
