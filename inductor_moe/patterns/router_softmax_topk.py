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

from . import _fx, _router
from ._fx import aten, fail

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
    top_k = _router.topk_args(topk)
    logits, _ = _router.find_scoring_source(topk.args[0], ("softmax",))
    vals, ids = _router.topk_outputs(topk)
    if ids is None:
        fail("top-k indices are unused", topk)
    if vals is None:
        fail("top-k values are unused (weights gathered another way)", topk)

    region = _router.forward_region(vals)
    exits = _router.region_exits(region)
    kinds = {n: _classify_exit(vals, n, top_k) for n in exits}
    renorm = [n for n in exits if kinds[n] == "renorm"]
    raw = [n for n in exits if kinds[n] == "raw"]
    if not renorm and not raw:
        fail("the top-k values reach no weights of a known form (raw or renormalized)", vals)
    return RouterMatch(topk, logits, top_k, bool(renorm), renorm or raw, ids, set(region))


def replace(graph: Graph, m: RouterMatch) -> Node:
    return _router.replace_route(graph, m, {"scoring": "softmax", "renormalize": m.renormalize})
