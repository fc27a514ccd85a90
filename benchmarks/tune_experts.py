"""Sweep tile configs of the Triton expert GEMMs per (layer shape, T) on the current GPU and write the
winners to inductor_moe/kernels/triton/configs/<device name>.json (read by ``pick_config``).

Method. For each block_m candidate (the sort's block size), stage 1 and stage 2 are tuned separately
(their tiles are independent once block_m is fixed), each timed alone on the layer's real routing by the
CUDA-graph method of bench_moe_layer.py (rotating inputs, median replay); the best block_m by stage-1 +
stage-2 time wins, then the grouped program order (group_m) is tuned on the whole op. The winner is
checked against the per-expert f32 loop (rel L2 <= 1e-2; the next best is taken if it fails). Triton
compiles are done first by worker processes into the shared on-disk cache, so the timing loop mostly loads
binaries. Resumable: shapes already in the table are skipped unless --redo. An entry's "us" is the whole
layer timed with PyTorch-reference routing and sort (to compare tiles; not the product's layer time, which
bench_moe_layer.py measures).
Usage (GPU machine):
    python3 benchmarks/tune_experts.py --layers qwen3 --tokens 1,8,64,512,4096,16384 --budget-s 480
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_moe_layer import LAYERS, graph_time_us, make_layer  # noqa: E402
from inductor_moe.kernels.reference import route_ref, sort_ref  # noqa: E402
from inductor_moe.kernels.triton.configs import ExpertsConfig, device_file, shape_key  # noqa: E402
from inductor_moe.kernels.triton.experts import experts_sorted_triton, launch_stage1, launch_stage2  # noqa: E402
from tools.gpu_check import loop_reference, rel  # noqa: E402

SMEM = 220 * 1024
DEVICE = "cuda"  # a dry run on CPU (TRITON_INTERPRET=1) sets "cpu"


def block_ms(tokens, top_k, num_experts):
    rows = tokens * top_k / num_experts
    return [16] if rows <= 16 else [16, 32] if rows <= 64 else [32, 64] if rows <= 256 else [64, 128]


def stage_candidates(stage, bm):
    """(n, k, warps, stages) tiles of one stage; stage 1 holds two accumulators (gate, up)."""
    decode = bm <= 16
    ns = (16, 32, 64) if decode else (64, 128) if stage == 1 else (64, 128, 256)
    ks = (128, 256) if decode else (64, 128)
    for n, k, warps, stages in itertools.product(ns, ks, (4, 8), (3, 4)):
        width = 2 * n if stage == 1 else n
        if stages * (bm * k + width * k) * 2 > SMEM or bm * width > 128 * 256:
            continue
        if warps == 8 and bm * width < 64 * 128:
            continue
        yield n, k, warps, stages


def make_config(bm, t1, t2, group_m=8):
    return ExpertsConfig(bm, *t1, *t2, group_m=group_m)


def _dummy(name, device=None):
    device = device or DEVICE
    c = LAYERS[name]
    H, I = c["H"], c["I"]
    x = torch.randn(64, H, device=device, dtype=torch.bfloat16)
    w13 = torch.randn(2, 2 * I, H, device=device, dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(2, H, I, device=device, dtype=torch.bfloat16) * 0.02
    return x, w13, w2


def _compile(job):
    """Worker: compile (and run once) the two stages of each config on dummy data of the layer's shape."""
    name, configs = job
    act_name = LAYERS[name]["act"]
    x, w13, w2 = _dummy(name)
    ids = torch.randint(0, 2, (64, LAYERS[name]["k"]), device=DEVICE, dtype=torch.int32)
    weights = torch.rand(ids.shape, device=DEVICE)
    failed = []
    for cfg in configs:
        try:
            s = sort_ref(ids, weights, 2, cfg.block_m)
            experts_sorted_triton(x, *s, w13, w2, ids.shape[1], cfg.block_m, None, None, act_name,
                                  act_name == "swiglu_oai", 1.702, 7.0, cfg, every_pair_routed=True)
        except Exception as e:  # noqa: BLE001 - a config the compiler rejects is reported and skipped later
            failed.append((cfg, type(e).__name__))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return failed


def precompile(name, configs, workers):
    configs = list(dict.fromkeys(configs))
    if workers <= 1 or not configs:
        return _compile((name, configs))
    chunks = [configs[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return [f for part in pool.map(_compile, [(name, c) for c in chunks if c]) for f in part]


class Problem:
    """The layer's routing of rotating inputs, sorted for one block_m, with the stage buffers."""

    def __init__(self, name, T, gen, layer):
        c = LAYERS[name]
        self.name, self.T, self.c = name, T, c
        self.router, self.w13, self.w2 = layer
        self.xs = [torch.randn(T, c["H"], device=DEVICE, dtype=torch.bfloat16, generator=gen)
                   for _ in range(8 if T <= 64 else 2)]
        self.routed = [route_ref(x @ self.router.t(), c["k"]) for x in self.xs]

    def sorted_for(self, bm):
        return [sort_ref(ids, w, self.c["E"], bm) for w, ids in self.routed]

    def time_stage(self, stage, bm, tile, sorted_sets):
        c = self.c
        cfg = make_config(bm, tile, tile)
        acts = [torch.empty(s[0].shape[0], c["I"], device=DEVICE, dtype=torch.bfloat16) for s in sorted_sets]
        rows = torch.empty(self.T * c["k"], c["H"], device=DEVICE, dtype=torch.bfloat16)
        inputs = list(range(len(self.xs)))
        if stage == 1:
            def fn(i):
                s = sorted_sets[i]
                launch_stage1(self.xs[i], s[0], s[2], s[3], self.w13, None, acts[i], bm, c["act"],
                              c["act"] == "swiglu_oai", 1.702, 7.0, cfg)
        else:
            for a in acts:
                a.normal_()

            def fn(i):
                s = sorted_sets[i]
                launch_stage2(acts[i], s[0], s[1], s[2], s[3], self.w2, None, rows, self.T, c["k"], bm, cfg)
        return graph_time_us(fn, inputs)

    def time_whole(self, cfg):
        c = self.c

        def fn(x):
            w, ids = route_ref(x @ self.router.t(), c["k"])
            s = sort_ref(ids, w, c["E"], cfg.block_m)
            return experts_sorted_triton(x, *s, self.w13, self.w2, c["k"], cfg.block_m, None, None, c["act"],
                                         c["act"] == "swiglu_oai", 1.702, 7.0, cfg, every_pair_routed=True)
        return graph_time_us(fn, self.xs), fn

    def correct(self, fn):
        if self.c["act"] != "silu":  # the loop reference knows SiLU only; gpu_check covers the others
            return True
        w, ids = self.routed[0]
        return rel(fn(self.xs[0]), loop_reference(self.xs[0], ids, w, self.w13, self.w2)) <= 1e-2


def tune_row(problem, budget_end):
    results = []
    for bm in block_ms(problem.T, problem.c["k"], problem.c["E"]):
        sorted_sets = problem.sorted_for(bm)
        best = {}
        for stage in (1, 2):
            for tile in stage_candidates(stage, bm):
                if time.time() > budget_end:
                    break
                try:
                    t = problem.time_stage(stage, bm, tile, sorted_sets)
                except Exception as e:  # noqa: BLE001 - out of shared memory / registers: skip the tile
                    print(f"  bm={bm} stage{stage} {tile} failed: {type(e).__name__}", flush=True)
                    continue
                if stage not in best or t < best[stage][0]:
                    best[stage] = (t, tile)
        if len(best) == 2:
            results.append((best[1][0] + best[2][0], bm, best[1], best[2]))
            print(f"  bm={bm}: stage1 {best[1][1]} {best[1][0]:.1f} us, stage2 {best[2][1]} {best[2][0]:.1f} us",
                  flush=True)
    if not results:
        return None
    results.sort()
    for _, bm, (_, t1), (_, t2) in results:
        timed = []
        for group_m in (1, 4, 8, 16):
            cfg = make_config(bm, t1, t2, group_m)
            t, fn = problem.time_whole(cfg)
            timed.append((t, group_m, cfg, fn))
        t, _, cfg, fn = min(timed, key=lambda r: r[0])
        if problem.correct(fn):
            return t, cfg
        print("  wrong result, next candidate:", cfg, flush=True)
    return None


def all_candidates(name, tokens):
    c = LAYERS[name]
    out = []
    for T in tokens:
        for bm in block_ms(T, c["k"], c["E"]):
            t1s, t2s = list(stage_candidates(1, bm)), list(stage_candidates(2, bm))
            out += [make_config(bm, t, t2s[0]) for t in t1s] + [make_config(bm, t1s[0], t) for t in t2s]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="qwen3,gpt_oss,mixtral")
    p.add_argument("--tokens", default="1,8,64,512,4096,16384")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    p.add_argument("--redo", action="store_true")
    p.add_argument("--out", default=None, help="also copy the table here")
    args = p.parse_args()
    path = device_file(torch.cuda.get_device_name())
    table = json.loads(path.read_text()) if path.exists() else {}
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    end = time.time() + args.budget_s
    tokens = list(map(int, args.tokens.split(",")))
    with torch.no_grad():
        for name in args.layers.split(","):
            c = LAYERS[name]
            key = shape_key(c["E"], c["H"], c["I"], c["k"], torch.bfloat16)
            entries = {e["max_tokens"]: e for e in table.get(key, [])}
            todo = [T for T in tokens if args.redo or T not in entries]
            if not todo or time.time() > end:
                continue
            t0 = time.time()
            failed = precompile(name, all_candidates(name, todo), args.workers)
            print(f"{name}: compiled in {time.time() - t0:.0f} s ({len(failed)} configs rejected)", flush=True)
            layer = make_layer(name, gen, DEVICE)
            for T in todo:
                if time.time() > end:
                    break
                best = tune_row(Problem(name, T, gen, layer), end)
                if best is not None:
                    entries[T] = {"max_tokens": T, **asdict(best[1]), "us": round(best[0], 1)}
                    print(f"{name} T={T}: {best[1]} {best[0]:.1f} us", flush=True)
                table[key] = [entries[t] for t in sorted(entries)]
                path.write_text(json.dumps(table, indent=1))
                if args.out:
                    with open(args.out, "w") as f:
                        json.dump(table, f, indent=1)
            del layer
            torch.cuda.empty_cache()
    print("wrote", path)


if __name__ == "__main__":
    main()
