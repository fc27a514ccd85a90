"""MXFP4 (OCP Microscaling, FP4 E2M1 elements with one E8M0 scale per 32): pack and unpack.

Layout, along the last dim K (a multiple of 32) of a weight ``w [..., K]``:

- ``packed`` uint8 ``[..., K/2]``: two 4-bit E2M1 codes per byte, the element with the even index in the
  low nibble (``packed[..., j] = code[2j] | code[2j+1] << 4``). A code is ``sign << 3 | magnitude``; the
  eight magnitudes are ``0, 0.5, 1, 1.5, 2, 3, 4, 6``.
- ``scales`` uint8 ``[..., K/32]``: the E8M0 byte ``b`` of block ``g`` (elements ``32g .. 32g+31``) means
  ``2**(b - 127)``; 255 is NaN.

GPT-OSS's MXFP4 checkpoints, as transformers decodes them (low nibble to the even element, scale
``2**(byte - 127)``), store ``*_blocks`` [..., K/32, 16] that view as this [..., K/2] with no copy (not yet
checked against a real checkpoint here).

``quantize_mxfp4`` follows the OCP MX v1.0 recipe: per block, shared exponent
``X = floor(log2(amax)) - 2`` (2 = the exponent of E2M1's largest value, 6 = 1.5 * 2**2), clamped to
E8M0's range [-127, 127]; each element is ``v / 2**X`` rounded to the nearest E2M1 value, ties to the
even code, and saturated at +-6. An all-zero block gets scale byte 0 and zero codes; elements that round
to zero are stored as +0. ``dequantize_mxfp4`` is exact: ``value(code) * 2**(b - 127)`` computed in f32
(f64 if asked; the product rounds only where it leaves that range), then cast to the requested dtype
(exact in bf16 too, which has f32's exponent range; fp16 holds only scales near 1).
"""
from __future__ import annotations

import torch

BLOCK = 32  # elements per E8M0 scale
E2M1_EMAX = 2  # exponent of E2M1_MAX
E8M0_BIAS = 127
E8M0_NAN = 255
# magnitude of codes 0..7; codes 8..15 are the same with the sign set
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _fail(name, msg, exc=ValueError):
    raise exc(f"{name}: {msg}")


def _round_to_e2m1_code(a: torch.Tensor) -> torch.Tensor:
    """Magnitude code (0..7, int32) of ``a >= 0``: nearest E2M1 magnitude, ties to the even code, saturated.

    The midpoints between neighbouring magnitudes are 0.25, 0.75, 1.25, 1.75, 2.5, 3.5 and 5. A value
    exactly on one goes to the neighbour with the even code: down at 0.25 (0), 1.25 (1), 2.5 (2) and 5 (4),
    up at 0.75 (1), 1.75 (2) and 3.5 (4). So the code counts the midpoints passed, strictly (``>``) where
    a tie rounds down and inclusively (``>=``) where it rounds up; everything above 5 lands on 6.
    """
    code = (a > 0.25).int()
    code += a >= 0.75
    code += a > 1.25
    code += a >= 1.75
    code += a > 2.5
    code += a >= 3.5
    code += a > 5.0
    return code


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [..., K]`` (floating, finite, K a multiple of 32) -> ``(packed uint8 [..., K/2], scales uint8
    [..., K/32])``, on w's device. Math in f32 (f64 for f64 input), exact up to the final E2M1 rounding.
    Checks the values for inf/NaN (one host sync): meant for converting weights once, not per call."""
    if not isinstance(w, torch.Tensor):
        _fail("w", f"expected a Tensor, got {type(w).__name__}", TypeError)
    if not w.is_floating_point():
        _fail("w", f"expected a floating dtype, got {w.dtype}", TypeError)
    if w.dim() < 1 or w.shape[-1] % BLOCK:
        _fail("w", f"the last dim K must be a multiple of {BLOCK} (one E8M0 scale per {BLOCK} values), "
                   f"got shape {tuple(w.shape)}")
    compute = torch.float64 if w.dtype == torch.float64 else torch.float32
    x = w.to(compute)
    if x.numel() and not bool(torch.isfinite(x).all()):
        _fail("w", "contains inf or NaN, which MXFP4 cannot hold")
    lead, k = tuple(w.shape[:-1]), w.shape[-1]
    blocks = x.reshape(*lead, k // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=-1)
    # frexp: amax = m * 2**e with m in [0.5, 1), so floor(log2(amax)) = e - 1 (exact, subnormals included)
    _, e = torch.frexp(amax)
    exponent = (e.to(torch.int32) - 1 - E2M1_EMAX).clamp(-E8M0_BIAS, E8M0_BIAS)
    exponent = torch.where(amax == 0, torch.full_like(exponent, -E8M0_BIAS), exponent)
    scales = (exponent + E8M0_BIAS).to(torch.uint8)
    # v * 2**-X (2**-X = 2**(127 - b), table entry 254 - b) is exact wherever it stays a normal number;
    # below that it is far under 0.25 and rounds to 0 anyway
    scaled = blocks * scale_values(E8M0_NAN - 1 - scales, compute).unsqueeze(-1)
    code = _round_to_e2m1_code(scaled.abs())
    code = torch.where((scaled < 0) & (code > 0), code | 8, code).to(torch.uint8).reshape(*lead, k)
    packed = code[..., 0::2] | (code[..., 1::2] << 4)
    return packed.contiguous(), scales.contiguous()


def code_values(codes: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """E2M1 codes (0..15, any int dtype) -> their values in ``dtype``. With e = (code >> 1) & 3 and
    m = code & 1, a magnitude is m/2 for e = 0 and (2 + m) * 2**(e - 2) otherwise, i.e. in quarters
    2m or (2 + m) << e; all exact. Integer ops and scalars only (no host-to-device copy: CUDA-graph safe)."""
    c = codes.to(torch.int32)
    e = (c >> 1) & 3
    m = c & 1
    quarters = torch.where(e == 0, m << 1, (m + 2) << e)
    value = quarters.to(dtype) * 0.25
    return torch.where((c & 8) != 0, -value, value)


def scale_values(scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """E8M0 bytes -> ``2**(b - 127)`` in ``dtype`` (NaN for 255), exact: built as f32 bit patterns (exponent
    field b; b = 0 is the subnormal 2**-127). Integer ops only (CUDA-graph safe)."""
    b = scales.to(torch.int32)
    bits = torch.where(b == 0, 1 << 22, b << 23)
    bits = torch.where(b == E8M0_NAN, 0x7FC00000, bits)
    return bits.view(torch.float32).to(dtype)


def dequantize_mxfp4(packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``packed uint8 [..., K/2]``, ``scales uint8 [..., K/32]`` -> ``w [..., K]`` in ``dtype``: every element
    ``value(code) * 2**(b - 127)``, computed in f32 (f64 when ``dtype`` is f64) and then cast."""
    for name, t in (("packed", packed), ("scales", scales)):
        if not isinstance(t, torch.Tensor):
            _fail(name, f"expected a Tensor, got {type(t).__name__}", TypeError)
        if t.dtype != torch.uint8:
            _fail(name, f"expected dtype torch.uint8, got {t.dtype}", TypeError)
    if packed.dim() < 1 or packed.shape[-1] % (BLOCK // 2):
        _fail("packed", f"the last dim (K/2) must be a multiple of {BLOCK // 2}, got shape {tuple(packed.shape)}")
    k = packed.shape[-1] * 2
    expected = (*packed.shape[:-1], k // BLOCK)
    if tuple(scales.shape) != expected:
        _fail("scales", f"expected shape {expected} (one per {BLOCK} elements of packed's K={k}), "
                        f"got {tuple(scales.shape)}")
    if scales.device != packed.device:
        _fail("scales", f"on {scales.device} but packed is on {packed.device}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    lo = code_values(packed & 0xF, compute)
    hi = code_values(packed >> 4, compute)
    values = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], k // BLOCK, BLOCK)
    out = values * scale_values(scales, compute).unsqueeze(-1)
    return out.reshape(*packed.shape[:-1], k).to(dtype)
