"""Matchers, one module per concept. Each module has ``NAME``, ``anchors(graph)``, ``match(anchor)``
(returns a match or raises ``MatchFail`` with a reason) and ``replace(graph, match)``.

Order matters: experts and routers are replaced independently, then a route op that feeds an experts
op directly is fused with it into ``moe``.
"""
from . import (
    experts_batched_mm,
    experts_gather_einsum,
    experts_grouped_mm,
    fuse_moe,
    router_sigmoid_group,
    router_softmax_topk,
    router_topk_softmax,
)
from ._fx import MatchFail

# the specific routers run before router_softmax_topk, which looks at every remaining top-k: the group
# router's inner top-ks are gone by then, and a top-k-then-softmax never reaches it to be turned down
PATTERNS = (experts_grouped_mm, experts_batched_mm, experts_gather_einsum, router_sigmoid_group, router_topk_softmax,
            router_softmax_topk, fuse_moe)

__all__ = ["PATTERNS", "MatchFail"]
