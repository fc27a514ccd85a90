"""Triton two-stage expert GEMMs over the sorted layout (``inductor_moe.ops.sort``).

Stage 1, one program per (block of ``block_m`` sorted rows, tile of ``BLOCK_N`` intermediate columns):
gather the block's tokens from ``hidden``, multiply by the gate rows and the up rows of its expert's
``w13`` (two accumulators, so the activation is fused in the epilogue: SiLU/GELU/ReLU x up for the
chunked layout, GPT-OSS clamped SwiGLU for the interleaved one), write ``act`` [L, I] in the model dtype
at the sorted row.
Stage 2, one program per (block, tile of ``BLOCK_N`` hidden columns): ``act @ w2[e].T`` (+ b2), times
the routing weight in f32, written to row ``token * k + slot`` of a [T*k, H] buffer; the k rows of a
token are then summed in slot order (deterministic: no atomics).
Blocks past ``num_valid[0]`` return at once, so one launch shape serves every routing (CUDA graphs).
Weights are read through their strides: GPT-OSS's transposed storage needs no copy.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting
from .configs import ExpertsConfig, pick_config

ACT_CODES = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "swiglu_oai": 4}


@triton.jit
def _activation(g, u, ACT: tl.constexpr, alpha, limit):
    if ACT == 0:
        out = g * tl.sigmoid(g) * u
    elif ACT == 1:
        out = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476)) * u
    elif ACT == 2:
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        out = 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0)) * u
    elif ACT == 3:
        out = tl.maximum(g, 0.0) * u
    else:
        g = tl.minimum(g, limit)
        u = tl.minimum(tl.maximum(u, -limit), limit)
        out = g * tl.sigmoid(alpha * g) * (u + 1.0)
    return out


@triton.jit
def _stage1_kernel(
    x_ptr, sti_ptr, sei_ptr, nv_ptr, w_ptr, b_ptr, out_ptr,
    T, K, I,
    stride_xt, stride_xk, stride_we, stride_wn, stride_wk, stride_be, stride_bn, stride_om,
    alpha, limit,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr, UPCAST: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(nv_ptr):
        return
    expert = tl.load(sei_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    token = tl.load(sti_ptr + offs_m) & 0xFFFFFF
    row_ok = token < T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    if INTERLEAVED:
        gate_rows = 2 * offs_n
        up_rows = 2 * offs_n + 1
    else:
        gate_rows = offs_n
        up_rows = offs_n + I
    w_base = w_ptr + expert * stride_we
    x_rows = x_ptr + token.to(tl.int64)[:, None] * stride_xt
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        wg = tl.load(w_base + gate_rows[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=w_mask, other=0.0)
        wu = tl.load(w_base + up_rows[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=w_mask, other=0.0)
        if UPCAST:  # the interpreter's bf16 dot is wrong: compute it in f32 there
            a = a.to(tl.float32)
            wg = wg.to(tl.float32)
            wu = wu.to(tl.float32)
        if IEEE:
            acc_g = tl.dot(a, wg, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, wu, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(a, wg, acc_g)
            acc_u = tl.dot(a, wu, acc_u)
    if HAS_BIAS:
        b_base = b_ptr + expert * stride_be
        acc_g += tl.load(b_base + gate_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(b_base + up_rows * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    h = _activation(acc_g, acc_u, ACT, alpha, limit)
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, h.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _stage2_kernel(
    a_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr, w_ptr, b_ptr, out_ptr,
    T, K, N, top_k,
    stride_am, stride_we, stride_wn, stride_wk, stride_be, stride_bn, stride_or,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(nv_ptr):
        return
    expert = tl.load(sei_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    packed = tl.load(sti_ptr + offs_m)
    token = packed & 0xFFFFFF
    slot = packed >> 24
    row_ok = token < T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_base = w_ptr + expert * stride_we
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_rows + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert * stride_be + offs_n * stride_bn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.load(sw_ptr + offs_m)[:, None]
    dest = (token.to(tl.int64) * top_k + slot)[:, None] * stride_or + offs_n[None, :]
    tl.store(out_ptr + dest, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def experts_sorted_triton(
    hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m,
    b13, b2, activation, gate_up_interleaved, alpha, limit, config: ExpertsConfig | None = None,
    every_pair_routed: bool = False,
):
    """``every_pair_routed``: the caller knows that every (token, slot) pair is in the sorted layout (ids
    from a router, no expert mask), so no row of the [T*k, H] buffer needs zeroing first."""
    tokens, hidden_dim = hidden.shape
    inter = w2.shape[2]
    length = sorted_token_ids.shape[0]
    if config is None:
        config = pick_config(tokens, top_k, w13.shape[0], hidden_dim, inter, hidden.dtype, block_m=block_m)
    upcast = interpreting() and hidden.dtype != torch.float32
    ieee = hidden.dtype == torch.float32
    act = torch.empty(length, inter, dtype=hidden.dtype, device=hidden.device)
    blocks = length // block_m
    grid1 = (blocks, triton.cdiv(inter, config.n1))
    bias13 = b13 if b13 is not None else w13
    _stage1_kernel[grid1](
        hidden, sorted_token_ids, sorted_expert_ids, num_valid, w13, bias13, act,
        tokens, hidden_dim, inter,
        hidden.stride(0), hidden.stride(1), w13.stride(0), w13.stride(1), w13.stride(2),
        bias13.stride(0) if b13 is not None else 0, bias13.stride(1) if b13 is not None else 0, act.stride(0),
        float(alpha), float(limit),
        HAS_BIAS=b13 is not None, ACT=ACT_CODES[activation], INTERLEAVED=gate_up_interleaved, UPCAST=upcast,
        IEEE=ieee, BLOCK_M=block_m, BLOCK_N=config.n1, BLOCK_K=config.k1,
        num_warps=config.warps1, num_stages=config.stages1,
    )
    # pairs the sort dropped (masked experts, ids outside [0, E)) leave their rows unwritten
    alloc = torch.empty if every_pair_routed else torch.zeros
    rows = alloc(tokens * top_k, hidden_dim, dtype=hidden.dtype, device=hidden.device)
    grid2 = (blocks, triton.cdiv(hidden_dim, config.n2))
    bias2 = b2 if b2 is not None else w2
    _stage2_kernel[grid2](
        act, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w2, bias2, rows,
        tokens, inter, hidden_dim, top_k,
        act.stride(0), w2.stride(0), w2.stride(1), w2.stride(2),
        bias2.stride(0) if b2 is not None else 0, bias2.stride(1) if b2 is not None else 0, rows.stride(0),
        HAS_BIAS=b2 is not None, UPCAST=upcast, IEEE=ieee,
        BLOCK_M=block_m, BLOCK_N=config.n2, BLOCK_K=config.k2,
        num_warps=config.warps2, num_stages=config.stages2,
    )
    if top_k == 1:
        return rows
    return rows.view(tokens, top_k, hidden_dim).sum(dim=1)


def experts_triton(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit,
                   expert_mask=None):
    from ... import dispatch

    tokens, top_k = ids.shape
    num_experts = w13.shape[0]
    config = pick_config(tokens, top_k, num_experts, hidden.shape[1], w2.shape[2], hidden.dtype)
    _, sort = dispatch.select("sort", ids.device, ids=ids, num_experts=num_experts, block_m=config.block_m)
    sorted_out = sort(ids, weights, num_experts, config.block_m, expert_mask)
    return experts_sorted_triton(hidden, *sorted_out, w13, w2, top_k, config.block_m, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, config)


def moe_triton(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
               topk_group, scaling, activation, gate_up_interleaved, alpha, limit):
    from ... import dispatch

    tokens = hidden.shape[0]
    num_experts = w13.shape[0]
    config = pick_config(tokens, top_k, num_experts, hidden.shape[1], w2.shape[2], hidden.dtype)
    route_args = (scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    _, route_sort = dispatch.select("route_sort", logits.device, logits=logits, top_k=top_k,
                                    block_m=config.block_m, scoring=scoring, order=order)
    outs = route_sort(logits, top_k, config.block_m, *route_args, None)
    return experts_sorted_triton(hidden, *outs[:4], w13, w2, top_k, config.block_m, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, config, every_pair_routed=True)


def supports_experts(hidden=None, w13=None, w2=None, activation=None, top_k=None, block_m=None, **_):
    # CPU tensors never come here, also under TRITON_INTERPRET=1: tests call the kernels directly
    if hidden.device.type != "cuda":
        return "not a CUDA tensor"
    if hidden.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {hidden.dtype}"
    if activation not in ACT_CODES:
        return f"activation {activation}"
    if block_m is not None and (block_m < 16 or block_m & (block_m - 1)):
        return f"block_m={block_m} (tl.dot needs a power of two >= 16)"
    return None

