"""``route`` feeding ``experts`` directly  ==>  ``inductor_moe::moe``.

Runs after the router and experts patterns. When an ``experts`` op's ids and weights are the outputs of
one ``route`` op (through dtype casts only), the pair becomes one ``moe`` op, so a backend can pick the
fused route+sort decode path at small T. The routing weights then stay f32 from router to combine
instead of passing through the model's dtype (a rounding difference within bf16 tolerance).
The experts op's keyword arguments (biases, activation spec, separate up weights ``w3`` of the gpt-fast
form) carry over to ``moe`` unchanged.
"""
from __future__ import annotations

import operator
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


def _extras(node: Node, leading: int = 5) -> dict:
    """A call's arguments after its first ``leading`` ones, by schema name, positional or not (HF's experts
    integration passes the biases and the activation spec of ``experts`` positionally)."""
    names = [a.name for a in node.target._schema.arguments]
    return {**dict(zip(names[leading:], node.args[leading:])), **node.kwargs}


def match(experts: Node) -> FuseMatch:
    if _extras(experts).get("expert_mask") is not None:
        fail("experts call with an expert mask", experts)
    ids, weights = experts.args[1], experts.args[2]
    route_ids, i = _route_output(ids)
    route_w, j = _route_output(weights)
    if route_ids is None or route_ids is not route_w or (i, j) != (1, 0):
        source = _fx.strip_convert(ids if route_ids is None else weights)
        fail(f"experts ids/weights do not come from one route op (they come from {_describe(source)})", experts)
    return FuseMatch(experts, route_ids)


def _route_output(node) -> tuple[Node | None, int | None]:
    """(route node, output index) when ``node`` is a route op's output (through dtype casts), else (None, None)."""
    node = _fx.strip_convert(node)
    if not (isinstance(node, Node) and node.target is operator.getitem):
        return None, None
    parent, index = node.args
    if not _fx.is_op(parent, torch.ops.inductor_moe.route.default):
        return None, None
    return parent, index


def _describe(node) -> str:
    if not isinstance(node, Node):
        return repr(node)
    if node.target is operator.getitem:
        return f"output {node.args[1]} of {_describe(node.args[0])}"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target} {node.name}" if node.op == "call_function" else f"{node.op} {node.name}"


def replace(graph: Graph, m: FuseMatch) -> Node:
    hidden, _, _, w13, w2 = m.anchor.args[:5]
    logits, top_k = m.route.args[:2]
    # biases, activation spec and w3 (separate up weights) go through as they are
    kwargs = {**_extras(m.route, 2), **{k: v for k, v in _extras(m.anchor).items() if k != "expert_mask"}}
    with graph.inserting_before(m.anchor):
        out = _fx.call(graph, torch.ops.inductor_moe.moe.default, (hidden, logits, w13, w2, top_k), kwargs,
                       meta_from=m.anchor)
    m.anchor.replace_all_uses_with(out)
    return out
