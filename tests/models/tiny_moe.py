"""Tiny random MoE models of several HF families, built from a config (no downloads), and the checks the
per-family test files share.

Every parameter (and the DeepSeek-V3 / GLM4-MoE ``e_score_correction_bias`` buffer) is drawn from
N(0, 0.2): HF leaves routers at zero and experts uninitialized, which would make every router tie.
"""
from __future__ import annotations

import torch

import inductor_moe
from tests.utils import capture_graphs, rel_l2

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
VOCAB, HIDDEN = 96, 32
COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256)


def _config(family: str, layers: int, **overrides):
    import transformers as T

    if family == "mixtral":
        kw = dict(COMMON, head_dim=8, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
        cls, model = T.MixtralConfig, T.MixtralForCausalLM
    elif family == "olmoe":
        kw = dict(COMMON, intermediate_size=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)
        cls, model = T.OlmoeConfig, T.OlmoeForCausalLM
    elif family in ("deepseek_v3", "glm4_moe"):
        kw = dict(COMMON, num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8,
                  num_experts_per_tok=2, n_group=4, topk_group=2, n_shared_experts=1, first_k_dense_replace=0,
                  routed_scaling_factor=2.5, norm_topk_prob=True)
        if family == "deepseek_v3":
            kw.update(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
            cls, model = T.DeepseekV3Config, T.DeepseekV3ForCausalLM
        else:
            kw.update(head_dim=8)
            cls, model = T.Glm4MoeConfig, T.Glm4MoeForCausalLM
    elif family == "gpt_oss":
        kw = dict(COMMON, head_dim=8, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
        cls, model = T.GptOssConfig, T.GptOssForCausalLM
    elif family == "granitemoe":
        kw = dict(COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
        cls, model = T.GraniteMoeConfig, T.GraniteMoeForCausalLM
    elif family == "qwen2_moe":
        # a gated shared expert beside the routed ones: sigmoid(shared_expert_gate(x)) * shared_expert(x)
        kw = dict(COMMON, intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                  num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)
        cls, model = T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM
    elif family == "phimoe":
        kw = dict(COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
        cls, model = T.PhimoeConfig, T.PhimoeForCausalLM
    elif family == "qwen3_next":
        # one gated-delta-net (linear attention) layer, then one full attention layer
        kw = dict(COMMON, head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                  shared_expert_intermediate_size=24, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                  linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                  linear_num_value_heads=4,
                  layer_types=[("linear_attention", "full_attention")[i % 2] for i in range(layers)])
        cls, model = T.Qwen3NextConfig, T.Qwen3NextForCausalLM
    elif family == "qwen3_moe":
        kw = dict(COMMON, head_dim=8, intermediate_size=64, moe_intermediate_size=16, num_experts=8,
                  num_experts_per_tok=2, norm_topk_prob=True)
        cls, model = T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM
    else:
        raise ValueError(family)
    kw.update(overrides)
    return cls(num_hidden_layers=layers, **kw), model


def tiny_model(family: str, dtype=torch.float32, layers: int = 1, experts_impl: str = "grouped_mm", seed: int = 0,
               **overrides):
    cfg, model_cls = _config(family, layers, **overrides)
    cfg._experts_implementation = experts_impl
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.2)
    return model.to(dtype).eval()


def moe_block(model):
    layer = model.model.layers[0]
    return layer.block_sparse_moe if hasattr(layer, "block_sparse_moe") else layer.mlp


def block_fn(block):
    """The block's hidden-state output (GPT-OSS's block also returns its router scores)."""

    def run(x):
        out = block(x)
        return out[0] if isinstance(out, tuple) else out

    return run


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def check_logits(model, shapes=((2, 5),), **compile_kw) -> dict:
    """Compiled (inductor_moe) vs eager logits within the dtype's tolerance; return stats()."""
    dtype = next(model.parameters()).dtype
    compiled = torch.compile(model, backend="inductor_moe", **compile_kw)
    gen = torch.Generator().manual_seed(1)
    for batch, seq in shapes:
        ids = torch.randint(0, VOCAB, (batch, seq), generator=gen)
        err = rel_l2(logits(compiled, ids), logits(model, ids))
        assert err <= TOL[dtype], f"{(batch, seq)}: rel L2 {err}"
    return inductor_moe.stats()


def block_ops(model, tokens=(2, 3)) -> tuple[list[str], float]:
    """The op sequence of one compiled MoE block, and its rel L2 error against eager."""
    fn = block_fn(moe_block(model))
    dtype = next(model.parameters()).dtype
    x = torch.randn(*tokens, HIDDEN, generator=torch.Generator().manual_seed(2)).to(dtype)
    with capture_graphs() as graphs, torch.no_grad():
        got = torch.compile(fn, backend="inductor_moe")(x)
        want = fn(x)
    assert len(graphs) == 1, graphs
    return graphs[0], rel_l2(got, want)


def rejections(stats: dict, pattern: str | None = None) -> list[str]:
    return [r["reason"] for r in stats["rejected"] if pattern is None or r["pattern"] == pattern]


def event_lines(events: list[dict]) -> str:
    """One line per candidate for snapshots, ``pattern module: matched`` or ``pattern module: reason``, the
    reason without the node name it ends with (``[at cat_3]``: names move between torch versions)."""
    lines = []
    for e in events:
        outcome = "matched" if e["matched"] else e["reason"].rsplit(" [at ", 1)[0]
        lines.append(f"{e['pattern']} {e['module']}: {outcome}")
    return "\n".join(lines)
