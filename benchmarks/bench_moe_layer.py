"""Per-layer MoE time (routing included) on a CUDA GPU, against floors and peers in the same run.

Layers (design.md section 4): Qwen3-30B-A3B (H=2048, I=768, E=128, k=8), GPT-OSS-20B (2880/2880, 32, 4,
clamped SwiGLU), Mixtral-8x7B (4096/14336, 8, 2). Router weights, expert weights ~ N(0, 0.02) (seeded),
inputs ~ N(0, 1); routing by the layer's own router. Each timing is one CUDA graph that runs the layer on
R rotating input sets (R=8 for T<=64, else 2), replayed; time per call = replay time / R (median of
replays). Floor per input set = max(distinct experts hit * 3*H*I*2 B + 2*T*H*2 B over the copy bandwidth
measured in the run (benchmarks/floors.py: ~3.0 TB/s on the H100),
2*T*k*3*H*I flop over 790 TFLOP/s), averaged over the sets.
Peers (same weights, same run): HF's block with experts implementation grouped_mm (which calls
torch._grouped_mm in bf16) and batched_mm (CUDA graph; batched_mm skipped where its weight gather exceeds
16 GB); that grouped_mm block under torch.compile default (inside the CUDA graph) and reduce-overhead (its
own graphs, timed as called); a hand-written gather+einsum MoE under max-autotune-no-cudagraphs at
T <= 8 (plain SwiGLU); and the inductor_moe op called eagerly. --peers picks (hf, compile, einsum).
Plots: benchmarks/plot.py turns the JSON into PNGs.
Usage: python3 benchmarks/bench_moe_layer.py [--layers qwen3,gpt_oss,mixtral] [--tokens 1,8,64,...]
       [--out results.json] [--budget-s 480] [--profile qwen3:1,qwen3:4096]   (resumable: rows already in --out are skipped)
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

from benchmarks.floors import PEAK, bandwidth  # noqa: E402
LAYERS = {
    "qwen3": dict(H=2048, I=768, E=128, k=8, act="silu"),
    "gpt_oss": dict(H=2880, I=2880, E=32, k=4, act="swiglu_oai"),
    "mixtral": dict(H=4096, I=14336, E=8, k=2, act="silu"),
}


def floor_us(ids, T, H, I, E, k):
    hit = torch.unique(ids).numel()
    t_bytes = (hit * 3 * H * I * 2 + 2 * T * H * 2) / bandwidth()
    t_flops = 2 * T * k * 3 * H * I / PEAK
    return max(t_bytes, t_flops) * 1e6


def graph_time_us(fn, inputs, replays=10):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for x in inputs:
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for x in inputs:
            fn(x)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / len(inputs))
    del g
    return sorted(times)[len(times) // 2]


def eager_time_us(fn, inputs, reps=3):
    for x in inputs:
        fn(x)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        for x in inputs:
            fn(x)
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / (reps * len(inputs))


def make_layer(name, gen, device="cuda"):
    c = LAYERS[name]
    H, I, E = c["H"], c["I"], c["E"]
    bf = torch.bfloat16
    router = torch.randn(E, H, device=device, dtype=bf, generator=gen) * 0.02
    w13 = torch.randn(E, 2 * I, H, device=device, dtype=bf, generator=gen) * 0.02
    w2 = torch.randn(E, H, I, device=device, dtype=bf, generator=gen) * 0.02
    return router, w13, w2


def hf_block(name, router, w13, w2, impl):
    """The HF MoE block of the family with these weights (None where the family has another form)."""
    c = LAYERS[name]
    if name == "qwen3":
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock as Block

        cfg = Qwen3MoeConfig(hidden_size=c["H"], moe_intermediate_size=c["I"], num_experts=c["E"],
                             num_experts_per_tok=c["k"], norm_topk_prob=True)
    elif name == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as Block

        cfg = MixtralConfig(hidden_size=c["H"], intermediate_size=c["I"], num_local_experts=c["E"],
                            num_experts_per_tok=c["k"])
    else:
        return None
    cfg._experts_implementation = impl
    with torch.device("meta"):
        block = Block(cfg)
    block.to_empty(device="cuda")
    block.to(torch.bfloat16)
    block.gate.weight.data = router
    block.experts.gate_up_proj.data = w13
    block.experts.down_proj.data = w2
    return block.eval()


def einsum_moe(router, w13, w2, top_k):
    """The hand-written gather + einsum MoE (gpt-fast style: gather each token's expert weights, einsum),
    softmax-top-k-renormalize routing, plain SwiGLU (also for GPT-OSS, as in design.md's reference row)."""
    inter = w2.shape[2]
    w1, w3 = w13[:, :inter], w13[:, inter:]

    def fn(x):
        scores = (x @ router.t()).float().softmax(-1)
        weights, ids = scores.topk(top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        gate = torch.einsum("th,tkih->tki", x, w1[ids])
        up = torch.einsum("th,tkih->tki", x, w3[ids])
        y = torch.einsum("tki,tkhi->tkh", torch.nn.functional.silu(gate) * up, w2[ids])
        return torch.einsum("tkh,tk->th", y, weights)
    return fn


def _peer(row, key, fn):
    """row[key] = fn(), or the error's type and message (a peer that fails does not stop the row)."""
    try:
        row[key] = fn()
    except Exception as e:  # noqa: BLE001
        torch.cuda.synchronize()
        row[key] = f"failed: {type(e).__name__}: {str(e)[:120]}"


def run_row(name, T, gen, peers=("hf", "compile", "einsum")):
    c = LAYERS[name]
    H, I, E, k, act = c["H"], c["I"], c["E"], c["k"], c["act"]
    router, w13, w2 = make_layer(name, gen)
    n_sets = 8 if T <= 64 else 2
    xs = [torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(n_sets)]
    floors = []
    for x in xs:
        _, ids = torch.topk(x.float() @ router.float().t(), k)
        floors.append(floor_us(ids, T, H, I, E, k))
    interleaved = act == "swiglu_oai"

    def ours(x):
        return torch.ops.inductor_moe.moe(x, x @ router.t(), w13, w2, k, activation=act,
                                          gate_up_interleaved=interleaved)

    row = dict(layer=name, T=T, floor_us=sum(floors) / len(floors))
    row["inductor_moe_graph_us"] = graph_time_us(ours, xs)
    row["inductor_moe_eager_us"] = eager_time_us(ours, xs)
    for impl in ("grouped_mm", "batched_mm"):
        if impl == "batched_mm" and T * k * 3 * H * I * 2 > 16e9:
            row[f"hf_{impl}_graph_us"] = "skipped: weight gather > 16 GB"
            continue
        block = hf_block(name, router, w13, w2, impl)
        if block is None:
            continue
        with torch.no_grad():
            try:
                row[f"hf_{impl}_graph_us"] = graph_time_us(lambda x: block(x[None]), xs)
            except Exception as e:  # a peer that cannot be captured is timed eagerly, marked
                torch.cuda.synchronize()
                row[f"hf_{impl}_eager_us"] = eager_time_us(lambda x: block(x[None]), xs)
                row[f"hf_{impl}_note"] = f"not capturable: {type(e).__name__}"
        if "compile" in peers and impl == "grouped_mm":
            torch._dynamo.reset()
            default = torch.compile(block)  # Inductor code inside this benchmark's CUDA graph
            _peer(row, "compile_default_graph_us", lambda: graph_time_us(lambda x: default(x[None]), xs))
            torch._dynamo.reset()
            ro = torch.compile(block, mode="reduce-overhead")  # its own CUDA graphs: timed as called
            _peer(row, "compile_reduce_overhead_us", lambda: eager_time_us(lambda x: ro(x[None]), xs))
            torch._dynamo.reset()
        del block
    if "einsum" in peers and T <= 8:
        torch._dynamo.reset()
        fn = torch.compile(einsum_moe(router, w13, w2, k), mode="max-autotune-no-cudagraphs", dynamic=False)
        _peer(row, "einsum_max_autotune_graph_us", lambda: graph_time_us(fn, xs))
        torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def profile_row(name, T, gen, top=8):
    """Per-kernel CUDA time of one inductor_moe.moe call (torch.profiler), largest first."""
    c = LAYERS[name]
    router, w13, w2 = make_layer(name, gen)
    x = torch.randn(T, c["H"], device="cuda", dtype=torch.bfloat16, generator=gen)

    def call():
        return torch.ops.inductor_moe.moe(x, x @ router.t(), w13, w2, c["k"], activation=c["act"],
                                          gate_up_interleaved=c["act"] == "swiglu_oai")
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            call()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events) / 5
    print(f"profile {name} T={T}: {total:.1f} us of kernels per call")
    for e in events[:top]:
        print(f"   {e.device_time_total / 5:8.1f} us  x{e.count // 5}  {e.key[:90]}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="qwen3,gpt_oss,mixtral")
    p.add_argument("--tokens", default="1,8,64,512,4096,16384")
    p.add_argument("--out", default="bench_moe_layer.json")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--peers", default="hf,compile,einsum", help="peers besides the HF blocks' graphs: compile, einsum")
    p.add_argument("--profile", default="", help="layer:T,... to profile per kernel, e.g. qwen3:1,qwen3:4096")
    args = p.parse_args()
    if args.profile:
        gen = torch.Generator(device="cuda").manual_seed(0)
        with torch.no_grad():
            for item in args.profile.split(","):
                name, T = item.split(":")
                profile_row(name, int(T), gen)
        return
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth() / 1e12:.2f} TB/s (floors)", flush=True)
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    done = {(r["layer"], r["T"]) for r in rows}
    start = time.time()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name in args.layers.split(","):
            for T in map(int, args.tokens.split(",")):
                if (name, T) in done or time.time() - start > args.budget_s:
                    continue
                row = run_row(name, T, gen, tuple(args.peers.split(",")))
                rows.append(row)
                json.dump(rows, open(args.out, "w"), indent=1)
                peers = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
                         if k not in ("layer", "T", "floor_us", "inductor_moe_graph_us")}
                print(f"{name:8s} T={T:6d} floor {row['floor_us']:8.1f} us  inductor_moe {row['inductor_moe_graph_us']:8.1f} us "
                      f"({row['inductor_moe_graph_us'] / row['floor_us']:.2f}x floor)  {peers}", flush=True)
    print("fallbacks:", inductor_moe.stats()["fallbacks"])


if __name__ == "__main__":
    main()
