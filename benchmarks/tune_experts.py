"""Sweep tile configs of the Triton expert GEMMs per (layer shape, T) on the current GPU and write the
winners to inductor_moe/kernels/triton/configs/<device name>.json (read by ``pick_config``).

Each candidate is checked against the per-expert f32 loop (rel L2 <= 1e-2) before it is timed; timing
is the CUDA-graph method of bench_moe_layer.py (rotating inputs, median replay). Resumable: shapes already
in the JSON are skipped unless --redo. Usage (GPU machine):
    python3 benchmarks/tune_experts.py --layers qwen3 --tokens 1,8,64,512,4096,16384 --budget-s 480
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_moe_layer import LAYERS, graph_time_us, make_layer  # noqa: E402
from inductor_moe.kernels.reference import route_ref, sort_ref  # noqa: E402
from inductor_moe.kernels.triton.configs import ExpertsConfig, device_file, shape_key  # noqa: E402
from inductor_moe.kernels.triton.experts import experts_sorted_triton  # noqa: E402
from tools.gpu_check import loop_reference, rel  # noqa: E402


def candidates(tokens, top_k, num_experts):
    rows = tokens * top_k / num_experts
    block_ms = [16] if rows <= 16 else [16, 32, 64] if rows <= 128 else [64, 128]
    for bm, n, k, warps, stages in itertools.product(block_ms, (32, 64, 128), (64, 128), (4, 8), (3, 4)):
        if bm * n > 128 * 128 or (warps == 8 and bm * n < 64 * 64):
            continue
        yield ExpertsConfig(bm, n, k, warps, stages, n, k, warps, stages)


def tune_row(name, T, gen, budget_end):
    c = LAYERS[name]
    H, I, E, k, act = c["H"], c["I"], c["E"], c["k"], c["act"]
    router, w13, w2 = make_layer(name, gen)
    xs = [torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8 if T <= 64 else 2)]
    best = None
    for cfg in candidates(T, k, E):
        if time.time() > budget_end:
            break
        def run(x, cfg=cfg):
            w, ids = route_ref(x @ router.t(), k)
            s = sort_ref(ids, w, E, cfg.block_m)
            return experts_sorted_triton(x, *s, w13, w2, k, cfg.block_m, None, None, act, act == "swiglu_oai",
                                         1.702, 7.0, cfg, every_pair_routed=True)
        try:
            if act == "silu":
                w, ids = route_ref(xs[0] @ router.t(), k)
                if rel(run(xs[0]), loop_reference(xs[0], ids, w, w13, w2)) > 1e-2:
                    print("  wrong result, skipped:", cfg)
                    continue
            t = graph_time_us(run, xs)
        except Exception as e:  # a config the compiler rejects (shared memory) is skipped
            print("  failed:", cfg, type(e).__name__)
            continue
        if best is None or t < best[0]:
            best = (t, cfg)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="qwen3,gpt_oss,mixtral")
    p.add_argument("--tokens", default="1,8,64,512,4096,16384")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--redo", action="store_true")
    args = p.parse_args()
    path = device_file(torch.cuda.get_device_name())
    table = json.loads(path.read_text()) if path.exists() else {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    end = time.time() + args.budget_s
    with torch.no_grad():
        for name in args.layers.split(","):
            c = LAYERS[name]
            key = shape_key(c["E"], c["H"], c["I"], c["k"], torch.bfloat16)
            entries = {e["max_tokens"]: e for e in table.get(key, [])}
            for T in map(int, args.tokens.split(",")):
                if (T in entries and not args.redo) or time.time() > end:
                    continue
                best = tune_row(name, T, gen, end)
                if best is not None:
                    entries[T] = {"max_tokens": T, **asdict(best[1]), "us": round(best[0], 1)}
                    print(f"{name} T={T}: {best[1]} {best[0]:.1f} us", flush=True)
                table[key] = [entries[t] for t in sorted(entries)]
                path.write_text(json.dumps(table, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
