"""Sweep the GEMV tiles (BLOCK_N, BLOCK_K, num_warps) of the Triton decode kernels (kernels/triton/decode.py)
per layer at T=1 on the current GPU and write the winners into inductor_moe/kernels/triton/configs/<device>.json
under ``decode_key`` (shape and weight layout; read by ``pick_decode_tiles``). Coordinate descent: the up kernel's tiles with the
default down tiles, then the down kernel's with the best up tiles; the whole op is timed in a CUDA graph
over 8 rotating inputs (bench_moe_layer.graph_time_us) and the winner is checked against the f32 loop.
Usage (GPU machine): python3 benchmarks/tune_decode.py [--layers qwen3,gpt_oss,mixtral] [--out table.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_moe_layer import LAYERS, graph_time_us  # noqa: E402
from inductor_moe.kernels.reference import route_ref  # noqa: E402
from inductor_moe.kernels.triton.configs import decode_key, device_file  # noqa: E402
from inductor_moe.kernels.triton.decode import moe_decode_triton, tiles_for  # noqa: E402
from tools.gpu_check import Weights, loop_reference, rel  # noqa: E402

K_CONTIG = [(16, 512, 4), (8, 512, 4), (8, 1024, 4), (4, 1024, 4), (16, 256, 4), (16, 1024, 8), (32, 256, 4),
            (4, 2048, 4)]
N_CONTIG = [(64, 64, 4), (32, 128, 4), (128, 32, 4), (64, 32, 4), (32, 64, 4), (16, 128, 4), (128, 64, 8)]
ROUTE = ("softmax", True, "softmax_then_topk", None, 1, 1, 1.0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="qwen3,gpt_oss,mixtral")
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    path = device_file(torch.cuda.get_device_name())
    table = json.loads(path.read_text()) if path.exists() else {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    weights = Weights()
    for name in args.layers.split(","):
        c = LAYERS[name]
        E, k, H, I, act = c["E"], c["k"], c["H"], c["I"], c["act"]
        w13, w2, b13, b2 = weights.get(E, H, I, act, gen)
        xs = [torch.randn(args.tokens, H, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
        logits = [torch.randn(args.tokens, E, device="cuda", generator=gen) for _ in range(8)]
        spec = (act, act == "swiglu_oai", 1.702, 7.0)

        def timed(up, down):
            try:
                return graph_time_us(lambda i: moe_decode_triton(xs[i], logits[i], w13, w2, k, b13, b2, *ROUTE, *spec,
                                                                 tiles1=up, tiles2=down), list(range(8)))
            except Exception as e:  # noqa: BLE001 - a tile the compiler rejects
                print(f"  {up} {down} failed: {type(e).__name__}")
                return float("inf")
        up_c = K_CONTIG if w13.stride(2) == 1 else N_CONTIG
        down_c = K_CONTIG if w2.stride(2) == 1 else N_CONTIG
        default = timed(tiles_for(w13), tiles_for(w2))
        up = min(up_c, key=lambda t: timed(t, tiles_for(w2)))
        down = min(down_c, key=lambda t: timed(up, t))
        best = timed(up, down)
        w, ids = route_ref(logits[0], k)
        err = rel(moe_decode_triton(xs[0], logits[0], w13, w2, k, b13, b2, *ROUTE, *spec, tiles1=up, tiles2=down),
                  loop_reference(xs[0], ids, w, w13, w2, b13, b2, act, act == "swiglu_oai"))
        print(f"{name} T={args.tokens}: up {up} down {down}: {best:.1f} us (default tiles {default:.1f} us), "
              f"rel L2 {err:.1e}", flush=True)
        if err <= 1e-2 and best < default:
            key = decode_key(E, H, I, k, torch.bfloat16, w13.stride(2) == 1, w2.stride(2) == 1)
            table[key] = {"up": up, "down": down, "us": round(best, 1)}
            path.write_text(json.dumps(table, indent=1))
            if args.out:
                json.dump(table, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
