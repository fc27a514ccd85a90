"""``inductor_moe::experts_sorted`` and ``inductor_moe::experts``: the routed expert FFN.

For each (token t, slot j) with expert e = ids[t, j] and weight w = weights[t, j]::

    out[t] += w * (act(hidden[t] @ w13[e].T + b13[e]) @ w2[e].T + b2[e])

``hidden`` [T, H]; ``w13`` [E, 2I, H] (gate rows then up rows, or interleaved when
``gate_up_interleaved``); ``w2`` [E, H, I]; optional ``b13`` [E, 2I], ``b2`` [E, H]. Weights may be strided
views (GPT-OSS stores them transposed): kernels take strides, nothing copies weights per call.
``activation``: "silu" | "gelu" | "gelu_tanh" | "relu" (act(gate) * up) or "swiglu_oai" (GPT-OSS:
gate.clamp(max=limit), up.clamp(-limit, limit), gate * sigmoid(alpha * gate) * (up + 1)).
The routing weight is applied once, in f32, after the down projection. ``out`` [T, H] has hidden's dtype.

``w3`` (optional, last): separate up-projection weights [E, I, H] (gpt-fast's ``w1``/``w3``); ``w13`` is then
the gate projection [E, I, H] alone, so models that keep them apart need no per-call ``cat``. Only the
chunked gate/up layout; ``b13`` stays [E, 2I] (gate then up).

``experts_sorted`` takes the four ``sort`` outputs instead of ids/weights, plus ``top_k`` and ``block_m``.
``experts`` = ``sort`` + ``experts_sorted``.
"""
from typing import Optional

import torch

from .. import dispatch
from ..kernels.reference import experts_ref, experts_sorted_ref
from . import _checks

dispatch.register_kernel("experts_sorted", "reference", experts_sorted_ref)
dispatch.register_kernel("experts", "reference", experts_ref)


def _check_sorted(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m,
                  b13, b2, activation, gate_up_interleaved, alpha, limit, w3=None):
    num_experts = _checks.expert_weights(hidden, w13, w2, b13, b2, w3, gate_up_interleaved)
    _checks.activation_args(activation, gate_up_interleaved, alpha, limit)
    _checks.sorted_layout(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, num_experts,
                          top_k, block_m)


@torch.library.custom_op("inductor_moe::experts_sorted", mutates_args=())
def experts_sorted(
    hidden: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    sorted_weights: torch.Tensor,
    sorted_expert_ids: torch.Tensor,
    num_valid: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    block_m: int,
    b13: Optional[torch.Tensor] = None,
    b2: Optional[torch.Tensor] = None,
    activation: str = "silu",
    gate_up_interleaved: bool = False,
    alpha: float = 1.702,
    limit: float = 7.0,
    w3: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    args = (hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m, b13, b2,
            activation, gate_up_interleaved, alpha, limit)
    _check_sorted(*args, w3)
    _, kernel = dispatch.select("experts_sorted", hidden.device, hidden=hidden, w13=w13, w2=w2,
                                activation=activation, top_k=top_k, block_m=block_m, w3=w3)
    return dispatch.call(kernel, args, w3)


@experts_sorted.register_fake
def _(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m, b13=None,
      b2=None, activation="silu", gate_up_interleaved=False, alpha=1.702, limit=7.0, w3=None):
    _check_sorted(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m,
                  b13, b2, activation, gate_up_interleaved, alpha, limit, w3)
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)


def _check(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit, expert_mask, w3=None):
    num_experts = _checks.expert_weights(hidden, w13, w2, b13, b2, w3, gate_up_interleaved)
    _checks.experts_call(hidden, ids, weights, num_experts, activation, gate_up_interleaved, alpha, limit, expert_mask)


@torch.library.custom_op("inductor_moe::experts", mutates_args=())
def experts(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    b13: Optional[torch.Tensor] = None,
    b2: Optional[torch.Tensor] = None,
    activation: str = "silu",
    gate_up_interleaved: bool = False,
    alpha: float = 1.702,
    limit: float = 7.0,
    expert_mask: Optional[torch.Tensor] = None,
    w3: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    args = (hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit, expert_mask)
    _check(*args, w3)
    _, kernel = dispatch.select("experts", hidden.device, hidden=hidden, w13=w13, w2=w2, activation=activation,
                                top_k=ids.shape[1], w3=w3)
    return dispatch.call(kernel, args, w3)


@experts.register_fake
def _(hidden, ids, weights, w13, w2, b13=None, b2=None, activation="silu", gate_up_interleaved=False, alpha=1.702,
      limit=7.0, expert_mask=None, w3=None):
    _check(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit, expert_mask, w3)
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)
