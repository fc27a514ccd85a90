"""inductor_moe.explain(): one row per MoE block with what was matched, fused or turned down (and where), the
eager experts loop pointed out, kernel fallbacks listed, and no state left behind."""
import functools
import importlib

import expecttest
import pytest
import torch

pytest.importorskip("transformers")

import inductor_moe  # noqa: E402
from inductor_moe import config, dispatch  # noqa: E402
from tests.models.tiny_moe import VOCAB, moe_block, tiny_model  # noqa: E402
from tests.utils import rel_l2  # noqa: E402

stats_impl = importlib.import_module("inductor_moe.stats")  # the module (inductor_moe.stats is the function)

IDS = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
X = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(1))


@functools.cache
def _qwen3():
    model = tiny_model("qwen3_moe", layers=2)
    return model, inductor_moe.explain(model, IDS)


def test_qwen3_every_block_fused():
    model, report = _qwen3()
    assert [r["module"] for r in report.rows] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    for row in report.rows:
        assert (row["router"], row["experts"], row["fused"], row["experts_impl"]) == (
            "router_softmax_topk", "experts_grouped_mm", True, "grouped_mm")
        assert row["router_rejected"] == row["experts_rejected"] == row["fused_rejected"] == row["notes"] == []
    assert report.compile == {"frames": 1, "frames_ok": 1, "graphs": 1, "pass_graphs_seen": 1,
                              "pass_graphs_rewritten": 1}
    assert report.graph_breaks == [] and report.fallbacks == [] and report.hints == []
    # the rows are built from the same records as stats()/events()
    assert report.stats["matches"] == {"experts_grouped_mm": 2, "router_softmax_topk": 2, "moe_fused": 2}
    assert {e["module"] for e in report.events} == {f"model.layers.{i}.mlp.{c}" for i in (0, 1)
                                                     for c in ("gate", "experts")}
    with torch.no_grad():
        assert rel_l2(report.output.logits, model(input_ids=IDS).logits) < 1e-4


class TestSnapshot(expecttest.TestCase):
    def test_qwen3_table(self):
        self.assertExpectedInline(str(_qwen3()[1]), """\
inductor_moe.explain: 2 MoE blocks, 2 fused
compiled 1 graph from 1 frame with 0 graph breaks; the pass rewrote 1 of 1 graph

MoE block           router               experts             fused  experts impl
------------------  -------------------  ------------------  -----  ------------
model.layers.0.mlp  router_softmax_topk  experts_grouped_mm  yes    grouped_mm
model.layers.1.mlp  router_softmax_topk  experts_grouped_mm  yes    grouped_mm

graph breaks: none
kernel fallbacks: none""")


def test_eager_experts_loop_is_named_and_use_traceable_experts_fixes_it():
    model = tiny_model("qwen3_moe", experts_impl="eager")
    block = moe_block(model)
    report = inductor_moe.explain(block, X)
    (row,) = report.rows
    assert row["module"] == "<root>" and row["experts_impl"] == "eager"
    assert row["router"] == "router_softmax_topk" and row["experts"] is None and not row["fused"]
    (note,) = row["notes"]
    assert "eager" in note and "inductor_moe.hf.use_traceable_experts" in note
    assert any("nonzero" in b["reason"] for b in report.graph_breaks)
    assert report.compile["frames"] > 1 and report.compile["graphs"] > 1
    text = str(report)
    assert "eager loop" in text and "use_traceable_experts" in text and "nonzero" in text

    assert inductor_moe.hf.use_traceable_experts(model) == {"": ("eager", "grouped_mm")}
    (row,) = inductor_moe.explain(block, X).rows
    assert (row["experts"], row["fused"], row["experts_impl"], row["notes"]) == (
        "experts_grouped_mm", True, "grouped_mm", [])


class SigmoidTopKRouter(torch.nn.Module):
    """Qwen3's router with sigmoid scores instead of softmax: not a form router_softmax_topk knows."""

    def __init__(self, gate):
        super().__init__()
        self.weight, self.top_k, self.hidden_dim = gate.weight, gate.top_k, gate.hidden_dim

    def forward(self, hidden_states):
        logits = torch.nn.functional.linear(hidden_states.reshape(-1, self.hidden_dim), self.weight)
        vals, ids = torch.topk(torch.sigmoid(logits), self.top_k, dim=-1)
        return logits, vals.to(logits.dtype), ids


def test_rejected_router_names_pattern_and_node():
    model = tiny_model("qwen3_moe", layers=1)
    model.model.layers[0].mlp.gate = SigmoidTopKRouter(model.model.layers[0].mlp.gate)
    report = inductor_moe.explain(model, IDS)
    (row,) = report.rows
    assert row["module"] == "model.layers.0.mlp"
    assert row["router"] is None and row["experts"] == "experts_grouped_mm" and not row["fused"]
    (router,) = row["router_rejected"]
    assert router["pattern"] == "router_softmax_topk" and router["node"] == "topk"
    assert "softmax" in router["reason"] and router["reason"].endswith("[at sigmoid]")
    (fused,) = row["fused_rejected"]
    assert fused["pattern"] == "moe_fused" and "one route op" in fused["reason"]
    lines = str(report).splitlines()
    assert any(ln.startswith("model.layers.0.mlp") and "rejected" in ln and "experts_grouped_mm" in ln for ln in lines)
    assert f"    router: router_softmax_topk (candidate topk): {router['reason']}" in lines
    with torch.no_grad():
        assert rel_l2(report.output.logits, model(input_ids=IDS).logits) < 1e-4


def test_disabled_pattern_is_reported():
    block = moe_block(tiny_model("qwen3_moe"))
    config.disabled_patterns.add("moe_fused")
    try:
        report = inductor_moe.explain(block, X)
    finally:
        config.disabled_patterns.discard("moe_fused")
    (row,) = report.rows
    assert (row["router"], row["experts"], row["fused"], row["fused_rejected"]) == (
        "router_softmax_topk", "experts_grouped_mm", False, [])
    assert report.disabled_patterns == ["moe_fused"]
    assert any("moe_fused is disabled" in h for h in report.hints)
    (line,) = [ln for ln in str(report).splitlines() if ln.startswith("<root>")]
    assert line.split() == ["<root>", "router_softmax_topk", "experts_grouped_mm", "disabled", "grouped_mm"]


def test_kernel_fallbacks_are_listed(monkeypatch):
    """The moe op is asked to try Triton first (as on a GPU); it declines CPU tensors, which is recorded."""
    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    monkeypatch.setattr(dispatch, "preference", lambda device: ("triton", "reference"))

    def must_not_run(*args):
        raise AssertionError("declined kernel ran")

    dispatch.register_kernel("moe", "triton", must_not_run, lambda hidden=None, **_: f"{hidden.device.type} test")
    block = moe_block(tiny_model("qwen3_moe"))
    report = inductor_moe.explain(block, X)
    assert report.rows[0]["fused"]
    assert report.fallbacks == [{"op": "moe", "reason": "triton: cpu test", "count": 1}]
    assert "kernel fallbacks (op: family: reason):\n  1x moe: triton: cpu test" in str(report)
    with torch.no_grad():
        assert rel_l2(report.output, block(X)) < 1e-5


def test_leaves_no_state_and_runs_the_pass_despite_warm_caches(monkeypatch, tmp_path):
    """Caller's stats/events and dynamo counters survive; FX/AOT caches are off inside explain(), so a graph
    already in the cache is still rewritten and reported."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as ic

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ic, "fx_graph_cache", True)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", True)
    block = moe_block(tiny_model("qwen3_moe"))
    with torch.no_grad():
        torch.compile(block, backend="inductor_moe")(X)  # fills the caches
    torch._dynamo.reset()
    inductor_moe.reset_stats()
    with torch.no_grad():
        torch.compile(block, backend="inductor_moe")(X)
    assert inductor_moe.stats()["matches"] == {}, "served from the cache: the pass did not run"
    stats_impl.record_match("earlier", 3)
    stats_impl.record_event("earlier", "m", "n", True, "")
    before_stats, before_events = inductor_moe.stats(), inductor_moe.events()
    counters["custom"]["kept"] = 7
    before_counters = {k: dict(v) for k, v in counters.items()}
    pre_pass = ic.post_grad_custom_pre_pass

    report = inductor_moe.explain(block, X)
    assert report.rows[0]["fused"] and report.stats["matches"]["moe_fused"] == 1
    assert inductor_moe.stats() == before_stats and inductor_moe.events() == before_events
    assert {k: dict(v) for k, v in counters.items()} == before_counters
    assert ic.post_grad_custom_pre_pass is pre_pass and ic.fx_graph_cache is True
    assert torch._functorch.config.enable_autograd_cache is True


def test_rows_from_events_relative_paths_and_other_patterns():
    """No compile: events as the pass records them. A path relative to a block compiled as its own frame
    (after a graph break) belongs to every block with that child; unknown pattern kinds are kept apart."""
    from inductor_moe.explain import build_report

    model = tiny_model("qwen3_moe", layers=2)
    events = [
        {"pattern": "router_softmax_topk", "module": "gate", "node": "topk", "matched": True, "reason": ""},
        {"pattern": "experts_grouped_mm", "module": "model.layers.1.mlp.experts", "node": "grouped_mm",
         "matched": False, "reason": "activation tanh [at tanh]"},
        {"pattern": "shared_expert", "module": "model.layers.1.mlp", "node": "sigmoid", "matched": True,
         "reason": ""},
        {"pattern": "router_softmax_topk", "module": "model.norm", "node": "topk_9", "matched": False,
         "reason": "top-k indices are unused [at topk_9]"},
    ]
    stats = {"graphs": {"seen": 3, "rewritten": 1}, "fallbacks": [], "matches": {}, "rejected": []}
    report = build_report(model, events, stats, {"frames": {"total": 3, "ok": 3}, "stats": {"unique_graphs": 3}})
    row0, row1, norm = report.rows
    assert [r["module"] for r in report.rows] == ["model.layers.0.mlp", "model.layers.1.mlp", "model.norm"]
    assert row0["router"] == row1["router"] == "router_softmax_topk"
    assert "shared by 2 blocks" in row0["notes"][-1]
    assert row1["experts_rejected"] == [{"pattern": "experts_grouped_mm", "node": "grouped_mm",
                                         "reason": "activation tanh [at tanh]"}]
    assert row1["other"] == [{"pattern": "shared_expert", "matched": True, "node": "sigmoid", "reason": ""}]
    assert not row1["fused"] and row1["experts"] is None
    assert norm["router_rejected"][0]["node"] == "topk_9" and norm["experts_impl"] is None
    assert "experts: no candidate" in norm["notes"][0]
    text = str(report)
    assert "    other: shared_expert matched" in text
    assert "    experts: experts_grouped_mm (candidate grouped_mm): activation tanh [at tanh]" in text
