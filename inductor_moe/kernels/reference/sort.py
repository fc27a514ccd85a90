"""Reference moe_sorting: group (token, slot) pairs by expert into ``block_m``-padded runs.

Layout (the aiter/FlyDSL moe_sorting contract, see ``inductor_moe.ops.sort``)::

    ids = [[1, 0],        T=3, k=2, E=3, block_m=2
           [1, 2],
           [0, 1]]
    expert 0: (t0,s1) (t2,s0)          -> run of 2, no padding
    expert 1: (t0,s0) (t1,s0) (t2,s1)  -> run of 3, padded to 4
    expert 2: (t1,s1)                  -> run of 1, padded to 2
    sorted_token_ids  = [1<<24|0, 0<<24|2,  0|0, 0|1, 1<<24|2, PAD,  1<<24|1, PAD,  PAD, PAD, ...]
    sorted_expert_ids = [0, 1, 1, 2, -1, ...]      num_valid = [8, 3]
    PAD = (k << 24) | T

Computed with a stable sort and scatters: no host sync, shapes depend only on (T, k, E, block_m).
"""
import torch

TOKEN_BITS = 24
TOKEN_MASK = (1 << TOKEN_BITS) - 1


def sorted_length(num_tokens, top_k: int, num_experts: int, block_m: int):
    """Length of ``sorted_token_ids``: T*k + E*(block_m-1), rounded up to a multiple of block_m."""
    worst = num_tokens * top_k + num_experts * (block_m - 1)
    return (worst + block_m - 1) // block_m * block_m


def sort_ref(
    ids: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    block_m: int,
    expert_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens, top_k = ids.shape
    device = ids.device
    length = sorted_length(tokens, top_k, num_experts, block_m)
    n_pairs = tokens * top_k

    flat = ids.reshape(-1).long()
    keep = (flat >= 0) & (flat < num_experts)
    if expert_mask is not None:
        keep = keep & expert_mask.to(device=device, dtype=torch.bool)[flat.clamp(0, num_experts - 1)]
    # dropped pairs get key E so they sort after every real expert and are never written
    key = torch.where(keep, flat, torch.full_like(flat, num_experts))

    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    run_start = torch.cumsum(padded, 0) - padded  # exclusive prefix sum of padded runs
    pair_start = torch.cumsum(counts, 0) - counts  # exclusive prefix sum of real pairs

    # stable sort keeps (token, slot) ascending inside each expert's run
    order = torch.sort(key, stable=True).indices
    sorted_key = key[order]
    rank = torch.arange(n_pairs, device=device)
    real = sorted_key < num_experts
    e = sorted_key.clamp(max=num_experts - 1)
    dest = torch.where(real, run_start[e] + rank - pair_start[e], torch.full_like(rank, length))

    token = order // top_k
    slot = order % top_k
    packed = (slot << TOKEN_BITS) | token

    pad_value = (top_k << TOKEN_BITS) | tokens
    sorted_token_ids = torch.full((length + 1,), pad_value, dtype=torch.long, device=device)
    sorted_token_ids[dest] = packed
    sorted_weights = torch.zeros(length + 1, dtype=torch.float32, device=device)
    sorted_weights[dest] = weights.reshape(-1).float()[order]

    total = padded.sum()
    run_end = torch.cumsum(padded, 0)
    block_first_row = torch.arange(0, length, block_m, device=device)
    block_expert = torch.searchsorted(run_end, block_first_row, right=True)
    sorted_expert_ids = torch.where(block_first_row < total, block_expert, torch.full_like(block_expert, -1))

    num_valid = torch.stack([total, total.new_full((), tokens)]).to(torch.int32)
    return (
        sorted_token_ids[:length].to(torch.int32),
        sorted_weights[:length],
        sorted_expert_ids.to(torch.int32),
        num_valid,
    )
