"""Qwen2-MoE: softmax -> top-k -> optional renormalize (``norm_topk_prob``, False by default) -> cast
(``router_softmax_topk``), grouped_mm experts, and a gated shared expert beside them,
``sigmoid(shared_expert_gate(x)) * shared_expert(x)``, which stays as it is next to the fused ``moe`` op.

Also the router variants a hand-written copy may use (``dim=1`` for ``dim=-1``, ``sorted=False``) and the
router logits or routing with another user (returned for the aux loss, as ``output_router_logits=True``
does, or an aux loss in the same graph): the router still matches and the other user keeps its input."""
import expecttest
import pytest
import torch
import torch.nn.functional as F

import inductor_moe
from tests.models.tiny_moe import TOL, block_ops, check_logits, moe_block, rejections, tiny_model
from tests.utils import capture_graphs, rel_l2

MATCHES = ("experts_grouped_mm", "router_softmax_topk", "moe_fused")


def _fused_ops(graph_ops: list[str]) -> list[str]:
    return [op for op in graph_ops if op.startswith("inductor_moe.")]


def test_logits_fp32_dynamic():
    """Two layers, the first with raw weights (the config's default), the second renormalized: one graph
    for every shape, each layer's router, experts and their fusion matched."""
    model = tiny_model("qwen2_moe", torch.float32, layers=2)
    model.model.layers[1].mlp.gate.norm_topk_prob = True
    with capture_graphs() as graphs:
        s = check_logits(model, shapes=[(2, 3), (3, 5), (2, 8)], dynamic=True)
    assert s["graphs"]["seen"] == 1 and len(graphs) == 1
    assert s["matches"] == dict.fromkeys(MATCHES, 2) and s["rejected"] == []
    assert _fused_ops(graphs[0]) == [
        "inductor_moe.moe(2, scoring='softmax', renormalize=False, activation='silu')",
        "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("norm_topk_prob", [False, True], ids=["raw", "renorm"])
def test_logits_bf16(norm_topk_prob):
    s = check_logits(tiny_model("qwen2_moe", torch.bfloat16, norm_topk_prob=norm_topk_prob),
                     shapes=[(1, 1), (2, 5), (3, 7)])
    assert s["matches"] == dict.fromkeys(MATCHES, s["graphs"]["seen"]) and s["rejected"] == []


@pytest.mark.parametrize("norm_topk_prob", [False, True], ids=["raw", "renorm"])
def test_block_bf16(norm_topk_prob):
    ops, err = block_ops(tiny_model("qwen2_moe", torch.bfloat16, norm_topk_prob=norm_topk_prob))
    assert err <= TOL[torch.bfloat16]
    assert f"inductor_moe.moe(2, scoring='softmax', renormalize={norm_topk_prob}, activation='silu')" in ops
    assert inductor_moe.stats()["matches"] == dict.fromkeys(MATCHES, 1)


def test_shared_expert_gate_is_part_of_the_result():
    """The block is routed experts + sigmoid-gated shared expert, and the shared part is large enough on
    these weights that a rewrite which dropped or changed it would fail the block checks."""
    block = moe_block(tiny_model("qwen2_moe"))
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = block(x[None])[0]
        _, weights, ids = block.gate(x)
        routed = block.experts(x, ids, weights)
        shared = torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
    torch.testing.assert_close(full, routed + shared)
    assert rel_l2(routed, full) > 0.1 and rel_l2(block.shared_expert(x), shared) > 0.1


# ---------------------------------------------------------------------------------------------------
# router variants and other users of the router's values


class VariantRouter(torch.nn.Module):
    """Qwen2MoeTopKRouter written with ``dim=1`` and/or ``sorted=False``, sharing the original's weight."""

    def __init__(self, gate, dim=-1, sorted=True):
        super().__init__()
        self.weight, self.top_k, self.norm_topk_prob = gate.weight, gate.top_k, gate.norm_topk_prob
        self.dim, self.sorted = dim, sorted

    def forward(self, x):
        logits = F.linear(x.reshape(-1, self.weight.shape[1]), self.weight)
        probs = torch.softmax(logits, dim=self.dim, dtype=torch.float)
        vals, ids = torch.topk(probs, self.top_k, dim=self.dim, sorted=self.sorted)
        if self.norm_topk_prob:
            vals = vals / vals.sum(dim=self.dim, keepdim=True)
        return logits, vals.to(logits.dtype), ids


@pytest.mark.parametrize("dim,sorted_", [(1, True), (-1, False), (1, False)], ids=["dim1", "unsorted", "both"])
def test_router_variants(dim, sorted_):
    model = tiny_model("qwen2_moe", norm_topk_prob=True)
    block = moe_block(model)
    block.gate = VariantRouter(block.gate, dim=dim, sorted=sorted_)
    ops, err = block_ops(model)
    assert err < 1e-5
    assert ops == ["aten.mm", "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')"] + [
        "aten.mm"] * 4
    s = inductor_moe.stats()
    assert s["matches"] == dict.fromkeys(MATCHES, 1) and s["rejected"] == []


class RoutedWithAux(torch.nn.Module):
    """The routed half of a Qwen2-MoE block whose router results have another user:
    ``logits``: the router logits are returned too (``output_router_logits=True`` does this per layer);
    ``aux_loss``: HF's load-balancing loss of those logits in the same graph (its own softmax and top-k);
    ``ids``: the router's own ids and probabilities feed an expert-load count."""

    def __init__(self, block, aux):
        super().__init__()
        self.gate, self.experts, self.aux = block.gate, block.experts, aux

    def forward(self, x):
        from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

        x = x.reshape(-1, x.shape[-1])
        router_logits, weights, ids = self.gate(x)
        out = self.experts(x, ids, weights)
        if self.aux == "logits":
            return out, router_logits
        if self.aux == "aux_loss":
            return out, load_balancing_loss_func((router_logits,), self.experts.num_experts, self.gate.top_k)
        probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)
        return out, torch.histc(ids.float(), bins=8, min=0, max=7), probs.mean(0)


def _reasons(stats) -> list[str]:
    """The router's rejection reasons without the node names they end with."""
    return [r.rsplit(" [at ", 1)[0] for r in rejections(stats, "router_softmax_topk")]


def _run_aux(aux):
    module = RoutedWithAux(moe_block(tiny_model("qwen2_moe", norm_topk_prob=True)), aux)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    with capture_graphs() as graphs, torch.no_grad():
        got = torch.compile(module, backend="inductor_moe")(x)
        want = module(x)
    for g, w in zip(got, want, strict=True):
        assert rel_l2(g, w) < 1e-5
    assert len(graphs) == 1
    return graphs[0], inductor_moe.stats()


class TestRouterWithOtherUsers(expecttest.TestCase):
    def test_logits_returned(self):
        ops, s = _run_aux("logits")
        self.assertEqual(s["matches"], dict.fromkeys(MATCHES, 1))
        self.assertEqual(s["rejected"], [])
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')""")

    def test_aux_loss_in_the_same_graph(self):
        """The aux loss's top-k keeps its values unused (only its ids are counted): it is turned down with
        that reason and stays, next to the fused op; the histc is the aux loss's."""
        ops, s = _run_aux("aux_loss")
        self.assertEqual(s["matches"], dict.fromkeys(MATCHES, 1))
        if "aten.topk" not in ops:  # transformers 5.17's loss leaves no top-k in this graph: nothing turned down
            self.assertEqual(_reasons(s), [])
            self.assertEqual(ops, ["aten.mm", "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')"])
            return
        self.assertEqual(_reasons(s), ["top-k values are unused (weights gathered another way)"])
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
aten.topk
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')
aten.histc""")

    def test_router_ids_and_probabilities_reused(self):
        """The ids feed the count as well as the experts: a route op stays for the count beside the fused
        op (routing is computed twice, see fuse_moe); the probabilities keep their softmax."""
        ops, s = _run_aux("ids")
        self.assertEqual(s["matches"], dict.fromkeys(MATCHES, 1))
        self.assertEqual(s["rejected"], [])
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.route(2, scoring='softmax', renormalize=True)
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')
aten.histc""")


@pytest.mark.slow
def test_output_router_logits():
    """``output_router_logits=True``: HF's output capture breaks the graph, the model graph returns each
    layer's router logits (another user of the router's mm) and a second graph computes the aux loss, whose
    top-ks (values unused) are turned down. Logits, router logits and aux loss equal eager's."""
    model = tiny_model("qwen2_moe", torch.float32, layers=2, output_router_logits=True)
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = torch.compile(model, backend="inductor_moe")(input_ids=ids)
        want = model(input_ids=ids)
    assert rel_l2(got.logits, want.logits) <= TOL[torch.float32]
    assert len(got.router_logits) == 2
    for g, w in zip(got.router_logits, want.router_logits, strict=True):
        assert rel_l2(g, w) < 1e-6
    assert rel_l2(got.aux_loss, want.aux_loss) < 1e-6
    s = inductor_moe.stats()
    assert s["graphs"] == {"seen": 2, "rewritten": 1}
    assert s["matches"] == dict.fromkeys(MATCHES, 2)
    assert _reasons(s) == ["top-k values are unused (weights gathered another way)"] * 2


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("qwen2_moe"))
        self.assertLess(err, 1e-5)
        # router mm, the fused op, then the shared expert's gate (its sigmoid is not listed) and its
        # gate/up/down mms, untouched
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=False, activation='silu')
aten.mm
aten.mm
aten.mm
aten.mm""")
