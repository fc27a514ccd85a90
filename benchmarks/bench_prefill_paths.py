"""Prefill GEMMs of the Triton experts: the fused Triton stages (experts.py) against the grouped-GEMM path
(experts_grouped.py: torch._grouped_mm + Triton activation and combine), per layer and T, routing included,
one CUDA graph each (bench_moe_layer.graph_time_us), both checked against the f32 reference (rel L2 <= 1e-2).
Sets where ``experts_grouped.MIN_ROWS_PER_EXPERT`` should be (rows per expert = T*k/E).

Usage (GPU): python3 benchmarks/bench_prefill_paths.py [--layers qwen3,gpt_oss,mixtral]
             [--tokens 512,2048,4096,16384] [--out prefill_paths.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import inductor_moe  # noqa: E402,F401  (registers the ops)
from benchmarks.bench_moe_layer import LAYERS, graph_time_us, make_layer  # noqa: E402
from inductor_moe.kernels.reference import experts_ref, route_ref  # noqa: E402

ENV = "INDUCTOR_MOE_GROUPED_MM_MIN_ROWS"
PATHS = {"fused": "1e30", "grouped": "0"}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="qwen3,gpt_oss,mixtral")
    p.add_argument("--tokens", default="512,2048,4096,16384")
    p.add_argument("--out", default="prefill_paths.json")
    p.add_argument("--budget-s", type=float, default=400)
    args = p.parse_args()
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    done = {(r["layer"], r["T"]) for r in rows}
    gen = torch.Generator(device="cuda").manual_seed(0)
    start = time.time()
    with torch.no_grad():
        for name in args.layers.split(","):
            c = LAYERS[name]
            router, w13, w2 = make_layer(name, gen)
            interleaved = c["act"] == "swiglu_oai"
            for T in map(int, args.tokens.split(",")):
                if (name, T) in done or time.time() - start > args.budget_s:
                    continue
                xs = [torch.randn(T, c["H"], device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2)]

                def call(x):
                    return torch.ops.inductor_moe.moe(x, x @ router.t(), w13, w2, c["k"], activation=c["act"],
                                                      gate_up_interleaved=interleaved)
                logits = (xs[0] @ router.t()).float()
                weights, ids = route_ref(logits, c["k"])
                want = experts_ref(xs[0].float(), ids, weights, w13.float(), w2.float(), None, None, c["act"],
                                   interleaved, 1.702, 7.0)
                row = {"layer": name, "T": T, "rows_per_expert": T * c["k"] / c["E"]}
                for path, value in PATHS.items():
                    os.environ[ENV] = value
                    try:
                        row[f"{path}_rel_l2"] = rel(call(xs[0]).float(), want)
                        row[f"{path}_us"] = graph_time_us(call, xs)
                    except Exception as e:  # recorded: a path that fails here must not be the default
                        row[f"{path}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                os.environ.pop(ENV, None)
                del want
                torch.cuda.empty_cache()
                rows.append(row)
                json.dump(rows, open(args.out, "w"), indent=1)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
