"""Hand-written gpt-fast style MoE (issue: match the hand-written gpt-fast style MoE): per-token gathers of
separate w1 / w3 / w2 expert weights and einsums. The experts become one ``experts`` op with ``w3`` (no cat
of the weights), fused with the softmax router into ``moe``; other contractions are left alone."""
import expecttest
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass

import inductor_moe
from tests.models.tiny_moe import event_lines, rejections
from tests.utils import capture_graphs, rel_l2

E, DIM, INTER, K = 8, 16, 24, 2
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
MATCHES = ("experts_gather_einsum", "router_softmax_topk", "moe_fused")
MOE_OP = "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')"


class ConditionalFeedForward(nn.Module):
    """gpt-fast's experts: w1 / w3 [E, I, H], w2 [E, H, I]. ``transposed`` stores w1 / w3 as [E, H, I] and w2
    as [E, I, H] (the einsums follow); ``variant`` changes the contraction for the negative tests."""

    def __init__(self, num_experts=E, dim=DIM, inter=INTER, transposed=False, act=F.silu, variant=None):
        super().__init__()
        s13 = (num_experts, dim, inter) if transposed else (num_experts, inter, dim)
        s2 = (num_experts, inter, dim) if transposed else (num_experts, dim, inter)
        self.w1 = nn.Parameter(torch.randn(s13) * 0.2)
        self.w2 = nn.Parameter(torch.randn(s2) * 0.2)
        self.w3 = nn.Parameter(torch.randn(s13) * 0.2)
        self.transposed, self.act, self.variant = transposed, act, variant

    def forward(self, x, expert_indices):
        w1_weights = self.w1[expert_indices]
        w3_weights = self.w3[expert_indices]
        w2_ids = expert_indices.flip(-1) if self.variant == "other_ids" else expert_indices
        w2_weights = self.w2[w2_ids]
        if self.variant == "sum_slots":  # the slots summed inside the gate/up projections: no MoE
            x1 = self.act(torch.einsum("ti,taoi -> to", x, w1_weights))
            x3 = torch.einsum("ti,taoi -> to", x, w3_weights)
            return torch.einsum("to, taio -> tai", x1 * x3, w2_weights)
        if self.transposed:
            x1 = self.act(torch.einsum("ti,taio -> tao", x, w1_weights))
            x3 = torch.einsum("ti, taio -> tao", x, w3_weights)
            out = torch.einsum("tao, taoi -> tai", (x1 * x3), w2_weights)
        else:  # gpt-fast's own einsums
            x1 = self.act(torch.einsum("ti,taoi -> tao", x, w1_weights))
            x3 = torch.einsum("ti, taoi -> tao", x, w3_weights)
            out = torch.einsum("tao, taio -> tai", (x1 * x3), w2_weights)
        if self.variant == "aux_x1":
            return out, x1
        return out


class MOEFeedForward(nn.Module):
    """gpt-fast's block: softmax router, top-k, renormalize in place, einsum combine (or mul + sum)."""

    def __init__(self, top_k=K, combine="einsum", **ffn):
        super().__init__()
        self.gate = nn.Linear(DIM, ffn.get("num_experts", E), bias=False)
        self.cond_ffn = ConditionalFeedForward(**ffn)
        self.dim, self.num_activated_experts, self.combine = DIM, top_k, combine

    def forward(self, x):
        x = x.view(-1, self.dim)
        scores = self.gate(x)
        expert_weights = F.softmax(scores, dim=-1)
        expert_weights, expert_indices = torch.topk(expert_weights, self.num_activated_experts, dim=-1)
        expert_weights /= expert_weights.sum(dim=-1, keepdim=True)
        expert_outs = self.cond_ffn(x, expert_indices)
        aux = None
        if isinstance(expert_outs, tuple):
            expert_outs, aux = expert_outs
        if self.combine == "mul_sum":
            out = (expert_outs * expert_weights[..., None]).sum(dim=1)
        else:
            out = torch.einsum("tai,ta -> ti", expert_outs, expert_weights)
        return out if aux is None else (out, aux)


def _block(dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return MOEFeedForward(**kw).to(dtype).eval()


def _check(block, shapes, dynamic, grad=False):
    """Compiled (inductor_moe) vs eager outputs within the dtype's tolerance; the captured op sequences."""
    dtype = next(block.parameters()).dtype
    compiled = torch.compile(block, backend="inductor_moe", dynamic=dynamic)
    gen = torch.Generator().manual_seed(1)
    with capture_graphs() as graphs, torch.set_grad_enabled(grad):
        for shape in shapes:
            x = torch.randn(*shape, DIM, generator=gen).to(dtype)
            got, want = compiled(x), block(x)
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                err = rel_l2(g.detach(), w.detach())
                assert err <= TOL[dtype], f"{shape}: rel L2 {err}"
    return graphs, inductor_moe.stats()


def _all_matched(s):
    graphs = s["graphs"]["seen"]
    assert graphs >= 1 and s["graphs"]["rewritten"] == graphs
    assert s["matches"] == dict.fromkeys(MATCHES, graphs) and s["rejected"] == []


def test_fp32_dynamic():
    graphs, s = _check(_block(), [(2, 3), (3, 5), (2, 8)], dynamic=True)
    _all_matched(s)
    assert s["graphs"]["seen"] == 1, "dynamic shapes should compile once"
    assert graphs[0] == ["aten.mm", MOE_OP]


@pytest.mark.parametrize("dtype,dynamic", [(torch.bfloat16, True), (torch.float32, False), (torch.bfloat16, False)],
                         ids=["bf16-dynamic", "fp32-static", "bf16-static"])
def test_variants(dtype, dynamic):
    # static: T = 1 (decode; size-1 dims change the einsum lowering) and T = 10
    shapes = [(2, 3), (3, 5)] if dynamic else [(1, 1), (2, 5)]
    graphs, s = _check(_block(dtype), shapes, dynamic=dynamic)
    _all_matched(s)
    assert all(g == ["aten.mm", MOE_OP] for g in graphs)


@pytest.mark.parametrize("kw,op", [
    ({"transposed": True}, MOE_OP),
    ({"combine": "mul_sum"}, MOE_OP),
    ({"inter": DIM}, MOE_OP),  # I == H: the axes are told apart by the contractions, not by sizes
    ({"inter": DIM, "transposed": True}, MOE_OP),
    ({"top_k": 1}, "inductor_moe.moe(1, scoring='softmax', renormalize=True, activation='silu')"),
    ({"act": F.gelu}, "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='gelu')"),
], ids=["transposed_storage", "mul_sum_combine", "square", "square_transposed", "top1", "gelu"])
def test_forms(kw, op):
    graphs, s = _check(_block(**kw), [(2, 5)], dynamic=False)
    _all_matched(s)
    assert graphs[0] == ["aten.mm", op]


def test_two_blocks_in_one_graph():
    """Each block's gathers hang off its own ids: two matches, two fused ops."""
    torch.manual_seed(0)
    model = nn.Sequential(MOEFeedForward(), MOEFeedForward()).eval()
    graphs, s = _check(model, [(2, 5)], dynamic=False)
    assert s["matches"] == dict.fromkeys(MATCHES, 2) and s["rejected"] == []
    assert graphs[0] == ["aten.mm", MOE_OP, "aten.mm", MOE_OP]


@pytest.mark.parametrize("variant,reason", [
    ("sum_slots", "does not contract over the hidden size alone"),
    ("other_ids", "not three (w1, w3, w2)"),
    ("aux_x1", "outside the experts block"),
], ids=["slots_summed_in_projection", "w2_gathered_with_other_ids", "activation_input_returned"])
def test_other_contractions_are_left_alone(variant, reason):
    """Gathered weights and einsums that are not the MoE (or whose intermediates are used elsewhere) keep
    their bmms; the router alone is still replaced, and the reason is recorded."""
    graphs, s = _check(_block(variant=variant), [(2, 5)], dynamic=False)
    assert "experts_gather_einsum" not in s["matches"] and "moe_fused" not in s["matches"]
    assert "aten.bmm" in graphs[0] and not any(op.startswith("inductor_moe.experts") for op in graphs[0])
    assert any(reason in r for r in rejections(s, "experts_gather_einsum")), rejections(s)


def test_training_graph_is_left_alone():
    """With autograd recording (parameters requiring grad, grad enabled) the graph is a training graph: left
    to Inductor, gradients as in eager."""
    block = _block()
    block.train()
    graphs, s = _check(block, [(2, 5)], dynamic=False, grad=True)
    assert s["matches"] == {}
    assert all("aten.bmm" in g for g in graphs)
    assert all("training graph" in r for r in rejections(s))


class _Record(CustomGraphPass):
    def __init__(self):
        self.nodes = []

    def __call__(self, graph):
        self.nodes += [(str(n.target), sorted(n.kwargs)) for n in graph.nodes if n.op == "call_function"]

    def uuid(self):
        return None


class TestSnapshot(expecttest.TestCase):
    def test_replaced_ops(self):
        for dtype in (torch.float32, torch.bfloat16):
            torch._dynamo.reset()
            graphs, _ = _check(_block(dtype), [(2, 3)], dynamic=False)
            self.assertEqual(len(graphs), 1)
            # the router mm and the fused op remain: no topk, weight gathers or bmms
            self.assertExpectedInline("\n".join(graphs[0]), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')""")

    def test_separate_w3_no_weight_copy(self):
        """The fused op takes w1 and w3 as they are (w3 keyword): no cat, no gather of the weights."""
        record = _Record()
        with inductor_config.patch(post_grad_custom_post_pass=record), torch.no_grad():
            torch.compile(_block(), backend="inductor_moe")(torch.randn(2, 3, DIM))
        targets = [t for t, _ in record.nodes]
        (kwargs,) = [kw for t, kw in record.nodes if t == "inductor_moe.moe.default"]
        self.assertIn("w3", kwargs)
        self.assertFalse([t for t in targets if t in ("aten.cat.default", "aten.index.Tensor", "aten.bmm.default")])

    def test_explain_events(self):
        with torch.no_grad():
            torch.compile(_block(variant="sum_slots"), backend="inductor_moe")(torch.randn(2, 3, DIM))
        lines = [ln for ln in event_lines(inductor_moe.events()).splitlines()
                 if ln.startswith("experts_gather_einsum")]
        self.assertExpectedInline("\n".join(lines), """\
experts_gather_einsum cond_ffn: the gate projection does not contract over the hidden size alone""")


def test_gpu_bmm_to_mm_form(monkeypatch):
    """On GPUs Inductor's joint-graph pass turns a bmm of batch 1 (T = 1) into squeeze + mm + unsqueeze, so the
    gate and up products reach the hidden states through separate views: the same pass, made to apply to
    CPU tensors here."""
    from torch._inductor.fx_passes import joint_graph

    monkeypatch.setattr(joint_graph, "get_gpu_type", lambda: "cpu")
    for dtype in (torch.float32, torch.bfloat16):
        torch._dynamo.reset()
        inductor_moe.reset_stats()
        graphs, s = _check(_block(dtype), [(1, 1)], dynamic=False)
        _all_matched(s)
        assert graphs[0] == ["aten.mm", MOE_OP]
