"""Gated activations of the expert FFN, in f32.

``gate_up`` is the stage-1 output [R, 2I]; the result is [R, I].
- chunked layout (Qwen, Mixtral, OLMoE, DeepSeek): gate = gate_up[:, :I], up = gate_up[:, I:]
- interleaved layout (GPT-OSS): gate = gate_up[:, 0::2], up = gate_up[:, 1::2]
"""
import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "swiglu_oai")


def split_gate_up(gate_up: torch.Tensor, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if interleaved:
        return gate_up[..., 0::2], gate_up[..., 1::2]
    inter = gate_up.shape[-1] // 2
    return gate_up[..., :inter], gate_up[..., inter:]


def apply_activation(
    gate_up: torch.Tensor, activation: str, interleaved: bool, alpha: float, limit: float
) -> torch.Tensor:
    gate, up = split_gate_up(gate_up, interleaved)
    if activation == "silu":
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(gate) * up
    if activation == "gelu_tanh":
        return F.gelu(gate, approximate="tanh") * up
    if activation == "relu":
        return F.relu(gate) * up
    if activation == "swiglu_oai":
        # GPT-OSS: clamp(gate, max=limit), up.clamp(-limit, limit), gate*sigmoid(alpha*gate)*(up+1)
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return gate * torch.sigmoid(gate * alpha) * (up + 1)
    raise ValueError(f"activation: unsupported {activation!r}; expected one of {ACTIVATIONS}")
