"""Mixtral (mistralai/Mixtral-8x7B widths) with inductor_moe: generate() in graph mode against the same model
compiled without inductor_moe and against eager. ``python examples/mixtral.py --help``."""
import sys

try:
    from .common import Family, run_family
except ImportError:  # run as a script
    from common import Family, run_family

FAMILY = Family(
    name="mixtral",
    title="Mixtral",
    config_cls="MixtralConfig",
    model_cls="MixtralForCausalLM",
    tiny=dict(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2,
              max_position_embeddings=512),
    real=dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
              max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
              rms_norm_eps=1e-5),
    real_name="Mixtral-8x7B",
    notes="Router: softmax (f32) -> top-k -> renormalize; experts: SiLU-gated, chunked gate|up.",
)


def main(argv=None) -> int:
    return run_family(FAMILY, argv)


if __name__ == "__main__":
    sys.exit(main())
