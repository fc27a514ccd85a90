"""Convert a transformers MoE model's routed experts to MXFP4 (``inductor_moe::experts_mxfp4``).

    import inductor_moe.quant as q
    report = q.convert_experts_to_mxfp4(model)     # {module path: "mxfp4" or why it was left as is}
    model = torch.compile(model, backend="inductor_moe")   # routers still matched; experts already fused

For every experts module that the ``inductor_moe`` experts implementation supports
(:func:`inductor_moe.hf.experts_plan`: a gated FFN with ``gate_up_proj``/``down_proj``, SiLU/GELU/ReLU or
GPT-OSS's clamped SwiGLU, optional biases, transposed storage or not):

1. the bf16/f32 ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I] (GPT-OSS: their transposes) are
   quantized along the reduction dim with :func:`inductor_moe.quant.mxfp4.quantize_mxfp4` into buffers
   ``w13_q``/``w13_s``/``w2_q``/``w2_s`` (uint8; 4.25 bits per weight), and the parameters are removed, so
   the experts take ~3.8x less memory;
2. the module's ``forward(hidden, top_k_index, top_k_weights)`` becomes one call of
   ``torch.ops.inductor_moe.experts_mxfp4`` (capturable; under torch.compile an opaque op).

The router and everything else stay as they were (the router matchers still apply). Modules the op cannot
express (no gate, a post-expert norm, an unknown activation, H or I not a multiple of 32) are left
unconverted, with the reason in the returned report. Converting is one-way (the bf16 weights are gone);
quantization error is the MXFP4 format's, and the result equals running the original module with
``dequantize_mxfp4(quantize_mxfp4(w))`` weights.
"""
from __future__ import annotations

import types

import torch

from .mxfp4 import BLOCK, quantize_mxfp4

__all__ = ["convert_experts_to_mxfp4", "is_mxfp4_experts"]

_MARK = "_inductor_moe_mxfp4"


def _mxfp4_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor) -> torch.Tensor:
    plan = getattr(self, _MARK)
    b13 = getattr(self, "gate_up_proj_bias", None) if plan["bias"] else None
    b2 = getattr(self, "down_proj_bias", None) if plan["bias"] else None
    out = torch.ops.inductor_moe.experts_mxfp4(
        hidden_states, top_k_index, top_k_weights, self.w13_q, self.w2_q, self.w13_s, self.w2_s, b13, b2,
        plan["activation"], plan["gate_up_interleaved"], plan["alpha"], plan["limit"])
    return out


def is_mxfp4_experts(module: torch.nn.Module) -> bool:
    return hasattr(module, _MARK)


def _why_not(module, plan) -> str | None:
    if not plan["supported"]:
        return plan["reason"]
    w13, w2 = module.gate_up_proj, module.down_proj
    if w13.dim() != 3 or w2.dim() != 3:
        return "gate_up_proj/down_proj are not 3-D [E, ., .] tensors"
    if plan["transposed"]:
        w13, w2 = w13.transpose(1, 2), w2.transpose(1, 2)
    hidden, inter = w13.shape[2], w2.shape[2]
    if hidden % BLOCK or inter % BLOCK:
        return f"H={hidden} and I={inter} must be multiples of {BLOCK} (one E8M0 scale per {BLOCK} weights)"
    return None


@torch.no_grad()
def convert_experts_to_mxfp4(model: torch.nn.Module) -> dict[str, str]:
    """Quantize every supported experts module of ``model`` to MXFP4 in place (see the module docstring).
    Returns ``{module path: "mxfp4" | "already mxfp4" | reason it was left unconverted}`` for every module
    with ``gate_up_proj`` and ``down_proj``; raises ``ValueError`` when ``model`` has none."""
    from ..hf import experts_plan

    report = {}
    for path, module in model.named_modules():
        if is_mxfp4_experts(module):
            report[path] = "already mxfp4"
            continue
        if not (isinstance(getattr(module, "gate_up_proj", None), torch.Tensor)
                and isinstance(getattr(module, "down_proj", None), torch.Tensor)):
            continue
        plan = experts_plan(module)
        reason = _why_not(module, plan)
        if reason is not None:
            report[path] = reason
            continue
        w13, w2 = module.gate_up_proj, module.down_proj
        if plan["transposed"]:
            w13, w2 = w13.transpose(1, 2), w2.transpose(1, 2)
        w13_q, w13_s = quantize_mxfp4(w13.contiguous())
        w2_q, w2_s = quantize_mxfp4(w2.contiguous())
        del module.gate_up_proj, module.down_proj  # parameters: removed, memory freed with the last reference
        module.register_buffer("w13_q", w13_q)
        module.register_buffer("w13_s", w13_s)
        module.register_buffer("w2_q", w2_q)
        module.register_buffer("w2_s", w2_s)
        setattr(module, _MARK, {k: plan[k] for k in ("activation", "gate_up_interleaved", "alpha", "limit", "bias")})
        module.forward = types.MethodType(_mxfp4_forward, module)
        report[path] = "mxfp4"
    if not report:
        raise ValueError("model: no experts module (with gate_up_proj and down_proj) found to convert")
    return report
