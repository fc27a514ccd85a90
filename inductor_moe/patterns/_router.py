"""Shared pieces of the router matchers (``router_topk_softmax``, ``router_sigmoid_group``): the checked
top-k anchor, the source of a row-wise scoring function found by probing, the row-wise region below a
node and its exits, and a dry run of the op on the fake values so that a call the op would refuse is a
failed match, never a failed compile.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.fx import Node

from . import _fx
from ._fx import MatchFail, aten, fail


def graph_order(node: Node) -> dict:
    return {n: i for i, n in enumerate(node.graph.nodes)}


def topk_args(topk: Node) -> int:
    """Check a ``[T, E]`` top-k over the last dim, largest first; return k."""
    _fx.expect(topk, aten.topk.default, "aten.topk")
    v = _fx.val(topk.args[0])
    if v is None or v.dim() != 2 or not v.is_floating_point():
        fail("top-k input is not a 2-D float [tokens, experts] tensor", topk)
    top_k = _fx.int_const(_fx.arg(topk, 1, "k"), "k", topk)
    if not _fx.is_last_dim(_fx.arg(topk, 2, "dim", -1), 2):
        fail("top-k is not over the expert (last) dim", topk)
    if not _fx.arg(topk, 3, "largest", True):
        fail("top-k with largest=False", topk)
    return top_k


def topk_outputs(topk: Node) -> tuple[Node | None, Node | None]:
    """(values, indices) getitems of a top-k (None where unused)."""
    vals = ids = None
    for user in topk.users:
        _, index = _fx.getitem_of(user, topk)
        if index == 0:
            vals = user
        else:
            ids = user
    return vals, ids


def rowwise_ancestors(node: Node) -> list[Node]:
    """``node``, every node above it reachable through row-wise ops, and the first non-row-wise node on
    each path, in graph order."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and _fx.is_rowwise(n):
            stack.extend(_fx._tensor_inputs(n))
    order = graph_order(node)
    return sorted(seen, key=order.__getitem__)


SCORINGS: dict[str, Callable] = {
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "sigmoid": torch.sigmoid,
}


def find_scoring_source(scores: Node, scorings=("softmax", "sigmoid")) -> tuple[Node, str]:
    """The earliest node above ``scores`` from which a row-wise region computes ``scores`` as one of
    ``scorings``; fails when there is none."""
    sv = _fx.val(scores)
    shape = tuple(sv.shape)
    num_experts = shape[-1] if isinstance(shape[-1], int) else 8
    for candidate in rowwise_ancestors(scores):
        v = _fx.val(candidate)
        if candidate is scores or v is None or tuple(v.shape) != shape or not v.is_floating_point():
            continue
        try:
            region = _fx.backward_region(scores, [candidate])
        except MatchFail:
            continue
        gen = torch.Generator().manual_seed(0)
        probes = [((torch.randn(5, num_experts, generator=gen) * s).to(v.dtype),) for s in (0.5, 3.0, 12.0)]
        tol = max(_fx.tolerance(sv.dtype), _fx.tolerance(v.dtype))
        for name in scorings:
            if _fx.matches(region, probes, SCORINGS[name], tol):
                return candidate, name
    fail(f"the router scores are not {' or '.join(scorings)}(logits) of any node above them", scores)


def forward_region(*starts: Node) -> list[Node]:
    """``starts`` and the row-wise nodes below them that read nothing else but constants, in graph order."""
    inside, frontier = set(starts), list(starts)
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in inside or not _fx.is_rowwise(user):
                continue
            if all(i in inside for i in _fx._tensor_inputs(user)):
                inside.add(user)
                frontier.append(user)
    order = graph_order(starts[0])
    return sorted(inside, key=order.__getitem__)


def rowwise_descendants(*starts: Node) -> list[Node]:
    """Row-wise nodes reachable downwards from ``starts``, whatever else they read, in graph order."""
    seen, stack = set(), list(starts)
    while stack:
        node = stack.pop()
        for user in node.users:
            if user not in seen and _fx.is_rowwise(user):
                seen.add(user)
                stack.append(user)
    order = graph_order(starts[0])
    return sorted(seen, key=order.__getitem__)


def region_exits(region: list[Node]) -> list[Node]:
    inside = set(region)
    return [n for n in region if any(u not in inside for u in n.users)]


def scalar_constants(nodes) -> list[float]:
    """Python numbers appearing as arguments of ``nodes`` (candidate scale factors and limits)."""
    found = []
    for node in nodes:
        for a in list(node.args) + list(node.kwargs.values()):
            if isinstance(a, (int, float)) and not isinstance(a, bool) and a not in found:
                found.append(a)
    return found


def dry_run(op, args: tuple, kwargs: dict, node: Node):
    """Run the op's fake impl on the would-be arguments; an argument it refuses fails the match."""
    try:
        _fx.fake_call(op, *args, **kwargs)
    except MatchFail:
        raise
    except Exception as e:  # noqa: BLE001 - the op's checks raise ValueError/TypeError with the argument name
        fail(f"{op} refuses the matched arguments: {e}", node)


def replace_route(graph, m, route_kwargs: dict) -> Node:
    """Insert ``route(m.logits, m.top_k, **route_kwargs)`` before the top-k and rewire the users of the
    top-k ids and of every weight exit (cast back to their dtypes). ``m`` is any router match with
    ``topk, logits, top_k, ids, weight_exits, value_region``."""
    with graph.inserting_before(m.topk):
        weights, ids = _fx.call_multi(graph, torch.ops.inductor_moe.route.default, (m.logits, m.top_k),
                                      route_kwargs, meta_from=m.topk)
        ids_long = _fx.convert(graph, ids, _fx.val(m.ids).dtype)
        new_weights = {e: _fx.convert(graph, weights, _fx.val(e).dtype) for e in m.weight_exits}
    m.ids.replace_all_uses_with(ids_long)
    for exit_node, new in new_weights.items():
        # only users outside the value region: nodes inside it may still feed other (unreplaced) exits
        exit_node.replace_all_uses_with(new, delete_user_cb=lambda u: u not in m.value_region)
    return weights.args[0]
