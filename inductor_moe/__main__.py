"""Command line: ``python -m inductor_moe demo|example NAME [args]|bench [args]`` (or the ``inductor-moe``
console script). ``python -m inductor_moe`` with no command runs the demo."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent  # the checkout, for an editable install
EXAMPLES = {
    "qwen3_moe": "Qwen3-MoE (Qwen3-30B-A3B widths): softmax router, SiLU experts; every block is replaced",
    "mixtral": "Mixtral (8x7B widths): softmax router, SiLU experts",
    "gpt_oss": "GPT-OSS (gpt-oss-20b widths): top-k-then-softmax router, transposed biased experts, clamped SwiGLU",
    "deepseek_v3": "DeepSeek-V3: sigmoid group-limited router with correction bias, SiLU experts, a shared expert",
}
BENCH = "benchmarks/bench_moe_layer.py"

DESCRIPTION = """\
inductor_moe: fused Mixture-of-Experts routers and expert FFNs for torch.compile, with no change to model
code. It finds the router (softmax/top-k) and the routed experts in the graphs torch.compile builds from
Hugging Face MoE models and replaces them with fused ops (torch.ops.inductor_moe.*).

commands:
  demo                 a tiny random Qwen3-MoE on the CPU (~1 min): compile with the inductor_moe backend,
                       print which router/experts blocks were replaced, check the logits against eager and
                       time a short greedy generate(). The default when no command is given.
  example NAME [ARGS]  one model family end to end: generate() in graph mode (static cache, CompileConfig)
                       with inductor_moe, side by side with plain torch.compile and eager; tokens/s, prefill
                       and decode-step times, agreement with eager. Tiny random model on the CPU by default;
                       --layers N for the published widths on a GPU; --checkpoint DIR for local weights.
                       NAME: {names}. 'example NAME --help' lists ARGS.
  bench [ARGS]         per-layer GPU benchmark (benchmarks/bench_moe_layer.py; needs CUDA): inductor_moe
                       against Hugging Face's grouped_mm/batched_mm experts and roofline floors.

in your code:
  model = torch.compile(model, backend="inductor_moe")     # or: inductor_moe.enable(); torch.compile(model)
  model.generation_config.compile_config = CompileConfig(backend="inductor_moe")   # generate() in graph mode
  AutoModelForCausalLM.from_pretrained(..., experts_implementation="inductor_moe")  # the op, no compile needed
  inductor_moe.stats(), inductor_moe.events()               # what was replaced, and why not elsewhere
"""


def _examples_dir() -> Path | None:
    d = _REPO / "examples"
    return d if (d / "common.py").is_file() else None


def run_example(name: str | None, args: list[str]) -> int:
    names = ", ".join(EXAMPLES)
    if name in (None, "-h", "--help", "--list"):
        print("usage: python -m inductor_moe example NAME [ARGS]   ('example NAME --help' lists ARGS)\n\nNAME:")
        for n, what in EXAMPLES.items():
            print(f"  {n:<12} {what}")
        return 0 if name is not None else 2
    if name not in EXAMPLES:
        print(f"inductor-moe example: unknown NAME {name!r}; choose from {names}", file=sys.stderr)
        return 2
    d = _examples_dir()
    if d is None:
        print("inductor-moe example: the examples/ folder is not next to this package (it ships with the source "
              "checkout, not the wheel); clone the repository and pip install -e it", file=sys.stderr)
        return 2
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"inductor_moe_examples.{name}", d / f"{name}.py",
                                                  submodule_search_locations=None)
    sys.path.insert(0, str(d))  # the script imports common.py next to it
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            return module.main(args)
        except SystemExit as e:  # argparse --help / usage errors
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        try:
            sys.path.remove(str(d))
        except ValueError:
            pass


def run_bench(args: list[str]) -> int:
    script = _REPO / BENCH
    how = (
        f"  python {BENCH} [--layers qwen3,gpt_oss,mixtral] [--tokens 1,8,64,512,4096,16384] [--out FILE.json]\n"
        "  (resumable: rows already in --out are skipped). One device call running several steps:\n"
        "  STEPS=\"check layer\" LAYER_ARGS=\"--layers qwen3\" bash tools/device_steps.sh\n"
        "  Method and results: benchmarks/README.md"
    )
    if any(a in ("-h", "--help") for a in args):
        print("usage: python -m inductor_moe bench [ARGS]   (runs on a CUDA GPU)\n" + how)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("inductor-moe bench: needs a CUDA GPU (times CUDA graphs against roofline floors); none here.\n"
              "On a GPU machine, from the source checkout:\n" + how, file=sys.stderr)
        return 2
    if not script.is_file():
        print(f"inductor-moe bench: {BENCH} is not next to this package (source checkout only)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args], cwd=str(_REPO))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # example/bench pass everything after them through (including --help) to the script they run
    if argv and argv[0] == "example":
        return run_example(argv[1] if len(argv) > 1 else None, argv[2:])
    if argv and argv[0] == "bench":
        return run_bench(argv[1:])

    parser = argparse.ArgumentParser(
        prog="python -m inductor_moe", description=DESCRIPTION.format(names=", ".join(EXAMPLES)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,example,bench}")
    demo = sub.add_parser("demo", help="tiny Qwen3-MoE on CPU: replace, check against eager, time generate()")
    demo.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    demo.add_argument("--batch", type=int, default=2, help="prompts per batch (default 2)")
    demo.add_argument("--prompt-len", type=int, default=8, help="prompt tokens (default 8)")
    demo.add_argument("--new-tokens", type=int, default=16, help="tokens to generate (default 16)")
    sub.add_parser("example", help="one model family end to end (NAME: " + ", ".join(EXAMPLES) + ")",
                   add_help=False)
    sub.add_parser("bench", help="per-layer GPU benchmark (CUDA only)", add_help=False)
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
