"""DeepSeek-V3 (deepseek-ai/DeepSeek-V3 widths) with inductor_moe: generate() in graph mode against the same
model compiled without inductor_moe and against eager. ``python examples/deepseek_v3.py --help``.

DeepSeek-V3's router: sigmoid scores, a score-correction bias for the choice only, group-limited top-k
(n_group groups, the best topk_group kept), renormalized and scaled by routed_scaling_factor; a shared expert
runs beside the routed ones and the first first_k_dense_replace layers are dense. One routed layer at real
width holds 256 x 3 x 7168 x 2048 weights (22.5 GB in bf16): use --layers 1 to 3 on one GPU.
"""
import sys

try:
    from .common import Family, run_family
except ImportError:  # run as a script
    from common import Family, run_family


def _dense_layers(kwargs):
    # keep at least one MoE layer when --layers cuts the model short
    kwargs["first_k_dense_replace"] = min(kwargs.get("first_k_dense_replace", 3), max(0, kwargs["num_hidden_layers"] - 1))


def _correction_bias(model, std, gen):
    import torch

    # a buffer HF leaves at zero: give it values so that the biased choice differs from the plain top-k
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0.0, 0.1, generator=gen)


FAMILY = Family(
    name="deepseek_v3",
    title="DeepSeek-V3",
    config_cls="DeepseekV3Config",
    model_cls="DeepseekV3ForCausalLM",
    tiny=dict(vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
              num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
              q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
              n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
              routed_scaling_factor=2.5, norm_topk_prob=True, max_position_embeddings=512),
    real=dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
              num_hidden_layers=61, first_k_dense_replace=3, num_attention_heads=128, num_key_value_heads=128,
              q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
              n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
              routed_scaling_factor=2.5, norm_topk_prob=True, max_position_embeddings=4096),
    real_name="DeepSeek-V3",
    notes="Router: sigmoid + correction bias, group-limited top-k, renormalize, scale; experts: SiLU-gated; "
    "one shared expert.",
    adjust=_dense_layers,
    extra_init=_correction_bias,
)


def main(argv=None) -> int:
    return run_family(FAMILY, argv)


if __name__ == "__main__":
    sys.exit(main())
