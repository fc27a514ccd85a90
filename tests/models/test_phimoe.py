"""PhiMoE: the router is ``sparsemixer``, which is left as it is (design: leave it unmatched unless it is
done exactly). In eval it picks the best expert with ``max``, masks the scores that are not within
``2 * router_jitter_noise`` (relative) of it, takes the softmax of the masked scores at that expert, then
does the same again with the first pick set to -inf, and concatenates the two (weight, id) pairs. There
is no top-k in the graph, so no router pattern has a candidate; the weights are not those of any route op.

The experts are transformers' grouped_mm experts and become an ``experts`` op; ``moe_fused`` then turns
that op down because its ids and weights come from the concatenation, not from a route op, and the reason
is recorded. The block's output and the model's logits equal eager's (the model compile, ~35 s on 2 CPU
cores, is a slow case; CI compiles the block with dynamic shapes)."""
import expecttest
import pytest
import torch

import inductor_moe
from tests.models.tiny_moe import block_ops, check_logits, event_lines, moe_block, rejections, tiny_model
from tests.utils import rel_l2

NOT_FUSED = "experts ids/weights do not come from one route op (they come from cat.default"


def _check_stats(s, layers):
    """Each layer of each graph: experts matched, the fusion turned down for the concatenated routing, no
    router candidate."""
    per_model = layers * s["graphs"]["seen"]
    assert s["matches"] == {"experts_grouped_mm": per_model}
    assert {r["pattern"] for r in s["rejected"]} == {"moe_fused"}
    assert sum(r["count"] for r in s["rejected"]) == per_model
    assert all(r.startswith(NOT_FUSED) for r in rejections(s))
    assert not [e for e in inductor_moe.events() if e["pattern"].startswith("router_")]


class TestBlock(expecttest.TestCase):
    def test_block_fp32_dynamic(self):
        block = moe_block(tiny_model("phimoe"))  # PhimoeSparseMoeBlock
        compiled = torch.compile(block, backend="inductor_moe", dynamic=True)
        gen = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for tokens in [(2, 3), (3, 5), (2, 8)]:
                x = torch.randn(*tokens, 32, generator=gen)
                self.assertLess(rel_l2(compiled(x), block(x)), 1e-5)
        s = inductor_moe.stats()
        self.assertEqual(s["graphs"]["seen"], 1)
        _check_stats(s, layers=1)
        self.assertExpectedInline(event_lines(inductor_moe.events()), """\
experts_grouped_mm experts: matched
moe_fused experts: experts ids/weights do not come from one route op (they come from cat.default cat_1)""")


@pytest.mark.slow
def test_logits_fp32_dynamic():
    s = check_logits(tiny_model("phimoe", torch.float32, layers=2), shapes=[(2, 3), (3, 5), (2, 8)], dynamic=True)
    assert s["graphs"]["seen"] == 1
    _check_stats(s, layers=2)
    assert [e["module"] for e in inductor_moe.events()] == [f"model.layers.{i}.mlp.experts" for i in (0, 1)] * 2


@pytest.mark.slow
def test_logits_bf16():
    s = check_logits(tiny_model("phimoe", torch.bfloat16), shapes=[(1, 1), (2, 5)])
    _check_stats(s, layers=1)


def test_router_is_sparsemixer_not_a_top2_softmax():
    """In eval sparsemixer picks the top-2 experts, but its weights are neither the top-2 softmax values
    nor their renormalization: a route op in its place would change the logits."""
    router = tiny_model("phimoe").model.layers[0].mlp.router
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, weights, ids = router(x)
    top_vals, top_ids = torch.softmax(logits, -1).topk(2, dim=-1)
    assert torch.equal(ids, top_ids)
    assert not torch.allclose(weights, top_vals)
    assert not torch.allclose(weights, top_vals / top_vals.sum(-1, keepdim=True))


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("phimoe"))
        self.assertLess(err, 1e-5)
        # the router mm (sparsemixer's max/scatter/softmax/gather are not listed), then the experts op
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.experts(activation='silu')""")
