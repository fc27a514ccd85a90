"""Independent, deliberately naive implementations of the op contracts, for the op tests.

Written from the contracts in ``inductor_moe/ops/*.py`` with plain Python loops over tokens, slots and
experts, in float64. Nothing here imports ``inductor_moe`` (in particular not ``inductor_moe.kernels``), so a
bug shared by the reference kernels and these functions would have to be written twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOKEN_BITS = 24


# --------------------------------------------------------------------------------------------------- route
@dataclass
class NaiveRoute:
    weights: torch.Tensor  # [T, k] float64
    ids: torch.Tensor  # [T, k] int64, descending selection score (ties: lowest id first)
    select: torch.Tensor  # [T, E] float64 selection score; -inf for experts outside the kept groups
    margin: float  # smallest gap at any top-k / top-group decision boundary (inf when there is none)


def _desc_order(values: list[float]) -> list[int]:
    """Indices sorted by descending value (ties broken by lower index)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def _boundary_gap(values: list[float], n: int) -> float:
    """Gap between the n-th and (n+1)-th largest finite values (inf when there is no (n+1)-th)."""
    ordered = sorted((v for v in values if v != -math.inf), reverse=True)
    if n >= len(ordered):
        return math.inf
    return ordered[n - 1] - ordered[n]


def naive_route(
    logits: torch.Tensor,
    top_k: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
) -> NaiveRoute:
    rows = logits.double().tolist()
    bias = None if correction_bias is None else correction_bias.double().tolist()
    tokens = len(rows)
    num_experts = logits.shape[1]
    all_w, all_ids, all_sel = [], [], []
    margin = math.inf
    for t in range(tokens):
        x = rows[t]
        if order == "topk_then_softmax":
            select = list(x)
            chosen = _desc_order(select)[:top_k]
            margin = min(margin, _boundary_gap(select, top_k))
            m = max(x[e] for e in chosen)
            exps = [math.exp(x[e] - m) for e in chosen]
            total = sum(exps)
            w = [v / total for v in exps]
        else:
            if scoring == "softmax":
                m = max(x)
                exps = [math.exp(v - m) for v in x]
                total = sum(exps)
                probs = [v / total for v in exps]
            else:
                probs = [1.0 / (1.0 + math.exp(-v)) for v in x]
            select = [probs[e] + (bias[e] if bias is not None else 0.0) for e in range(num_experts)]
            if n_group > 1:
                size = num_experts // n_group
                group_scores = []
                for g in range(n_group):
                    members = sorted(select[g * size:(g + 1) * size], reverse=True)
                    group_scores.append(sum(members[:2]))
                kept = set(_desc_order(group_scores)[:topk_group])
                margin = min(margin, _boundary_gap(group_scores, topk_group))
                select = [select[e] if e // size in kept else -math.inf for e in range(num_experts)]
            chosen = _desc_order(select)[:top_k]
            margin = min(margin, _boundary_gap(select, top_k))
            w = [probs[e] for e in chosen]
            if renormalize:
                total = sum(w) + (1e-20 if scoring == "sigmoid" else 0.0)
                w = [v / total for v in w]
        all_w.append([v * scaling for v in w])
        all_ids.append(chosen)
        all_sel.append(select)
    return NaiveRoute(
        weights=torch.tensor(all_w, dtype=torch.float64).reshape(tokens, top_k),
        ids=torch.tensor(all_ids, dtype=torch.int64).reshape(tokens, top_k),
        select=torch.tensor(all_sel, dtype=torch.float64).reshape(tokens, num_experts),
        margin=margin,
    )


# ---------------------------------------------------------------------------------------------------- sort
def naive_sorted_length(tokens: int, top_k: int, num_experts: int, block_m: int) -> int:
    worst = tokens * top_k + num_experts * (block_m - 1)
    return -(-worst // block_m) * block_m


def naive_sort(
    ids: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    block_m: int,
    expert_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sort contract built entry by entry from its definition."""
    tokens, top_k = ids.shape
    id_rows = ids.tolist()
    w_rows = weights.float().tolist()
    mask = None if expert_mask is None else expert_mask.tolist()
    length = naive_sorted_length(tokens, top_k, num_experts, block_m)
    pad = (top_k << TOKEN_BITS) | tokens

    token_ids: list[int] = []
    sorted_w: list[float] = []
    expert_ids: list[int] = []
    for e in range(num_experts):
        if mask is not None and not mask[e]:
            continue
        run = [(t, s) for t in range(tokens) for s in range(top_k) if id_rows[t][s] == e]
        if not run:
            continue
        for t, s in run:
            token_ids.append((s << TOKEN_BITS) | t)
            sorted_w.append(w_rows[t][s])
        while len(token_ids) % block_m:
            token_ids.append(pad)
            sorted_w.append(0.0)
        n_blocks = len(token_ids) // block_m - len(expert_ids)
        expert_ids.extend([e] * n_blocks)
    used = len(token_ids)
    assert used <= length
    token_ids += [pad] * (length - used)
    sorted_w += [0.0] * (length - used)
    expert_ids += [-1] * (length // block_m - len(expert_ids))
    return (
        torch.tensor(token_ids, dtype=torch.int32),
        torch.tensor(sorted_w, dtype=torch.float32),
        torch.tensor(expert_ids, dtype=torch.int32),
        torch.tensor([used, tokens], dtype=torch.int32),
    )


# ------------------------------------------------------------------------------------------------- experts
def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def naive_activation(gate_up: list[float], activation: str, interleaved: bool, alpha: float, limit: float):
    inter = len(gate_up) // 2
    if interleaved:
        gate, up = gate_up[0::2], gate_up[1::2]
    else:
        gate, up = gate_up[:inter], gate_up[inter:]
    out = []
    for g, u in zip(gate, up):
        if activation == "silu":
            out.append(g * _sigmoid(g) * u)
        elif activation == "gelu":
            out.append(_gelu(g) * u)
        elif activation == "gelu_tanh":
            out.append(_gelu_tanh(g) * u)
        elif activation == "relu":
            out.append(max(g, 0.0) * u)
        elif activation == "swiglu_oai":
            g = min(g, limit)
            u = min(max(u, -limit), limit)
            out.append(g * _sigmoid(alpha * g) * (u + 1.0))
        else:
            raise ValueError(activation)
    return out


def naive_experts(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    b13: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    activation: str = "silu",
    gate_up_interleaved: bool = False,
    alpha: float = 1.702,
    limit: float = 7.0,
    expert_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[t] += w * (act(x[t] @ w13[e].T + b13[e]) @ w2[e].T + b2[e]) over every kept (t, slot), in f64.

    Pairs whose expert is masked out or outside [0, E) contribute nothing (they are dropped by ``sort``).
    """
    tokens, hidden_dim = hidden.shape
    num_experts = w13.shape[0]
    x = hidden.double()
    w13d, w2d = w13.double(), w2.double()
    b13d = None if b13 is None else b13.double()
    b2d = None if b2 is None else b2.double()
    id_rows = ids.tolist()
    w_rows = weights.double().tolist()
    mask = None if expert_mask is None else expert_mask.tolist()
    out = torch.zeros(tokens, hidden_dim, dtype=torch.float64)
    for t in range(tokens):
        for s in range(ids.shape[1]):
            e = id_rows[t][s]
            if not 0 <= e < num_experts or (mask is not None and not mask[e]):
                continue
            gate_up = w13d[e] @ x[t]
            if b13d is not None:
                gate_up = gate_up + b13d[e]
            act = torch.tensor(
                naive_activation(gate_up.tolist(), activation, gate_up_interleaved, alpha, limit),
                dtype=torch.float64,
            )
            down = w2d[e] @ act
            if b2d is not None:
                down = down + b2d[e]
            out[t] += w_rows[t][s] * down
    return out
