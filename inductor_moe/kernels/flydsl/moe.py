"""``experts`` and ``moe`` on AMD gfx942/gfx950, composed from the FlyDSL kernels of the other modules.

- ``experts_flydsl``: ``sort_flydsl`` (moe_sorting) + ``experts_sorted_flydsl`` (two-stage GEMMs);
- ``moe_flydsl``: ``route_sort_flydsl`` (one launch at decode sizes, route + sort beyond) +
  ``experts_sorted_flydsl``.

Each piece hands what its kernels decline to its reference, so a composition is never wrong for lack of a
kernel; the ``supports_*`` predicates here decline up front what the GEMMs cannot take (biases, GPT-OSS's
activation, separate ``w3``, dtypes), so the dispatch sends such calls to the next family (Triton on ROCm)
with the reason in ``stats()``. ``block_m`` follows the expected rows per expert (``T * k / E``): 16 for
decode-sized calls, 32, then 64 for prefill.

Compile-verified only (no AMD GPU has run these): registered ``verified=False``.
"""
from __future__ import annotations

import torch

from .experts import experts_sorted_flydsl, supports_experts_sorted
from .route_sort import route_sort_flydsl, supports_route_sort
from .sort import sort_flydsl


def pick_block_m(tokens: int, top_k: int, num_experts: int) -> int:
    """Sort block size for the GEMMs (they take 16, 32 or 64): the smallest that holds an expert's expected
    rows, so decode wastes no padded rows and prefill gets big tiles."""
    rows_per_expert = tokens * top_k / max(num_experts, 1)
    return 16 if rows_per_expert <= 16 else 32 if rows_per_expert <= 32 else 64


def supports_experts(hidden: torch.Tensor = None, w13: torch.Tensor = None, top_k: int = None, **kwargs) -> str | None:
    """None when the FlyDSL sort + GEMMs take this ``experts``/``moe`` call, else why not."""
    if hidden is None or w13 is None or top_k is None:
        return "experts: hidden, w13 and top_k are needed to decide"
    block_m = pick_block_m(hidden.shape[0], top_k, w13.shape[0])
    return supports_experts_sorted(hidden=hidden, w13=w13, top_k=top_k, block_m=block_m, **kwargs)


def supports_moe(hidden: torch.Tensor = None, w13: torch.Tensor = None, top_k: int = None, **kwargs) -> str | None:
    return supports_experts(hidden=hidden, w13=w13, top_k=top_k, **kwargs)


def experts_flydsl(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit,
                   expert_mask=None, w3=None):
    """``experts_ref``'s contract: FlyDSL sort, then the FlyDSL two-stage GEMMs."""
    top_k, num_experts = ids.shape[1], w13.shape[0]
    block_m = pick_block_m(hidden.shape[0], top_k, num_experts)
    sorted_out = sort_flydsl(ids, weights, num_experts, block_m, expert_mask)
    return experts_sorted_flydsl(hidden, *sorted_out, w13, w2, top_k, block_m, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, w3)


def moe_flydsl(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
               topk_group, scaling, activation, gate_up_interleaved, alpha, limit, w3=None):
    """``moe_ref``'s contract: FlyDSL route + sort (one launch where it fits), then the two-stage GEMMs."""
    block_m = pick_block_m(hidden.shape[0], top_k, w13.shape[0])
    outs = route_sort_flydsl(logits, top_k, block_m, scoring, renormalize, order, correction_bias, n_group,
                             topk_group, scaling, None)
    return experts_sorted_flydsl(hidden, *outs[:4], w13, w2, top_k, block_m, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, w3)


__all__ = ["experts_flydsl", "moe_flydsl", "pick_block_m", "supports_experts", "supports_moe",
           "supports_route_sort"]
