"""Where the one-launch route+sort (Triton ``route_sort_triton(fused=True)``, seed 001's idea) stops winning
against the router kernel followed by the sort kernel (``fused=False``: two to four launches), per router
kind and layer, by T. Both in one CUDA graph of rotating inputs, per call; the fused kernel runs only
where it fits (``fused_unfit`` says why not). Also checks that both give identical results.

Usage (GPU):   python3 benchmarks/bench_route_sort.py [--tokens 1,2,4,8,16,32,64] [--out route_sort.json]
Dry run (CPU): TRITON_INTERPRET=1 python3 benchmarks/bench_route_sort.py --dry-run   (correctness only)

The printed crossover (the largest T where the fused launch is faster) is what ``route_sort_triton``'s
size rule should follow on that device; the rule today is the fit limit (``FUSED_MAX_PAIRS``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_moe_layer import graph_time_us  # noqa: E402  (one CUDA graph of the rotating inputs)
from inductor_moe.kernels.triton.route_sort import fused_unfit, route_sort_triton  # noqa: E402

# (name, E, k, scoring, order, n_group, topk_group, with correction bias, block_m)
LAYERS = [
    ("qwen3 softmax-topk", 128, 8, "softmax", "softmax_then_topk", 1, 1, False, 16),
    ("gpt_oss topk-softmax", 32, 4, "softmax", "topk_then_softmax", 1, 1, False, 16),
    ("mixtral softmax-topk", 8, 2, "softmax", "softmax_then_topk", 1, 1, False, 16),
    ("deepseek sigmoid-group", 256, 8, "sigmoid", "softmax_then_topk", 8, 4, True, 16),
]


def run_layer(layer, tokens, device, dry_run):
    name, E, k, scoring, order, n_group, topk_group, has_bias, block_m = layer
    gen = torch.Generator(device=device).manual_seed(0)
    bias = torch.randn(E, device=device, generator=gen) * 0.1 if has_bias else None
    rows = []
    for T in tokens:
        inputs = [torch.randn(T, E, device=device, generator=gen).to(torch.bfloat16) for _ in range(1 if dry_run else 8)]
        args = lambda x, fused: route_sort_triton(x, k, block_m, scoring, True, order, bias, n_group,  # noqa: E731
                                                  topk_group, 2.5 if has_bias else 1.0, None, fused=fused)
        unfit = fused_unfit(T, E, k, n_group, has_bias or n_group > 1)
        row = {"layer": name, "E": E, "k": k, "T": T, "fused_unfit": unfit}
        two = args(inputs[0], False)
        if unfit is None:
            one = args(inputs[0], True)
            row["identical"] = all(torch.equal(a, b) for a, b in zip(one, two))
            # (sorted ids, sorted weights, sorted expert ids, num_valid, weights, ids): which ones differ, and the
            # largest weight difference (the two routers reduce in different tile shapes: last-bit rounding)
            names = ("sorted_token_ids", "sorted_weights", "sorted_expert_ids", "num_valid", "weights", "ids")
            row["differ"] = [n for n, a, b in zip(names, one, two) if not torch.equal(a, b)]
            row["weights_max_diff"] = (one[4] - two[4]).abs().max().item() if one[4].numel() else 0.0
        if not dry_run:
            row["separate_us"] = graph_time_us(lambda x: args(x, False), inputs)
            if unfit is None:
                row["fused_us"] = graph_time_us(lambda x: args(x, True), inputs)
        rows.append(row)
        fused = f"{row['fused_us']:7.1f} us" if "fused_us" in row else f"{'-':>10}"
        sep = f"{row['separate_us']:7.1f} us" if "separate_us" in row else f"{'-':>10}"
        print(f"{name:<24} T={T:<5} fused {fused}  route+sort {sep}  "
              f"{'identical' if row.get('identical', True) else 'differ: ' + ','.join(row['differ'])}"
              f"{'' if row.get('identical', True) else ' (weights max diff %.1e)' % row['weights_max_diff']}"
              f"{'  (' + unfit + ')' if unfit else ''}",
              flush=True)
    wins = [r["T"] for r in rows if "fused_us" in r and r["fused_us"] < r["separate_us"]]
    if not dry_run:
        print(f"{name}: fused launch faster up to T={max(wins) if wins else 'none'}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="1,2,4,8,16,32,64,128")
    p.add_argument("--out", default="bench_route_sort.json")
    p.add_argument("--dry-run", action="store_true", help="CPU under TRITON_INTERPRET=1: correctness only, small T")
    args = p.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    tokens = [1, 3] if args.dry_run else [int(t) for t in args.tokens.split(",")]
    layers = LAYERS[1:3] if args.dry_run else LAYERS
    rows = [r for layer in layers for r in run_layer(layer, tokens, device, args.dry_run)]
    if not args.dry_run:
        json.dump(rows, open(args.out, "w"), indent=1)
    routing_same = ("sorted_token_ids", "sorted_expert_ids", "num_valid", "ids")  # weights may differ in the last bit
    return 0 if all(not set(r.get("differ", ())) & set(routing_same) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
