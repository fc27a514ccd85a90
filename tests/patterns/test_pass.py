"""The pass manager, the backend and enable()/disable(): what is rewritten, what is left alone (with a
recorded reason), and how the pass is installed."""
import importlib.metadata

import pytest
import torch
import torch.nn.functional as F

import inductor_moe
from inductor_moe import config
from inductor_moe.pass_manager import MoEGraphPass
from tests.utils import capture_graphs, rel_l2, tiny_qwen3_moe


def _block(dtype=torch.float32, **kw):
    return tiny_qwen3_moe(dtype, layers=1, **kw).model.layers[0].mlp


def _run(module, x, **compile_kw):
    with torch.no_grad():
        return module(x), torch.compile(module, **compile_kw)(x)


class AbsTopkRouter(torch.nn.Module):
    """top-k of |logits|: not a softmax router, must be left alone."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 6, bias=False)

    def forward(self, x):
        vals, ids = torch.topk(self.proj(x).abs(), 2, dim=-1)
        return vals * 2 + ids.float()


def test_non_matching_router_is_left_alone_with_reason():
    model, x = AbsTopkRouter(), torch.randn(5, 16)
    ref, out = _run(model, x, backend="inductor_moe")
    torch.testing.assert_close(out, ref)
    s = inductor_moe.stats()
    assert s["matches"] == {}
    (rejected,) = s["rejected"]
    assert rejected["pattern"] == "router_softmax_topk" and "softmax" in rejected["reason"]
    (event,) = inductor_moe.events()
    assert event["matched"] is False and event["module"] == "<root>"


def test_unknown_activation_keeps_experts_unfused():
    block = _block()
    block.experts.act_fn = torch.nn.Tanh()
    x = torch.randn(2, 4, 32)
    with capture_graphs() as graphs:
        ref, out = _run(block, x, backend="inductor_moe")
    assert rel_l2(out, ref) < 1e-5
    s = inductor_moe.stats()
    assert s["matches"] == {"router_softmax_topk": 1}
    reasons = [r["reason"] for r in s["rejected"] if r["pattern"] == "experts_grouped_mm"]
    assert len(reasons) == 1 and "activation" in reasons[0]
    assert "transformers.grouped_mm_fallback" in graphs[0] and "inductor_moe.route(2, scoring='softmax', renormalize=True)" in graphs[0]


def test_disabled_pattern_keeps_route_and_experts_apart():
    config.disabled_patterns.add("moe_fused")
    try:
        block, x = _block(), torch.randn(3, 2, 32)
        with capture_graphs() as graphs:
            ref, out = _run(block, x, backend="inductor_moe")
    finally:
        config.disabled_patterns.discard("moe_fused")
    assert rel_l2(out, ref) < 1e-5
    assert graphs[0] == ["aten.mm", "inductor_moe.route(2, scoring='softmax', renormalize=True)",
                         "inductor_moe.experts(activation='silu')"]


def test_training_graph_is_not_rewritten():
    block = _block().train()
    x = torch.randn(2, 3, 32, requires_grad=True)
    ref = block(x)
    ref.square().sum().backward()
    grads_ref = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad(), x.grad.zero_()
    out = torch.compile(block, backend="inductor_moe")(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for got, want in zip([p.grad for p in block.parameters()] + [x.grad], grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    s = inductor_moe.stats()
    assert s["matches"] == {}
    assert any("training" in r["reason"] for r in s["rejected"])


def test_backend_turns_mode_and_options_into_config_patches(monkeypatch):
    import torch._inductor.compile_fx as cfx

    seen = {}
    monkeypatch.setattr(cfx, "compile_fx", lambda gm, inputs, config_patches=None: seen.update(config_patches))
    inductor_moe.inductor_moe_backend(None, [], mode="reduce-overhead", options={"epilogue_fusion": False})
    assert seen["triton.cudagraphs"] is True and seen["epilogue_fusion"] is False
    assert isinstance(seen["post_grad_custom_pre_pass"], MoEGraphPass)


def test_backend_is_registered_and_an_entry_point():
    assert "inductor_moe" in torch._dynamo.list_backends()
    eps = importlib.metadata.entry_points(group="torch_dynamo_backends")
    assert any(ep.name == "inductor_moe" and ep.load() is inductor_moe.inductor_moe_backend for ep in eps)


def test_enable_disable_chains_and_restores_a_user_pass():
    from torch._inductor import config as ic

    calls = []

    class UserPass(torch._inductor.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph):
            calls.append(len(graph.nodes))

        def uuid(self):
            return "user-pass"

    user = UserPass()
    with ic.patch(post_grad_custom_pre_pass=user):
        inductor_moe.enable()
        assert inductor_moe.is_enabled() and ic.post_grad_custom_pre_pass.chained is user
        inductor_moe.enable()  # idempotent
        assert ic.post_grad_custom_pre_pass.chained is user
        block, x = _block(), torch.randn(2, 2, 32)
        ref, out = _run(block, x)
        assert rel_l2(out, ref) < 1e-5 and calls, "both passes ran"
        assert inductor_moe.stats()["matches"]["moe_fused"] == 1
        inductor_moe.disable()
        assert ic.post_grad_custom_pre_pass is user and not inductor_moe.is_enabled()


def test_uuid_tracks_config():
    before = MoEGraphPass().uuid()
    config.disabled_patterns.add("moe_fused")
    try:
        assert MoEGraphPass().uuid() != before
    finally:
        config.disabled_patterns.discard("moe_fused")
    assert MoEGraphPass().uuid() == before


def test_pass_is_idempotent():
    """Running the pass again on a rewritten graph finds nothing more to do."""
    from inductor_moe.pass_manager import rewrite_graph

    graphs = []

    class Twice(torch._inductor.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph):
            graphs.append(rewrite_graph(graph))

        def uuid(self):
            return None

    block, x = _block(), torch.randn(2, 2, 32)
    with torch._inductor.config.patch(post_grad_custom_post_pass=Twice()):
        ref, out = _run(block, x, backend="inductor_moe")
    assert graphs == [0] and rel_l2(out, ref) < 1e-5


def test_training_graph_recognised_without_is_inference():
    """torch versions that call the pass as pass(graph), without is_inference, still skip training graphs."""
    from inductor_moe.pass_manager import rewrite_graph

    class Plain(torch._inductor.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph):
            rewrite_graph(graph)

        def uuid(self):
            return None

    block = _block().train()
    x = torch.randn(2, 3, 32, requires_grad=True)
    with torch._inductor.config.patch(post_grad_custom_pre_pass=Plain()):
        out = torch.compile(block)(x)
    out.sum().backward()
    torch.testing.assert_close(out, block(x))
    s = inductor_moe.stats()
    assert s["matches"] == {} and any("training" in r["reason"] for r in s["rejected"])
