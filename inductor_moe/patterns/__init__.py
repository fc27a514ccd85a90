"""Matchers, one module per concept. Each module has ``NAME``, ``anchors(graph)``, ``match(anchor)``
(returns a match or raises ``MatchFail`` with a reason) and ``replace(graph, match)``.

Order matters: experts and routers are replaced independently, then a route op that feeds an experts
op directly is fused with it into ``moe``.
"""
from . import experts_grouped_mm, fuse_moe, router_softmax_topk
from ._fx import MatchFail

PATTERNS = (experts_grouped_mm, router_softmax_topk, fuse_moe)

__all__ = ["PATTERNS", "MatchFail"]
