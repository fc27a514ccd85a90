"""DeepSeek-V3 (and GLM4-MoE, the same router): sigmoid scores, correction bias for the selection only,
group-limited top-k (E=8 experts in n_group=4 groups, topk_group=2), weights gathered from the unbiased
scores, renormalized (+1e-20), times routed_scaling_factor. Shared experts stay as they are next to the
fused ``moe`` op."""
import expecttest
import pytest
import torch

import inductor_moe
from tests.models.tiny_moe import block_ops, check_logits, moe_block, rejections, tiny_model


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_logits_fp32(impl):
    s = check_logits(tiny_model("deepseek_v3", torch.float32, layers=2, experts_impl=impl))
    assert s["matches"] == {f"experts_{impl}": 2, "router_sigmoid_group": 2, "moe_fused": 2}
    assert s["rejected"] == []


def test_logits_bf16():
    s = check_logits(tiny_model("deepseek_v3", torch.bfloat16))
    assert s["matches"] == {"experts_grouped_mm": 1, "router_sigmoid_group": 1, "moe_fused": 1}
    assert s["rejected"] == []


def test_route_op_is_the_router_and_the_inputs_exercise_group_limit_and_bias():
    """The route op reproduces DeepseekV3TopkRouter, and on these weights dropping the group limit or the
    bias picks other experts: a route op called without them would fail the logits checks."""
    gate = moe_block(tiny_model("deepseek_v3")).gate
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, weights, ids = gate(x)
    bias = gate.e_score_correction_bias
    route = torch.ops.inductor_moe.route
    w_op, ids_op = route(logits, 2, scoring="sigmoid", correction_bias=bias, n_group=4, topk_group=2, scaling=2.5)
    order, order_op = ids.argsort(-1), ids_op.long().argsort(-1)  # sorted=False: compare per token as sets
    assert torch.equal(ids.gather(1, order), ids_op.long().gather(1, order_op))
    torch.testing.assert_close(w_op.gather(1, order_op), weights.gather(1, order))
    assert not torch.equal(route(logits, 2, scoring="sigmoid", correction_bias=bias)[1], ids_op)
    assert not torch.equal(route(logits, 2, scoring="sigmoid", n_group=4, topk_group=2)[1], ids_op)


def test_raw_weights_block():
    """norm_topk_prob=False: weights = scores.gather(ids) * routed_scaling_factor."""
    ops, err = block_ops(tiny_model("deepseek_v3", norm_topk_prob=False, routed_scaling_factor=1.5))
    assert err < 1e-5
    assert "inductor_moe.moe(2, scoring='sigmoid', renormalize=False, n_group=4, topk_group=2, scaling=1.5, " \
           "activation='silu')" in ops
    assert inductor_moe.stats()["rejected"] == []


def test_single_group_block():
    """n_group=1: the group machinery is still in the graph, and selects everything."""
    ops, err = block_ops(tiny_model("deepseek_v3", n_group=1, topk_group=1))
    assert err < 1e-5
    assert "inductor_moe.moe(2, scoring='sigmoid', renormalize=True, scaling=2.5, activation='silu')" in ops


@pytest.mark.parametrize("impl", ["grouped_mm", "batched_mm"])
def test_glm4_moe_block(impl):
    ops, err = block_ops(tiny_model("glm4_moe", experts_impl=impl))
    assert err < 1e-5
    assert inductor_moe.stats()["matches"] == {f"experts_{impl}": 1, "router_sigmoid_group": 1, "moe_fused": 1}


@pytest.mark.slow
def test_dynamic_scaling_factor_stays_outside_the_route():
    """dynamic=True makes routed_scaling_factor a graph input: the route op takes the renormalized weights
    and the multiply stays in the graph, so route and experts stay two ops (with the reason recorded)."""
    model = tiny_model("deepseek_v3", experts_impl="batched_mm")
    s = check_logits(model, shapes=[(2, 3), (3, 5)], dynamic=True)
    assert s["matches"] == {"experts_batched_mm": 1, "router_sigmoid_group": 1}
    assert rejections(s) and all("(they come from mul.Tensor" in r for r in rejections(s, "moe_fused"))


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("deepseek_v3"))
        self.assertLess(err, 1e-5)
        # router mm, the fused op, then the shared expert's three mms
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='sigmoid', renormalize=True, n_group=4, topk_group=2, scaling=2.5, activation='silu')
aten.mm
aten.mm
aten.mm""")
