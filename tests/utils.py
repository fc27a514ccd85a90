"""Test helpers: tiny HF models, error metrics and a capture of the rewritten graphs."""
from __future__ import annotations

import contextlib
import operator

import torch
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass

# ops worth showing in a snapshot of a rewritten MoE graph
_SHOWN = {
    "aten::topk", "aten::sort", "aten::histc", "aten::_grouped_mm", "aten::bmm", "aten::mm", "aten::cumsum",
    "transformers::grouped_mm_fallback",
}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _describe(node) -> str:
    name = node.target._schema.name.replace("::", ".")
    if name.startswith("inductor_moe."):
        scalars = [repr(a) for a in node.args if isinstance(a, (int, float, str, bool))]
        scalars += [f"{k}={v!r}" for k, v in node.kwargs.items() if isinstance(v, (int, float, str, bool))]
        return f"{name}({', '.join(scalars)})"
    return name


def op_sequence(graph) -> list[str]:
    out = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is None:
            continue
        if schema.name in _SHOWN or schema.name.startswith("inductor_moe::"):
            out.append(_describe(node))
    return out


class _Capture(CustomGraphPass):
    def __init__(self):
        self.graphs: list[list[str]] = []

    def __call__(self, graph):
        self.graphs.append(op_sequence(graph))

    def uuid(self):
        return None  # never cache: we want to see every compile


@contextlib.contextmanager
def capture_graphs():
    """Record the interesting op sequence of every graph after the inductor_moe pass."""
    cap = _Capture()
    with inductor_config.patch(post_grad_custom_post_pass=cap):
        yield cap.graphs


def tiny_qwen3_moe(dtype=torch.float32, layers=2, norm_topk_prob=True, seed=0, experts_impl="grouped_mm"):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
        max_position_embeddings=256, norm_topk_prob=norm_topk_prob,
    )
    cfg._experts_implementation = experts_impl
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg)
    # HF leaves the router at zeros and experts uninitialized: give every weight real values
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.to(dtype).eval()
