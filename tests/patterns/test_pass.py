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


# ---------------------------------------------------------------------------------------------------------
# no state left behind: Inductor's config, the pass's uuid, and FX-graph-cache keys of unrelated compiles


def _plain(x):
    return torch.sin(x) * 2 + 1


def test_enable_disable_and_backend_leave_inductor_config_as_found():
    from torch._inductor import config as ic

    before = ic.get_config_copy()
    assert before["post_grad_custom_pre_pass"] is None
    inductor_moe.enable()
    inductor_moe.enable()
    inductor_moe.disable()
    assert ic.get_config_copy() == before and not inductor_moe.is_enabled()
    inductor_moe.disable()  # a second disable() changes nothing
    x = torch.randn(8)
    torch.testing.assert_close(torch.compile(_plain, backend="inductor_moe")(x), _plain(x))
    assert ic.get_config_copy() == before and not inductor_moe.is_enabled()


def test_uuid_is_stable_and_changes_with_disabled_patterns_only():
    import subprocess
    import sys

    from torch._inductor import config as ic

    from inductor_moe.patterns import PATTERNS

    base = MoEGraphPass().uuid()
    assert MoEGraphPass().uuid() == base
    inductor_moe.enable()
    try:
        assert ic.post_grad_custom_pre_pass.uuid() == base  # installed with nothing to chain
    finally:
        inductor_moe.disable()
    seen = {repr(base)}
    for name in [p.NAME for p in PATTERNS]:
        config.disabled_patterns.add(name)
        try:
            seen.add(repr(MoEGraphPass().uuid()))
        finally:
            config.disabled_patterns.discard(name)
    assert len(seen) == len(PATTERNS) + 1, "each disabled pattern gives its own uuid"
    try:  # a set: the order patterns were disabled in does not matter
        config.disabled_patterns.update(["moe_fused", "router_softmax_topk"])
        both = MoEGraphPass().uuid()
        config.disabled_patterns.clear()
        config.disabled_patterns.update(["router_softmax_topk", "moe_fused"])
        assert MoEGraphPass().uuid() == both != base
    finally:
        config.disabled_patterns.clear()
    assert MoEGraphPass().uuid() == base
    # the FX-graph cache is on disk, shared between processes: another process computes the same uuid
    code = "from inductor_moe.pass_manager import MoEGraphPass; print(repr(MoEGraphPass().uuid()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == repr(base)


def test_fx_graph_cache_key_of_a_plain_function_survives_enable_disable(monkeypatch, tmp_path):
    """A cache-enabled compile of a non-MoE function: same key, and a cache hit, after an enable()/disable()
    cycle and a use of the backend; while the pass is installed the key differs (no cross-serving)."""
    from torch._dynamo.utils import counters
    from torch._inductor.codecache import FxGraphCache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", True)
    keys = []
    original = FxGraphCache.prepare_key

    def prepare_key(*args, **kwargs):
        key_info, cache_info = original(*args, **kwargs)
        keys.append(None if key_info is None else key_info[0])
        return key_info, cache_info

    monkeypatch.setattr(FxGraphCache, "prepare_key", staticmethod(prepare_key))
    x = torch.randn(8)

    def compile_plain(**kw):
        torch._dynamo.reset()
        counters["inductor"].clear()
        torch.testing.assert_close(torch.compile(_plain, **kw)(x), _plain(x))
        return keys[-1], {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}

    key, first = compile_plain()
    assert key is not None and first == {"fxgraph_cache_miss": 1}
    inductor_moe.enable()
    enabled_key, enabled = compile_plain()
    inductor_moe.disable()
    backend_key, _ = compile_plain(backend="inductor_moe")
    assert enabled_key != key and backend_key != key and enabled == {"fxgraph_cache_miss": 1}
    again, second = compile_plain()
    assert again == key and second == {"fxgraph_cache_hit": 1}
