"""The machine constants of the floors: memory bandwidth and bf16 matrix rate.

``bandwidth()`` measures the device's copy bandwidth once per process (a 1 GiB device-to-device copy, CUDA
events, best of 10: 2 x bytes / time), so floors follow the GPU at hand (H100 ~3.0 TB/s, H200 ~4.3 TB/s)
instead of one constant. Without CUDA it returns the H100 figure the earlier tables used.
"""
from __future__ import annotations

import functools

import torch

H100_BW = 3.0e12  # measured copy bandwidth of the H100 80GB HBM3 (sessions 1-3)
PEAK = 790e12  # measured bf16 mm rate of an H100 (the H200 has the same SMs and clocks)


@functools.lru_cache(None)
def bandwidth() -> float:
    if not torch.cuda.is_available():
        return H100_BW
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / best
