"""``inductor_moe::experts_mxfp4``: the routed expert FFN with MXFP4 weights (bf16/fp16/f32 activations x
FP4 E2M1 weights with E8M0 block scales, "A16W4").

Same math as ``experts`` with ``w13 = dequantize_mxfp4(w13_q, w13_s)`` and ``w2 = dequantize_mxfp4(w2_q,
w2_s)`` (``inductor_moe.quant.mxfp4``)::

    out[t] += weights[t, j] * (act(hidden[t] @ w13[e].T + b13[e]) @ w2[e].T + b2[e]),  e = ids[t, j]

Inputs, with H the hidden size and I the expert intermediate size, both multiples of 32:

- ``hidden`` [T, H] bf16, fp16 or f32; ``ids`` [T, k] int32/int64; ``weights`` [T, k] floating (used in f32).
- ``w13_q`` uint8 [E, 2I, H/2], ``w2_q`` uint8 [E, H, I/2]: two E2M1 codes per byte along the reduction
  dim, low nibble = the even element (``w13_q[e, n, j]`` holds ``w13[e, n, 2j]`` and ``w13[e, n, 2j+1]``).
  Rows of w13 are gate rows then up rows, or interleaved when ``gate_up_interleaved`` (GPT-OSS).
- ``w13_s`` uint8 [E, 2I, H/32], ``w2_s`` uint8 [E, H, I/32]: E8M0 scales ``2**(byte - 127)``, one per 32
  consecutive elements of a row.
- optional ``b13`` [E, 2I], ``b2`` [E, H] (floating); ``activation``, ``gate_up_interleaved``, ``alpha``,
  ``limit`` and ``expert_mask`` [E] bool as in ``experts``.

Output [T, H] in hidden's dtype. Pairs whose id is outside [0, E) or masked out contribute nothing.
GPT-OSS's MXFP4 checkpoints should map onto this with views only: ``*_blocks`` [E, N, K/32, 16] as
[E, N, K/2], ``*_scales`` [E, N, K/32] (not yet checked against a real checkpoint). Scales held as
``float8_e8m0fnu`` are passed as ``.view(torch.uint8)``.
"""
from typing import Optional

import torch

from .. import dispatch
from ..kernels.reference.experts_mxfp4 import experts_mxfp4_ref
from . import _checks

BLOCK = 32  # elements per E8M0 scale
ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

dispatch.register_kernel("experts_mxfp4", "reference", experts_mxfp4_ref)


def _mxfp4_weights(hidden, w13_q, w2_q, w13_s, w2_s, b13, b2):
    """Check the packed weights, scales and biases against hidden [T, H]; return E."""
    _checks.tensor("hidden", hidden, ndim=2, dtypes=ACTIVATION_DTYPES)
    hidden_dim = hidden.shape[1]
    if hidden_dim % BLOCK:
        _checks._fail("hidden", f"hidden size H={hidden_dim} must be a multiple of {BLOCK} (one E8M0 scale per "
                                f"{BLOCK} weights along H)")
    for name, t in (("w13_q", w13_q), ("w2_q", w2_q), ("w13_s", w13_s), ("w2_s", w2_s)):
        _checks.tensor(name, t, ndim=3, dtypes=(torch.uint8,))
    num_experts, two_i, half_h = w13_q.shape
    if half_h != hidden_dim // 2:
        _checks._fail("w13_q", f"expected [E, 2I, H/2={hidden_dim // 2}] (two FP4 codes per byte, H from hidden), "
                               f"got {tuple(w13_q.shape)}")
    if two_i % 2:
        _checks._fail("w13_q", f"dim 1 holds gate and up (2I) and must be even, got {two_i}")
    inter = two_i // 2
    if inter % BLOCK:
        _checks._fail("w13_q", f"intermediate size I={inter} (dim 1 = 2I) must be a multiple of {BLOCK} (one "
                               f"E8M0 scale per {BLOCK} weights of w2 along I)")
    _checks.shape("w13_s", w13_s, (num_experts, two_i, hidden_dim // BLOCK), "[E, 2I, H/32]: one scale per 32 weights")
    _checks.shape("w2_q", w2_q, (num_experts, hidden_dim, inter // 2), "[E, H, I/2] matching w13_q")
    _checks.shape("w2_s", w2_s, (num_experts, hidden_dim, inter // BLOCK), "[E, H, I/32]: one scale per 32 weights")
    _checks.same_device("hidden", hidden, w13_q=w13_q, w2_q=w2_q, w13_s=w13_s, w2_s=w2_s, b13=b13, b2=b2)
    if b13 is not None:
        _checks.tensor("b13", b13, ndim=2, floating=True)
        _checks.shape("b13", b13, (num_experts, two_i), "[E, 2I]")
    if b2 is not None:
        _checks.tensor("b2", b2, ndim=2, floating=True)
        _checks.shape("b2", b2, (num_experts, hidden_dim), "[E, H]")
    return num_experts


def _check(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation, gate_up_interleaved, alpha, limit,
           expert_mask):
    num_experts = _mxfp4_weights(hidden, w13_q, w2_q, w13_s, w2_s, b13, b2)
    _checks.experts_call(hidden, ids, weights, num_experts, activation, gate_up_interleaved, alpha, limit, expert_mask)


@torch.library.custom_op("inductor_moe::experts_mxfp4", mutates_args=())
def experts_mxfp4(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13_q: torch.Tensor,
    w2_q: torch.Tensor,
    w13_s: torch.Tensor,
    w2_s: torch.Tensor,
    b13: Optional[torch.Tensor] = None,
    b2: Optional[torch.Tensor] = None,
    activation: str = "silu",
    gate_up_interleaved: bool = False,
    alpha: float = 1.702,
    limit: float = 7.0,
    expert_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    args = (hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation, gate_up_interleaved, alpha, limit,
            expert_mask)
    _check(*args)
    _, kernel = dispatch.select("experts_mxfp4", hidden.device, hidden=hidden, w13_q=w13_q, w2_q=w2_q,
                                activation=activation, top_k=ids.shape[1], b13=b13, b2=b2,
                                gate_up_interleaved=gate_up_interleaved)
    return kernel(*args)


@experts_mxfp4.register_fake
def _(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13=None, b2=None, activation="silu",
      gate_up_interleaved=False, alpha=1.702, limit=7.0, expert_mask=None):
    _check(hidden, ids, weights, w13_q, w2_q, w13_s, w2_s, b13, b2, activation, gate_up_interleaved, alpha, limit,
           expert_mask)
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)
