"""Qwen3-MoE end to end (issue: foundation): a tiny random HF model, compiled with inductor_moe, must give
eager's logits and greedy tokens, with every MoE block rewritten into the inductor_moe ops."""
import expecttest
import pytest
import torch

import inductor_moe
from tests.utils import capture_graphs, rel_l2, tiny_qwen3_moe

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
SHAPES = [(1, 1), (1, 9), (2, 5), (3, 7), (2, 1)]  # (batch, sequence): T from 1 to 21


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm_topk_prob", [True, False], ids=["renorm", "raw"])
def test_compiled_logits_match_eager(dtype, norm_topk_prob):
    model = tiny_qwen3_moe(dtype, norm_topk_prob=norm_topk_prob)
    compiled = torch.compile(model, backend="inductor_moe")
    gen = torch.Generator().manual_seed(1)
    for batch, seq in SHAPES:
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
        err = rel_l2(_logits(compiled, ids), _logits(model, ids))
        assert err <= TOL[dtype], f"{(batch, seq)}: rel L2 {err}"
    s = inductor_moe.stats()
    layers = model.config.num_hidden_layers
    graphs = s["graphs"]["seen"]
    assert graphs >= 1 and s["graphs"]["rewritten"] == graphs
    # every compiled graph had every MoE block rewritten, and nothing was turned down
    assert s["matches"] == {"experts_grouped_mm": layers * graphs, "router_softmax_topk": layers * graphs,
                            "moe_fused": layers * graphs}
    assert s["rejected"] == []


def test_rewrite_changes_numbers_only_within_rounding():
    """The test above would fail if the rewrite produced other numbers: here the op itself is perturbed."""
    model = tiny_qwen3_moe(torch.float32)
    ids = torch.randint(0, 96, (2, 5))
    ref = _logits(model, ids)
    compiled = torch.compile(model, backend="inductor_moe")
    from inductor_moe import dispatch

    original = dispatch._REGISTRY[("moe", "reference")]
    try:
        dispatch.register_kernel("moe", "reference", lambda *a: original.fn(*a) * 1.01)
        assert rel_l2(_logits(compiled, ids), ref) > 1e-3
    finally:
        dispatch._REGISTRY[("moe", "reference")] = original


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dynamic_shapes(dtype):
    model = tiny_qwen3_moe(dtype, layers=1)
    compiled = torch.compile(model, backend="inductor_moe", dynamic=True)
    for batch, seq in [(2, 3), (3, 5), (2, 8)]:
        ids = torch.randint(0, 96, (batch, seq))
        assert rel_l2(_logits(compiled, ids), _logits(model, ids)) <= TOL[dtype]
    s = inductor_moe.stats()
    assert s["graphs"]["seen"] == 1, "dynamic shapes should compile once for batch, seq >= 2"
    assert s["matches"]["moe_fused"] == 1


class TestSnapshot(expecttest.TestCase):
    def test_rewritten_graph_ops(self):
        for dtype in (torch.float32, torch.bfloat16):
            torch._dynamo.reset()
            block = tiny_qwen3_moe(dtype, layers=1).model.layers[0].mlp  # Qwen3MoeSparseMoeBlock
            x = torch.randn(2, 3, block.gate.hidden_dim, dtype=dtype)
            with capture_graphs() as graphs, torch.no_grad():
                torch.compile(block, backend="inductor_moe")(x)
            self.assertEqual(len(graphs), 1)
            # the router mm and the fused op remain: no topk, sort, histc, grouped mm or its fallback
            self.assertExpectedInline("\n".join(graphs[0]), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')""")

    def test_without_inductor_moe_graph_keeps_grouped_mm(self):
        model = tiny_qwen3_moe(torch.float32, layers=1)
        with capture_graphs() as graphs:
            _logits(torch.compile(model), torch.randint(0, 96, (2, 3)))
        self.assertIn("transformers.grouped_mm_fallback", graphs[0])
        self.assertIn("aten.topk", graphs[0])
        self.assertEqual(inductor_moe.stats()["matches"], {})


def test_enable_generate_greedy_tokens_match_eager():
    model = tiny_qwen3_moe(torch.float32)
    prompt = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(prompt, **kwargs)
    inductor_moe.enable()
    eager_forward = model.forward
    model.forward = torch.compile(model.forward)
    try:
        with torch.no_grad():
            got = model.generate(prompt, **kwargs)
    finally:
        model.forward = eager_forward
    assert torch.equal(got, expected)
    s = inductor_moe.stats()
    assert s["matches"].get("moe_fused", 0) >= 2 and s["rejected"] == []
