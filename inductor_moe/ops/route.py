"""``inductor_moe::route``: router scores -> top-k expert ids and f32 weights.

Inputs: ``logits`` [T, E] (any float dtype), ``top_k``, ``scoring`` ("softmax" | "sigmoid"),
``renormalize``, ``order`` ("softmax_then_topk" | "topk_then_softmax"), optional ``correction_bias`` [E]
(added to the scores for selection only, DeepSeek-V3), ``n_group``/``topk_group`` (group-limited top-k),
``scaling`` (routed_scaling_factor).
Outputs: ``weights`` [T, k] float32, ``ids`` [T, k] int32, in descending order of selection score.

Ties: among experts with equal scores at the top-k boundary, which ones are chosen is unspecified; the
reference follows ``torch.topk`` (on CPU not always the lowest id), the Triton and FlyDSL kernels take the
lowest id. Each is a valid top-k: the chosen scores are the k largest.

NaN or +inf logits: that token's ids are still valid experts in [0, E) (which ones is unspecified) and its
weights are NaN, so its output row in ``moe``/``experts`` is NaN; other tokens are unaffected. No kernel
may turn such input into an out-of-range id.

Example: logits [[0, 1, 2]] with top_k=2, softmax, renormalize -> ids [[2, 1]],
weights [[0.731, 0.269]] (e^2/(e^2+e^1), e^1/(e^2+e^1)).
"""
from typing import Optional

import torch

from .. import dispatch
from ..kernels.reference import route_ref
from . import _checks

dispatch.register_kernel("route", "reference", route_ref)


@torch.library.custom_op("inductor_moe::route", mutates_args=())
def route(
    logits: torch.Tensor,
    top_k: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: Optional[torch.Tensor] = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = (logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    _checks.route_args(*args)
    _, kernel = dispatch.select("route", logits.device, logits=logits, top_k=top_k, scoring=scoring, order=order,
                                correction_bias=correction_bias, n_group=n_group)
    return kernel(*args)


@route.register_fake
def _(logits, top_k, scoring="softmax", renormalize=True, order="softmax_then_topk",
      correction_bias=None, n_group=1, topk_group=1, scaling=1.0):
    _checks.route_args(logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    tokens = logits.shape[0]
    return (
        logits.new_empty((tokens, top_k), dtype=torch.float32),
        logits.new_empty((tokens, top_k), dtype=torch.int32),
    )
