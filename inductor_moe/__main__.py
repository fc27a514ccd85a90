"""Command line: ``python -m inductor_moe demo`` (or the ``inductor-moe`` console script)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="inductor-moe",
        description="Fused Mixture-of-Experts for torch.compile. "
        "'demo' builds a tiny random Hugging Face Qwen3-MoE on the CPU, compiles it with the inductor_moe "
        "backend, prints which router/experts blocks were replaced, checks the logits against eager and "
        "times a short greedy generate().",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="tiny Qwen3-MoE on CPU: replace, check against eager, time generate()")
    demo.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    demo.add_argument("--batch", type=int, default=2, help="prompts per batch (default 2)")
    demo.add_argument("--prompt-len", type=int, default=8, help="prompt tokens (default 8)")
    demo.add_argument("--new-tokens", type=int, default=16, help="tokens to generate (default 16)")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import run

        if args.command is None:
            args = demo.parse_args([])
        return run(args.layers, args.batch, args.prompt_len, args.new_tokens)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
