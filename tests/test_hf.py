"""inductor_moe.hf: "inductor_moe" as a transformers experts implementation, and use_traceable_experts."""
import logging
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

import inductor_moe  # noqa: E402
import inductor_moe.hf as imhf  # noqa: E402
from tests.utils import rel_l2, tiny_qwen3_moe  # noqa: E402

from transformers import PretrainedConfig  # noqa: E402
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, use_experts_implementation  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def _random(model, std=0.2, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def tiny_mixtral(dtype=torch.float32, experts_impl="grouped_mm", layers=2):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=16, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8,
                        num_experts_per_tok=2, max_position_embeddings=256)
    cfg._experts_implementation = experts_impl
    return _random(MixtralForCausalLM(cfg)).to(dtype)


def tiny_gpt_oss(dtype=torch.float32, experts_impl="grouped_mm", layers=2):
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(vocab_size=96, hidden_size=32, intermediate_size=16, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8,
                       num_experts_per_tok=2, max_position_embeddings=256, sliding_window=8,
                       layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
                       rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                        "original_max_position_embeddings": 8, "rope_theta": 150000.0})
    cfg._experts_implementation = experts_impl
    # weights around 1 so that the clamped SwiGLU (limit 7) is exercised on both sides
    return _random(GptOssForCausalLM(cfg), std=0.5).to(dtype)


BUILDERS = {
    "qwen3_moe": lambda dtype=torch.float32, experts_impl="grouped_mm": tiny_qwen3_moe(dtype, experts_impl=experts_impl),
    "mixtral": tiny_mixtral,
    "gpt_oss": tiny_gpt_oss,
}
EXPECTED_PLAN = {
    "qwen3_moe": dict(activation="silu", gate_up_interleaved=False, transposed=False, bias=False),
    "mixtral": dict(activation="silu", gate_up_interleaved=False, transposed=False, bias=False),
    "gpt_oss": dict(activation="swiglu_oai", gate_up_interleaved=True, transposed=True, bias=True),
}


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _experts(model):
    return [m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "down_proj")]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(autouse=True)
def _fresh_plans():
    imhf._plans.clear()
    imhf._logged.clear()
    yield


def test_registered():
    assert imhf.register_experts_implementation()
    assert imhf.is_registered()
    assert ALL_EXPERTS_FUNCTIONS["inductor_moe"] is imhf.inductor_moe_experts_forward


def test_registered_when_transformers_is_imported_after_inductor_moe():
    code = (
        "import sys, inductor_moe.hf as h\n"
        "if 'transformers.integrations.moe' not in sys.modules:  # importing inductor_moe left transformers alone\n"
        "    assert not h._registered and h._hook is not None\n"
        "from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM\n"
        "from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS\n"
        "assert ALL_EXPERTS_FUNCTIONS['inductor_moe'] is h.inductor_moe_experts_forward\n"
        "assert h._hook is None\n"
        "cfg = Qwen3MoeConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,\n"
        "    num_attention_heads=2, num_key_value_heads=1, head_dim=8, moe_intermediate_size=8, num_experts=4,\n"
        "    num_experts_per_tok=2)\n"
        "m = Qwen3MoeForCausalLM._from_config(cfg, experts_implementation='inductor_moe')\n"
        "assert m.config._experts_implementation == 'inductor_moe'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("family", list(BUILDERS))
def test_model_logits_match_grouped_mm(family):
    model = BUILDERS[family]()
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    ref = _logits(model, ids)
    model.set_experts_implementation("inductor_moe")
    assert model.config._experts_implementation == "inductor_moe"
    log = _OpLog()
    with log:
        got = _logits(model, ids)
    # eager, no compile: the experts modules called the op, once per layer
    assert log.ops.count("inductor_moe.experts.default") == model.config.num_hidden_layers
    assert rel_l2(got, ref) <= 1e-5
    for m in _experts(model):
        plan = imhf.experts_plan(m)
        assert plan["supported"], plan
        assert {k: plan[k] for k in EXPECTED_PLAN[family]} == EXPECTED_PLAN[family]


@pytest.mark.parametrize("family", list(BUILDERS))
def test_experts_module_matches_grouped_mm(family):
    model = BUILDERS[family]()
    experts = _experts(model)[0]
    hidden_dim = model.config.hidden_size
    num_experts, top_k = experts.num_experts, model.config.num_experts_per_tok
    gen = torch.Generator().manual_seed(1)
    for tokens in (1, 5, 33):
        x = torch.randn(tokens, hidden_dim, generator=gen)
        ids = torch.rand(tokens, num_experts, generator=gen).topk(top_k, dim=-1).indices
        weights = torch.rand(tokens, top_k, generator=gen).softmax(-1)
        with torch.no_grad():
            model.set_experts_implementation("grouped_mm")
            ref = experts(x, ids, weights)
            model.set_experts_implementation("inductor_moe")
            got = experts(x, ids, weights)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert rel_l2(got, ref) <= 1e-5, (tokens, rel_l2(got, ref))


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_bf16_matches_grouped_mm(family):
    model = BUILDERS[family](torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))
    ref = _logits(model, ids)
    model.set_experts_implementation("inductor_moe")
    got = _logits(model, ids)
    assert got.dtype == torch.bfloat16
    assert rel_l2(got, ref) <= 3e-2


def test_from_config_keyword():
    from transformers import Qwen3MoeForCausalLM

    cfg = tiny_qwen3_moe().config
    model = Qwen3MoeForCausalLM._from_config(cfg, experts_implementation="inductor_moe")
    assert model.config._experts_implementation == "inductor_moe"


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_compiled_fullgraph_matches_eager(family):
    """Under torch.compile the plan is a trace-time constant: no graph break (fullgraph), same numbers."""
    model = BUILDERS[family](experts_impl="inductor_moe")
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3))
    got = _logits(torch.compile(model, backend="inductor_moe", fullgraph=True), ids)
    assert imhf._plans, "the plan is computed while dynamo traces (no eager call came first)"
    model.set_experts_implementation("grouped_mm")
    assert rel_l2(got, _logits(model, ids)) <= 1e-4
    if family == "qwen3_moe":  # the router in front of the experts op is fused with it
        assert inductor_moe.stats()["matches"].get("moe_fused") == model.config.num_hidden_layers


def test_unsupported_activation_falls_back_with_logged_reason(caplog):
    grouped = tiny_qwen3_moe()
    grouped.config.hidden_act = "quick_gelu"
    from transformers import Qwen3MoeForCausalLM

    cfg = grouped.config
    cfg._experts_implementation = "grouped_mm"
    model = _random(Qwen3MoeForCausalLM(cfg))
    ids = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(4))
    ref = _logits(model, ids)
    model.set_experts_implementation("inductor_moe")
    with caplog.at_level(logging.WARNING, logger="inductor_moe"):
        log = _OpLog()
        with log:
            got = _logits(model, ids)
        _logits(model, ids)
    assert torch.equal(got, ref)  # it ran grouped_mm
    assert "inductor_moe.experts.default" not in log.ops
    reasons = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(reasons) == 1, reasons  # once, though every layer and call hit it
    assert "QuickGELUActivation" in reasons[0] and "grouped_mm" in reasons[0]
    plan = imhf.experts_plan(_experts(model)[0])
    assert not plan["supported"] and "QuickGELUActivation" in plan["reason"]


def _synthetic_experts(**flags):
    @use_experts_implementation(**flags)
    class ToyExperts(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts, hidden, inter = 4, 8, 8  # 16-byte strides for CPU grouped_mm
            g = torch.Generator().manual_seed(0)
            if flags.get("has_gate", True):
                self.gate_up_proj = torch.nn.Parameter(torch.randn(4, 2 * inter, hidden, generator=g) * 0.3)
            else:
                self.up_proj = torch.nn.Parameter(torch.randn(4, inter, hidden, generator=g) * 0.3)
            self.down_proj = torch.nn.Parameter(torch.randn(4, hidden, inter, generator=g) * 0.3)
            self.act_fn = torch.nn.SiLU()
            if flags.get("has_post_expert_norm"):
                self.post_expert_norm = torch.nn.LayerNorm(hidden)

        def forward(self, hidden_states, top_k_index, top_k_weights):  # the eager loop: not used here
            raise NotImplementedError

    cfg = PretrainedConfig()
    cfg._experts_implementation = "inductor_moe"
    return ToyExperts(cfg)


@pytest.mark.parametrize("flags, reason", [
    (dict(has_gate=False), "no gate"),
    (dict(has_post_expert_norm=True), "post-expert norm"),
], ids=["no_gate", "post_norm"])
def test_unsupported_module_falls_back(flags, reason, caplog):
    try:
        experts = _synthetic_experts(**flags)
    except TypeError:
        pytest.skip(f"this transformers has no {flags} flag")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 8, generator=gen)
    ids = torch.rand(5, 4, generator=gen).topk(2, dim=-1).indices
    w = torch.rand(5, 2, generator=gen)
    with caplog.at_level(logging.WARNING, logger="inductor_moe"), torch.no_grad():
        got = experts(x, ids, w)
        experts.config._experts_implementation = "grouped_mm"
        ref = experts(x, ids, w)
    assert torch.equal(got, ref)
    assert reason in imhf.experts_plan(experts)["reason"]
    assert any(reason in r.getMessage() for r in caplog.records)


def test_custom_gate_is_identified_by_what_it_computes():
    """A model's own _apply_gate (here act_fn on interleaved columns) is probed, not matched by name."""
    experts = _synthetic_experts()

    def interleaved_gate(self, gate_up):
        return self.act_fn(gate_up[..., ::2]) * gate_up[..., 1::2]

    type(experts)._apply_gate = interleaved_gate
    plan = imhf.experts_plan(experts)
    assert plan["supported"] and plan["activation"] == "silu" and plan["gate_up_interleaved"] is True
    g = torch.Generator().manual_seed(9)
    x = torch.randn(7, 8, generator=g)
    ids = torch.rand(7, 4, generator=g).topk(2, dim=-1).indices
    w = torch.rand(7, 2, generator=g)
    with torch.no_grad():
        got = experts(x, ids, w)
        experts.config._experts_implementation = "grouped_mm"
        ref = experts(x, ids, w)
    assert rel_l2(got, ref) <= 1e-5

    def odd_gate(self, gate_up):
        return torch.tanh(gate_up[..., :8]) * gate_up[..., 8:]

    type(experts)._apply_gate = odd_gate
    imhf._plans.clear()
    plan = imhf.experts_plan(experts)
    assert not plan["supported"] and "matches none" in plan["reason"]


def test_layout_flags_drive_the_op():
    """A default-gate module with transposed, biased weights: the op gets strided views and the biases."""
    experts = _synthetic_experts(has_bias=True, is_transposed=True)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # re-lay the toy weights out as [E, H, 2I] / [E, I, H] with biases
        experts.gate_up_proj = torch.nn.Parameter(torch.randn(4, 8, 16, generator=g) * 0.3)
        experts.down_proj = torch.nn.Parameter(torch.randn(4, 8, 8, generator=g) * 0.3)
        experts.gate_up_proj_bias = torch.nn.Parameter(torch.randn(4, 16, generator=g) * 0.3)
        experts.down_proj_bias = torch.nn.Parameter(torch.randn(4, 8, generator=g) * 0.3)
    x = torch.randn(9, 8, generator=g)
    ids = torch.rand(9, 4, generator=g).topk(2, dim=-1).indices
    w = torch.rand(9, 2, generator=g)
    with torch.no_grad():
        got = experts(x, ids, w)
        experts.config._experts_implementation = "grouped_mm"
        ref = experts(x, ids, w)
    assert imhf.experts_plan(experts) == {"supported": True, "activation": "silu", "gate_up_interleaved": False,
                                          "alpha": 1.702, "limit": 7.0, "transposed": True, "bias": True}
    assert rel_l2(got, ref) <= 1e-5


def test_use_traceable_experts_switches_eager_and_compile_matches():
    model = tiny_qwen3_moe(experts_impl="eager")
    assert model.config._experts_implementation == "eager"
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(7))
    ref = _logits(model, ids)
    # the eager loop breaks the graph on every MoE layer
    explained = torch._dynamo.explain(model)(input_ids=ids)
    assert explained.graph_break_count >= 1
    torch._dynamo.reset()

    changed = imhf.use_traceable_experts(model)
    assert changed == {"": ("eager", "grouped_mm")}
    assert model.config._experts_implementation == "grouped_mm"
    assert imhf.use_traceable_experts(model) == {}  # nothing left to change

    inductor_moe.reset_stats()
    got = _logits(torch.compile(model, backend="inductor_moe", fullgraph=True), ids)
    assert rel_l2(got, ref) <= 1e-4
    s = inductor_moe.stats()
    assert s["matches"].get("moe_fused") == model.config.num_hidden_layers and s["rejected"] == []


def test_use_traceable_experts_to_inductor_moe_and_errors():
    model = tiny_qwen3_moe(experts_impl="eager", layers=1)
    ids = torch.randint(0, 96, (1, 4), generator=torch.Generator().manual_seed(8))
    ref = _logits(model, ids)
    assert imhf.use_traceable_experts(model, "inductor_moe") == {"": ("eager", "inductor_moe")}
    assert rel_l2(_logits(model, ids), ref) <= 1e-5
    with pytest.raises(ValueError, match="eager"):
        imhf.use_traceable_experts(model, "eager")
    with pytest.raises(ValueError, match="not a registered experts implementation"):
        imhf.use_traceable_experts(model, "no_such_impl")


def test_use_kernel_layout_restrides_transposed_experts_only():
    from tests.models.tiny_moe import logits, tiny_model

    model = tiny_model("gpt_oss", torch.float32, layers=2)
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    want = logits(model, ids)
    changed = inductor_moe.hf.use_kernel_layout(model)
    assert changed == [f"model.layers.{i}.mlp.experts.{n}" for i in range(2) for n in ("gate_up_proj", "down_proj")]
    for n, p in model.named_parameters():
        assert torch.equal(p, values[n]), n
        if n.endswith(("gate_up_proj", "down_proj")):
            assert p.stride(1) == 1 and p.transpose(1, 2).is_contiguous(), n
    torch.testing.assert_close(logits(model, ids), want, rtol=1e-5, atol=1e-5)
    inductor_moe.reset_stats()
    torch._dynamo.reset()
    torch.testing.assert_close(logits(torch.compile(model, backend="inductor_moe"), ids), want, rtol=1e-4, atol=1e-4)
    assert inductor_moe.stats()["matches"].get("moe_fused") == 2
    assert inductor_moe.hf.use_kernel_layout(model) == []           # idempotent
    qwen = tiny_model("qwen3_moe", torch.float32)
    assert inductor_moe.hf.use_kernel_layout(qwen) == []            # not transposed: untouched
