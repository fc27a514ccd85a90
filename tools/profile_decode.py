"""Where a graph-mode decode step of a wrapped HF MoE model spends its GPU time, plain torch.compile against
torch.compile with inductor_moe (same model, same run): kernel time per decode step split into MoE (the
inductor_moe kernels, or the experts/router kernels of the plain graph), attention, GEMMs and the rest,
plus the number of CUDA-graph launches against kernel launches (0 graph launches means cudagraphs were
skipped) and dynamo's cudagraph skip counter.

Usage (GPU machine): python3 tools/profile_decode.py [--family qwen3_moe] [--layers 8] [--batch 1]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))


def category(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("_decode_", "_stage1", "_stage2", "_route", "_sort")):
        return "moe (inductor_moe)"
    if "flash" in n or "attention" in n or "fmha" in n or "sdpa" in n:
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "cutlass", "sm90_xmma", "bmm", "ampere", "splitk")):
        return "gemm (cuBLAS)"
    if n.startswith("triton_"):
        return "inductor triton"
    return "other"


def main():
    import importlib

    from common import _generate, _reset_compiled, _set_compile, build_model
    from torch._dynamo.utils import counters

    import inductor_moe

    p = argparse.ArgumentParser()
    p.add_argument("--family", default="qwen3_moe")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()
    torch._inductor.config.fx_graph_cache = False
    family = importlib.import_module(a.family).FAMILY
    dev = torch.device("cuda")
    model, _ = build_model(family, SimpleNamespace(checkpoint=None, size="real", layers=a.layers, std=0.02, seed=0),
                           dev, torch.bfloat16, lambda *x, **k: None)
    inductor_moe.hf.use_traceable_experts(model)
    prompt = {"input_ids": torch.randint(0, model.config.vocab_size, (a.batch, a.prompt_len), device=dev)}
    args = SimpleNamespace(new_tokens=a.new_tokens)
    say = lambda *x, **k: None  # noqa: E731
    for backend in ("inductor", "inductor_moe"):
        _reset_compiled(model)
        counters.clear()
        _set_compile(model, backend, "reduce-overhead", dev)
        _generate(model, prompt, args, dev, "warm-up", say, False)
        _generate(model, prompt, args, dev, "warm-up", say, False)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            _, timing = _generate(model, prompt, args, dev, "profiled", say, False)
        by_cat, launches = defaultdict(float), defaultdict(int)
        for e in prof.key_averages():
            if e.device_time_total > 0 and e.key and not e.key.startswith(("cudaGraph", "Memcpy", "Memset")):
                if e.cpu_time_total == 0 or e.device_type == torch.autograd.DeviceType.CUDA:
                    by_cat[category(e.key)] += e.device_time_total
            if e.key in ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"):
                launches[e.key] += e.count
        steps = a.new_tokens  # prefill (eager) + new_tokens - 1 decode steps: per generated token
        print(f"{backend}: decode {timing['decode_step_ms']:.3f} ms/step, prefill {timing['prefill_ms']:.1f} ms; "
              f"cudagraph skips {counters['inductor']['cudagraph_skips']}; launches {dict(launches)}")
        for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
            print(f"   {cat:20s} {us / steps / 1e3:8.3f} ms per token (kernel time, prefill included)")
        top = sorted((e for e in prof.key_averages() if e.device_time_total > 0),
                     key=lambda e: -e.device_time_total)[:10]
        for e in top:
            print(f"      {e.device_time_total / steps:9.1f} us/token x{e.count / steps:5.1f}  {e.key[:80]}")
        # host side: where the CPU time of a step goes (self time of the top ops, per generated token)
        host = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                      key=lambda e: -e.self_cpu_time_total)[:15]
        print(f"   host: {sum(e.self_cpu_time_total for e in prof.key_averages()) / steps / 1e3:.3f} ms CPU self "
              "time per token in profiled ops; top:")
        for e in host:
            print(f"      {e.self_cpu_time_total / steps:9.1f} us/token x{e.count / steps:5.1f}  {e.key[:80]}")
        _set_compile(model, None, "reduce-overhead", dev)


if __name__ == "__main__":
    main()
