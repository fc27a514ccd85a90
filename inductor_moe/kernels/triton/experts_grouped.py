"""Prefill path of the Triton experts for many rows per expert: the two GEMMs on ``torch._grouped_mm``
(cuBLAS/CUTLASS grouped GEMMs, Hopper kernels with TMA and warp specialisation), the rest in Triton.

Why: on the large experts of Mixtral (H=4096, I=14336) the Triton tiles of ``experts.py`` stop short of
the tensor-core rate (H200, session 4, ``bench_moe_layer.py``: T=4096 5726 us against 4529 us for
torch.compile of HF's grouped_mm block; floor 3653). Measured (``benchmarks/bench_prefill_paths.py``, H200,
fused Triton / grouped, us; both within 4e-3 of the f32 reference):

    Mixtral  T=512 1138 / 1096   T=2048 2710 / 2580   T=4096 5635 / 5122   T=16384 20790 / 18920
    GPT-OSS  T=512  611 /  666   T=2048  931 / 1155   T=4096 1593 / 1885   T=16384  6406 /  6358
    Qwen3    T=512  375 /  531   T=2048  565 /  660   T=4096  892 /  935   T=16384  2678 /  2903

So the grouped GEMMs win only on big expert matrices (5-9% on Mixtral from 128 rows per expert); on the
smaller Qwen3 and GPT-OSS experts the fused stages (gather and activation inside the GEMM, no [L, 2I]
round trip) are faster at every T. ``use_grouped_mm``: rows per expert >= ``MIN_ROWS_PER_EXPERT`` and
H*I >= ``MIN_EXPERT_SIZE``. The path is still 13% slower than torch.compile's grouped_mm block at Mixtral
T=4096 (5122 vs 4529 us): the activation pass (reads [L, 2I], writes [L, I]: ~170 us at this size), the
gather and the combine account for part of it; not yet profiled.

Over the sorted layout (``inductor_moe.ops.sort``: runs of ``block_m``-padded rows per expert, in expert
order), with L rows in all:

1. ``group_offsets``: the end row of each expert's run (int32 [E], what ``_grouped_mm`` takes): used blocks
   per expert counted with ``index_add_`` (integers: exact in any order), cumulated, times ``block_m``.
   Rows past the last offset (unused blocks) are left unwritten by ``_grouped_mm`` and never read back.
2. ``xs = hidden[token of each row]`` (padding rows read token T-1: computed, never combined).
3. ``h = _grouped_mm(xs, w13^T)`` [L, 2I] in the model dtype.
4. ``_act_kernel``: bias, activation (``experts._activation``, the same code as the fused stage 1) in f32,
   ``act`` [L, I] in the model dtype, the rounding every path applies between the GEMMs.
5. ``y = _grouped_mm(act, w2^T)`` [L, H].
6. ``_combine_kernel``: out[t] = sum over slots s, in slot order, of weight * (y[row of (t, s)] + b2[e]); the
   row of each pair comes from ``pair_rows`` (a scatter of row numbers by pair: every real pair appears
   once, padding goes to a dump entry). No atomics: deterministic. Pairs the sort dropped (masked experts,
   ids outside [0, E)) have no row and add nothing.

Everything has static shapes and no host sync (CUDA-graph capturable). Constraints (``grouped_mm_unfit``):
``torch._grouped_mm`` present, CUDA bf16 on sm90+ (CPU: any float dtype, tests), H and I multiples of 8,
weights with a unit stride in one of their two matrix dims, no separate ``w3``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..reference.sort import TOKEN_BITS
from .experts import ACT_CODES, _activation, _gate_up_rows

# rows per expert (T*k/E) from which the grouped GEMMs take over, on experts of at least H*I weights (the
# measurements above); INDUCTOR_MOE_GROUPED_MM_MIN_ROWS overrides the rows and drops the size condition
# (0: always where it fits, e.g. benchmarks and tests; a huge value: never)
MIN_ROWS_PER_EXPERT = 128
MIN_EXPERT_SIZE = 32 * 2 ** 20  # H*I: Mixtral 58.7M yes; GPT-OSS 8.3M, Qwen3 1.6M no


def _override() -> float | None:
    value = os.environ.get("INDUCTOR_MOE_GROUPED_MM_MIN_ROWS", "").strip()
    return float(value) if value else None


def grouped_mm_unfit(hidden, w13, w2, w3=None) -> str | None:
    """None when the grouped-GEMM path can run these operands, else why not."""
    if not hasattr(torch, "_grouped_mm"):
        return "torch._grouped_mm missing (torch too old)"
    if w3 is not None:
        return "separate w3"
    if hidden.is_cuda:
        if hidden.dtype != torch.bfloat16:
            return f"dtype {hidden.dtype} (grouped GEMMs: bf16 on CUDA)"
        if torch.cuda.get_device_capability(hidden.device) < (9, 0):
            return "grouped GEMMs need sm90+"
    hidden_dim, inter = hidden.shape[1], w2.shape[2]
    if hidden_dim % 8 or inter % 8:
        return f"H={hidden_dim}, I={inter} not multiples of 8"
    for name, w in (("w13", w13), ("w2", w2)):
        if w.stride(2) != 1 and w.stride(1) != 1:
            return f"{name} has no unit stride in its matrix dims"
    return None


def use_grouped_mm(tokens: int, top_k: int, num_experts: int, hidden, w13, w2, w3=None) -> bool:
    override = _override()
    if override is None:
        if hidden.shape[1] * w2.shape[2] < MIN_EXPERT_SIZE or tokens * top_k < MIN_ROWS_PER_EXPERT * num_experts:
            return False
    elif tokens * top_k < override * num_experts:
        return False
    return grouped_mm_unfit(hidden, w13, w2, w3) is None


def group_offsets(sorted_expert_ids, num_valid, num_experts: int, block_m: int) -> torch.Tensor:
    """int32 [E]: cumulative row count of the experts' runs (end row of expert e's run)."""
    blocks = sorted_expert_ids.numel()
    used = (torch.arange(blocks, device=sorted_expert_ids.device, dtype=torch.int32) * block_m
            < num_valid[:1]).to(torch.int32)
    experts = sorted_expert_ids.clamp(min=0, max=num_experts - 1).to(torch.int64)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=sorted_expert_ids.device).index_add_(0, experts, used)
    return (counts.cumsum(0) * block_m).to(torch.int32)


def pair_rows(sorted_token_ids, tokens: int, top_k: int) -> torch.Tensor:
    """int32 [T*k + 1]: the sorted row of pair (t, s) at t*k + s, -1 for pairs with no row; the last entry
    is the dump slot of the padding rows."""
    token = sorted_token_ids & ((1 << TOKEN_BITS) - 1)
    slot = sorted_token_ids >> TOKEN_BITS
    pairs = tokens * top_k
    dest = torch.where(token < tokens, token * top_k + slot, pairs).to(torch.int64)
    rows = torch.full((pairs + 1,), -1, dtype=torch.int32, device=sorted_token_ids.device)
    return rows.scatter_(0, dest, torch.arange(sorted_token_ids.numel(), device=rows.device, dtype=torch.int32))


@triton.jit
def _act_kernel(h_ptr, sei_ptr, b_ptr, act_ptr, L, I, block_m, stride_h, stride_be, stride_bn, alpha, limit,
                HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rows < L)[:, None] & (cols < I)[None, :]
    gate, up = _gate_up_rows(cols, I, INTERLEAVED)
    base = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    g = tl.load(base + gate[None, :], mask=ok, other=0.0).to(tl.float32)
    u = tl.load(base + up[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        expert = tl.maximum(tl.load(sei_ptr + rows // block_m, mask=rows < L, other=0), 0).to(tl.int64)
        b_rows = b_ptr + expert[:, None] * stride_be
        g += tl.load(b_rows + gate[None, :] * stride_bn, mask=ok, other=0.0).to(tl.float32)
        u += tl.load(b_rows + up[None, :] * stride_bn, mask=ok, other=0.0).to(tl.float32)
    out = _activation(g, u, ACT, alpha, limit)
    tl.store(act_ptr + rows.to(tl.int64)[:, None] * I + cols[None, :], out.to(act_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _combine_kernel(y_ptr, rows_ptr, sw_ptr, sei_ptr, b_ptr, out_ptr, H, top_k, block_m,
                    stride_y, stride_be, stride_bn, stride_o,
                    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = cols < H
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s in range(top_k):  # slot order: deterministic
        row = tl.load(rows_ptr + token.to(tl.int64) * top_k + s)
        if row >= 0:
            part = tl.load(y_ptr + row.to(tl.int64) * stride_y + cols, mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                expert = tl.load(sei_ptr + row // block_m).to(tl.int64)
                part += tl.load(b_ptr + expert * stride_be + cols * stride_bn, mask=ok, other=0.0).to(tl.float32)
            acc += tl.load(sw_ptr + row) * part
    tl.store(out_ptr + token.to(tl.int64) * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


def experts_grouped_mm(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k,
                       block_m, b13, b2, activation, gate_up_interleaved, alpha, limit):
    """Both stages and the combine over the sorted layout with grouped GEMMs; out [T, H]."""
    tokens, hidden_dim = hidden.shape
    num_experts, inter = w13.shape[0], w2.shape[2]
    length = sorted_token_ids.numel()
    out = torch.empty(tokens, hidden_dim, dtype=hidden.dtype, device=hidden.device)
    if tokens == 0:
        return out
    offs = group_offsets(sorted_expert_ids, num_valid, num_experts, block_m)
    token = (sorted_token_ids & ((1 << TOKEN_BITS) - 1)).clamp(max=tokens - 1).to(torch.int64)
    xs = hidden.index_select(0, token)
    h = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)
    act = torch.empty(length, inter, dtype=hidden.dtype, device=hidden.device)
    bias13 = b13 if b13 is not None else h
    block_r, block_n = 16, 128
    _act_kernel[(triton.cdiv(length, block_r), triton.cdiv(inter, block_n))](
        h, sorted_expert_ids, bias13, act, length, inter, block_m, h.stride(0),
        b13.stride(0) if b13 is not None else 0, b13.stride(1) if b13 is not None else 0,
        float(alpha), float(limit),
        HAS_BIAS=b13 is not None, ACT=ACT_CODES[activation], INTERLEAVED=gate_up_interleaved,
        BLOCK_R=block_r, BLOCK_N=block_n,
    )
    y = torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)
    rows = pair_rows(sorted_token_ids, tokens, top_k)
    bias2 = b2 if b2 is not None else y
    block_h = 512
    _combine_kernel[(tokens, triton.cdiv(hidden_dim, block_h))](
        y, rows, sorted_weights, sorted_expert_ids, bias2, out, hidden_dim, top_k, block_m,
        y.stride(0), b2.stride(0) if b2 is not None else 0, b2.stride(1) if b2 is not None else 0, out.stride(0),
        HAS_BIAS=b2 is not None, BLOCK_N=block_h,
    )
    return out
