"""Router: softmax -> top-k -> optional renormalize -> cast  ==>  ``inductor_moe::route``.

Emitted by Qwen2-MoE / Qwen3-MoE (``Qwen3MoeTopKRouter``), OLMoE, Qwen3-Next, Mixtral, MiniMax::

    probs = softmax(logits, dim=-1, dtype=torch.float)     # post-grad: amax/sub/exp/sum/div (+ casts)
    vals, ids = torch.topk(probs, k, dim=-1)
    if norm_topk_prob: vals /= vals.sum(dim=-1, keepdim=True)
    vals = vals.to(logits.dtype)

Anchor: ``aten.topk``. The softmax is found by probing the row-wise region above the top-k; the logits
are the earliest node of that region for which it equals ``softmax(logits, -1)``. The weights are every
row-wise node below ``vals`` that leaves the region and equals ``vals`` or ``vals / vals.sum(-1)``.
Other users of the logits or probabilities (aux loss, logging) keep their inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import Graph, Node

from . import _fx
from ._fx import MatchFail, aten, fail

NAME = "router_softmax_topk"


@dataclass
class RouterMatch:
    topk: Node
    logits: Node
    top_k: int
    renormalize: bool
    weight_exits: list[Node]
    ids: Node
    value_region: set[Node]

    @property
    def anchor(self) -> Node:
        return self.topk


def anchors(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if _fx.is_op(n, aten.topk.default)]


def _rowwise_ancestors(node: Node) -> list[Node]:
    """``node`` and every node above it reachable through row-wise ops, plus the first non-row-wise
    node on each path (the candidate logits), in graph order."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and _fx.is_rowwise(n):
            stack.extend(_fx._tensor_inputs(n))
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def _find_logits(probs: Node) -> Node:
    shape = tuple(_fx.val(probs).shape)
    tol = _fx.tolerance(_fx.val(probs).dtype)
    for candidate in _rowwise_ancestors(probs):
        v = _fx.val(candidate)
        if candidate is probs or v is None or tuple(v.shape) != shape or not v.is_floating_point():
            continue
        try:
            region = _fx.backward_region(probs, [candidate])
        except MatchFail:
            continue
        num_experts = shape[1] if isinstance(shape[1], int) else 8
        gen = torch.Generator().manual_seed(0)
        probes = [((torch.randn(5, num_experts, generator=gen) * s).to(v.dtype),) for s in (0.5, 3.0, 12.0)]
        if _fx.matches(region, probes, lambda x: torch.softmax(x, dim=-1), max(tol, _fx.tolerance(v.dtype))):
            return candidate
    fail("the top-k input is not softmax(logits, -1) of any node above it", probs)


def _forward_region(start: Node) -> list[Node]:
    inside, frontier = {start}, [start]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in inside or not _fx.is_rowwise(user):
                continue
            if all(i in inside for i in _fx._tensor_inputs(user)):
                inside.add(user)
                frontier.append(user)
    order = {n: i for i, n in enumerate(start.graph.nodes)}
    return sorted(inside, key=order.__getitem__)


def _classify_exit(vals: Node, exit_node: Node, top_k: int) -> str | None:
    region = _fx.backward_region(exit_node, [vals])
    gen = torch.Generator().manual_seed(1)
    probes = []
    for _ in range(3):
        p = torch.rand(6, top_k, generator=gen) * 0.9 + 0.01
        probes.append((p.sort(dim=-1, descending=True).values.to(_fx.val(vals).dtype),))
    tol = max(_fx.tolerance(_fx.val(vals).dtype), _fx.tolerance(_fx.val(exit_node).dtype))
    if _fx.matches(region, probes, lambda v: v / v.sum(dim=-1, keepdim=True), tol):
        return "renorm"
    if _fx.matches(region, probes, lambda v: v, tol):
        return "raw"
    return None


def match(topk: Node) -> RouterMatch:
    _fx.expect(topk, aten.topk.default, "aten.topk")
    probs = topk.args[0]
    pv = _fx.val(probs)
    if pv is None or pv.dim() != 2:
        fail("top-k input is not a 2-D [tokens, experts] tensor", topk)
    top_k = _fx.int_const(_fx.arg(topk, 1, "k"), "k", topk)
    if not _fx.is_last_dim(_fx.arg(topk, 2, "dim", -1), 2):
        fail("top-k is not over the expert (last) dim", topk)
    if not _fx.arg(topk, 3, "largest", True):
        fail("top-k with largest=False", topk)

    logits = _find_logits(probs)

    vals = ids = None
    for user in topk.users:
        _, index = _fx.getitem_of(user, topk)
        if index == 0:
            vals = user
        else:
            ids = user
    if ids is None:
        fail("top-k indices are unused", topk)
    if vals is None:
        fail("top-k values are unused (weights gathered another way)", topk)

    region = _forward_region(vals)
    inside = set(region)
    exits = [n for n in region if any(u not in inside for u in n.users)]
    kinds = {n: _classify_exit(vals, n, top_k) for n in exits}
    renorm = [n for n in exits if kinds[n] == "renorm"]
    raw = [n for n in exits if kinds[n] == "raw"]
    if not renorm and not raw:
        fail("the top-k values reach no weights of a known form (raw or renormalized)", vals)
    return RouterMatch(topk, logits, top_k, bool(renorm), renorm or raw, ids, inside)


def replace(graph: Graph, m: RouterMatch) -> Node:
    with graph.inserting_before(m.topk):
        weights, ids = _fx.call_multi(
            graph, torch.ops.inductor_moe.route.default, (m.logits, m.top_k),
            {"scoring": "softmax", "renormalize": m.renormalize}, meta_from=m.topk,
        )
        ids_long = _fx.convert(graph, ids, _fx.val(m.ids).dtype)
        new_weights = {e: _fx.convert(graph, weights, _fx.val(e).dtype) for e in m.weight_exits}
    m.ids.replace_all_uses_with(ids_long)
    for exit_node, new in new_weights.items():
        # only users outside the value region: nodes inside it may still feed other (unreplaced) exits
        exit_node.replace_all_uses_with(new, delete_user_cb=lambda u: u not in m.value_region)
    return weights.args[0]

