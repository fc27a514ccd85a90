"""Index arithmetic of the FlyDSL two-stage MoE GEMMs (``experts.py``), in plain Python.

The kernel builder calls these functions at trace time (with FlyDSL integers) and the NumPy emulation in
``tests/kernels/flydsl/emulate_experts.py`` calls them with Python / NumPy integers, so the emulation walks
exactly the offsets the kernels compute. Nothing here imports FlyDSL or torch.

Tile plan (one plan per (H, I, top_k, block_m, arch); bf16 in, f32 accumulate):

- A workgroup is 256 threads = 4 waves and owns one ``block_m`` block of the sort output (grid x) and
  ``TILE_N`` = 64 output columns (grid y): stage 1 columns of I (the gate *and* the up rows of w13 for
  them, so SiLU(gate) * up happens in registers), stage 2 columns of H. Wave ``w`` owns columns
  ``16 w .. 16 w + 15`` of the tile and all ``block_m`` rows (``block_m / 16`` MFMA row tiles).
- The reduction runs in K-steps of ``TILE_K`` = 64 (stage 1: K = H, stage 2: K = I), 4 MFMA
  ``v_mfma_f32_16x16x16_bf16`` (16 x 16 x 16, the ``bf16_1k`` form, on gfx942 and gfx950) per row tile
  and output matrix per K-step.
- **k order.** Inside a K-step, MFMA sub-step ``s`` (0..3) gives lane ``l`` (group ``g = l // 16``) the
  k values ``16 g + 4 s + j`` (j = 0..3) of the step for its A row ``l % 16`` and its B column ``l % 16``.
  Each (g, s, j) is a distinct k, so the 4 MFMAs sum every k of the step exactly once (a permutation of
  the k order, applied to A and B alike), and a lane's 16 values of a step are *contiguous* in memory:
  one 32-byte read from LDS (A) and one from the packed weight (B).
- **Weights (B)** are streamed from global memory straight into registers, packed once per weight
  version (``weight_cache``) into ``[E, N / 16, K / 64, 64 lanes, 16]``: the 16 values a lane needs for
  one (16-column tile, K-step) lie at ``lane * 16``, so a wave's operand for one K-step is one
  contiguous 2 KiB run. w13 [E, 2I, H] packs with N = 2I (gate tiles 0 .. I/16-1, up tiles I/16 ..),
  w2 [E, H, I] with N = H. The next K-step's B is loaded while the current one is multiplied.
- **Activations (A)** go through LDS with a ping-pong (double) buffer: two ``block_m x TILE_K`` bf16
  tiles with rows padded to ``LDS_ROW`` = 72 elements (144 bytes, so the 16 rows an MFMA reads start on
  different banks). Each K-step: issue the global loads of step i+1 (into registers), read step i's
  A operands from buffer ``i % 2``, run the MFMAs, write step i+1 into buffer ``(i+1) % 2``, one
  barrier. One barrier per step suffices: the barrier that ends step i-1 is passed only after every wave
  finished reading buffer ``(i-1) % 2 = (i+1) % 2``. The last step is peeled (no prefetch).
- **Gather (stage 1).** Thread ``t`` loads 16 bytes (8 bf16) of row ``(t // 8 + 32 j) % block_m``,
  chunk ``t % 8`` of the A tile (j < ``a_loads``; at block_m = 16 two threads load the same chunk and
  write the same LDS bytes). The row's hidden row is the token of its sort entry,
  ``entry & 0xFFFFFF``, clamped to T - 1 for padding entries (their results are never used).
- **Stage 1 epilogue:** SiLU(gate) * up in f32, rounded to bf16, to the intermediate ``[L, I]``
  (L = len(sorted_token_ids); row = sorted position). Stage 2 reads the intermediate rows of its block
  (no gather) and multiplies by ``sorted_weights[pos]`` (f32) in the epilogue.
- **Combine (deterministic, no atomics):** stage 2 writes each real entry's f32 row to a per-slot buffer
  ``[T * k, H]`` at row ``token * k + slot`` (padding rows store nothing; rows of (token, slot) pairs the
  sort dropped stay 0), then the launcher sums over k (``view(T, k, H).sum(1)``) and casts to bf16.
- Blocks at or past ``num_valid[0] / block_m`` (and blocks whose expert id is -1) exit at once, reading
  ``num_valid`` on the device (no host sync).
"""
from __future__ import annotations

from dataclasses import dataclass

WAVE = 64
THREADS = 256
WAVES = THREADS // WAVE
MFMA_M = MFMA_N = MFMA_K = 16  # v_mfma_f32_16x16x16_bf16
TILE_K = 64  # K-step
KSUB = TILE_K // MFMA_K  # MFMAs per row tile per K-step
TILE_N = WAVES * MFMA_N  # output columns per workgroup
LANE_K = TILE_K // (WAVE // MFMA_N)  # contiguous k values a lane holds per K-step (16)
LDS_PAD = 8  # bf16 elements of padding per LDS row
LDS_ROW = TILE_K + LDS_PAD
A_VEC = 8  # bf16 elements per global A load (16 bytes)
A_CHUNKS = TILE_K // A_VEC  # 16-byte chunks per A row and K-step
BLOCK_MS = (16, 32, 64)
ARCHS = ("gfx942", "gfx950")
TOKEN_BITS = 24
TOKEN_MASK = (1 << TOKEN_BITS) - 1
BF16_BYTES = 2
MAX_OFFSET = 2 ** 31  # buffer offsets are 32-bit (signed, to be safe)


@dataclass(frozen=True)
class ExpertsPlan:
    hidden: int  # H
    inter: int  # I
    top_k: int
    block_m: int
    arch: str

    @property
    def m_tiles(self) -> int:
        return self.block_m // MFMA_M

    def k_steps(self, stage: int) -> int:
        return (self.hidden if stage == 1 else self.inter) // TILE_K

    def n_tiles(self, stage: int) -> int:
        """Workgroups along the output columns (grid y)."""
        return (self.inter if stage == 1 else self.hidden) // TILE_N

    def out_cols(self, stage: int) -> int:
        return self.inter if stage == 1 else self.hidden

    def weight_rows(self, stage: int) -> int:
        """N of the packed weight (w13: 2I, w2: H)."""
        return 2 * self.inter if stage == 1 else self.hidden

    def mats(self, stage: int) -> int:
        """Output matrices per wave (stage 1: gate and up; stage 2: down)."""
        return 2 if stage == 1 else 1

    def mfma_per_kstep_wave(self, stage: int) -> int:
        return self.m_tiles * self.mats(stage) * KSUB

    def mfma_per_kstep(self, stage: int) -> int:
        """MFMAs a workgroup issues per K-step."""
        return WAVES * self.mfma_per_kstep_wave(stage)

    @property
    def a_loads(self) -> int:
        """16-byte global A loads (and LDS writes) per thread per K-step."""
        return max(1, self.block_m * A_CHUNKS // THREADS)

    def b_loads(self, stage: int) -> int:
        """32-byte B reads per lane per K-step (one per output matrix)."""
        return self.mats(stage)

    @property
    def lds_buffer_elems(self) -> int:
        return self.block_m * LDS_ROW

    @property
    def lds_buffer_bytes(self) -> int:
        return self.lds_buffer_elems * BF16_BYTES

    @property
    def lds_bytes(self) -> int:
        """Both ping-pong buffers."""
        return 2 * self.lds_buffer_bytes

    def acc_regs(self, stage: int) -> int:
        """f32 accumulator registers per lane."""
        return self.m_tiles * self.mats(stage) * 4


def check_shape(hidden: int, inter: int, top_k: int, block_m: int, arch: str = "gfx942") -> None:
    """ValueError naming the constraint the kernels do not meet."""
    if arch not in ARCHS:
        raise ValueError(f"arch: FlyDSL experts kernels target {ARCHS}, got {arch!r}")
    if block_m not in BLOCK_MS:
        raise ValueError(f"block_m: the tile plan takes {BLOCK_MS}, got {block_m}")
    if hidden <= 0 or hidden % TILE_K or hidden % TILE_N:
        raise ValueError(f"hidden size H={hidden}: must be a positive multiple of {TILE_K}")
    if inter <= 0 or inter % TILE_K or inter % TILE_N:
        raise ValueError(f"intermediate size I={inter}: must be a positive multiple of {TILE_K}")
    if not 1 <= top_k < 128:
        raise ValueError(f"top_k={top_k}: must be in [1, 127]")


def experts_plan(hidden: int, inter: int, top_k: int, block_m: int, arch: str) -> ExpertsPlan:
    check_shape(hidden, inter, top_k, block_m, arch)
    return ExpertsPlan(hidden, inter, top_k, block_m, arch)


def check_offsets(tokens: int, num_experts: int, hidden: int, inter: int, top_k: int, length: int) -> None:
    """ValueError when a buffer's byte offsets may not fit 31 bits."""
    sizes = {
        "w13": num_experts * 2 * inter * hidden * BF16_BYTES,
        "w2": num_experts * hidden * inter * BF16_BYTES,
        "hidden": tokens * hidden * BF16_BYTES,
        "intermediate": length * inter * BF16_BYTES,
        "per-slot buffer": tokens * top_k * hidden * 4,
    }
    for name, size in sizes.items():
        if size >= MAX_OFFSET:
            raise ValueError(f"{name}: {size} bytes; buffer offsets must stay below 2**31")


# ------------------------------------------------------------------------------------------------------
# sort entries


def decode_entry(entry):
    """(token, slot) of a sort entry ``(slot << 24) | token``."""
    return entry & TOKEN_MASK, entry >> TOKEN_BITS


def gather_row(token, n_tokens):
    """The hidden row a sort entry reads: its token, or T - 1 for padding (token == T)."""
    return min_(token, n_tokens - 1)


def slot_row(token, slot, top_k):
    """Row of the per-slot combine buffer [T * k, H] for a real entry."""
    return token * top_k + slot


def block_valid(block, expert, valid_entries, block_m):
    """Whether a workgroup's sort block holds work (used by the kernels as a device-side test)."""
    return (block * block_m < valid_entries) & (expert >= 0)


def min_(a, b):
    """min that works on Python ints, NumPy arrays and FlyDSL values (at trace time)."""
    if any(type(v).__module__.startswith("flydsl") for v in (a, b)):
        import flydsl.expr as fx  # only reached at trace time

        return fx.min(a, b)
    try:
        import numpy as np

        return np.minimum(a, b)
    except ImportError:  # pragma: no cover
        return a if a < b else b


# ------------------------------------------------------------------------------------------------------
# weight preshuffle: W [N, K] -> [N/16, K/64, 64 lanes, 16]


def packed_index(n, k, K):
    """Element index of W[n, k] in the packed layout (N = rows, K = row length)."""
    nt, c = n // MFMA_N, n % MFMA_N
    kt, kk = k // TILE_K, k % TILE_K
    g, e = kk // LANE_K, kk % LANE_K
    lane = g * MFMA_N + c
    return ((nt * (K // TILE_K) + kt) * WAVE + lane) * LANE_K + e


def b_lane_offset(n_tile, k_step, lane, K):
    """First element of the 16 a lane reads for (16-column tile, K-step) (== packed_index of its first k)."""
    return ((n_tile * (K // TILE_K) + k_step) * WAVE + lane) * LANE_K


def b_column(n_tile, lane):
    """The weight row (output column) a lane's B operand belongs to."""
    return n_tile * MFMA_N + lane % MFMA_N


def expert_weight_elems(plan: ExpertsPlan, stage: int) -> int:
    """Packed elements per expert (its offset stride)."""
    return plan.weight_rows(stage) * (plan.hidden if stage == 1 else plan.inter)


def weight_tiles(plan: ExpertsPlan, stage: int, n_block, wave):
    """Packed 16-column tiles a wave multiplies: stage 1 (gate, up), stage 2 (down,)."""
    col_tile = n_block * WAVES + wave
    if stage == 1:
        return (col_tile, plan.inter // MFMA_N + col_tile)
    return (col_tile,)


# ------------------------------------------------------------------------------------------------------
# A tile: global -> registers -> LDS, LDS -> MFMA operands


def a_load_row(plan: ExpertsPlan, tid, j):
    """Row of the A tile that thread ``tid`` loads in its load ``j`` (0 <= j < plan.a_loads)."""
    return (tid // A_CHUNKS + (THREADS // A_CHUNKS) * j) % plan.block_m


def a_load_chunk(tid):
    """16-byte chunk (8 bf16) of the row that thread ``tid`` loads."""
    return tid % A_CHUNKS


def a_global_col(k_step, tid):
    """First column (k) of the thread's chunk in K-step ``k_step``."""
    return k_step * TILE_K + a_load_chunk(tid) * A_VEC


def lds_buffer_base(plan: ExpertsPlan, buf):
    """Element offset of ping-pong buffer ``buf`` (0 or 1)."""
    return buf * plan.lds_buffer_elems


def lds_write_offset(plan: ExpertsPlan, buf, row, chunk):
    """Element offset in LDS where the chunk ``chunk`` of A row ``row`` goes."""
    return lds_buffer_base(plan, buf) + row * LDS_ROW + chunk * A_VEC


def lds_read_offset(plan: ExpertsPlan, buf, m_tile, lane):
    """Element offset of the 16 contiguous A values lane ``lane`` reads for row tile ``m_tile``."""
    row = m_tile * MFMA_M + lane % MFMA_M
    return lds_buffer_base(plan, buf) + row * LDS_ROW + (lane // MFMA_M) * LANE_K


def operand_k(sub, lane, j):
    """k (inside the K-step) of element j of lane ``lane``'s operand in MFMA sub-step ``sub``."""
    return (lane // MFMA_M) * LANE_K + sub * 4 + j


# ------------------------------------------------------------------------------------------------------
# MFMA 16x16x16 output fragment and epilogue


def acc_row(m_tile, lane, r):
    """Row (in the block) of accumulator element r (0..3) of lane ``lane`` for row tile ``m_tile``."""
    return m_tile * MFMA_M + (lane // MFMA_N) * 4 + r


def acc_col(n_block, wave, lane):
    """Output column of a lane's accumulator (stage 1: column of I; stage 2: column of H)."""
    return n_block * TILE_N + wave * MFMA_N + lane % MFMA_N


def sorted_pos(block, row, block_m):
    return block * block_m + row


def sizes(plan: ExpertsPlan, length: int) -> dict:
    """Launch sizes for a sort output of ``length`` entries."""
    blocks = length // plan.block_m
    return {"blocks": blocks, "grid1": (blocks, plan.n_tiles(1), 1), "grid2": (blocks, plan.n_tiles(2), 1)}
