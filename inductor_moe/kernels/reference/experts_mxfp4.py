"""Reference expert FFN over MXFP4 weights: dequantize exactly (``inductor_moe.quant.mxfp4``), then the
reference expert math (``experts_ref``, f32). Dequantizes every expert on each call: the ground truth and
the CPU path, not a fast one."""
import torch

from ...quant.mxfp4 import dequantize_mxfp4
from .experts import experts_ref


def experts_mxfp4_ref(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    w13_q: torch.Tensor,
    w2_q: torch.Tensor,
    w13_s: torch.Tensor,
    w2_s: torch.Tensor,
    b13: torch.Tensor | None,
    b2: torch.Tensor | None,
    activation: str,
    gate_up_interleaved: bool,
    alpha: float,
    limit: float,
    expert_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    w13 = dequantize_mxfp4(w13_q, w13_s)
    w2 = dequantize_mxfp4(w2_q, w2_s)
    return experts_ref(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit,
                       expert_mask)
