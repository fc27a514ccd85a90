"""Index and LDS arithmetic of the FlyDSL fused route+sort kernel (``route_sort.py``), in plain Python.

The kernel builder and the NumPy emulation in ``tests/kernels/flydsl`` both read these functions, so the
layout the emulation checks is the layout the kernel is built with. Nothing here imports FlyDSL.

One launch, ONE workgroup of ``threads = sort_layout.small_threads(E)`` threads (one per expert, at least
256: the expert scan needs a thread per expert, the router a few lanes per token), wave = 64 lanes:

- **phase 0**: threads ``e < E`` zero the LDS histogram ``hist[e]``; barrier 1.
- **phase 1 (route)**: the router kernel's lane scheme (``layout.route_layout(E, k, dtype, arch,
  threads)``: ``TPT`` lanes per token, ``tokens_per_workgroup = threads / TPT`` tokens at a time) walks the
  T tokens in ``passes`` passes; thread ``tid`` of pass ``q`` serves token ``q * tokens_per_workgroup +
  tid // TPT`` as its lane ``tid % TPT`` (``token_of``). Lane 0 of a token writes its ``k`` weights / ids
  to the ``weights`` / ``ids`` outputs AND to LDS: ``keys[t * k + j]`` (the expert id, or ``E`` when the
  expert mask drops it) and ``wbits[t * k + j]`` (the f32 weight's bits), and adds 1 to ``hist[id]`` for
  every kept pair with an LDS atomic (``ds_add_u32``): the counts do not depend on the order of the adds.
  Barrier 2.
- **phase 2 (scan)**: thread ``e``: ``count = hist[e]``, padded to ``block_m``, exclusive block scan over the
  threads (DPP row_shr + v_readlane + one LDS slot per wave: ``sort_layout``'s scan, one barrier, barrier 3)
  -> run start; ``hist[e]`` becomes expert ``e``'s cursor (its run start); the pads after its pairs;
  thread 0 writes ``num_valid = [total, T]``. Barrier 4.
- **phase 3 (scatter + tail)**: wave 0 alone walks the ``P = T * k`` pairs from LDS in ``steps`` steps of 64
  (``walk_pair``); lanes with the same key find each other with one ballot per key bit; a kept pair goes
  to ``cursor[key] + rank`` (rank = peers on lower lanes), the group leader advances the cursor. One wave
  walking in pair order is what makes the result stable ((token, slot) ascending inside a run) without
  per-wave histogram rows. Meanwhile the threads of waves 1.. pad the tail ``[num_valid[0], length)``
  and set blocks past ``num_valid[0] / block_m`` to -1 (``tail_start``, ``tail_stride``).

Barriers: 4. LDS (i32 arrays, 16-byte aligned): ``keys`` and ``wbits`` of ``capacity * k`` entries,
``hist`` of ``E`` counters (counts, then cursors), ``wave_total`` of ``threads / 64`` (the scan).

Eligibility (``fused_unfit``): the LDS plan must fit the workgroup's LDS (``LDS_BUDGET``: 64 KiB on gfx942,
160 KiB on gfx950; both are the limits LLVM's AMDGPU backend enforces, checked by compiling past them) and
``T * k <= MAX_FUSED_PAIRS`` (one workgroup routes and one wave scatters everything, so larger batches
belong to the multi-workgroup route + sort kernels). ``capacity`` (tokens the LDS arrays hold, a compile
time constant) is ``T`` rounded up to a power of two, at least ``MIN_CAPACITY``, at most
``MAX_FUSED_PAIRS // k``: a few kernels serve every decode T.

The index helpers are plain operators: the kernel calls them on FlyDSL values, the emulation on NumPy
arrays. The checks raise ``ValueError`` naming the constraint a bad argument violates.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..reference.sort import sorted_length
from . import layout as L
from . import sort_layout as SL
from .sort_layout import _fail, _int  # the same argument checks

WAVE = 64
# LDS per workgroup (bytes). LLVM: "local memory (66048) exceeds limit (65536)" for gfx942 and
# "(164352) exceeds limit (163840)" for gfx950 (measured with flydsl 0.4.2's compile-only path).
LDS_BUDGET = {"gfx942": 64 * 1024, "gfx950": 160 * 1024}
# One workgroup up to this many pairs (T <= 256 at k = 8): the one-launch kernel is for decode. Not
# measured on a GPU (none has run this kernel); the same bound as sort_layout.SMALL_MAX_PAIRS.
MAX_FUSED_PAIRS = 2048
MIN_CAPACITY = 8  # tokens: the smallest LDS capacity bucket
SCATTER_WAVE = 0
BARRIERS = 4
MODES = ("softmax_renorm", "softmax_full", "sigmoid", "sigmoid_renorm")  # route.MODES


def block_threads(num_experts: int) -> int:
    """Threads of the workgroup: one per expert for the scan, a multiple of the wave, at least 256."""
    return SL.small_threads(num_experts)


def max_fused_tokens(top_k: int) -> int:
    _int("top_k", top_k, 1, SL.MAX_TOP_K)
    return MAX_FUSED_PAIRS // top_k


def capacity_tokens(tokens: int, top_k: int) -> int:
    """Tokens the LDS arrays hold for a call with ``tokens`` tokens (compile-time bucket)."""
    _int("tokens", tokens, 1, max_fused_tokens(top_k))
    return min(L.next_pow2(max(tokens, MIN_CAPACITY)), max_fused_tokens(top_k))


def lds_fields(capacity: int, top_k: int, num_experts: int, threads: int) -> dict[str, int]:
    """The LDS struct (i32 arrays): pair keys, pair weights (f32 bits), expert counters, wave totals."""
    pairs = capacity * top_k
    return {"keys": pairs, "wbits": pairs, "hist": num_experts, "wave_total": threads // WAVE}


def lds_offsets(fields: dict[str, int]) -> dict[str, int]:
    """Byte offset of each i32 array of the LDS struct: each starts on a 16-byte boundary, in order."""
    offsets, at = {}, 0
    for name, n in fields.items():
        offsets[name] = at
        at = -(-(at + 4 * n) // 16) * 16
    return offsets


def lds_bytes(fields: dict[str, int]) -> int:
    """Bytes the struct takes: the last array's end (the allocation the kernel's ISA reports)."""
    name, n = list(fields.items())[-1]
    return lds_offsets(fields)[name] + 4 * n


def lds_bytes_for(tokens: int, top_k: int, num_experts: int) -> int:
    """LDS bytes the kernel for ``tokens`` tokens allocates."""
    cap = capacity_tokens(tokens, top_k)
    return lds_bytes(lds_fields(cap, top_k, num_experts, block_threads(num_experts)))


def token_of(pass_, tid, tpt: int, tokens_per_pass: int):
    """(token, lane) that thread ``tid`` serves in routing pass ``pass_`` (TPT a power of two)."""
    shift = tpt.bit_length() - 1
    return pass_ * tokens_per_pass + (tid >> shift), tid & (tpt - 1)


def num_passes(tokens: int, tokens_per_pass: int) -> int:
    return -(-tokens // tokens_per_pass)


def pair_index(token, slot, top_k: int):
    return token * top_k + slot


def walk_steps(pairs: int) -> int:
    return -(-pairs // WAVE)


def walk_pair(step, lane):
    """Pair that lane ``lane`` of the scatter wave takes at step ``step`` (pair order: stable)."""
    return step * WAVE + lane


def tail_start(tid):
    """First tail element (past num_valid[0], or its block) of thread ``tid`` of waves 1.. (tid >= 64)."""
    return tid - WAVE


def tail_stride(threads: int) -> int:
    return threads - WAVE


def _route_layout(num_experts, top_k, dtype, arch):
    return L.route_layout(num_experts, top_k, dtype, arch, block_threads(num_experts))


def fused_unfit(tokens: int, num_experts: int, top_k: int, block_m: int, dtype: str, arch: str) -> str | None:
    """None when one workgroup can route and sort the call, else why not (plain Python, no FlyDSL)."""
    try:
        L.check_arch(arch)
        SL.check_shape(num_experts, top_k, block_m)
        _route_layout(num_experts, top_k, dtype, arch)
    except ValueError as e:
        return str(e)
    if tokens < 1:
        return "tokens: no tokens (the reference writes the all-padding outputs)"
    if tokens * top_k > MAX_FUSED_PAIRS:
        return f"tokens: T*k = {tokens * top_k} pairs > {MAX_FUSED_PAIRS} (one workgroup is for decode)"
    try:
        SL.check_offsets(tokens, top_k, num_experts, block_m)
    except ValueError as e:
        return str(e)
    need = lds_bytes_for(tokens, top_k, num_experts)
    if need > LDS_BUDGET[arch]:
        return f"LDS: {need} bytes > {LDS_BUDGET[arch]} on {arch}"
    return None


@dataclass(frozen=True)
class RouteSortPlan:
    """Compile-time shape of one kernel: everything but T (which only has to fit ``capacity``)."""

    num_experts: int
    top_k: int
    block_m: int
    has_mask: bool
    dtype: str  # logits: "bf16" | "f16" | "f32"
    mode: str  # route.kernel_mode
    arch: str
    capacity: int  # tokens the LDS arrays hold
    threads: int
    route: L.RouteLayout  # the router's lane scheme, built for ``threads``
    sort: SL.SortPlan  # the sort helpers' plan (block scan, pads, tail); ids are i32

    @property
    def waves(self) -> int:
        return self.threads // WAVE

    @property
    def capacity_pairs(self) -> int:
        return self.capacity * self.top_k

    @property
    def key_bits(self) -> int:
        return self.sort.key_bits

    def lds_fields(self) -> dict[str, int]:
        return lds_fields(self.capacity, self.top_k, self.num_experts, self.threads)

    def lds_bytes(self) -> int:
        return lds_bytes(self.lds_fields())


def route_sort_plan(num_experts: int, top_k: int, block_m: int, has_mask: bool, dtype: str, mode: str, arch: str,
                    capacity: int) -> RouteSortPlan:
    """The checked plan; ``capacity`` from ``capacity_tokens``."""
    if mode not in MODES:
        _fail(f"mode: expected one of {MODES}, got {mode!r}")
    L.check_arch(arch)
    SL.check_shape(num_experts, top_k, block_m)
    _int("capacity", capacity, 1, max_fused_tokens(top_k))
    threads = block_threads(num_experts)
    plan = RouteSortPlan(
        num_experts=num_experts, top_k=top_k, block_m=block_m, has_mask=bool(has_mask), dtype=dtype, mode=mode,
        arch=arch, capacity=capacity, threads=threads, route=_route_layout(num_experts, top_k, dtype, arch),
        sort=SL.sort_plan(num_experts, top_k, block_m, has_mask, "i32", arch))
    if plan.lds_bytes() > LDS_BUDGET[arch]:
        _fail(f"capacity: {plan.lds_bytes()} bytes of LDS > {LDS_BUDGET[arch]} on {arch}")
    return plan


@dataclass(frozen=True)
class RouteSortSizes:
    """Run-time sizes of one call (kernel arguments): they depend on T only."""

    tokens: int
    pairs: int
    passes: int  # routing passes over the tokens
    steps: int  # scatter steps of wave 0
    length: int  # entries of sorted_token_ids / sorted_weights
    blocks: int  # entries of sorted_expert_ids
    pad_value: int


def route_sort_sizes(plan: RouteSortPlan, tokens: int) -> RouteSortSizes:
    _int("tokens", tokens, 1, plan.capacity)
    SL.check_offsets(tokens, plan.top_k, plan.num_experts, plan.block_m)
    pairs = tokens * plan.top_k
    length = sorted_length(tokens, plan.top_k, plan.num_experts, plan.block_m)
    return RouteSortSizes(tokens=tokens, pairs=pairs, passes=num_passes(tokens, plan.route.tokens_per_workgroup),
                          steps=walk_steps(pairs), length=length, blocks=length // plan.block_m,
                          pad_value=SL.pad_value(tokens, plan.top_k))
