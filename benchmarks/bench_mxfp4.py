"""GPT-OSS-20B MoE layer (E=32, k=4, H=I=2880, interleaved clamped SwiGLU, biases) with MXFP4 expert weights
against the same layer with bf16 weights, per call, CUDA-graph time (``bench_moe_layer.graph_time_us``:
R rotating input sets in one graph, replayed; median).

Rows per T:
- ``mxfp4_us``: ``route`` (top-k then softmax, GPT-OSS's router) + ``experts_mxfp4`` on the Triton MXFP4
  kernels (forced: registered verified=False until tools/gpu_check_mxfp4.py passes);
- ``bf16_us``: ``route`` + ``experts`` with the bf16 weights (the same two ops), and ``bf16_moe_us``:
  the fused ``moe`` op (what the compiled model runs);
- ``floor_mxfp4_us``: distinct experts hit x 3*H*I*(0.5 + 1/32) B (FP4 codes + one E8M0 byte per 32) over
  3.0 TB/s, averaged over the input sets; ``floor_bf16_us`` the same with 2 B per weight;
- ``rel_l2``: the MXFP4 output against ``experts`` on the dequantized weights (a sanity check; the full
  check is tools/gpu_check_mxfp4.py).
Weights ~ N(0, 0.02) (seeded), inputs ~ N(0, 1).
Usage (device machine): python3 benchmarks/bench_mxfp4.py [--tokens 1,8,64,512,4096] [--out bench_mxfp4.json]
Dry run without a GPU:  [TRITON_INTERPRET=1] python3 benchmarks/bench_mxfp4.py --dry-run   (tiny layer, eager
                        calls on the CPU; MXFP4 on the Triton interpreter when TRITON_INTERPRET=1, else the reference)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import inductor_moe  # noqa: E402
from inductor_moe.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4  # noqa: E402

BW = 3.0e12
GPT_OSS_20B = dict(E=32, k=4, H=2880, I=2880)
TINY = dict(E=8, k=2, H=64, I=64)
ROUTE = dict(order="topk_then_softmax", renormalize=False)
SPEC = dict(activation="swiglu_oai", gate_up_interleaved=True)


def weight_bytes_floor_us(ids, H, I, bytes_per_weight):
    return torch.unique(ids).numel() * 3 * H * I * bytes_per_weight / BW * 1e6


def make_layer(c, gen, device):
    E, H, I = c["E"], c["H"], c["I"]
    bf = torch.bfloat16
    router = torch.randn(E, H, device=device, dtype=bf, generator=gen) * 0.02
    w13 = torch.randn(E, 2 * I, H, device=device, dtype=bf, generator=gen) * 0.02
    w2 = torch.randn(E, H, I, device=device, dtype=bf, generator=gen) * 0.02
    b13 = torch.randn(E, 2 * I, device=device, dtype=bf, generator=gen) * 0.02
    b2 = torch.randn(E, H, device=device, dtype=bf, generator=gen) * 0.02
    q13, s13 = quantize_mxfp4(w13)
    q2, s2 = quantize_mxfp4(w2)
    return router, (w13, w2), (q13, q2, s13, s2), (b13, b2)


def layer_fns(c, router, bf16_w, mx_w, biases):
    ops = torch.ops.inductor_moe
    k = c["k"]

    triton = os.environ.get("TRITON_INTERPRET") == "1" or router.is_cuda  # the dry run: the interpreter if set

    def mxfp4(x):
        with inductor_moe.force_backend("triton" if triton else None):
            weights, ids = ops.route(x @ router.t(), k, **ROUTE)
            return ops.experts_mxfp4(x, ids, weights, *mx_w, *biases, **SPEC)

    def bf16(x):
        weights, ids = ops.route(x @ router.t(), k, **ROUTE)
        return ops.experts(x, ids, weights, *bf16_w, *biases, **SPEC)

    def bf16_moe(x):
        return ops.moe(x, x @ router.t(), *bf16_w, k, *biases, **ROUTE, **SPEC)

    return dict(mxfp4=mxfp4, bf16=bf16, bf16_moe=bf16_moe)


def run_row(c, T, gen, device, timer):
    router, bf16_w, mx_w, biases = make_layer(c, gen, device)
    n_sets = 8 if T <= 64 else 2
    xs = [torch.randn(T, c["H"], device=device, dtype=torch.bfloat16, generator=gen) for _ in range(n_sets)]
    fns = layer_fns(c, router, bf16_w, mx_w, biases)
    floors = {"mxfp4": [], "bf16": []}
    for x in xs:
        ids = torch.topk(x.float() @ router.float().t(), c["k"]).indices
        floors["mxfp4"].append(weight_bytes_floor_us(ids, c["H"], c["I"], 0.5 + 1 / 32))
        floors["bf16"].append(weight_bytes_floor_us(ids, c["H"], c["I"], 2))
    row = dict(T=T, **c)
    for name, values in floors.items():
        row[f"floor_{name}_us"] = sum(values) / len(values)
    deq = (dequantize_mxfp4(mx_w[0], mx_w[2], torch.bfloat16), dequantize_mxfp4(mx_w[1], mx_w[3], torch.bfloat16))
    weights, ids = torch.ops.inductor_moe.route(xs[0] @ router.t(), c["k"], **ROUTE)
    want = torch.ops.inductor_moe.experts(xs[0], ids, weights, *deq, *biases, **SPEC).float()
    got = fns["mxfp4"](xs[0]).float()
    row["rel_l2"] = ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
    del deq
    for name, fn in fns.items():
        row[f"{name}_us"] = timer(fn, xs)
    return row


def eager_once_us(fn, inputs):
    """The dry run's timer: one eager pass over the inputs (checks that everything runs; not a timing)."""
    start = time.perf_counter()
    for x in inputs:
        fn(x)
    return (time.perf_counter() - start) * 1e6 / len(inputs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="1,8,64,512,4096")
    p.add_argument("--out", default="bench_mxfp4.json")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--dry-run", action="store_true", help="tiny layer, eager, on the CPU")
    args = p.parse_args()
    if args.dry_run:
        device, layer, timer, tokens = "cpu", TINY, eager_once_us, [1, 8]
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: pass --dry-run for the tiny CPU run")
            return 2
        from benchmarks.bench_moe_layer import graph_time_us

        device, layer, timer, tokens = "cuda", GPT_OSS_20B, graph_time_us, [int(t) for t in args.tokens.split(",")]
    rows = json.load(open(args.out)) if not args.dry_run and os.path.exists(args.out) else []
    done = {r["T"] for r in rows}
    start = time.time()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for T in tokens:
            if T in done or time.time() - start > args.budget_s:
                continue
            row = run_row(layer, T, gen, device, timer)
            rows.append(row)
            if not args.dry_run:
                json.dump(rows, open(args.out, "w"), indent=1)
                torch.cuda.empty_cache()
            print(f"T={T:5d} floor mxfp4 {row['floor_mxfp4_us']:7.1f} us  mxfp4 {row['mxfp4_us']:8.1f} us "
                  f"({row['mxfp4_us'] / row['floor_mxfp4_us']:.2f}x floor)  bf16 {row['bf16_us']:8.1f} us  "
                  f"bf16 moe {row['bf16_moe_us']:8.1f} us (floor {row['floor_bf16_us']:.1f})  "
                  f"rel_l2 {row['rel_l2']:.1e}", flush=True)
    print("fallbacks:", sorted({f["op"] + ": " + f["reason"] for f in inductor_moe.stats()["fallbacks"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
