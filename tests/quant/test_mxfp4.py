"""``inductor_moe.quant.mxfp4``: hand-worked blocks (scale exponent, ties to even, saturation, signs,
all-zero blocks, E8M0 clamping at both ends), the packing order, a brute-force check on random data, the
exact inverse, and argument errors."""
from __future__ import annotations

import math

import pytest
import torch

from inductor_moe.quant.mxfp4 import E2M1_VALUES, code_values, dequantize_mxfp4, quantize_mxfp4, scale_values

from .naive_mxfp4 import naive_dequantize, naive_quantize_block


def block(*values, dtype=torch.float32, fill=0.0):
    """One block of 32: ``values`` first, then ``fill``."""
    return torch.tensor(list(values) + [fill] * (32 - len(values)), dtype=torch.float64).to(dtype)


def roundtrip(w):
    packed, scales = quantize_mxfp4(w)
    return packed, scales, dequantize_mxfp4(packed, scales, torch.float64 if w.dtype == torch.float64 else
                                            torch.float32)


# (block's first values, E8M0 byte, dequantized first values); the rest of the block is zeros
SCALE_CASES = {
    # amax 6 = 1.5 * 2**2: X = 2 - 2 = 0, the E8M0 byte 127, elements unchanged
    "amax6": ((6.0, 1.0, -3.0), 127, (6.0, 1.0, -3.0)),
    # amax 1 = 2**0: X = 0 - 2 = -2 (byte 125); 1 -> 1 / 2**-2 = 4, 0.375 -> 1.5, 0.125 -> 0.5
    "amax1": ((1.0, 0.375, -0.125, 0.0625), 125, (1.0, 0.375, -0.125, 0.0)),  # 0.0625 -> 0.25 -> tie -> 0
    # amax 3 = 1.5 * 2**1: X = -1 (byte 126): 3 -> 6
    "amax3": ((3.0, 0.5), 126, (3.0, 0.5)),
    # amax 8 = 2**3: X = 1 (byte 128): 8 -> 4, 5 -> 2.5 -> tie between 2 and 3 -> 2 (even code) -> 4
    "amax8": ((8.0, 5.0), 128, (8.0, 4.0)),
    # amax 0.5 = 2**-1: X = -3 (byte 124): 0.5 -> 4
    "amax_half": ((0.5, 0.25), 124, (0.5, 0.25)),
    # amax 7.9: floor(log2 7.9) = 2, X = 0: 7.9 is above 6 and saturates there (not rounded up to 8)
    "saturate": ((7.9, -7.5, 5.5), 127, (6.0, -6.0, 6.0)),
    # amax 2**-125: X = -127, the lowest E8M0 exponent (byte 0): 2**-125 -> 4
    "tiny_exact": ((2.0 ** -125,), 0, (2.0 ** -125,)),
    # amax 2**-126: X = -128 clamps to -127 (byte 0): 2**-126 -> 2
    "tiny_clamped": ((2.0 ** -126, 2.0 ** -128), 0, (2.0 ** -126, 2.0 ** -128)),
    # amax 2**-140 (an f32 subnormal): X clamps to -127; 2**-140 / 2**-127 = 2**-13 rounds to 0
    "tiny_lost": ((2.0 ** -140,), 0, (0.0,)),
    # amax 2**127: X = 125 (byte 252): 2**127 -> 4
    "huge": ((2.0 ** 127, -2.0 ** 126), 252, (2.0 ** 127, -2.0 ** 126)),
    # the largest f32, (2 - 2**-23) * 2**127: X = 125; (2 - 2**-23) * 4 ~ 8 saturates at 6
    "f32_max": ((torch.finfo(torch.float32).max,), 252, (6.0 * 2.0 ** 125,)),
    # all zeros: byte 0, zero codes
    "zeros": ((0.0,), 0, (0.0,)),
}


@pytest.mark.parametrize("case", list(SCALE_CASES))
def test_scale_exponent_hand_values(case):
    values, byte, expected = SCALE_CASES[case]
    packed, scales, deq = roundtrip(block(*values))
    assert scales.tolist() == [byte]
    assert deq[: len(expected)].tolist() == list(expected)
    assert deq[len(expected):].abs().sum().item() == 0.0
    if case == "zeros":
        assert packed.tolist() == [0] * 16


@pytest.mark.parametrize("values,byte,expected", [
    ((2.0 ** 200, -2.0 ** 128), 254, (6.0 * 2.0 ** 127, -2.0 ** 128)),  # X = 198 clamps to 127: 2**73 saturates
    ((2.0 ** -300,), 0, (0.0,)),  # X = -302 clamps to -127; everything rounds to 0
    ((1.0 + 2.0 ** -40, 0.3125), 125, (1.0, 0.25)),  # f64 math: 1 + 2**-40 -> 4.0000..01 -> 4
])
def test_f64_input_clamps_to_e8m0_range(values, byte, expected):
    packed, scales, deq = roundtrip(block(*values, dtype=torch.float64))
    assert scales.tolist() == [byte]
    assert deq[: len(expected)].tolist() == list(expected)


# amax 6 keeps X = 0, so each value is rounded as it is: (value, E2M1 result)
ROUNDING = [
    (0.25, 0.0), (0.2501, 0.5), (0.75, 1.0), (0.7499, 0.5), (1.25, 1.0), (1.2501, 1.5), (1.75, 2.0),
    (2.5, 2.0), (2.5001, 3.0), (2.6, 3.0), (3.5, 4.0), (3.4999, 3.0), (4.9, 4.0), (5.0, 4.0), (5.0001, 6.0),
    (-2.5, -2.0), (-5.0, -4.0), (-0.75, -1.0), (-3.5, -4.0), (1.1, 1.0), (0.1, 0.0),
]


def test_elements_round_to_nearest_even():
    """Midpoints go to the even code: 0.25 -> 0 (code 0), 0.75 -> 1 (code 2), 1.25 -> 1 (2), 1.75 -> 2 (4),
    2.5 -> 2 (4), 3.5 -> 4 (6), 5 -> 4 (6); just past a midpoint goes to the far side."""
    values = [v for v, _ in ROUNDING]
    _, scales, deq = roundtrip(block(6.0, *values))
    assert scales.tolist() == [127]
    assert deq[1: 1 + len(values)].tolist() == [r for _, r in ROUNDING]


def test_ties_are_decided_after_scaling():
    """amax 1 gives X = -2, so the midpoints are the ones above divided by 4: 0.3125 = 1.25/4 -> 1/4,
    0.625 = 2.5/4 -> 2/4, 1.25/4 + tiny -> 1.5/4, 0.875 = 3.5/4 -> 4/4."""
    _, scales, deq = roundtrip(block(1.0, 0.3125, 0.625, 0.3126, 0.875, -0.0625))
    assert scales.tolist() == [125]
    assert deq[:6].tolist() == [1.0, 0.25, 0.5, 0.375, 1.0, 0.0]


def test_codes_and_packing_order():
    """Codes are sign << 3 | magnitude index; element 2j goes to the low nibble of byte j."""
    w = block(6.0, 1.0, -0.5, 0.0, -6.0, 3.0, 4.0, -1.5)
    packed, scales = quantize_mxfp4(w)
    # codes: 6 -> 7, 1 -> 2, -0.5 -> 8|1 = 9, 0 -> 0, -6 -> 15, 3 -> 5, 4 -> 6, -1.5 -> 8|3 = 11
    assert packed[:4].tolist() == [0x27, 0x09, 0x5F, 0xB6]
    assert scales.tolist() == [127]


def test_negative_amax_and_zero_sign():
    """The scale comes from |v|; values that round to zero are stored as +0 (code 0, not 8)."""
    packed, scales = quantize_mxfp4(block(-6.0, -0.1, 0.1, -0.2))
    assert scales.tolist() == [127]
    assert packed[:2].tolist() == [0x0F, 0x00]


def test_blocks_are_independent_and_shapes():
    """[2, 3, 64]: packed [2, 3, 32], scales [2, 3, 2], every block of 32 with its own exponent."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 64, generator=g) * torch.tensor([1e-3, 1.0, 50.0]).view(1, 3, 1)
    packed, scales = quantize_mxfp4(w)
    assert packed.shape == (2, 3, 32) and scales.shape == (2, 3, 2)
    assert packed.dtype == scales.dtype == torch.uint8
    for i in range(2):
        for j in range(3):
            for b in range(2):
                p, s = quantize_mxfp4(w[i, j, 32 * b: 32 * (b + 1)].clone())
                assert torch.equal(p, packed[i, j, 16 * b: 16 * (b + 1)]) and torch.equal(s, scales[i, j, b:b + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_matches_brute_force_nearest(dtype):
    """Random blocks over a wide range of magnitudes (and exact midpoints) against the per-element brute
    force of tests/quant/naive_mxfp4.py."""
    g = torch.Generator().manual_seed(1)
    n_blocks = 48
    lo, hi = (-20, 10) if dtype == torch.float16 else (-20, 20)  # fp16 ends at 65504
    mags = torch.exp2(torch.randint(lo, hi, (n_blocks, 1), generator=g).double())
    w = torch.randn(n_blocks, 32, generator=g, dtype=torch.float64) * mags
    w[::4, 1::3] = (torch.randint(0, 14, (n_blocks // 4, 11), generator=g).double() * 0.25 + 0.25) * mags[::4]
    w[1::5, :] = 0.0
    w = w.to(dtype)
    packed, scales = quantize_mxfp4(w)
    deq = dequantize_mxfp4(packed, scales, torch.float64)
    for b in range(n_blocks):
        byte, expected = naive_quantize_block(w[b].double().tolist())
        assert scales[b].item() == byte, b
        assert deq[b].tolist() == expected, b


def test_dequantize_hand_values():
    packed = torch.tensor([[0x21, 0x9F] + [0] * 14, [0x08, 0x77] + [0] * 14, [0x11] + [0] * 15,
                           [0x01] + [0] * 15], dtype=torch.uint8)
    scales = torch.tensor([[128], [127], [0], [255]], dtype=torch.uint8)
    w = dequantize_mxfp4(packed, scales)
    assert w[0, :4].tolist() == [1.0, 2.0, -12.0, -1.0]  # codes 1, 2, 15, 9 times 2
    assert w[1, :4].tolist() == [0.0, 0.0, 6.0, 6.0] and torch.signbit(w[1, 0])  # code 8 is -0
    assert w[2, :2].tolist() == [2.0 ** -128, 2.0 ** -128]  # 0.5 * 2**-127, an f32 subnormal
    assert math.isnan(w[3, 0].item())  # E8M0 255 is NaN


def test_dequantize_matches_naive_on_every_byte():
    """Every byte value with a spread of scales (f32 and f64 results), against the table decoder."""
    packed = torch.arange(256, dtype=torch.uint8).view(8, 32)
    scales = torch.tensor([[0, 1], [60, 100], [126, 127], [128, 129], [150, 200], [240, 250], [252, 253],
                           [254, 127]], dtype=torch.uint8)
    want = naive_dequantize(packed, scales)
    assert torch.equal(dequantize_mxfp4(packed, scales, torch.float64), want)
    finite = want.abs() <= torch.finfo(torch.float32).max  # scale 253/254 times 4 or 6 leaves f32's range
    got = dequantize_mxfp4(packed, scales)
    assert got.dtype == torch.float32 and torch.equal(got.double()[finite], want[finite])
    assert torch.isinf(got.double()[~finite]).all()


def test_helpers_cover_every_code_and_scale():
    assert code_values(torch.arange(16)).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                                                      -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    assert code_values(torch.arange(8, dtype=torch.uint8), torch.float64).tolist() == list(E2M1_VALUES)
    got = scale_values(torch.arange(255, dtype=torch.uint8), torch.float64).tolist()
    assert got == [2.0 ** (b - 127) for b in range(255)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_representable_tensors_are_fixed_points(dtype):
    """quantize(dequantize(p, s)) gives back the same values (the scale may move, the values do not)."""
    g = torch.Generator().manual_seed(2)
    packed = torch.randint(0, 256, (6, 64), generator=g, dtype=torch.uint8)
    scales = torch.randint(100, 150, (6, 4), generator=g, dtype=torch.uint8)
    w = dequantize_mxfp4(packed, scales, dtype)
    _, _, again = roundtrip(w)
    assert torch.equal(again, w.float())


def test_low_precision_inputs_quantize_like_their_f32_values():
    w = torch.randn(4, 96, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    for a, b in zip(quantize_mxfp4(w), quantize_mxfp4(w.float())):
        assert torch.equal(a, b)
    assert quantize_mxfp4(w[:, :64].t().contiguous().t()[:, :32])[0].shape == (4, 16)  # strided input


@pytest.mark.parametrize("call,exc,arg", [
    (lambda: quantize_mxfp4(torch.zeros(2, 48)), ValueError, "w"),
    (lambda: quantize_mxfp4(torch.zeros(2, 32, dtype=torch.int32)), TypeError, "w"),
    (lambda: quantize_mxfp4(block(1.0, math.inf)), ValueError, "w"),
    (lambda: quantize_mxfp4(block(math.nan)), ValueError, "w"),
    (lambda: quantize_mxfp4([1.0] * 32), TypeError, "w"),
    (lambda: dequantize_mxfp4(torch.zeros(2, 16), torch.zeros(2, 1, dtype=torch.uint8)), TypeError, "packed"),
    (lambda: dequantize_mxfp4(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(2, 1)), TypeError, "scales"),
    (lambda: dequantize_mxfp4(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.uint8)),
     ValueError, "scales"),
    (lambda: dequantize_mxfp4(torch.zeros(2, 24, dtype=torch.uint8), torch.zeros(2, 1, dtype=torch.uint8)),
     ValueError, "packed"),
])
def test_argument_errors_name_the_argument(call, exc, arg):
    with pytest.raises(exc, match=rf"^{arg}: "):
        call()
