"""GPU correctness of ``inductor_moe.experts_mxfp4`` on the Triton MXFP4 kernels (forced: they are registered
``verified=False`` until this passes) against an independent f32 per-expert loop (``gpu_check.loop_reference``)
on the exactly dequantized weights.

Cases: the production (E, top_k) pairs of tools/gpu_check.py at H/I = 2048/768 (SiLU), and the GPT-OSS-20B
layer (E=32, k=4, H=I=2880, interleaved clamped SwiGLU, biases), T in {1, 2, 7, 16, 33, 128, 1000, 4096};
bf16 activations, weights ~ N(0, 0.02) quantized with ``quantize_mxfp4``, softmax-top-k routing. The op picks
the decode or the sorted path by T; for the GPT-OSS layer at T <= 16 the other path is run too, and at
T = 1 and 128 the op is captured in a CUDA graph and replayed on new inputs. Pass: rel L2 <= 1e-2 and a
finite output. Resumable: rows already in --out are skipped.
Usage (device machine):  python3 tools/gpu_check_mxfp4.py [--quick] [--out results.json] [--budget-s 240]
Dry run without a GPU:   TRITON_INTERPRET=1 python3 tools/gpu_check_mxfp4.py --dry-run   (tiny shapes, CPU)
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
from inductor_moe.kernels.reference import route_ref  # noqa: E402
from inductor_moe.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4  # noqa: E402
from tools.gpu_check import PAIRS, loop_reference, rel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOKENS = [1, 2, 7, 16, 33, 128, 1000, 4096]
GPT_OSS_20B = ("gpt_oss_20b", 32, 4, 2880, 2880, "swiglu_oai")
TOLERANCE = 1e-2


def cases(quick: bool, dry_run: bool):
    """(layer, E, k, H, I, activation, T)."""
    if dry_run:  # the logic of the script on tiny shapes (CPU: the interpreter or the reference)
        for E, k in ((8, 2), (32, 4)):
            for T in (1, 7, 33):
                yield f"E{E}k{k}", E, k, 64, 32, "silu", T
        for T in (1, 7):
            yield "gpt_oss_tiny", 32, 4, 64, 64, "swiglu_oai", T
        return
    pairs = PAIRS[::3] if quick else PAIRS
    tokens = [1, 7, 128, 4096] if quick else TOKENS
    for E, k in pairs:
        for T in tokens:
            yield f"E{E}k{k}", E, k, 2048, 768, "silu", T
    name, E, k, H, I, act = GPT_OSS_20B
    for T in tokens:
        yield name, E, k, H, I, act, T


def quantize_chunked(w: torch.Tensor, chunk: int = 8):
    """quantize_mxfp4 a few experts at a time (its f32/int32 temporaries are ~12x the bf16 weight)."""
    parts = [quantize_mxfp4(w[i:i + chunk]) for i in range(0, w.shape[0], chunk)]
    return torch.cat([p for p, _ in parts]), torch.cat([s for _, s in parts])


class Weights:
    """Quantized weights (and their f32 dequantization) per shape, kept while consecutive cases share it."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, E, H, I, act, gen):
        if self.key != (E, H, I, act):
            self.value = None
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            bf = torch.bfloat16
            w13 = torch.randn(E, 2 * I, H, device=DEVICE, dtype=bf, generator=gen) * 0.02
            q13, s13 = quantize_chunked(w13)
            del w13
            w2 = torch.randn(E, H, I, device=DEVICE, dtype=bf, generator=gen) * 0.02
            q2, s2 = quantize_chunked(w2)
            del w2
            b13 = b2 = None
            if act == "swiglu_oai":
                b13 = torch.randn(E, 2 * I, device=DEVICE, dtype=bf, generator=gen) * 0.02
                b2 = torch.randn(E, H, device=DEVICE, dtype=bf, generator=gen) * 0.02
            deq = (dequantize_mxfp4(q13, s13), dequantize_mxfp4(q2, s2))
            self.key, self.value = (E, H, I, act), ((q13, q2, s13, s2), b13, b2, deq)
        return self.value


def backend():
    """Triton on a GPU and in the interpreter (dry run with TRITON_INTERPRET=1); else the reference."""
    return "triton" if DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "reference"


def graph_replay_error(call, x, n_replays=3, gen=None):
    """Capture ``call(x)`` in a CUDA graph, replay it on new inputs, compare with eager calls."""
    call(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(x)
    worst = 0.0
    for _ in range(n_replays):
        x.copy_(torch.randn(x.shape, device=x.device, generator=gen).to(x.dtype))
        graph.replay()
        torch.cuda.synchronize()
        worst = max(worst, rel(out, call(x)))
    return worst


def run_case(case, weights, gen):
    from inductor_moe.kernels.triton.experts_mxfp4 import experts_mxfp4_triton

    name, E, k, H, I, act, T = case
    q, b13, b2, (w13f, w2f) = weights.get(E, H, I, act, gen)
    interleaved = act == "swiglu_oai"
    x = torch.randn(T, H, device=DEVICE, generator=gen).to(torch.bfloat16)
    weights_, ids = route_ref(torch.randn(T, E, device=DEVICE, generator=gen), k)
    spec = dict(activation=act, gate_up_interleaved=interleaved)
    want = loop_reference(x, ids, weights_, w13f, w2f, b13, b2, act, interleaved)
    row = dict(layer=name, E=E, k=k, H=H, I=I, T=T, backend=backend())
    with inductor_moe.force_backend(row["backend"]):
        out = torch.ops.inductor_moe.experts_mxfp4(x, ids, weights_, *q, b13, b2, **spec)
        row["rel_l2"] = rel(out, want)
        ok = row["rel_l2"] <= TOLERANCE and bool(torch.isfinite(out).all())
        if row["backend"] == "triton" and name.startswith("gpt_oss") and T <= 16:
            for path in ("decode", "sorted"):  # both paths, whichever the op picked
                got = experts_mxfp4_triton(x, ids, weights_, *q, b13, b2, act, interleaved, 1.702, 7.0, path=path)
                row[f"{path}_rel_l2"] = rel(got, want)
                ok = ok and row[f"{path}_rel_l2"] <= TOLERANCE and bool(torch.isfinite(got).all())
        if DEVICE == "cuda" and name.startswith("gpt_oss") and T in (1, 128):
            def call(xx):
                return torch.ops.inductor_moe.experts_mxfp4(xx, ids, weights_, *q, b13, b2, **spec)

            row["graph_rel_l2"] = graph_replay_error(call, x.clone(), gen=gen)
            ok = ok and row["graph_rel_l2"] <= 1e-6
    row["ok"] = ok
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes (what runs without a GPU)")
    p.add_argument("--out", default=None)
    p.add_argument("--budget-s", type=float, default=240)
    args = p.parse_args()
    if DEVICE != "cuda" and not args.dry_run:
        print("no CUDA device: pass --dry-run for the tiny CPU run")
        return 2
    rows = json.load(open(args.out)) if args.out and os.path.exists(args.out) else []
    done = {(r["layer"], r["T"]) for r in rows}
    start = time.time()
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    weights = Weights()
    left = 0
    with torch.no_grad():
        for case in cases(args.quick, args.dry_run):
            if (case[0], case[6]) in done:
                continue
            if time.time() - start > args.budget_s:
                left += 1
                continue
            row = run_case(case, weights, gen)
            rows.append(row)
            extra = " ".join(f"{k} {v:.2e}" for k, v in row.items() if k.endswith("_rel_l2") and k != "rel_l2")
            print(f"{row['layer']:12s} E={row['E']:4d} k={row['k']:2d} T={row['T']:5d} {row['backend']:9s} "
                  f"rel_l2 {row['rel_l2']:.2e} {extra} {'ok' if row['ok'] else 'FAIL'}", flush=True)
            if args.out:
                json.dump(rows, open(args.out, "w"), indent=1)
    failures = sum(not r["ok"] for r in rows)
    print("fallbacks:", sorted({f["op"] + ": " + f["reason"] for f in inductor_moe.stats()["fallbacks"]}))
    print(f"{len(rows) - failures} passed, {failures} failed, {left} cases left for the next call")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
