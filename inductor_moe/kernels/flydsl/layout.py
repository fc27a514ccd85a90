"""Index and layout arithmetic of the FlyDSL router kernel (``route.py``), in plain Python.

The kernel builder and the NumPy emulation in ``tests/kernels/flydsl`` both read these functions, so the
layout the emulation checks is the layout the kernel is built with. Nothing here imports FlyDSL.

Layout, for ``E`` experts of a ``dtype`` row and a wave of ``wave`` lanes (64 on gfx942/gfx950):

- **vector width** ``V``: experts per load, the widest power of two that fits in 16 bytes and divides
  ``E`` (8 for bf16/f16, 4 for f32 when ``E`` allows; 1 for an odd ``E``). A row then starts on a
  ``V``-element boundary, so every load is aligned.
- **threads per token** ``TPT``: a power of two, about one 16-byte load of experts per lane
  (``next_pow2(ceil(E / (16 / elem_bytes)))``), at most a wave. A token's lanes are consecutive and
  aligned, so every reduction over a token is a sub-warp butterfly of ``log2(TPT)`` steps.
- **chunks**: the row is cut into ``E / V`` chunks of ``V`` experts; lane ``l`` of a token owns chunks
  ``l, l + TPT, l + 2*TPT, ...`` (``chunks_per_thread`` of them), so one load instruction of a token
  group reads one contiguous stretch of the row. Slot ``s = j * V + v`` of lane ``l`` holds expert
  ``(j * TPT + l) * V + v``: a lane's slots are in increasing expert order.
- **padding**: a token's lanes cover ``TPT * chunks_per_thread * V >= E`` slots; the slots past ``E`` are
  never loaded and hold -inf (key ``KEY_EMPTY``), so any ``E`` runs without a dispatch around it.
- **tokens per workgroup**: ``block_threads / TPT`` (several tokens per workgroup, 256 threads by
  default); the grid is ``ceil(T / tokens_per_workgroup)`` workgroups. Thread ``tid`` of workgroup ``b``
  serves token ``b * tokens_per_workgroup + tid // TPT`` as its lane ``tid % TPT``.
- **butterfly steps**: distances ``1, 2, 4, ...`` up to ``TPT / 2``; ``butterfly_step`` names the
  cross-lane instruction of each and ``butterfly_partner`` the lane it reads.
- **output vector width**: the ``k`` weights (f32) and ids (i32) of a token are written by the token's
  lane 0 with stores of ``output_vector_width(k)`` elements (16 bytes when ``k % 4 == 0``).

Every function raises ``ValueError`` naming the constraint a bad argument violates.
"""
from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_ARCHS = ("gfx942", "gfx950")
DTYPES = {"bf16": 2, "f16": 2, "f32": 4}
LOAD_BYTES = 16  # widest buffer load per lane: buffer_load_dwordx4
MAX_VALUES_PER_THREAD = 32  # experts a lane keeps in registers; E <= 64 * 32 = 2048
MAX_BLOCK_THREADS = 1024
DEFAULT_BLOCK_THREADS = 256
# Order key of a slot that holds nothing (padding, or an expert already chosen): below every float's key.
KEY_EMPTY = -(2**31)

# DPP control words (GFX9 encoding) of the butterfly steps that stay inside a 16-lane row.
DPP_QUAD_PERM_XOR1 = 0xB1  # quad_perm:[1,0,3,2]
DPP_QUAD_PERM_XOR2 = 0x4E  # quad_perm:[2,3,0,1]
DPP_ROW_HALF_MIRROR = 0x141  # lane i of each 8 reads lane 7-i
DPP_ROW_ROR8 = 0x128  # row_ror:8, lane i of each 16 reads lane (i+8)%16 = i^8
SWIZZLE_XOR16 = (16 << 10) | 0x1F  # ds_swizzle bit mode: and_mask=0x1f, or_mask=0, xor_mask=0x10


def _fail(what: str) -> None:
    raise ValueError(what)


def check_arch(arch: str) -> str:
    if arch not in SUPPORTED_ARCHS:
        _fail(f"arch: must be one of {SUPPORTED_ARCHS} (wave64 CDNA3/CDNA4), got {arch!r}")
    return arch


def wave_size(arch: str) -> int:
    check_arch(arch)
    return 64


def elem_bytes(dtype: str) -> int:
    if dtype not in DTYPES:
        _fail(f"dtype: must be one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _check_experts(num_experts: int) -> None:
    if not isinstance(num_experts, int) or num_experts < 1:
        _fail(f"num_experts: must be an int >= 1, got {num_experts!r}")


def next_pow2(n: int) -> int:
    if n < 1:
        _fail(f"next_pow2: needs n >= 1, got {n}")
    return 1 << (n - 1).bit_length()


def vector_width(num_experts: int, dtype: str) -> int:
    """Experts per load: the widest power of two <= 16 bytes of ``dtype`` that divides ``num_experts``."""
    _check_experts(num_experts)
    v = LOAD_BYTES // elem_bytes(dtype)
    while num_experts % v:
        v //= 2
    return v


def threads_per_token(num_experts: int, dtype: str, wave: int = 64) -> int:
    """Lanes per token: a power of two giving each lane about one 16-byte load, at most ``wave``."""
    _check_experts(num_experts)
    if wave not in (32, 64):
        _fail(f"wave: must be 32 or 64, got {wave}")
    per_load = LOAD_BYTES // elem_bytes(dtype)
    return min(wave, next_pow2(-(-num_experts // per_load)))


def num_chunks(num_experts: int, dtype: str) -> int:
    return num_experts // vector_width(num_experts, dtype)


def chunks_per_thread(num_experts: int, dtype: str, wave: int = 64) -> int:
    tpt = threads_per_token(num_experts, dtype, wave)
    return -(-num_chunks(num_experts, dtype) // tpt)


def values_per_thread(num_experts: int, dtype: str, wave: int = 64) -> int:
    """Slots (experts, padding included) a lane holds in registers; at most ``MAX_VALUES_PER_THREAD``."""
    vpt = chunks_per_thread(num_experts, dtype, wave) * vector_width(num_experts, dtype)
    if vpt > MAX_VALUES_PER_THREAD:
        _fail(f"num_experts: {num_experts} needs {vpt} values per lane (> {MAX_VALUES_PER_THREAD}, "
              f"the register budget); at most {wave * MAX_VALUES_PER_THREAD} experts")
    return vpt


def check_block_threads(block_threads: int, wave: int = 64) -> int:
    if block_threads % wave or not wave <= block_threads <= MAX_BLOCK_THREADS:
        _fail(f"block_threads: must be a multiple of the wave ({wave}) in [{wave}, {MAX_BLOCK_THREADS}], "
              f"got {block_threads}")
    return block_threads


def tokens_per_workgroup(num_experts: int, dtype: str, wave: int = 64,
                         block_threads: int = DEFAULT_BLOCK_THREADS) -> int:
    check_block_threads(block_threads, wave)
    return block_threads // threads_per_token(num_experts, dtype, wave)


def grid_size(num_tokens: int, num_experts: int, dtype: str, wave: int = 64,
              block_threads: int = DEFAULT_BLOCK_THREADS) -> int:
    """Workgroups for ``num_tokens`` tokens (0 for none)."""
    if num_tokens < 0:
        _fail(f"num_tokens: must be >= 0, got {num_tokens}")
    tpw = tokens_per_workgroup(num_experts, dtype, wave, block_threads)
    return -(-num_tokens // tpw)


def thread_coords(tid: int, block: int, num_experts: int, dtype: str, wave: int = 64,
                  block_threads: int = DEFAULT_BLOCK_THREADS) -> tuple[int, int]:
    """(token, lane within the token) of thread ``tid`` of workgroup ``block``."""
    if not 0 <= tid < block_threads:
        _fail(f"tid: must be in [0, block_threads={block_threads}), got {tid}")
    tpt = threads_per_token(num_experts, dtype, wave)
    return block * tokens_per_workgroup(num_experts, dtype, wave, block_threads) + tid // tpt, tid % tpt


def slot_expert(lane: int, slot: int, num_experts: int, dtype: str, wave: int = 64) -> int:
    """Expert held in ``slot`` of token lane ``lane`` (>= num_experts: a padding slot)."""
    tpt = threads_per_token(num_experts, dtype, wave)
    v = vector_width(num_experts, dtype)
    if not 0 <= lane < tpt:
        _fail(f"lane: must be in [0, threads_per_token={tpt}), got {lane}")
    if not 0 <= slot < values_per_thread(num_experts, dtype, wave):
        _fail(f"slot: must be in [0, values_per_thread), got {slot}")
    j, e = divmod(slot, v)
    return (j * tpt + lane) * v + e


def chunk_bound(j: int, num_experts: int, dtype: str, wave: int = 64) -> int:
    """Lanes ``l < chunk_bound(j)`` hold a real chunk ``j``; ``TPT`` when every lane does."""
    tpt = threads_per_token(num_experts, dtype, wave)
    return max(0, min(tpt, num_chunks(num_experts, dtype) - j * tpt))


def butterfly_distances(tpt: int) -> list[int]:
    if tpt < 1 or tpt & (tpt - 1) or tpt > 64:
        _fail(f"threads_per_token: must be a power of two in [1, 64], got {tpt}")
    return [1 << i for i in range(tpt.bit_length() - 1)]


def butterfly_step(distance: int, arch: str) -> str:
    """The cross-lane instruction that brings lane ``butterfly_partner(l, distance)``'s value to lane l.

    Inside a 16-lane row it is a DPP move (quad_perm for 1 and 2, row_half_mirror for 4, row_ror:8 for 8);
    across rows, gfx950 swaps rows/halves with v_permlane16_swap / v_permlane32_swap, and gfx942 uses
    ds_swizzle (xor 16, within 32 lanes) and ds_bpermute (xor 32).
    """
    check_arch(arch)
    table = {1: "dpp_quad_perm", 2: "dpp_quad_perm", 4: "dpp_row_half_mirror", 8: "dpp_row_ror8"}
    if distance in table:
        return table[distance]
    if distance == 16:
        return "permlane16_swap" if arch == "gfx950" else "ds_swizzle"
    if distance == 32:
        return "permlane32_swap" if arch == "gfx950" else "ds_bpermute"
    _fail(f"distance: must be a power of two in [1, 32], got {distance}")


def butterfly_partner(lane: int, distance: int) -> int:
    """Lane whose value lane ``lane`` combines with at the step of ``distance``.

    ``lane ^ distance``, except at distance 4, where row_half_mirror reads lane ``7 - i`` of the group of
    8: not the XOR partner, but a lane of the other quad, which after the steps 1 and 2 holds the same
    value as the XOR partner, so the all-reduce is the same.
    """
    if distance == 4:
        return (lane & ~7) | (7 - (lane & 7))
    if distance not in (1, 2, 8, 16, 32):
        _fail(f"distance: must be a power of two in [1, 32], got {distance}")
    return lane ^ distance


def output_vector_width(top_k: int) -> int:
    """Elements per store of a token's k weights / ids: 4 (16 bytes) when k % 4 == 0, else 2 or 1."""
    if top_k < 1:
        _fail(f"top_k: must be >= 1, got {top_k}")
    return 4 if top_k % 4 == 0 else 2 if top_k % 2 == 0 else 1


def max_row_bytes_ok(num_tokens: int, num_experts: int, dtype: str) -> bool:
    """Byte offsets are 32-bit: the logits must stay under 2 GiB."""
    return num_tokens * num_experts * elem_bytes(dtype) < 2**31


@dataclass(frozen=True)
class RouteLayout:
    num_experts: int
    top_k: int
    dtype: str
    arch: str
    block_threads: int
    wave: int
    vec: int  # experts per load
    tpt: int  # lanes per token
    chunks: int  # chunks of vec experts in a row
    cpt: int  # chunks per lane
    vpt: int  # slots per lane
    tokens_per_workgroup: int
    out_vec: int  # elements per output store
    steps: tuple  # ((distance, instruction), ...) of one butterfly

    @property
    def elem_bytes(self) -> int:
        return DTYPES[self.dtype]


def route_layout(num_experts: int, top_k: int, dtype: str, arch: str,
                 block_threads: int = DEFAULT_BLOCK_THREADS) -> RouteLayout:
    """Everything the kernel builder needs, checked."""
    wave = wave_size(arch)
    _check_experts(num_experts)
    if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        _fail(f"top_k: must be an int in [1, num_experts={num_experts}], got {top_k!r}")
    vpt = values_per_thread(num_experts, dtype, wave)
    tpt = threads_per_token(num_experts, dtype, wave)
    return RouteLayout(
        num_experts=num_experts, top_k=top_k, dtype=dtype, arch=arch,
        block_threads=check_block_threads(block_threads, wave), wave=wave,
        vec=vector_width(num_experts, dtype), tpt=tpt, chunks=num_chunks(num_experts, dtype),
        cpt=chunks_per_thread(num_experts, dtype, wave), vpt=vpt,
        tokens_per_workgroup=tokens_per_workgroup(num_experts, dtype, wave, block_threads),
        out_vec=output_vector_width(top_k),
        steps=tuple((d, butterfly_step(d, arch)) for d in butterfly_distances(tpt)),
    )


def float_key(bits: int) -> int:
    """Signed-int order key of an f32 bit pattern (as a signed 32-bit int): keys compare as the floats do
    (-0 just below +0; NaN with the sign bit clear above +inf, as torch.topk ranks NaN first). It is its
    own inverse."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)
