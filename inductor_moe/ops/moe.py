"""``inductor_moe::moe``: router + routed experts in one op (``route`` then ``experts``; on the decode
path a backend may use ``route_sort`` + ``experts_sorted`` inside).

Inputs: ``hidden`` [T, H], router ``logits`` [T, E], ``w13``/``w2`` and biases as in ``experts``, the
``route`` arguments, the activation spec and, last, the optional separate up weights ``w3`` (see
``experts``). Output: [T, H] in hidden's dtype. The routing weights stay
f32 from the router to the combine.
"""
from typing import Optional

import torch

from .. import dispatch
from ..kernels.reference import experts_ref, route_ref
from . import _checks


def moe_ref(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
            topk_group, scaling, activation, gate_up_interleaved, alpha, limit, w3=None):
    weights, ids = route_ref(logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    return experts_ref(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit,
                       w3=w3)


dispatch.register_kernel("moe", "reference", moe_ref)


def _check(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
           topk_group, scaling, activation, gate_up_interleaved, alpha, limit, w3=None):
    num_experts = _checks.expert_weights(hidden, w13, w2, b13, b2, w3, gate_up_interleaved)
    _checks.route_args(logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    _checks.shape("logits", logits, (hidden.shape[0], num_experts), "[T, E] with T from hidden, E from w13")
    _checks.same_device("hidden", hidden, logits=logits)
    _checks.activation_args(activation, gate_up_interleaved, alpha, limit)
    if _checks.too_many_tokens(hidden.shape[0]):
        _checks._fail("hidden", f"{hidden.shape[0]} tokens; the sorted layout needs T < {_checks.MAX_TOKENS}")


@torch.library.custom_op("inductor_moe::moe", mutates_args=())
def moe(
    hidden: torch.Tensor,
    logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    b13: Optional[torch.Tensor] = None,
    b2: Optional[torch.Tensor] = None,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: Optional[torch.Tensor] = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
    activation: str = "silu",
    gate_up_interleaved: bool = False,
    alpha: float = 1.702,
    limit: float = 7.0,
    w3: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    args = (hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
            topk_group, scaling, activation, gate_up_interleaved, alpha, limit)
    _check(*args, w3)
    _, kernel = dispatch.select("moe", hidden.device, hidden=hidden, w13=w13, w2=w2, activation=activation,
                                top_k=top_k, scoring=scoring, order=order, w3=w3)
    return dispatch.call(kernel, args, w3)


@moe.register_fake
def _(hidden, logits, w13, w2, top_k, b13=None, b2=None, scoring="softmax", renormalize=True,
      order="softmax_then_topk", correction_bias=None, n_group=1, topk_group=1, scaling=1.0, activation="silu",
      gate_up_interleaved=False, alpha=1.702, limit=7.0, w3=None):
    _check(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
           topk_group, scaling, activation, gate_up_interleaved, alpha, limit, w3)
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)
