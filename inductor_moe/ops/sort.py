"""``inductor_moe::sort``: group (token, slot) pairs by expert into ``block_m``-padded runs.

Inputs: ``ids`` [T, k] int32/int64, ``weights`` [T, k] float, ``num_experts`` E, ``block_m``, optional
``expert_mask`` [E] bool (expert parallelism: only True experts are local).
Outputs (the aiter/FlyDSL moe_sorting layout, so one set of GEMMs serves every backend):
- ``sorted_token_ids`` int32 [L], L = T*k + E*(block_m-1) rounded up to block_m. Entries are grouped by
  expert in ascending expert id, each run padded to a multiple of block_m, (token, slot) ascending inside a
  run. A real entry is ``(slot << 24) | token``; padding is ``(k << 24) | T``.
- ``sorted_weights`` float32 [L]: the routing weight of each entry, 0 at padding.
- ``sorted_expert_ids`` int32 [L / block_m]: the global expert id of each block (also under a mask);
  experts with no (or only masked) pairs get no block; blocks past ``num_valid[0] / block_m`` are -1.
- ``num_valid`` int32 [2]: [padded entries used, T]; kernels read it on the device to stop early.
Masked pairs and ids outside [0, E) are dropped. T must be < 2**24.
A worked example is in ``inductor_moe/kernels/reference/sort.py``.
"""
from typing import Optional

import torch

from .. import dispatch
from ..kernels.reference import sort_ref
from ..kernels.reference.sort import sorted_length
from . import _checks

dispatch.register_kernel("sort", "reference", sort_ref)


def sort_outputs_fake(like: torch.Tensor, tokens, top_k: int, num_experts: int, block_m: int):
    length = sorted_length(tokens, top_k, num_experts, block_m)
    return (
        like.new_empty((length,), dtype=torch.int32),
        like.new_empty((length,), dtype=torch.float32),
        like.new_empty((length // block_m,), dtype=torch.int32),
        like.new_empty((2,), dtype=torch.int32),
    )


@torch.library.custom_op("inductor_moe::sort", mutates_args=())
def sort(
    ids: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    block_m: int,
    expert_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.sort_args(ids, weights, num_experts, block_m, expert_mask)
    _, kernel = dispatch.select("sort", ids.device, ids=ids, num_experts=num_experts, block_m=block_m)
    return kernel(ids, weights, num_experts, block_m, expert_mask)


@sort.register_fake
def _(ids, weights, num_experts, block_m, expert_mask=None):
    _checks.sort_args(ids, weights, num_experts, block_m, expert_mask)
    return sort_outputs_fake(ids, ids.shape[0], ids.shape[1], num_experts, block_m)
