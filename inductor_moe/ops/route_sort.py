"""``inductor_moe::route_sort``: ``route`` then ``sort`` as one op (one launch on the decode path,
seed 001: the router's results need never leave on-chip memory).

Inputs: the ``route`` arguments, ``block_m`` and optional ``expert_mask`` [E] bool.
Outputs: ``sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid`` (the ``sort`` contract) then
``weights`` [T, k] f32 and ``ids`` [T, k] int32 (the ``route`` contract).
"""
from typing import Optional

import torch

from .. import dispatch
from ..kernels.reference import route_ref, sort_ref
from . import _checks
from .sort import sort_outputs_fake


def route_sort_ref(logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group, topk_group,
                   scaling, expert_mask):
    weights, ids = route_ref(logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    return (*sort_ref(ids, weights, logits.shape[1], block_m, expert_mask), weights, ids)


dispatch.register_kernel("route_sort", "reference", route_sort_ref)


def _check(logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling,
           expert_mask):
    num_experts = _checks.route_args(logits, top_k, scoring, renormalize, order, correction_bias, n_group,
                                     topk_group, scaling)
    _checks.block(block_m)
    if _checks.too_many_tokens(logits.shape[0]):
        _checks._fail("logits", f"{logits.shape[0]} tokens; the sorted layout needs T < {_checks.MAX_TOKENS}")
    if expert_mask is not None:
        _checks.tensor("expert_mask", expert_mask, ndim=1, dtypes=(torch.bool,))
        _checks.shape("expert_mask", expert_mask, (num_experts,), "one per expert")
        _checks.same_device("logits", logits, expert_mask=expert_mask)
    return num_experts


@torch.library.custom_op("inductor_moe::route_sort", mutates_args=())
def route_sort(
    logits: torch.Tensor,
    top_k: int,
    block_m: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: Optional[torch.Tensor] = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
    expert_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling,
            expert_mask)
    _check(*args)
    _, kernel = dispatch.select("route_sort", logits.device, logits=logits, top_k=top_k, block_m=block_m,
                                scoring=scoring, order=order, renormalize=renormalize,
                                correction_bias=correction_bias, n_group=n_group)
    return kernel(*args)


@route_sort.register_fake
def _(logits, top_k, block_m, scoring="softmax", renormalize=True, order="softmax_then_topk",
      correction_bias=None, n_group=1, topk_group=1, scaling=1.0, expert_mask=None):
    num_experts = _check(logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group,
                         topk_group, scaling, expert_mask)
    tokens = logits.shape[0]
    return (
        *sort_outputs_fake(logits, tokens, top_k, num_experts, block_m),
        logits.new_empty((tokens, top_k), dtype=torch.float32),
        logits.new_empty((tokens, top_k), dtype=torch.int32),
    )
