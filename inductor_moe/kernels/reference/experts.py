"""Reference expert FFN over the sorted layout, in f32.

``experts_sorted_ref`` walks the ``block_m`` blocks of the sorted layout (a static count, so no host
sync): each block gathers its tokens, runs gate_up GEMM -> activation -> down GEMM with its expert's
weights, scales by the routing weight, and writes each (token, slot) result to its own row; the k rows
of a token are summed in slot order at the end (deterministic, no atomics).
"""
import torch

from .activation import apply_activation
from .sort import TOKEN_BITS, TOKEN_MASK, sort_ref

# block size the reference uses when it sorts for itself; any value gives the same result
REFERENCE_BLOCK_M = 16


def experts_sorted_ref(
    hidden: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    sorted_weights: torch.Tensor,
    sorted_expert_ids: torch.Tensor,
    num_valid: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    block_m: int,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
    activation: str,
    gate_up_interleaved: bool,
    alpha: float,
    limit: float,
    w3: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w3``: separate up weights [E, I, H]; ``w13`` is then the gate projection [E, I, H] alone."""
    tokens, hidden_dim = hidden.shape
    n_rows = tokens * top_k
    packed = sorted_token_ids.long()
    token = packed & TOKEN_MASK
    slot = packed >> TOKEN_BITS
    real = (token < tokens) & (slot < top_k)
    # padding reads a zero row and writes a sink row that is dropped at the end
    token = torch.where(real, token, torch.full_like(token, tokens))
    dest = torch.where(real, token * top_k + slot, torch.full_like(token, n_rows))

    x = torch.cat([hidden.float(), hidden.new_zeros(1, hidden_dim, dtype=torch.float32)])
    rows = torch.zeros(n_rows + 1, hidden_dim, dtype=torch.float32, device=hidden.device)
    for block in range(sorted_expert_ids.numel()):
        lo, hi = block * block_m, (block + 1) * block_m
        expert = sorted_expert_ids[block : block + 1].long().clamp(min=0)
        xb = x.index_select(0, token[lo:hi])
        gate_up = xb @ w13.index_select(0, expert)[0].float().t()
        if w3 is not None:  # [gate | up] as with the chunked w13
            gate_up = torch.cat([gate_up, xb @ w3.index_select(0, expert)[0].float().t()], dim=-1)
        if b13 is not None:
            gate_up = gate_up + b13.index_select(0, expert).float()
        act = apply_activation(gate_up, activation, gate_up_interleaved, alpha, limit)
        out = act @ w2.index_select(0, expert)[0].float().t()
        if b2 is not None:
            out = out + b2.index_select(0, expert).float()
        rows[dest[lo:hi]] = out * sorted_weights[lo:hi, None].float()
    return rows[:n_rows].view(tokens, top_k, hidden_dim).sum(dim=1).to(hidden.dtype)


def experts_ref(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
    activation: str,
    gate_up_interleaved: bool,
    alpha: float,
    limit: float,
    expert_mask: torch.Tensor | None = None,
    w3: torch.Tensor | None = None,
) -> torch.Tensor:
    top_k = ids.shape[1]
    num_experts = w13.shape[0]
    block_m = REFERENCE_BLOCK_M
    sorted_out = sort_ref(ids, weights, num_experts, block_m, expert_mask)
    return experts_sorted_ref(
        hidden, *sorted_out, w13, w2, top_k, block_m, b13, b2, activation, gate_up_interleaved, alpha, limit, w3
    )
