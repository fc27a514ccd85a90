"""``route`` feeding ``experts`` directly  ==>  ``inductor_moe::moe``.

Runs after the router and experts patterns. When an ``experts`` op's ids and weights are the outputs of
one ``route`` op (through dtype casts only), the pair becomes one ``moe`` op, so a backend can pick the
fused route+sort decode path at small T. The routing weights then stay f32 from router to combine
instead of passing through the model's dtype (a rounding difference within bf16 tolerance).
The experts op's keyword arguments (biases, activation spec, separate up weights ``w3`` of the gpt-fast
form) carry over to ``moe`` unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import Graph, Node

from . import _fx
from ._fx import fail

NAME = "moe_fused"

EXPERTS_ARGS = ("hidden", "ids", "weights", "w13", "w2")


@dataclass
class FuseMatch:
    anchor: Node
    route: Node


def anchors(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if _fx.is_op(n, torch.ops.inductor_moe.experts.default)]


def match(experts: Node) -> FuseMatch:
    if len(experts.args) != 5 or experts.kwargs.get("expert_mask") is not None:
        fail("experts call with an expert mask or positional extras", experts)
    ids, weights = experts.args[1], experts.args[2]
    route_ids, i = _fx.getitem_of(_fx.strip_convert(ids))
    route_w, j = _fx.getitem_of(_fx.strip_convert(weights))
    if not _fx.is_op(route_ids, torch.ops.inductor_moe.route.default) or route_ids is not route_w or (i, j) != (1, 0):
        fail("experts ids/weights do not come from one route op", experts)
    return FuseMatch(experts, route_ids)


def replace(graph: Graph, m: FuseMatch) -> Node:
    hidden, _, _, w13, w2 = m.anchor.args
    logits, top_k = m.route.args[:2]
    # biases, activation spec and w3 (separate up weights) go through as they are
    kwargs = {**m.route.kwargs, **{k: v for k, v in m.anchor.kwargs.items() if k != "expert_mask"}}
    with graph.inserting_before(m.anchor):
        out = _fx.call(graph, torch.ops.inductor_moe.moe.default, (hidden, logits, w13, w2, top_k), kwargs,
                       meta_from=m.anchor)
    m.anchor.replace_all_uses_with(out)
    return out
