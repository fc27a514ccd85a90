"""Sweep and check the MXFP4 decode kernels, version 2 (kernels/triton/experts_mxfp4_decode.py; opt-in with
INDUCTOR_MOE_MXFP4_DECODE=v2), per layer and T, on the current GPU.

Layers: GPT-OSS-20B (E=32, k=4, H=I=2880, interleaved clamped SwiGLU, biases) and a Qwen3-30B-A3B-shaped one
(E=128, k=8, H=2048, I=768, SiLU, no biases); T in {1, 2, 4, 8} with the decode path forced (for GPT-OSS the
op's own choice, ``decode.use_decode``, takes the sorted path from T=2 on: the rows ``v1_auto`` show it).
Weights ~ N(0, 0.02) quantized with ``quantize_mxfp4``, bf16 inputs ~ N(0, 1), routing = top-k of random
logits then softmax; R=8 rotating (x, ids, weights) sets in one CUDA graph (bench_moe_layer.graph_time_us).

Per (layer, T): baselines ``v1_auto`` (``experts_mxfp4_triton``, the op today) and ``v1_decode`` (the first
decode kernels); then coordinate descent over v2: the up kernel's tiles (BLOCK_N, BLOCK_K, num_warps) with
the default down tiles, the down kernel's with the best up tiles, then the variants prep (x permuted in its
own launch, else gathered by the up kernel) x prescale (x * 2**64, else one FMUL per weight). Every
config is checked against ``experts_mxfp4_ref`` on the first input set (rel L2 <= 1e-2, else it is marked
bad and not picked); the winner is also checked with f32 activations (rel L2 <= 1e-4). Prints time, the
MXFP4 weight-bytes floor (distinct experts x 3*H*I*(0.5 + 1/32) B over the measured copy bandwidth,
benchmarks/floors.py) and
time/floor; writes every row and a per-(layer, T) summary to --out (JSON).

Usage (GPU machine):  python3 benchmarks/tune_mxfp4_decode.py [--layers gpt_oss,qwen3] [--tokens 1,2,4,8]
                      [--out benchmarks/results/tune_mxfp4_decode.json] [--budget-s 500]
Dry run (no GPU):     TRITON_INTERPRET=1 python3 benchmarks/tune_mxfp4_decode.py --dry-run
                      (tiny layers, a few configs, eager calls on the Triton interpreter; checks only)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from inductor_moe.kernels.reference.experts_mxfp4 import experts_mxfp4_ref  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4 as mx  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4_decode as v2  # noqa: E402
from benchmarks.floors import bandwidth  # noqa: E402
from inductor_moe.quant.mxfp4 import quantize_mxfp4  # noqa: E402

LAYERS = {
    "gpt_oss": dict(E=32, k=4, H=2880, I=2880, activation="swiglu_oai", interleaved=True, bias=True),
    "qwen3": dict(E=128, k=8, H=2048, I=768, activation="silu", interleaved=False, bias=False),
}
TINY = {
    "gpt_oss": dict(E=8, k=4, H=96, I=64, activation="swiglu_oai", interleaved=True, bias=True),
    "qwen3": dict(E=16, k=8, H=64, I=96, activation="silu", interleaved=False, bias=False),
}
UP_TILES = [(16, 256, 4), (8, 256, 2), (8, 512, 4), (16, 512, 4), (4, 512, 2), (32, 256, 8), (16, 256, 2),
            (8, 128, 1), (32, 128, 4), (16, 128, 2), (4, 256, 1), (8, 512, 2)]
DOWN_TILES = [(2, 512, 4), (4, 512, 4), (1, 512, 2), (2, 256, 2), (4, 256, 4), (8, 256, 4), (2, 512, 8),
              (1, 256, 1), (8, 512, 8), (4, 128, 2), (2, 128, 1)]  # the down kernel holds all k slots too
TINY_UP = [(32, 32, 1)]
TINY_DOWN = [(4, 64, 1)]
VARIANTS = [(True, True), (False, True), (True, False), (False, False)]  # (prep, prescale)
TOL, TOL_F32 = 1e-2, 1e-4


def make_layer(c, gen, device):
    E, H, I = c["E"], c["H"], c["I"]
    w13 = torch.randn(E, 2 * I, H, device=device, generator=gen) * 0.02
    q13, s13 = quantize_mxfp4(w13)
    del w13
    w2 = torch.randn(E, H, I, device=device, generator=gen) * 0.02
    q2, s2 = quantize_mxfp4(w2)
    del w2
    b13 = b2 = None
    if c["bias"]:
        b13 = (torch.randn(E, 2 * I, device=device, generator=gen) * 0.02).bfloat16()
        b2 = (torch.randn(E, H, device=device, generator=gen) * 0.02).bfloat16()
    return (q13, q2, s13, s2), (b13, b2)


def make_inputs(c, T, n_sets, gen, device):
    sets = []
    for _ in range(n_sets):
        x = torch.randn(T, c["H"], device=device, generator=gen).bfloat16()
        logits = torch.randn(T, c["E"], device=device, generator=gen)
        top, ids = torch.topk(logits, c["k"], dim=-1)
        sets.append((x, ids.to(torch.int32), torch.softmax(top, dim=-1)))
    return sets


def floor_us(c, sets):
    per = [torch.unique(ids).numel() * 3 * c["H"] * c["I"] * (0.5 + 1 / 32) / bandwidth() * 1e6 for _, ids, _ in sets]
    return sum(per) / len(per)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def eager_once_us(fn, inputs):
    """The dry run's timer: one eager pass (checks that everything runs; not a timing)."""
    start = time.perf_counter()
    for inp in inputs:
        fn(inp)
    return (time.perf_counter() - start) * 1e6 / len(inputs)


def parse_tiles(text):
    return [tuple(int(v) for v in t.split(",")) for t in text.split(";") if t.strip()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="gpt_oss,qwen3")
    p.add_argument("--tokens", default="1,2,4,8")
    p.add_argument("--out", default="tune_mxfp4_decode.json")
    p.add_argument("--budget-s", type=float, default=500, help="stop starting new (layer, T) after this long")
    p.add_argument("--dry-run", action="store_true", help="tiny layers on the CPU (set TRITON_INTERPRET=1)")
    p.add_argument("--up-tiles", default=None, help="replace the up sweep: 'bn,bk,warps;bn,bk,warps;...'")
    p.add_argument("--down-tiles", default=None, help="replace the down sweep, same form")
    args = p.parse_args()
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--dry-run runs the Triton kernels on the interpreter: set TRITON_INTERPRET=1")
            return 2
        device, layers, timer, n_sets = "cpu", TINY, eager_once_us, 1
        up_tiles, down_tiles, variants, tokens = TINY_UP, TINY_DOWN, VARIANTS[:2], [1, 2]
        args.budget_s = float("inf")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: pass --dry-run (with TRITON_INTERPRET=1) for the tiny CPU run")
            return 2
        from benchmarks.bench_moe_layer import graph_time_us

        device, layers, timer, n_sets = "cuda", LAYERS, graph_time_us, 8
        up_tiles, down_tiles, variants = UP_TILES, DOWN_TILES, VARIANTS
        if args.up_tiles:
            up_tiles = parse_tiles(args.up_tiles)
        if args.down_tiles:
            down_tiles = parse_tiles(args.down_tiles)
        tokens = [int(t) for t in args.tokens.split(",")]
    start = time.time()
    rows, summary = [], []
    gen = torch.Generator(device=device).manual_seed(0)

    def flush():
        if not args.dry_run:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows, "summary": summary},
                      open(args.out, "w"), indent=1)

    with torch.no_grad():
        for name in args.layers.split(","):
            c = layers[name]
            weights, (b13, b2) = make_layer(c, gen, device)
            spec = (b13, b2, c["activation"], c["interleaved"], 1.702, 7.0)
            for T in tokens:
                if time.time() - start > args.budget_s:
                    print(f"budget spent: skipping {name} T={T}")
                    continue
                sets = make_inputs(c, T, n_sets, gen, device)
                floor = floor_us(c, sets)
                x0, ids0, w0 = sets[0]
                want = experts_mxfp4_ref(x0, ids0, w0, *weights, *spec).float()

                def record(kind, fn, **meta):
                    try:
                        err = rel(fn(sets[0]).float(), want)
                        us = timer(fn, sets) if err <= TOL else float("nan")
                    except Exception as e:  # a config that does not compile or launch: recorded, skipped
                        err, us = float("nan"), float("nan")
                        meta["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    row = dict(layer=name, T=T, kind=kind, us=us, floor_us=floor, ratio=us / floor, rel_l2=err,
                               ok=err <= TOL, **meta)
                    rows.append(row)
                    tiles = "".join(f" {k}={v}" for k, v in meta.items() if k != "error")
                    print(f"{name:8s} T={T} {kind:10s}{tiles:50s} {us:8.1f} us  {us / floor:5.2f}x floor "
                          f"({floor:.1f})  rel_l2 {err:.1e}{'  ' + meta['error'] if 'error' in meta else ''}",
                          flush=True)
                    return row

                def run_v2(up, down, prep, prescale):
                    return lambda s: v2.experts_mxfp4_decode_v2(*s, *weights, *spec, tiles1=up, tiles2=down,
                                                                prep=prep, prescale=prescale)

                base_auto = record("v1_auto", lambda s: mx.experts_mxfp4_triton(*s, *weights, *spec))
                base_dec = record("v1_decode", lambda s: mx.experts_mxfp4_decode_triton(*s, *weights, *spec))
                d_up = v2.default_tiles(c["I"], c["H"], T * c["k"])
                d_down = v2.default_tiles(c["H"], c["I"], T, 1 << (c["k"] - 1).bit_length())
                default = record("v2_default", run_v2(d_up, d_down, True, True), up=d_up, down=d_down)

                def best(cands):
                    good = [r for r in cands if r["ok"] and r["us"] == r["us"]]
                    return min(good, key=lambda r: r["us"]) if good else None

                block_s = 1 << (c["k"] - 1).bit_length()

                def fits(t, k, slots=1):  # K step within the row; >= 4 words per thread (no duplicated lanes)
                    return t[1] <= max(32, 1 << (k - 1).bit_length()) and slots * t[0] * t[1] // 32 >= 32 * t[2]

                cands = [default] + [record("v2_up", run_v2(t, d_down, True, True), up=t, down=d_down)
                                     for t in up_tiles if fits(t, c["H"]) and t != d_up]
                win = best(cands) or default
                up = tuple(win["up"])
                cands = [win] + [record("v2_down", run_v2(up, t, True, True), up=up, down=t)
                                 for t in down_tiles if fits(t, c["I"], block_s) and t != tuple(win["down"])]
                win = best(cands) or win
                down = tuple(win["down"])
                cands = [win] + [record("v2_variant", run_v2(up, down, pr, ps), up=up, down=down, prep=pr,
                                        prescale=ps) for pr, ps in variants if (pr, ps) != (True, True)]
                win = best(cands) or win
                prep, prescale = win.get("prep", True), win.get("prescale", True)
                xf = [(x.float(), i, w) for x, i, w in sets[:1]]
                try:
                    err32 = rel(run_v2(up, down, prep, prescale)(xf[0]).float(),
                                experts_mxfp4_ref(*xf[0], *weights, *spec).float())
                except Exception as e:  # recorded as a failed check
                    print(f"f32 check failed to run: {type(e).__name__}: {str(e)[:200]}")
                    err32 = float("nan")
                summary.append(dict(layer=name, T=T, floor_us=floor, v1_auto_us=base_auto["us"],
                                    v1_decode_us=base_dec["us"], v2_default_us=default["us"], best_us=win["us"],
                                    best_ratio=win["us"] / floor, up=up, down=down, prep=prep, prescale=prescale,
                                    rel_l2=win["rel_l2"], rel_l2_f32=err32, f32_ok=bool(err32 <= TOL_F32)))
                print(f"==> {name} T={T}: best {win['us']:.1f} us = {win['us'] / floor:.2f}x floor  up={up} "
                      f"down={down} prep={prep} prescale={prescale}  (v1 auto {base_auto['us']:.1f}, v1 decode "
                      f"{base_dec['us']:.1f})  f32 rel_l2 {err32:.1e}{'' if err32 <= TOL_F32 else '  F32 CHECK FAILED'}",
                      flush=True)
                flush()
                del want
                if device == "cuda":
                    torch.cuda.empty_cache()
    bad = [r for r in rows if not r["ok"] and "error" not in r]
    errors = [r for r in rows if "error" in r]
    print(f"{len(rows)} configs, {len(bad)} wrong (rel_l2 > {TOL}), {len(errors)} failed to run;"
          f" f32 checks failed: {sum(not s['f32_ok'] for s in summary)}")
    return 1 if bad or any(not s["f32_ok"] for s in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
