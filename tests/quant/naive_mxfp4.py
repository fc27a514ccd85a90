"""MXFP4 written out element by element in plain Python, independent of ``inductor_moe.quant.mxfp4``:
the E2M1 value of each code from a table, scales as ``2.0 ** (byte - 127)``, rounding by brute force."""
from __future__ import annotations

import math

import torch

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def naive_dequantize(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """f64 [..., K] from uint8 [..., K/2] and [..., K/32]."""
    lead = packed.shape[:-1]
    rows_p = packed.reshape(-1, packed.shape[-1]).tolist()
    rows_s = scales.reshape(-1, scales.shape[-1]).tolist()
    out = []
    for row_p, row_s in zip(rows_p, rows_s):
        row = []
        for j, byte in enumerate(row_p):
            scale = math.nan if row_s[2 * j // 32] == 255 else 2.0 ** (row_s[2 * j // 32] - 127)
            row += [E2M1[byte & 0xF] * scale, E2M1[byte >> 4] * scale]
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(*lead, packed.shape[-1] * 2)


def naive_quantize_block(values: list[float]) -> tuple[int, list[float]]:
    """(E8M0 byte, dequantized values) of one block of 32: X = floor(log2(amax)) - 2 clamped to
    [-127, 127], each element the nearest of the 15 E2M1 values times 2**X (ties: the even code; above 6:
    6, as the nearest grid point already is)."""
    amax = max(abs(v) for v in values)
    x = -127 if amax == 0 else min(127, max(-127, math.frexp(amax)[1] - 1 - 2))
    scale = 2.0 ** x
    out = []
    for v in values:
        best = None
        for code in range(8):
            candidate = math.copysign(E2M1[code], v) * scale
            dist = abs(v - candidate)
            if best is None or dist < best[0] or (dist == best[0] and code % 2 == 0):
                best = (dist, candidate)
        out.append(best[1] if best[1] != 0 else 0.0)
    return x + 127, out
