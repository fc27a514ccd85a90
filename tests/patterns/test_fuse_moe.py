"""fuse_moe on a hand-built FX graph: route and experts called with positional extras (as HF's experts
integration does) become one moe op that keeps every argument, and the result equals the unfused graph."""
import operator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import Graph, GraphModule

import inductor_moe  # noqa: F401  (registers the ops)
from inductor_moe.patterns import fuse_moe


def _graph(expert_mask=False):
    g = Graph()
    x, logits, w13, w2, b13, b2 = (g.placeholder(n) for n in ("x", "logits", "w13", "w2", "b13", "b2"))
    route = g.call_function(torch.ops.inductor_moe.route.default, (logits, 2, "softmax", False))
    weights = g.call_function(operator.getitem, (route, 0))
    ids = g.call_function(operator.getitem, (route, 1))
    args = (x, ids, weights, w13, w2, b13, b2, "gelu", False, 1.702, 7.0)
    kwargs = {"expert_mask": g.placeholder("mask")} if expert_mask else {}
    out = g.call_function(torch.ops.inductor_moe.experts.default, args, kwargs)
    g.output(out)
    return g


def test_positional_extras_fuse_and_keep_their_values():
    g = _graph()
    gen = torch.Generator().manual_seed(0)
    T, E, H, I = 5, 4, 16, 8
    inputs = (torch.randn(T, H, generator=gen), torch.randn(T, E, generator=gen),
              torch.randn(E, 2 * I, H, generator=gen) * 0.3, torch.randn(E, H, I, generator=gen) * 0.3,
              torch.randn(E, 2 * I, generator=gen), torch.randn(E, H, generator=gen))
    before = GraphModule(torch.nn.Module(), g)(*inputs)
    mode = FakeTensorMode()
    for node, value in zip((n for n in g.nodes if n.op == "placeholder"), inputs):
        node.meta["val"] = mode.from_tensor(value)  # replace() computes the new node's fake value
    (anchor,) = fuse_moe.anchors(g)
    moe = fuse_moe.replace(g, fuse_moe.match(anchor))
    g.eliminate_dead_code()
    assert moe.kwargs["renormalize"] is False and moe.kwargs["activation"] == "gelu"
    assert moe.kwargs["scoring"] == "softmax" and moe.kwargs["limit"] == 7.0
    after = GraphModule(torch.nn.Module(), g)(*inputs)
    assert [n.target for n in g.nodes if n.op == "call_function"] == [torch.ops.inductor_moe.moe.default]
    torch.testing.assert_close(after, before)


def test_expert_mask_is_not_fused():
    g = _graph(expert_mask=True)
    (anchor,) = fuse_moe.anchors(g)
    try:
        fuse_moe.match(anchor)
    except Exception as e:
        assert "expert mask" in str(e)
    else:
        raise AssertionError("an experts call with an expert mask was fused")
