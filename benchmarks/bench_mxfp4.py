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

``--sorted-variants v1,bits,dot_scaled``: instead, per T and variant, ``route`` + the sorted MXFP4 path forced
(``experts_mxfp4_triton(path="sorted", dequant=variant)``; the variant that actually ran is printed, e.g.
"dot_scaled" runs "bits" for non-bf16 activations) next to the bf16 ``route`` + ``experts``, its rel L2
against the same reference as ``rel_l2`` (ok: <= 1e-2); one line and one JSON row per (T, variant[, tiles]),
resumable, in ``--out`` (default bench_mxfp4_sorted.json). ``--sorted-tiles`` adds tile sets to compare
("bm,n1,k1,w1,s1,n2,k2,w2,s2[,group_m]" separated by ";", "default" = ``mxfp4_config`` for the variant).
Usage (device machine): python3 benchmarks/bench_mxfp4.py [--tokens 1,8,64,512,4096] [--out bench_mxfp4.json]
                        python3 benchmarks/bench_mxfp4.py --sorted-variants v1,bits,dot_scaled --tokens 8,64,512
Dry run without a GPU:  [TRITON_INTERPRET=1] python3 benchmarks/bench_mxfp4.py --dry-run [--sorted-variants ...]
                        (tiny layer, eager calls on the CPU; MXFP4 on the Triton interpreter when
                        TRITON_INTERPRET=1, else the reference; --sorted-variants needs TRITON_INTERPRET=1)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import inductor_moe  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4 as mx  # noqa: E402
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


SORTED_TOLERANCE = 1e-2


@triton.jit
def _bits_probe(q_ptr, s_ptr, out_ptr, K, BLOCK_K: tl.constexpr, BF16: tl.constexpr):
    rows = tl.program_id(0) + tl.arange(0, 1)
    for k0 in range(0, K, BLOCK_K):
        w = mx._mxfp4_tile_bits(q_ptr, s_ptr, rows, k0, K, K // 2, K // 32, 1, BLOCK_K, BF16, False)
        tl.store(out_ptr + rows[:, None] * K + k0 + tl.arange(0, BLOCK_K)[None, :], w.to(out_ptr.dtype.element_ty))


def bits_decode_mismatches(device):
    """The "bits" tile decode as the bf16 sorted path runs it (bf16 bit patterns, two bf16x2 multiplies: on a
    GPU; the interpreter runs the f32 form), against ``dequantize_mxfp4`` in bf16, bit for bit (NaN = NaN):
    all 256 byte values (both nibbles) under each of the 256 scale bytes, decoded tiles put back in column
    order. Returns the number of mismatching elements (0: exact, subnormal scales and results included)."""
    block_k, k = 128, 512  # a row: the 256 byte values, 16 scale blocks
    packed = torch.arange(256, dtype=torch.uint8).repeat(256, 1)  # [256 rows, 256 bytes]
    scales = torch.arange(256, dtype=torch.uint8)[:, None].repeat(1, k // 32).contiguous()  # row r: scale byte r
    packed, scales = packed.to(device), scales.to(device)
    bf16 = device != "cpu"  # the interpreter's bf16 arithmetic is wrong: its f32 form there
    out = torch.empty(256, k, device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    _bits_probe[(256,)](packed, scales, out, k, BLOCK_K=block_k, BF16=bf16)
    order = torch.arange(block_k).view(4, block_k // 32, 4, 2).permute(1, 2, 0, 3).reshape(-1)  # lane order
    word = torch.arange(block_k).view(block_k // 8, 2, 4).permute(0, 2, 1).reshape(-1)  # pair order: a + 4h
    cols = word[order]  # position j of a tile holds column cols[j]
    got = torch.empty_like(out)
    for k0 in range(0, k, block_k):
        got[:, k0 + cols.to(device)] = out[:, k0:k0 + block_k]
    want = dequantize_mxfp4(packed, scales, out.dtype)
    nan = want.isnan()
    same = (got.isnan() == nan) & (nan | (got.view(torch.int16 if bf16 else torch.int32)
                                         == want.view(torch.int16 if bf16 else torch.int32)))
    return int((~same).sum())


def parse_tiles(text):
    """"bm,n1,k1,w1,s1,n2,k2,w2,s2[,group_m];..." -> [ExpertsConfig or None ("default")]."""
    from inductor_moe.kernels.triton.configs import ExpertsConfig

    if not text:
        return [None]
    return [None if t.strip() == "default" else ExpertsConfig(*(int(v) for v in t.split(",")))
            for t in text.split(";") if t.strip()]


def tiles_name(config):
    from dataclasses import astuple

    return "default" if config is None else ",".join(str(v) for v in astuple(config))


def run_sorted_rows(c, T, gen, device, timer, variants, tile_sets, done, emit):
    """One row per (variant, tiles) at this T: route + the forced sorted MXFP4 path, next to route + bf16
    experts (timed once per T)."""
    router, bf16_w, mx_w, biases = make_layer(c, gen, device)
    n_sets = 8 if T <= 64 else 2
    xs = [torch.randn(T, c["H"], device=device, dtype=torch.bfloat16, generator=gen) for _ in range(n_sets)]
    fns = layer_fns(c, router, bf16_w, mx_w, biases)
    floors = []
    for x in xs:
        ids = torch.topk(x.float() @ router.float().t(), c["k"]).indices
        floors.append(weight_bytes_floor_us(ids, c["H"], c["I"], 0.5 + 1 / 32))
    deq = (dequantize_mxfp4(mx_w[0], mx_w[2], torch.bfloat16), dequantize_mxfp4(mx_w[1], mx_w[3], torch.bfloat16))
    weights, ids = torch.ops.inductor_moe.route(xs[0] @ router.t(), c["k"], **ROUTE)
    want = torch.ops.inductor_moe.experts(xs[0], ids, weights, *deq, *biases, **SPEC).float()
    del deq
    bf16_us = None
    triton_ok = os.environ.get("TRITON_INTERPRET") == "1" or router.is_cuda
    for variant in variants:
        for config in tile_sets:
            key = (T, variant, tiles_name(config))
            if key in done:
                continue
            if bf16_us is None:
                bf16_us = timer(fns["bf16"], xs)

            def sorted_fn(x, variant=variant, config=config):
                with inductor_moe.force_backend("triton" if triton_ok else None):
                    w_, i_ = torch.ops.inductor_moe.route(x @ router.t(), c["k"], **ROUTE)
                    return mx.experts_mxfp4_triton(x, i_, w_, *mx_w, *biases, SPEC["activation"],
                                                   SPEC["gate_up_interleaved"], 1.702, 7.0, config=config,
                                                   path="sorted", dequant=variant)

            ran = mx.sorted_variant(variant, xs[0], mx_w[0], mx_w[1])
            got = sorted_fn(xs[0]).float()
            rel = ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
            row = dict(T=T, **c, variant=variant, ran=ran, tiles=tiles_name(config),
                       floor_mxfp4_us=sum(floors) / len(floors), bf16_us=bf16_us, rel_l2=rel,
                       ok=bool(rel <= SORTED_TOLERANCE and torch.isfinite(got).all()))
            row["sorted_us"] = timer(sorted_fn, xs)
            emit(row)


def eager_once_us(fn, inputs):
    """The dry run's timer: one eager pass over the inputs (checks that everything runs; not a timing)."""
    start = time.perf_counter()
    for x in inputs:
        fn(x)
    return (time.perf_counter() - start) * 1e6 / len(inputs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="1,8,64,512,4096")
    p.add_argument("--out", default=None, help="bench_mxfp4.json (bench_mxfp4_sorted.json with --sorted-variants)")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--dry-run", action="store_true", help="tiny layer, eager, on the CPU")
    p.add_argument("--sorted-variants", default=None,
                   help="comma list of sorted-path dequantizations (v1,bits,dot_scaled): time each, forced sorted")
    p.add_argument("--sorted-tiles", default=None,
                   help='with --sorted-variants: ";"-separated tile sets bm,n1,k1,w1,s1,n2,k2,w2,s2[,group_m] '
                        'or "default"')
    args = p.parse_args()
    variants = [v.strip() for v in args.sorted_variants.split(",") if v.strip()] if args.sorted_variants else None
    out = args.out or ("bench_mxfp4_sorted.json" if variants else "bench_mxfp4.json")
    if args.dry_run:
        device, layer, timer = "cpu", TINY, eager_once_us
        tokens = [int(t) for t in args.tokens.split(",")] if variants and args.tokens != p.get_default("tokens") \
            else ([8, 40] if variants else [1, 8])
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: pass --dry-run for the tiny CPU run")
            return 2
        from benchmarks.bench_moe_layer import graph_time_us

        device, layer, timer, tokens = "cuda", GPT_OSS_20B, graph_time_us, [int(t) for t in args.tokens.split(",")]
    rows = json.load(open(out)) if not args.dry_run and os.path.exists(out) else []
    start = time.time()
    gen = torch.Generator(device=device).manual_seed(0)

    def save():
        if not args.dry_run:
            json.dump(rows, open(out, "w"), indent=1)
            torch.cuda.empty_cache()

    with torch.no_grad():
        if variants:
            if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
                print("--sorted-variants --dry-run runs the Triton kernels: set TRITON_INTERPRET=1")
                return 2
            tile_sets = parse_tiles(args.sorted_tiles)
            if "bits" in variants:
                bad = bits_decode_mismatches(device)
                print(f"bits decode ({'bf16' if device != 'cpu' else 'f32, interpreter'}) vs dequantize_mxfp4, "
                      f"256 bytes x 256 scale bytes: {'exact' if bad == 0 else f'{bad} MISMATCHES'}", flush=True)
            done = {(r["T"], r["variant"], r["tiles"]) for r in rows if "variant" in r}

            def emit(row):
                rows.append(row)
                save()
                print(f"T={row['T']:5d} sorted {row['variant']:>10s} (ran {row['ran']:>10s}) {row['sorted_us']:8.1f} us"
                      f"  bf16 {row['bf16_us']:8.1f} us ({row['sorted_us'] / row['bf16_us']:.2f}x bf16)"
                      f"  floor {row['floor_mxfp4_us']:6.1f} us  rel_l2 {row['rel_l2']:.1e} "
                      f"{'ok' if row['ok'] else 'FAIL'}  tiles {row['tiles']}", flush=True)

            for T in tokens:
                if time.time() - start > args.budget_s:
                    break
                run_sorted_rows(layer, T, gen, device, timer, variants, tile_sets, done, emit)
            print("fallbacks:", sorted({f["op"] + ": " + f["reason"] for f in inductor_moe.stats()["fallbacks"]}))
            return 0 if all(r["ok"] for r in rows if "variant" in r) else 1
        done = {r["T"] for r in rows if "variant" not in r}  # a file may hold both kinds of rows
        for T in tokens:
            if T in done or time.time() - start > args.budget_s:
                continue
            row = run_row(layer, T, gen, device, timer)
            rows.append(row)
            save()
            print(f"T={T:5d} floor mxfp4 {row['floor_mxfp4_us']:7.1f} us  mxfp4 {row['mxfp4_us']:8.1f} us "
                  f"({row['mxfp4_us'] / row['floor_mxfp4_us']:.2f}x floor)  bf16 {row['bf16_us']:8.1f} us  "
                  f"bf16 moe {row['bf16_moe_us']:8.1f} us (floor {row['floor_bf16_us']:.1f})  "
                  f"rel_l2 {row['rel_l2']:.1e}", flush=True)
    print("fallbacks:", sorted({f["op"] + ": " + f["reason"] for f in inductor_moe.stats()["fallbacks"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
