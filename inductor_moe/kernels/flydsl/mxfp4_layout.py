"""Tile plan and index arithmetic of the FlyDSL A16W4 MoE GEMMs (``experts_mxfp4.py``), in plain Python.

The kernel builder and the NumPy emulation in ``tests/kernels/flydsl`` both read these functions, so the
layout the emulation checks is the layout the kernels are built with. Nothing here imports FlyDSL. The
index helpers and the dequantization (``e2m1_word_to_bf16x8``, ``e8m0_f32_bits``) are written with plain
operators plus injected ``perm`` / ``where`` functions: the kernels call them on FlyDSL values (with
``v_perm_b32`` and selects), the emulation on NumPy arrays.

Weights (``inductor_moe.quant.mxfp4``): packed FP4 ``q`` [E, N, K/2] uint8 (element 2j in the low nibble of
byte j), E8M0 scales ``s`` [E, N, K/32] uint8. Both stages read them as they are: no repacking.

**Tile plan** (one configuration, both stages, both archs). A workgroup is ``WAVES`` = 4 waves (256
threads) and owns one ``BLOCK_M`` = 32-row block of the sorted layout (one expert; the sort's ``block_m``)
times ``WG_N`` = 128 output columns; wave ``w`` owns columns ``w * 32 .. w * 32 + 31`` of them, i.e.
``N_TILES`` = 2 MFMA column tiles of 16, and all ``M_TILES`` = 2 row tiles of 16. Stage 1 holds a gate
and an up accumulator per tile (its 128 columns are intermediate columns n: w13 rows n and I + n). Columns
past N (2880 = 22.5 * 128) load a clamped row and are not stored.

**K loop.** K (H for stage 1, I for stage 2) is walked in scale blocks of 32 (``SCALE_BLOCK``), ``KB``
of them per loop iteration (2 when K/32 is even, else 1). Inside a block, lane ``l`` of a wave holds the
8 consecutive k ``8 * (l // 16) .. + 7`` of row / column ``l % 16`` of its tiles: that is the operand
layout of ``v_mfma_f32_16x16x32_bf16`` (gfx950: one MFMA per tile and block) and, split in halves of 4,
of two ``v_mfma_f32_16x16x16_bf16`` (gfx942). Every MFMA's reduction thus stays inside one scale block:
the block's product goes into a fresh partial accumulator which is then folded into the tile's
accumulator times the column's scale (``acc += partial * 2**(s - 127)``: f32 ``v_pk_mul_f32`` then
``v_pk_add_f32``, unfused). So a lane
loads per block one dword of FP4 (8 codes) per column tile, one byte of scale per column tile, and 16
bytes of bf16 activations per row tile, all straight from global memory (buffer loads; no LDS).

**Dequantization** in registers, unscaled (the scale is applied to the partial sums): an E2M1 code is
exactly a bf16 value. gfx942 (and the reference design): ``e2m1_word_to_bf16x8`` splits the dword into
even and odd nibbles, ``v_perm_b32`` gathers them into code order, two ``v_perm_b32`` table lookups give
the bf16 low and high bytes of the magnitudes, the sign bit is OR-ed in, two ``v_perm_b32`` interleave
the bytes into bf16 pairs. gfx950 uses ``v_cvt_scalef32_pk_bf16_fp4`` (2 codes per instruction, scale 1.0).

**MFMA C layout**: lane ``l`` holds rows ``4 * (l // 16) + i`` (i = 0..3) of column ``l % 16``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .layout import _fail, check_arch

WAVE = 64
WAVES = 4
THREADS = WAVES * WAVE
BLOCK_M = 32  # rows of the sorted layout per workgroup (= the sort's block_m)
MFMA_M = MFMA_N = 16
M_TILES = BLOCK_M // MFMA_M  # 2
N_TILES = 2  # MFMA column tiles per wave
WAVE_N = N_TILES * MFMA_N  # 32
WG_N = WAVES * WAVE_N  # 128
SCALE_BLOCK = 32  # values per E8M0 scale
K_PER_LANE = 8  # consecutive k of one block a lane holds (one dword of FP4, 16 bytes of bf16)
LANE_GROUPS = WAVE // MFMA_N  # 4 groups of 16 lanes: group g holds k 8g .. 8g+7 of a block
MAX_BYTE_OFFSET = 2**31 - 1  # buffer offsets are 32-bit
STAGES = (1, 2)

# MFMA per arch: (instruction, k per instruction, bf16 values per lane per instruction)
MFMA = {"gfx942": ("v_mfma_f32_16x16x16_bf16", 16, 4), "gfx950": ("v_mfma_f32_16x16x32_bf16", 32, 8)}

# --- E2M1 -> bf16 with v_perm_b32 --------------------------------------------------------------------
# bf16 bit patterns of the 8 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (codes 0..7; bit 3 is the sign):
E2M1_BF16 = (0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0)


def _table(byte_of) -> tuple[int, int]:
    """(low dword, high dword) of an 8-byte table: byte c = byte_of(E2M1_BF16[c])."""
    b = [byte_of(v) for v in E2M1_BF16]
    return (b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24, b[4] | b[5] << 8 | b[6] << 16 | b[7] << 24)


LUT_LO = _table(lambda v: v & 0xFF)  # low bytes of the bf16 magnitudes
LUT_HI = _table(lambda v: v >> 8)  # high bytes
NIBBLE_MASK = 0x0F0F0F0F
MAG_MASK = 0x07070707
SIGN_MASK = 0x08080808
# v_perm_b32 selectors (D.byte[i] = {S0:S1}.byte[sel.byte[i]], bytes 0-3 = S1, 4-7 = S0)
SEL_INTERLEAVE_LO = 0x05010400  # [S1.b0, S0.b0, S1.b1, S0.b1]
SEL_INTERLEAVE_HI = 0x07030602  # [S1.b2, S0.b2, S1.b3, S0.b3]

E8M0_BIAS = 127
E8M0_NAN = 255
F32_NAN = 0x7FC00000
F32_MIN_SUBNORMAL_2_127 = 1 << 22  # 2**-127


def perm_py(s0: int, s1: int, sel: int) -> int:
    """v_perm_b32 on Python ints (selector bytes 0..7 only, which is all the kernels use)."""
    data = (s0 & 0xFFFFFFFF) << 32 | (s1 & 0xFFFFFFFF)
    out = 0
    for i in range(4):
        b = (sel >> (8 * i)) & 0xFF
        if b > 7:
            _fail(f"perm_py: selector byte {b:#x} outside 0..7")
        out |= ((data >> (8 * b)) & 0xFF) << (8 * i)
    return out


def e2m1_word_to_bf16x8(w, perm, shr=None):
    """One dword of 8 FP4 codes (element 2j in the low nibble of byte j) -> 4 dwords, dword j holding the
    bf16 values of elements 2j (low half) and 2j + 1 (high half), unscaled (exact: every E2M1 value is a
    bf16). ``perm(s0, s1, sel)`` is v_perm_b32; ``shr`` a logical right shift (default ``>>``).

    even = w & 0x0F0F0F0F (codes 0, 2, 4, 6), odd = (w >> 4) & 0x0F0F0F0F; code order by interleaving
    them; per half: magnitude -> LUT bytes (two table lookups), sign into the high byte, interleave."""
    shr = shr or (lambda x, n: x >> n)
    even = w & NIBBLE_MASK
    odd = shr(w, 4) & NIBBLE_MASK
    out = []
    for sel in (SEL_INTERLEAVE_LO, SEL_INTERLEAVE_HI):
        codes = perm(odd, even, sel)  # bytes: codes of 4 consecutive elements
        mag = codes & MAG_MASK
        lo = perm(LUT_LO[1], LUT_LO[0], mag)
        hi = perm(LUT_HI[1], LUT_HI[0], mag) | ((codes & SIGN_MASK) << 4)
        out.append(perm(hi, lo, SEL_INTERLEAVE_LO))  # elements 0, 1 of the four
        out.append(perm(hi, lo, SEL_INTERLEAVE_HI))  # elements 2, 3
    return out


def e8m0_f32_bits(s, where):
    """E8M0 byte -> f32 bits of 2**(s - 127): s << 23, the subnormal 2**-127 for s = 0, NaN for s = 255.
    ``where(cond, a, b)`` is a select."""
    bits = s << 23
    bits = where(s == 0, F32_MIN_SUBNORMAL_2_127, bits)
    return where(s == E8M0_NAN, F32_NAN, bits)


# --- lanes, rows, columns, offsets ----------------------------------------------------------------------

def lane_row(lane):
    """Row (A) / column (B, C) of its 16-wide tile that a lane holds."""
    return lane % MFMA_N


def lane_group(lane):
    """Group g of a lane: it holds k 8g .. 8g+7 of each scale block, and C rows 4g .. 4g+3."""
    return lane // MFMA_N


def c_row(lane, i):
    """Row of tile that C element i (0..3) of a lane is."""
    return 4 * lane_group(lane) + i


def block_row(m_tile, lane):
    """Row in the 32-row sorted block of lane's A fragment of row tile ``m_tile``."""
    return m_tile * MFMA_M + lane_row(lane)


def tile_column(n_block, wave, n_tile, lane):
    """Output column (stage 1: intermediate column; stage 2: hidden column) of a lane's B / C fragment."""
    return n_block * WG_N + wave * WAVE_N + n_tile * MFMA_N + lane_row(lane)


def a_byte_offset(row_bytes, kblock, lane):
    """Byte offset of a lane's 8 bf16 of scale block ``kblock`` in a row starting at ``row_bytes``."""
    return row_bytes + (kblock * SCALE_BLOCK + K_PER_LANE * lane_group(lane)) * 2


def q_byte_offset(expert, row, kblock, lane, n_rows, k):
    """Byte offset of a lane's dword of FP4 codes (k = 32 kblock + 8g .. + 7) of weight row ``row``."""
    return expert * (n_rows * (k // 2)) + row * (k // 2) + kblock * (SCALE_BLOCK // 2) + (K_PER_LANE // 2) * lane_group(lane)


def s_byte_offset(expert, row, kblock, n_rows, k):
    """Byte offset of the E8M0 scale of (row, scale block ``kblock``)."""
    return expert * (n_rows * (k // SCALE_BLOCK)) + row * (k // SCALE_BLOCK) + kblock


def pair_row(token, slot, top_k):
    """Stage 2's output row of a (token, slot): rows [T*k, H], summed over slots in order afterwards."""
    return token * top_k + slot


@dataclass(frozen=True)
class Mxfp4Plan:
    """Compile-time shape of one stage's kernel: everything but T."""

    stage: int
    arch: str
    num_experts: int
    n: int  # output columns: I (stage 1) or H (stage 2)
    k: int  # reduction: H (stage 1) or I (stage 2)
    n_rows: int  # rows of the weight: 2I (stage 1: gate rows then up rows) or H (stage 2)
    kb: int  # scale blocks per K-loop iteration
    mfma: str
    mfma_k: int
    mfma_vals: int  # bf16 values per lane per MFMA

    @property
    def k_blocks(self) -> int:
        return self.k // SCALE_BLOCK

    @property
    def iters(self) -> int:
        return self.k_blocks // self.kb

    @property
    def n_blocks(self) -> int:
        """Workgroups along N."""
        return -(-self.n // WG_N)

    @property
    def mfma_per_block(self) -> int:
        """MFMAs per (row tile, column tile, scale block)."""
        return SCALE_BLOCK // self.mfma_k

    @property
    def accumulators(self) -> int:
        """Column-tile accumulator sets per wave (stage 1: gate and up)."""
        return N_TILES * (2 if self.stage == 1 else 1)

    @property
    def mfma_per_iter(self) -> int:
        """MFMA instructions per wave per K-loop iteration (the loop body)."""
        return M_TILES * self.accumulators * self.kb * self.mfma_per_block

    @property
    def loads_per_iter(self) -> dict:
        """Buffer loads per lane per K-loop iteration: dwordx4 (activations), dword (FP4), ubyte (scales)."""
        return {"dwordx4": M_TILES * self.kb, "dword": self.accumulators * self.kb,
                "ubyte": self.accumulators * self.kb}

    @property
    def lds_bytes(self) -> int:
        return 0  # operands go global -> registers; waves share activation lines through L1/L2

    def name(self) -> str:
        return f"moe_mxfp4_s{self.stage}_e{self.num_experts}_n{self.n}_k{self.k}_{self.arch}"


def check_dims(num_experts: int, hidden: int, inter: int) -> None:
    for name, v in (("num_experts", num_experts), ("hidden", hidden), ("inter", inter)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail(f"{name}: must be an int >= 1, got {v!r}")
    for name, v in (("hidden", hidden), ("inter", inter)):
        if v % SCALE_BLOCK:
            _fail(f"{name}: must be a multiple of {SCALE_BLOCK} (one E8M0 scale per {SCALE_BLOCK}), got {v}")
    if num_experts * 2 * inter * (hidden // 2) > MAX_BYTE_OFFSET:
        _fail(f"w13: {num_experts} x {2 * inter} x {hidden // 2} bytes need byte offsets past 2**31")
    if num_experts * hidden * (inter // 2) > MAX_BYTE_OFFSET:
        _fail(f"w2: {num_experts} x {hidden} x {inter // 2} bytes need byte offsets past 2**31")


def mxfp4_plan(stage: int, num_experts: int, hidden: int, inter: int, arch: str) -> Mxfp4Plan:
    """The checked plan of one stage for (E, H, I, arch)."""
    check_arch(arch)
    if stage not in STAGES:
        _fail(f"stage: must be one of {STAGES}, got {stage!r}")
    check_dims(num_experts, hidden, inter)
    n, k, n_rows = (inter, hidden, 2 * inter) if stage == 1 else (hidden, inter, hidden)
    mfma, mfma_k, vals = MFMA[arch]
    kb = 2 if (k // SCALE_BLOCK) % 2 == 0 else 1
    return Mxfp4Plan(stage=stage, arch=arch, num_experts=num_experts, n=n, k=k, n_rows=n_rows, kb=kb, mfma=mfma,
                     mfma_k=mfma_k, mfma_vals=vals)


def row_bytes_limit(tokens: int, top_k: int, num_experts: int, hidden: int, inter: int) -> None:
    """Activation-side buffers must fit 32-bit byte offsets too."""
    from ..reference.sort import sorted_length

    length = sorted_length(tokens, top_k, num_experts, BLOCK_M)
    if max(tokens * hidden * 2, length * inter * 2, tokens * top_k * hidden * 4) > MAX_BYTE_OFFSET:
        _fail(f"tokens: {tokens} tokens x top_k {top_k} need byte offsets past 2**31")
