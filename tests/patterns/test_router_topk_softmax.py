"""router_topk_softmax: top-k of the logits, softmax over the k values (GPT-OSS, GraniteMoE), on
hand-written routers: what is rewritten into ``route(order="topk_then_softmax")`` and what is left alone
with a reason."""
import pytest
import torch

import inductor_moe
from tests.utils import capture_graphs, rel_l2

ROUTE = "inductor_moe.route(2, scoring='softmax', renormalize=False, order='topk_then_softmax')"


class TopkSoftmaxRouter(torch.nn.Module):
    """GPT-OSS's router (bias inside the linear), with knobs for near misses. The output consumes ids
    and weights through a dense [T, E] routing matrix."""

    def __init__(self, bias=True, temperature=1.0, also_raw=False, f32_logits=False):
        super().__init__()
        self.proj = torch.nn.Linear(16, 8, bias=bias)
        self.temperature, self.also_raw, self.f32_logits = temperature, also_raw, f32_logits

    def forward(self, x):
        logits = self.proj(x)
        if self.f32_logits:
            logits = logits.float()
        vals, ids = torch.topk(logits, 2, dim=-1)
        weights = torch.softmax(vals / self.temperature if self.temperature != 1.0 else vals, dim=1,
                                dtype=vals.dtype).to(x.dtype)
        out = torch.zeros(x.shape[0], 8, dtype=weights.dtype).scatter_add(1, ids, weights)
        return out + vals.sum() if self.also_raw else out


def _run(module, x):
    with torch.no_grad(), capture_graphs() as graphs:
        ref = module(x)
        out = torch.compile(module, backend="inductor_moe")(x)
    return ref, out, graphs[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias,f32_logits", [(True, False), (False, True)], ids=["gpt_oss", "granite"])
def test_router_is_rewritten(dtype, bias, f32_logits):
    torch.manual_seed(0)
    module = TopkSoftmaxRouter(bias=bias, f32_logits=f32_logits).to(dtype)
    ref, out, ops = _run(module, torch.randn(11, 16, dtype=dtype))
    assert rel_l2(out, ref) <= (1e-6 if dtype == torch.float32 else 1e-2)
    assert ROUTE in ops and "aten.topk" not in ops
    s = inductor_moe.stats()
    assert s["matches"] == {"router_topk_softmax": 1} and s["rejected"] == []


def test_softmax_with_temperature_is_left_alone():
    torch.manual_seed(0)
    ref, out, ops = _run(TopkSoftmaxRouter(temperature=2.0), torch.randn(7, 16))
    torch.testing.assert_close(out, ref)
    assert "aten.topk" in ops and not any(op.startswith("inductor_moe") for op in ops)
    s = inductor_moe.stats()
    assert s["matches"] == {}
    reasons = {r["pattern"]: r["reason"] for r in s["rejected"]}
    assert "equals softmax(values, -1)" in reasons["router_topk_softmax"]
    assert "router_softmax_topk" in reasons  # then the softmax-first router declines it too


def test_raw_values_keep_the_topk():
    """The raw top-k values are used as well: they keep reading the original top-k, the softmax is the
    route op's."""
    torch.manual_seed(0)
    ref, out, ops = _run(TopkSoftmaxRouter(also_raw=True), torch.randn(7, 16))
    assert rel_l2(out, ref) <= 1e-6
    assert ROUTE in ops and "aten.topk" in ops
    assert inductor_moe.stats()["matches"] == {"router_topk_softmax": 1}


def test_softmax_first_router_is_not_a_candidate():
    """A softmax-then-top-k router renormalizes its values without an exp: router_topk_softmax does not
    even look at it (no event), router_softmax_topk takes it."""
    from tests.utils import tiny_qwen3_moe

    block = tiny_qwen3_moe(torch.float32, layers=1).model.layers[0].mlp
    with torch.no_grad():
        torch.compile(block, backend="inductor_moe")(torch.randn(2, 3, 32))
    assert not [e for e in inductor_moe.events() if e["pattern"] == "router_topk_softmax"]
    assert inductor_moe.stats()["matches"]["router_softmax_topk"] == 1
