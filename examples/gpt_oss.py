"""GPT-OSS (openai/gpt-oss-20b widths) with inductor_moe: generate() in graph mode against the same model
compiled without inductor_moe and against eager. ``python examples/gpt_oss.py --help``.

GPT-OSS experts store transposed weights ([E, H, 2I] and [E, I, H]) with biases, interleave gate/up columns
and use a clamped SwiGLU (alpha 1.702, limit 7); its router takes the top-k of the raw logits and then a
softmax over those k. The published checkpoints are MXFP4-quantized: load them dequantized
(bf16) for inductor_moe, which takes float weights.
"""
import sys

try:
    from .common import Family, run_family
except ImportError:  # run as a script
    from common import Family, run_family


def _layer_types(kwargs):
    # alternate sliding-window and full attention, as the published model does, for any layer count
    n = kwargs["num_hidden_layers"]
    kwargs["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


FAMILY = Family(
    name="gpt_oss",
    title="GPT-OSS",
    config_cls="GptOssConfig",
    model_cls="GptOssForCausalLM",
    tiny=dict(vocab_size=256, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2,
              max_position_embeddings=512, sliding_window=8,  # < prompt + new tokens: the window slides
              rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                               "original_max_position_embeddings": 16, "rope_theta": 150000.0},
              layer_types=["sliding_attention", "full_attention"]),
    real=dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
              num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
              num_experts_per_tok=4, sliding_window=128, max_position_embeddings=131072,
              layer_types=["sliding_attention", "full_attention"] * 12),
    real_name="gpt-oss-20b",
    notes="Router: top-k of the logits -> softmax over k; experts: transposed weights with biases, interleaved "
    "gate/up, clamped SwiGLU (swiglu_oai).",
    adjust=_layer_types,
)


def main(argv=None) -> int:
    return run_family(FAMILY, argv)


if __name__ == "__main__":
    sys.exit(main())
