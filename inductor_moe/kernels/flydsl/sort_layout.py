"""Index and layout arithmetic of the FlyDSL moe_sorting kernels (``sort.py``), in plain Python.

The kernel builder and the NumPy emulation in ``tests/kernels/flydsl`` both read these functions, so the
layout the emulation checks is the layout the kernels are built with. Nothing here imports FlyDSL.

Vocabulary (wave = 64 lanes on gfx942/gfx950):

- **pair** ``p = token * k + slot``: one (token, slot) of ``ids`` [T, k]; ``P = T * k`` of them.
- **key** of a pair: its expert id when the pair is kept (id in [0, E), and the expert mask, if any, is
  True), else ``E`` ("dropped"). Keys take ``key_bits(E) = E.bit_length()`` bits.
- **step**: a wave takes 64 consecutive pairs at once, one per lane. Lanes past ``P`` hold key ``E``.
- **segment**: the ``steps`` consecutive steps of one wave. Wave ``w`` of workgroup ``c`` owns pairs
  ``[first, first + steps * 64)`` with ``first = (c * waves + w) * steps * 64`` (``wave_first_pair``),
  so segments (and the steps inside them) follow pair order: the order that makes the sort stable.
- **peers** of a lane: the lanes of its step with the same key, found with one ballot per key bit
  (``peers = AND_b (bit_b ? ballot_b : ~ballot_b)``). Its **rank** is the number of peers on lower lanes
  (``v_mbcnt``), the group **count** the number of peers (``v_bcnt``); the rank-0 lane leads the group.
- **histogram rows** (LDS, i32): ``hist[w * E + e]`` = pairs of expert ``e`` in wave ``w``'s segment,
  later turned into the first output position of those pairs.
- **block scan**: an exclusive prefix sum over the threads of a workgroup: ``v += dpp(v, row_shr:s)``
  for s = 1, 2, 4, 8 (``bound_ctrl``: lanes with no source add 0) scans each 16-lane row;
  ``v_readlane`` of lanes 15/31/47/63 gives the row totals, added to later rows; each wave's total goes
  through LDS to the later waves after one barrier.

Paths (``path_for(P)``):

- ``tiny`` (P <= ``TINY_MAX_PAIRS`` = 64, decode: T <= 64 // k, e.g. T <= 8 at k = 8, T <= 16 at k <= 4):
  one launch of ONE wave; lane ``l`` holds pair ``l`` (one step, no segment walk) and ``tiny_epl(E) =
  ceil(E / 64)`` consecutive expert counters ``tiny_expert(l, j) = l * epl + j`` of a 64 * epl i32 LDS
  array ``start``. (1) every lane zeroes its counters, each group's leader stores its group count (a
  plain store: one step, so no read-modify-write); (2) each lane pads its counters to ``block_m``, the
  wave scan (the block scan's DPP + ``v_readlane`` half, no LDS slot) of their sums gives run starts, which
  overwrite the counters; lane 0 writes ``num_valid``; (3) a kept pair goes to ``start[key] + rank`` and
  its leader writes its run's pads; the tail in ``tiny_tail_vec(block_m)``-entry stores (4 when block_m % 4
  == 0: ``num_valid[0]`` and L are then multiples of 4). Phases are separated by ``fx.barrier()``, which
  LLVM lowers to a wave barrier (no ``s_barrier``) for a one-wave workgroup: LDS operations of one wave
  complete in order, the barrier only orders the compiler. The total is wave-uniform (SGPR): no LDS slot.
- ``small`` (``TINY_MAX_PAIRS`` < P <= ``SMALL_MAX_PAIRS``): one workgroup of ``small_threads(E)`` threads
  (one expert per thread, at least 256), one launch. Count every wave's segment into its LDS row; barrier; thread e sums
  column e over the waves, pads it to ``block_m``, block scan -> run starts; rows become positions;
  pads inside runs; ``num_valid``; barrier; every wave re-walks its segment and scatters; the tail.
- ``large``: three launches over ``chunks`` workgroups of ``CHUNK_THREADS`` threads (``CHUNK_WAVES`` waves
  of ``steps`` steps each, steps chosen so that chunks <= ``MAX_CHUNKS``) and an int32 workspace
  ``ws`` [chunks, E]:
  1. count (grid ``chunks``): the workgroup's per-expert pair counts -> ``ws[c, e]``;
  2. scan (one workgroup of ``SCAN_THREADS``): thread (row, col) sums ``ws[c, col]`` over its rows'
     chunks (``scan_chunk_range``); per-expert totals, padded, block scan -> run starts; ``ws[c, e]``
     becomes the first position of chunk c's pairs of expert e; pads inside runs; ``num_valid``;
  3. scatter (grid ``chunks``): recount (as 1), rows become ``ws[c, e]`` + earlier waves' counts,
     re-walk and scatter; workgroup c pads its share of the tail (``tail_start``, ``tail_stride``).

Every output element is written exactly once: a kept pair writes its entry, its weight and, when it lands
on the first entry of a ``block_m`` block, that block's expert id; each expert's thread writes the pads
after its pairs; the tail ``[num_valid[0], L)`` and its blocks (-1) are split among the threads.

The index helpers (``pair_index``, ``wave_first_pair``, ``packed_entry``, ``pad_value``, ``padded_count``,
``tail_start``, ``tail_stride``) are plain operators: the kernels call them on FlyDSL values, the emulation
on NumPy arrays. The checks raise ``ValueError`` naming the constraint a bad argument violates.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..reference.sort import TOKEN_BITS, sorted_length
from .layout import _fail, check_arch, next_pow2

WAVE = 64
MAX_EXPERTS = 512  # one expert per thread in the scans (workgroups of at most 512 threads)
MAX_TOP_K = 127  # slot field of a packed entry
MAX_TOKENS = 1 << TOKEN_BITS
# One wave holding one pair per lane up to this many pairs (the seed's "T <= 16" decode path; here bounded
# by pairs, so the kernel has no loop over steps and loads each id once).
TINY_MAX_PAIRS = WAVE
# One workgroup up to this many pairs (T <= 256 at k = 8), three launches above. Not measured: no AMD
# GPU has run these kernels; tune it there.
SMALL_MAX_PAIRS = 2048
SMALL_MIN_THREADS = 256
CHUNK_WAVES = 4  # waves per workgroup of the count and scatter kernels
CHUNK_THREADS = CHUNK_WAVES * WAVE
MAX_CHUNKS = 64  # bounds the scan kernel's serial walk over chunks
SCAN_THREADS = 512
MAX_SCAN_ROWS = 32
ROW_LANES = 16
SCAN_SHIFTS = (1, 2, 4, 8)
DPP_ROW_SHR = {1: 0x111, 2: 0x112, 4: 0x114, 8: 0x118}  # GFX9 DPP control words row_shr:1..8
ROW_LAST_LANES = (15, 31, 47, 63)  # v_readlane sources: the inclusive total of each 16-lane row
IDS_DTYPES = {"i32": 4, "i64": 8}
MAX_BYTE_OFFSET = 2**31 - 1  # buffer offsets are computed in signed 32-bit arithmetic
PATHS = ("tiny", "small", "large")


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        _fail(f"{name}: must be an int in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")
    return value


def key_bits(num_experts: int) -> int:
    """Bits of a key in [0, E] (E: a dropped pair): one ballot per bit."""
    _int("num_experts", num_experts, 1, MAX_EXPERTS)
    return num_experts.bit_length()


def pad_value(tokens: int, top_k: int) -> int:
    """``(k << 24) | T``: the value of every padding entry of ``sorted_token_ids``."""
    return (top_k << TOKEN_BITS) | tokens


def packed_entry(pair: int, top_k: int) -> int:
    """``(slot << 24) | token`` of pair ``p = token * k + slot``."""
    token, slot = divmod(pair, top_k)
    return (slot << TOKEN_BITS) | token


def padded_count(count: int, block_m: int) -> int:
    return (count + block_m - 1) // block_m * block_m


def small_threads(num_experts: int) -> int:
    """Threads of the one-workgroup path: one per expert, a multiple of the wave, at least 256."""
    _int("num_experts", num_experts, 1, MAX_EXPERTS)
    return max(SMALL_MIN_THREADS, -(-num_experts // WAVE) * WAVE)


def scan_cols(num_experts: int) -> int:
    """Columns (experts, a power of two) of the scan kernel's thread grid."""
    _int("num_experts", num_experts, 1, MAX_EXPERTS)
    return next_pow2(num_experts)


def scan_rows(num_experts: int) -> int:
    """Rows of the scan kernel's thread grid: each row sums a contiguous range of chunks."""
    return min(MAX_SCAN_ROWS, SCAN_THREADS // scan_cols(num_experts))


def scan_coords(tid: int, num_experts: int) -> tuple[int, int]:
    """(row, col) of scan thread ``tid``; the thread serves expert ``col`` when col < E and row < rows."""
    _int("tid", tid, 0, SCAN_THREADS - 1)
    cols = scan_cols(num_experts)
    return tid // cols, tid % cols


def chunks_per_row(chunks: int, rows: int) -> int:
    return -(-chunks // rows)


def scan_chunk_range(row: int, chunks: int, rows: int) -> tuple[int, int]:
    """Chunks [start, stop) that scan row ``row`` walks (empty for rows past the chunks)."""
    per = chunks_per_row(chunks, rows)
    start = min(chunks, row * per)
    return start, min(chunks, start + per)


def wave_first_pair(chunk: int, wave: int, steps: int, waves: int) -> int:
    """First pair of the segment of wave ``wave`` of workgroup ``chunk`` (segments follow pair order)."""
    return (chunk * waves + wave) * steps * WAVE


def pair_index(chunk: int, wave: int, step: int, lane: int, steps: int, waves: int) -> int:
    return wave_first_pair(chunk, wave, steps, waves) + step * WAVE + lane


def dpp_row_shr_source(lane: int, shift: int) -> int:
    """Lane that ``row_shr:shift`` reads into ``lane``, or -1 (bound_ctrl: reads 0) at a row's start."""
    if shift not in DPP_ROW_SHR:
        _fail(f"shift: must be one of {tuple(DPP_ROW_SHR)}, got {shift}")
    return lane - shift if lane % ROW_LANES >= shift else -1


def tail_start(chunk: int, tid: int, threads: int) -> int:
    """Offset past ``num_valid[0]`` (entries) or its block (blocks) of a thread's first tail element."""
    return chunk * threads + tid


def tail_stride(chunks: int, threads: int) -> int:
    return chunks * threads


def path_for(pairs: int) -> str:
    """tiny -> small -> large by P = T * k."""
    if pairs <= TINY_MAX_PAIRS:
        return "tiny"
    return "small" if pairs <= SMALL_MAX_PAIRS else "large"


def tiny_epl(num_experts: int) -> int:
    """Expert counters per lane of the tiny path's one wave (1 up to 64 experts, 8 at 512)."""
    _int("num_experts", num_experts, 1, MAX_EXPERTS)
    return -(-num_experts // WAVE)


def tiny_expert(lane: int, j: int, epl: int) -> int:
    """The expert of counter ``j`` of ``lane`` (consecutive per lane, so the wave scan keeps expert order)."""
    return lane * epl + j


def tiny_tail_vec(block_m: int) -> int:
    """Entries per tail store of the tiny path: 4 (dwordx4) when block_m % 4 == 0, else 1."""
    _int("block_m", block_m, 1)
    return 4 if block_m % 4 == 0 else 1


def tiny_tail_start(lane: int, vec: int) -> int:
    """Offset past ``num_valid[0]`` of a lane's first tail store (entries)."""
    return lane * vec


def tiny_tail_stride(vec: int) -> int:
    return WAVE * vec


def check_offsets(tokens: int, top_k: int, num_experts: int, block_m: int, ids_dtype: str = "i32") -> None:
    """Byte offsets of every buffer access must fit a signed 32-bit int."""
    length = sorted_length(tokens, top_k, num_experts, block_m)
    if length * 4 > MAX_BYTE_OFFSET or tokens * top_k * IDS_DTYPES[ids_dtype] > MAX_BYTE_OFFSET:
        _fail(f"tokens: {tokens} tokens x top_k {top_k} (block_m {block_m}) need byte offsets past 2**31")


def lds_bytes(fields: dict[str, int]) -> int:
    """Bytes of an LDS struct of i32 arrays, each 16-byte aligned (as the kernels declare them)."""
    return sum(-(-4 * n // 16) * 16 for n in fields.values())


@dataclass(frozen=True)
class SortPlan:
    """Compile-time shape of one kernel family: everything but T."""

    num_experts: int
    top_k: int
    block_m: int
    has_mask: bool
    ids_dtype: str  # "i32" | "i64"
    arch: str
    key_bits: int
    small_threads: int
    scan_cols: int
    scan_rows: int

    @property
    def ids_bytes(self) -> int:
        return IDS_DTYPES[self.ids_dtype]

    @property
    def small_waves(self) -> int:
        return self.small_threads // WAVE

    @property
    def experts_per_chunk_thread(self) -> int:
        """Experts each count/scatter thread folds over the waves (E > 256 needs two)."""
        return -(-self.num_experts // CHUNK_THREADS)

    @property
    def tiny_epl(self) -> int:
        return tiny_epl(self.num_experts)

    @property
    def tiny_tail_vec(self) -> int:
        return tiny_tail_vec(self.block_m)

    def tiny_lds(self) -> dict[str, int]:
        return {"start": WAVE * self.tiny_epl}

    def small_lds(self) -> dict[str, int]:
        return {"hist": self.small_waves * self.num_experts, "wave_total": self.small_waves}

    def chunk_lds(self) -> dict[str, int]:
        return {"hist": CHUNK_WAVES * self.num_experts}

    def scan_lds(self) -> dict[str, int]:
        return {"part": self.scan_rows * self.scan_cols, "run_start": self.scan_cols,
                "wave_total": SCAN_THREADS // WAVE}


def check_shape(num_experts: int, top_k: int, block_m: int, ids_dtype: str = "i32") -> None:
    """The (E, k, block_m, ids dtype) the kernels take: E <= 512, k <= min(E, 127), block_m >= 1."""
    _int("num_experts", num_experts, 1, MAX_EXPERTS)
    _int("top_k", top_k, 1, min(num_experts, MAX_TOP_K))
    _int("block_m", block_m, 1)
    if ids_dtype not in IDS_DTYPES:
        _fail(f"ids_dtype: must be one of {tuple(IDS_DTYPES)}, got {ids_dtype!r}")


def sort_plan(num_experts: int, top_k: int, block_m: int, has_mask: bool, ids_dtype: str, arch: str) -> SortPlan:
    """The checked plan of one (E, k, block_m, mask, ids dtype, arch)."""
    check_arch(arch)
    check_shape(num_experts, top_k, block_m, ids_dtype)
    return SortPlan(num_experts=num_experts, top_k=top_k, block_m=block_m, has_mask=bool(has_mask),
                    ids_dtype=ids_dtype, arch=arch, key_bits=key_bits(num_experts),
                    small_threads=small_threads(num_experts), scan_cols=scan_cols(num_experts),
                    scan_rows=scan_rows(num_experts))


@dataclass(frozen=True)
class SortSizes:
    """Run-time sizes of one call (kernel arguments and grids): they depend on T only."""

    tokens: int
    pairs: int
    length: int  # entries of sorted_token_ids / sorted_weights
    blocks: int  # entries of sorted_expert_ids
    pad_value: int
    path: str
    steps: int  # steps per wave
    chunks: int  # workgroups of the count / scatter kernels (1 on the tiny and small paths)
    chunks_per_row: int  # chunks each scan row walks (large path)


def sort_sizes(plan: SortPlan, tokens: int, path: str | None = None) -> SortSizes:
    """Sizes for ``tokens`` tokens; ``path`` overrides ``path_for`` (tests); the large path needs P >= 1."""
    _int("tokens", tokens, 0, MAX_TOKENS - 1)
    check_offsets(tokens, plan.top_k, plan.num_experts, plan.block_m, plan.ids_dtype)
    pairs = tokens * plan.top_k
    path = path or path_for(pairs)
    if path not in PATHS:
        _fail(f"path: must be one of {PATHS}, got {path!r}")
    length = sorted_length(tokens, plan.top_k, plan.num_experts, plan.block_m)
    if path == "tiny":
        if pairs > TINY_MAX_PAIRS:
            _fail(f"tokens: the tiny path holds at most {TINY_MAX_PAIRS} pairs, got {tokens} x {plan.top_k}")
        steps, chunks = 1, 1
    elif path == "small":
        steps, chunks = -(-pairs // plan.small_threads), 1
    else:
        if pairs < 1:
            _fail("tokens: the large path needs at least one pair")
        steps = -(-pairs // (MAX_CHUNKS * CHUNK_THREADS))
        chunks = -(-pairs // (steps * CHUNK_THREADS))
    return SortSizes(tokens=tokens, pairs=pairs, length=length, blocks=length // plan.block_m,
                     pad_value=pad_value(tokens, plan.top_k), path=path, steps=steps, chunks=chunks,
                     chunks_per_row=chunks_per_row(chunks, plan.scan_rows))
