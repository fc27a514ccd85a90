"""Qwen3-MoE (Qwen/Qwen3-30B-A3B widths) with inductor_moe: generate() in graph mode against the same model
compiled without inductor_moe and against eager. ``python examples/qwen3_moe.py --help``."""
import sys

try:
    from .common import Family, run_family
except ImportError:  # run as a script
    from common import Family, run_family

FAMILY = Family(
    name="qwen3_moe",
    title="Qwen3-MoE",
    config_cls="Qwen3MoeConfig",
    model_cls="Qwen3MoeForCausalLM",
    tiny=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
              max_position_embeddings=512, norm_topk_prob=True),
    real=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
              num_attention_heads=32, num_key_value_heads=4, head_dim=128, moe_intermediate_size=768,
              num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6),
    real_name="Qwen3-30B-A3B",
    notes="Router: softmax -> top-k -> renormalize; experts: SiLU-gated, chunked gate|up.",
)


def main(argv=None) -> int:
    return run_family(FAMILY, argv)


if __name__ == "__main__":
    sys.exit(main())
