"""Router: top-k of the logits -> softmax over the k values -> cast  ==>  ``inductor_moe::route``
with ``order="topk_then_softmax"``.

Emitted by GPT-OSS (``GptOssTopKRouter``, router bias inside the linear: the logits are an ``addmm``)
and GraniteMoE (``GraniteMoeTopKRouter``, logits cast to f32 first)::

    logits = linear(hidden, W, b)                              # [T, E]
    vals, ids = torch.topk(logits, k, dim=-1)
    weights = softmax(vals, dim=-1).to(dtype)                  # post-grad: amax/sub/exp/sum/div (+ casts)

Anchor: an ``aten.topk`` whose values reach an ``exp`` through row-wise ops (a softmax *of the selected
values*, maybe; the softmax-first routers renormalize their values without one and are left to
``router_softmax_topk``). The top-k input is the route's logits as it is, whatever computed it: the op
takes the top-k of ``logits.float()``, which selects the same experts (the cast is exact and monotone).
The weights are every row-wise node below ``vals`` that leaves that region and equals ``softmax(vals)``,
found by probing; other exits (the raw values, say) keep reading the original top-k.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.fx import Graph, Node

from . import _fx, _router
from ._fx import aten, fail

NAME = "router_topk_softmax"


@dataclass
class TopkSoftmaxMatch:
    topk: Node
    logits: Node
    top_k: int
    weight_exits: list[Node]
    ids: Node
    value_region: set[Node]

    @property
    def anchor(self) -> Node:
        return self.topk


def _values_reach_exp(topk: Node) -> bool:
    if not all(_fx.is_op(u, operator.getitem) for u in topk.users):
        return False
    vals, _ = _router.topk_outputs(topk)
    if vals is None:
        return False
    exps = (aten.exp.default, torch.ops.prims.exp.default)
    return any(_fx.is_op(n, *exps) for n in _router.rowwise_descendants(vals))


def anchors(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if _fx.is_op(n, aten.topk.default) and _values_reach_exp(n)]


def _is_softmax_of_values(vals: Node, exit_node: Node, top_k: int) -> bool:
    region = _fx.backward_region(exit_node, [vals])
    gen = torch.Generator().manual_seed(3)
    probes = []
    for s in (0.5, 3.0, 12.0):
        v = (torch.randn(6, top_k, generator=gen) * s).sort(dim=-1, descending=True).values
        probes.append((v.to(_fx.val(vals).dtype),))
    tol = max(_fx.tolerance(_fx.val(vals).dtype), _fx.tolerance(_fx.val(exit_node).dtype))
    return _fx.matches(region, probes, lambda v: torch.softmax(v, dim=-1), tol)


def match(topk: Node) -> TopkSoftmaxMatch:
    top_k = _router.topk_args(topk)
    logits = topk.args[0]
    vals, ids = _router.topk_outputs(topk)
    if ids is None:
        fail("top-k indices are unused", topk)
    if vals is None:
        fail("top-k values are unused", topk)

    region = _router.forward_region(vals)
    weights = [n for n in _router.region_exits(region) if _is_softmax_of_values(vals, n, top_k)]
    if not weights:
        fail("no node below the top-k values equals softmax(values, -1)", vals)
    _router.dry_run(torch.ops.inductor_moe.route.default, (logits, top_k),
                    {"scoring": "softmax", "renormalize": False, "order": "topk_then_softmax"}, topk)
    return TopkSoftmaxMatch(topk, logits, top_k, weights, ids, set(region))


def replace(graph: Graph, m: TopkSoftmaxMatch) -> Node:
    return _router.replace_route(graph, m, {"scoring": "softmax", "renormalize": False, "order": "topk_then_softmax"})
