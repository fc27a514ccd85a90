"""experts_batched_mm: transformers' ``batched_mm_experts_forward`` itself, on small expert modules with
every layout flag it supports: what becomes one ``experts`` op and what is left alone with a reason."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.moe import batched_mm_experts_forward

import inductor_moe
from tests.utils import capture_graphs, rel_l2

E, H, I, K = 6, 16, 8, 2
# transformers 5.17 clamps the ids unconditionally; later versions only under expert parallelism
ALWAYS_CLAMPS = "_is_expert_parallel" not in inspect.getsource(batched_mm_experts_forward)


class Experts(torch.nn.Module):
    """An experts module as ``@use_experts_implementation`` builds it, running the batched_mm forward."""

    def __init__(self, act=F.silu, transposed=False, bias=False, gate=True, interleaved_swiglu=False):
        super().__init__()
        self.num_experts, self.act_fn = E, act
        self.has_gate, self.has_bias, self.is_transposed = gate, bias, transposed
        self.has_post_expert_norm, self._is_expert_parallel = False, False
        up = 2 * I if gate else I
        name = "gate_up_proj" if gate else "up_proj"
        setattr(self, name, torch.nn.Parameter(torch.randn(*((E, H, up) if transposed else (E, up, H))) * 0.3))
        self.down_proj = torch.nn.Parameter(torch.randn(*((E, I, H) if transposed else (E, H, I))) * 0.3)
        if bias:
            setattr(self, name + "_bias", torch.nn.Parameter(torch.randn(E, up) * 0.3))
            self.down_proj_bias = torch.nn.Parameter(torch.randn(E, H) * 0.3)
        self.interleaved_swiglu = interleaved_swiglu

    def _apply_gate(self, gate_up):
        if self.interleaved_swiglu:  # GPT-OSS
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            gate = gate.clamp(min=None, max=7.0)
            up = up.clamp(min=-7.0, max=7.0)
            return (up + 1) * (gate * torch.sigmoid(gate * 1.702))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def forward(self, hidden, ids, weights):
        return batched_mm_experts_forward(self, hidden, ids, weights)


class Block(torch.nn.Module):
    """Softmax router + experts; ``ids_from_input`` takes the expert ids from the caller instead."""

    def __init__(self, experts, ids_from_input=False):
        super().__init__()
        self.router = torch.nn.Linear(H, E, bias=False)
        self.experts, self.ids_from_input = experts, ids_from_input

    def forward(self, x, ids=None):
        probs = torch.softmax(self.router(x), dim=-1, dtype=torch.float)
        vals, top = torch.topk(probs, K, dim=-1)
        vals = vals / vals.sum(-1, keepdim=True)
        return self.experts(x, ids if self.ids_from_input else top, vals)


def _run(block, *args, dtype=torch.float32):
    block = block.to(dtype)
    x = torch.randn(9, H, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad(), capture_graphs() as graphs:
        ref = block(x, *args)
        out = torch.compile(block, backend="inductor_moe")(x, *args)
    return rel_l2(out, ref), [op for op in graphs[0] if op.startswith("inductor_moe")], inductor_moe.stats()


@pytest.mark.parametrize("kw,op", [
    ({}, "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')"),
    ({"act": F.gelu}, "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='gelu')"),
    ({"act": torch.relu, "transposed": True},
     "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='relu')"),
    ({"bias": True}, "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')"),
    ({"transposed": True, "bias": True, "interleaved_swiglu": True},
     "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='swiglu_oai', gate_up_interleaved=True, "
     "alpha=1.702, limit=7.0)"),
], ids=["silu", "gelu", "relu_transposed", "bias", "gpt_oss_layout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_experts_are_rewritten(kw, op, dtype):
    torch.manual_seed(0)
    err, ops, s = _run(Block(Experts(**kw)), dtype=dtype)
    assert err <= (1e-5 if dtype == torch.float32 else 3e-2)
    assert ops == [op]
    assert s["matches"] == {"experts_batched_mm": 1, "router_softmax_topk": 1, "moe_fused": 1}
    assert s["rejected"] == []


def test_ids_of_unknown_range():
    """Ids from the caller: with 5.17's clamp, an out-of-range id would reach expert E-1 where the op drops
    it, so the block is left alone; without the clamp an out-of-range id fails eagerly, so it matches."""
    torch.manual_seed(0)
    ids = torch.randint(0, E, (9, K), generator=torch.Generator().manual_seed(2))
    err, ops, s = _run(Block(Experts(), ids_from_input=True), ids)
    assert err <= 1e-5
    if ALWAYS_CLAMPS:
        assert ops == [] and "experts_batched_mm" not in s["matches"]
        (reason,) = [r["reason"] for r in s["rejected"] if r["pattern"] == "experts_batched_mm"]
        assert "not provably in [0, E)" in reason
    else:
        assert ops == ["inductor_moe.experts(activation='silu')"] and s["matches"]["experts_batched_mm"] == 1


@pytest.mark.parametrize("kw,reason", [
    ({"act": torch.tanh}, "activation is not one of"),
    ({"gate": False}, "not a split into gate and up"),
], ids=["tanh", "no_gate"])
def test_unsupported_experts_are_left_alone(kw, reason):
    torch.manual_seed(0)
    err, ops, s = _run(Block(Experts(**kw)))
    assert err <= 1e-5
    assert ops == ["inductor_moe.route(2, scoring='softmax', renormalize=True)"]
    assert s["matches"] == {"router_softmax_topk": 1}
    (got,) = [r["reason"] for r in s["rejected"]]
    assert reason in got


@pytest.mark.skipif(ALWAYS_CLAMPS, reason="this transformers has no expert-parallel branch")
def test_expert_parallel_form_is_left_alone():
    torch.manual_seed(0)
    experts = Experts()
    experts._is_expert_parallel = True
    err, ops, s = _run(Block(experts))
    assert err <= 1e-5 and "experts_batched_mm" not in s["matches"]
    assert [r for r in s["rejected"] if r["pattern"] == "experts_batched_mm"]
