"""Reference router: scores -> (group-limited) top-k -> renormalize -> scale, all in f32.

Orders:
- ``softmax_then_topk`` (Qwen2/3-MoE, OLMoE, Mixtral, DeepSeek-V3 with ``scoring="sigmoid"``):
  probabilities over all experts, top-k of them (of ``probs + correction_bias`` when a bias is given,
  restricted to the best ``topk_group`` of ``n_group`` groups when ``n_group > 1``), the weights are the
  unbiased probabilities of the chosen experts, optionally renormalized to sum to 1, times ``scaling``.
- ``topk_then_softmax`` (GPT-OSS, GraniteMoE): top-k of the raw logits, softmax over those k values.

Ids come out in descending order of the selection score (``torch.topk`` order).
"""
import torch


def _group_limited_choice(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """DeepSeek-V3 (noaux_tc): a group's score is the sum of its two best choice scores; experts outside
    the best ``topk_group`` groups are masked with -inf before the top-k."""
    tokens, experts = choice.shape
    grouped = choice.view(tokens, n_group, experts // n_group)
    group_scores = grouped.topk(min(2, experts // n_group), dim=-1).values.sum(dim=-1)
    best_groups = group_scores.topk(topk_group, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
    keep = keep.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts)
    return choice.masked_fill(~keep, float("-inf"))


def route_ref(
    logits: torch.Tensor,
    top_k: int,
    scoring: str = "softmax",
    renormalize: bool = True,
    order: str = "softmax_then_topk",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.float()
    if order == "topk_then_softmax":
        top_vals, ids = torch.topk(x, top_k, dim=-1)
        weights = torch.softmax(top_vals, dim=-1)
    else:
        probs = torch.softmax(x, dim=-1) if scoring == "softmax" else torch.sigmoid(x)
        choice = probs if correction_bias is None else probs + correction_bias.float()
        if n_group > 1:
            choice = _group_limited_choice(choice, n_group, topk_group)
        ids = torch.topk(choice, top_k, dim=-1).indices
        weights = probs.gather(1, ids)
        if renormalize:
            # sigmoid scores need not sum to anything; the epsilon matches DeepSeek-V3's router
            eps = 1e-20 if scoring == "sigmoid" else 0.0
            weights = weights / (weights.sum(dim=-1, keepdim=True) + eps)
    if scaling != 1.0:
        weights = weights * scaling
    return weights.contiguous(), ids.to(torch.int32).contiguous()
