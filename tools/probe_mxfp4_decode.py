"""Where the time of the MXFP4 experts goes at small T (GPT-OSS-20B layer: E=32, k=4, H=I=2880), on a GPU.

1. Per kernel: each path (decode v2, the sorted path's dequant variants) run eagerly under torch.profiler,
   device time per call and kernel name, averaged over the calls (the same kernels a CUDA graph replays; the
   launch gaps differ).
2. The streaming rate a decode can reach: ``_stream_kernel`` reads the packed weights and scales of the
   routed experts (w13 and w2, what a T=1 decode must read) as 16-byte words and xor-reduces them, one
   program per ``CHUNK`` bytes, in a CUDA graph over rotating routings: a plain read at the decode's byte
   count, against the copy bandwidth of benchmarks/floors.py.

Usage (GPU): python3 tools/probe_mxfp4_decode.py [--tokens 1,8] [--variants v2,bits,dot_scaled,v1]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_moe_layer import graph_time_us  # noqa: E402
from benchmarks.floors import bandwidth  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4 as mx  # noqa: E402
from inductor_moe.kernels.triton import experts_mxfp4_decode as v2  # noqa: E402
from benchmarks.tune_mxfp4_decode import LAYERS, make_inputs, make_layer  # noqa: E402

LAYER = LAYERS["gpt_oss"]
E, H, I = LAYER["E"], LAYER["H"], LAYER["I"]
SPEC = dict(activation="swiglu_oai", gate_up_interleaved=True, alpha=1.702, limit=7.0)


@triton.jit
def _stream_kernel(ptr_tab, nbytes_tab, out_ptr, CHUNK: tl.constexpr, SLABS: tl.constexpr):
    """Program p reads bytes [c*CHUNK, (c+1)*CHUNK) of slab p % SLABS (c = p // SLABS) as int32x4 words."""
    pid = tl.program_id(0)
    slab = pid % SLABS
    c = pid // SLABS
    base = tl.load(ptr_tab + slab).to(tl.pointer_type(tl.int32))
    n = tl.load(nbytes_tab + slab)
    offs = c * (CHUNK // 4) + tl.arange(0, CHUNK // 4)
    w = tl.load(base + offs, mask=offs < n // 4, other=0)
    tl.store(out_ptr + pid, tl.xor_sum(w, axis=0))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="1,8")
    p.add_argument("--variants", default="v2,bits,dot_scaled,v1")
    args = p.parse_args()
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    (q13, q2, s13, s2), (b13, b2) = make_layer(LAYER, gen, dev)
    bw = bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s")

    for T in [int(t) for t in args.tokens.split(",")]:
        sets = make_inputs(LAYER, T, 8, gen, dev)
        distinct = sum(torch.unique(s[1]).numel() for s in sets) / len(sets)
        nbytes = distinct * 3 * H * I * (0.5 + 1 / 32)
        print(f"\n== T={T}: {distinct:.1f} experts, {nbytes / 1e6:.1f} MB, floor {nbytes / bw * 1e6:.1f} us")

        # 2. the plain read of the same slabs
        for chunk in (4096, 16384):
            tabs = []
            for _, ids, _ in sets:
                es = torch.unique(ids).tolist()
                slabs = [t[e] for e in es for t in (q13, s13, q2, s2)]
                ptrs = torch.tensor([s.data_ptr() for s in slabs], dtype=torch.int64, device=dev)
                sizes = torch.tensor([s.numel() for s in slabs], dtype=torch.int64, device=dev)
                grid = triton.cdiv(max(s.numel() for s in slabs), chunk) * len(slabs)
                out = torch.empty(grid, dtype=torch.int32, device=dev)
                tabs.append((ptrs, sizes, out, grid, len(slabs)))

            def read(t, chunk=chunk):
                ptrs, sizes, out, grid, n = t
                _stream_kernel[(grid,)](ptrs, sizes, out, CHUNK=chunk, SLABS=n, num_warps=4)

            us = graph_time_us(read, tabs)
            print(f"stream read chunk={chunk}: {us:.1f} us = {nbytes / us / 1e6:.2f} TB/s")

        # 1. per kernel
        for variant in args.variants.split(","):
            if variant == "v2":
                def fn(s):
                    x, ids, w = s
                    return v2.experts_mxfp4_decode_v2(x, ids, w, q13, q2, s13, s2, b13, b2, **SPEC)
            else:
                def fn(s, variant=variant):
                    x, ids, w = s
                    return mx.experts_mxfp4_triton(x, ids, w, q13, q2, s13, s2, b13, b2, **SPEC,
                                                   path="sorted", dequant=variant)
            try:
                total = graph_time_us(fn, sets)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{variant}: failed {type(e).__name__}: {str(e)[:200]}")
                continue
            for s in sets:
                fn(s)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    for s in sets:
                        fn(s)
                torch.cuda.synchronize()
            per = defaultdict(float)
            for ev in prof.events():
                if ev.device_type == torch.autograd.DeviceType.CUDA:
                    per[ev.name[:60]] += ev.device_time / (3 * len(sets))
            parts = ", ".join(f"{n} {t:.1f}" for n, t in sorted(per.items(), key=lambda kv: -kv[1]))
            print(f"{variant}: graph {total:.1f} us ({total / (nbytes / bw * 1e6):.2f}x floor); kernels: {parts}")


if __name__ == "__main__":
    main()
