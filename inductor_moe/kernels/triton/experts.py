"""Triton two-stage expert GEMMs over the sorted layout (``inductor_moe.ops.sort``).

Stage 1, one program per (block of ``block_m`` sorted rows, tile of ``BLOCK_N`` intermediate columns):
gather the block's tokens from ``hidden``, multiply by the gate rows and the up rows of its expert's
``w13`` (two accumulators, so the activation is fused in the epilogue: SiLU/GELU/ReLU x up for the
chunked layout, GPT-OSS clamped SwiGLU for the interleaved one), write ``act`` [L, I] in the model dtype
at the sorted row. The up rows come through their own base pointer and strides: ``w13[:, I:]`` (or
``w13[:, 1:]`` interleaved) for the fused weights, ``w3`` where the model keeps gate and up apart, so one
kernel serves both without a copy.
Stage 2, one program per (block, tile of ``BLOCK_N`` hidden columns): ``act @ w2[e].T`` (+ b2), times
the routing weight in f32, written to row ``token * k + slot`` of a [T*k, H] buffer; the k rows of a
token are then summed in slot order (deterministic: no atomics).
Blocks past ``num_valid[0]`` return at once, so one launch shape serves every routing (CUDA graphs).
Both grids are one-dimensional and walk the (row block, column tile) plane in groups of ``GROUP_M`` row
blocks (``_tile``): the programs running together share the weight tiles of one or two experts and the row
blocks they read, so both come from L2 instead of being re-read from HBM once per column tile.
``T`` is not specialised on (``do_not_specialize``): one binary serves every token count.
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
def _gate_up_rows(offs_n, I, INTERLEAVED: tl.constexpr):
    """Rows of w13 holding the gate and the up projection of intermediate columns ``offs_n``: [gate | up]
    halves, or GPT-OSS's interleaved gate/up pairs."""
    if INTERLEAVED:
        gate = 2 * offs_n
        up = gate + 1
    else:
        gate = offs_n
        up = offs_n + I
    return gate, up


@triton.jit
def _proj_rows(offs_n, INTERLEAVED: tl.constexpr):
    """Rows of intermediate columns ``offs_n`` relative to the gate base (``w13``) and the up base
    (``w13[:, I:]``, ``w13[:, 1:]`` when interleaved, or a separate ``w3``): the same index for both."""
    if INTERLEAVED:
        rows = 2 * offs_n
    else:
        rows = offs_n
    return rows


@triton.jit
def _tile(num_blocks, N, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row block, column tile) of this program in the grouped order."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_blocks - first_m, GROUP_M)
    local = pid % per_group
    return first_m + local % group_rows, local // group_rows


@triton.jit(do_not_specialize=["T"])
def _stage1_kernel(
    x_ptr, sti_ptr, sei_ptr, nv_ptr, w_ptr, wu_ptr, b_ptr, out_ptr,
    T, K, I, num_blocks,
    stride_xt, stride_xk, stride_we, stride_wn, stride_wk, stride_ue, stride_un, stride_uk, stride_be, stride_bn,
    stride_om,
    alpha, limit,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, INTERLEAVED: tl.constexpr, UPCAST: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(num_blocks, I, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(nv_ptr):
        return
    expert = tl.load(sei_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    token = tl.load(sti_ptr + offs_m) & 0xFFFFFF
    row_ok = token < T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    gate_rows, up_rows = _gate_up_rows(offs_n, I, INTERLEAVED)  # of the bias [E, 2I]
    w_rows = _proj_rows(offs_n, INTERLEAVED)
    w_base = w_ptr + expert * stride_we
    u_base = wu_ptr + expert * stride_ue
    x_rows = x_ptr + token.to(tl.int64)[:, None] * stride_xt
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        wg = tl.load(w_base + w_rows[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=w_mask, other=0.0)
        wu = tl.load(u_base + w_rows[None, :] * stride_un + offs_k[:, None] * stride_uk, mask=w_mask, other=0.0)
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


@triton.jit(do_not_specialize=["T"])
def _stage2_kernel(
    a_ptr, sti_ptr, sw_ptr, sei_ptr, nv_ptr, w_ptr, b_ptr, out_ptr,
    T, K, N, top_k, num_blocks,
    stride_am, stride_we, stride_wn, stride_wk, stride_be, stride_bn, stride_or,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(num_blocks, N, BLOCK_N, GROUP_M)
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


def _kernel_flags(hidden):
    """(UPCAST, IEEE): the interpreter's bf16/fp16 dot is wrong, so it computes in f32 there; f32 inputs
    get IEEE f32 dots (not TF32) so that they match the reference."""
    return interpreting() and hidden.dtype != torch.float32, hidden.dtype == torch.float32


def up_weights(w13, inter, gate_up_interleaved, w3=None):
    """The base of the up-projection rows: ``w3``, or a view of ``w13`` (no copy) whose row ``n`` (row
    ``2n`` when interleaved) is the up row of intermediate column ``n``."""
    if w3 is not None:
        return w3
    return w13[:, 1:] if gate_up_interleaved else w13[:, inter:]


def launch_stage1(hidden, sorted_token_ids, sorted_expert_ids, num_valid, w13, b13, act, block_m, activation,
                  gate_up_interleaved, alpha, limit, config: ExpertsConfig, w3=None):
    """act[r] = activation(hidden[token of r] @ w13[expert of r's block].T (+ b13)) for every valid row r
    (with ``w3``: gate from ``w13``, up from ``w3``)."""
    tokens, hidden_dim = hidden.shape
    inter = act.shape[1]
    blocks = sorted_token_ids.shape[0] // block_m
    upcast, ieee = _kernel_flags(hidden)
    bias = b13 if b13 is not None else w13
    up = up_weights(w13, inter, gate_up_interleaved, w3)
    _stage1_kernel[(blocks * triton.cdiv(inter, config.n1),)](
        hidden, sorted_token_ids, sorted_expert_ids, num_valid, w13, up, bias, act,
        tokens, hidden_dim, inter, blocks,
        hidden.stride(0), hidden.stride(1), w13.stride(0), w13.stride(1), w13.stride(2),
        up.stride(0), up.stride(1), up.stride(2),
        bias.stride(0) if b13 is not None else 0, bias.stride(1) if b13 is not None else 0, act.stride(0),
        float(alpha), float(limit),
        HAS_BIAS=b13 is not None, ACT=ACT_CODES[activation], INTERLEAVED=gate_up_interleaved, UPCAST=upcast,
        IEEE=ieee, BLOCK_M=block_m, BLOCK_N=config.n1, BLOCK_K=config.k1, GROUP_M=config.group_m,
        num_warps=config.warps1, num_stages=config.stages1,
    )


def launch_stage2(act, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w2, b2, rows, tokens,
                  top_k, block_m, config: ExpertsConfig):
    """rows[token * top_k + slot] = weight * (act[r] @ w2[expert].T (+ b2)) for every valid row r."""
    inter = act.shape[1]
    hidden_dim = rows.shape[1]
    blocks = sorted_token_ids.shape[0] // block_m
    upcast, ieee = _kernel_flags(act)
    bias = b2 if b2 is not None else w2
    _stage2_kernel[(blocks * triton.cdiv(hidden_dim, config.n2),)](
        act, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w2, bias, rows,
        tokens, inter, hidden_dim, top_k, blocks,
        act.stride(0), w2.stride(0), w2.stride(1), w2.stride(2),
        bias.stride(0) if b2 is not None else 0, bias.stride(1) if b2 is not None else 0, rows.stride(0),
        HAS_BIAS=b2 is not None, UPCAST=upcast, IEEE=ieee,
        BLOCK_M=block_m, BLOCK_N=config.n2, BLOCK_K=config.k2, GROUP_M=config.group_m,
        num_warps=config.warps2, num_stages=config.stages2,
    )


def experts_sorted_triton(
    hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2, top_k, block_m,
    b13, b2, activation, gate_up_interleaved, alpha, limit, config: ExpertsConfig | None = None,
    every_pair_routed: bool = False, w3=None,
):
    """Fused Triton stages, or from ``MIN_ROWS_PER_EXPERT`` rows per expert on the grouped GEMMs
    (``experts_grouped.py``). ``every_pair_routed``: the caller knows that every (token, slot) pair is in the sorted layout (ids
    from a router, no expert mask), so no row of the [T*k, H] buffer needs zeroing first. ``w3``: separate
    up weights (``w13`` is then the gate projection alone)."""
    from .experts_grouped import experts_grouped_mm, use_grouped_mm

    tokens, hidden_dim = hidden.shape
    inter = w2.shape[2]
    if use_grouped_mm(tokens, top_k, w13.shape[0], hidden, w13, w2, w3):  # prefill, many rows per expert
        return experts_grouped_mm(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w13, w2,
                                  top_k, block_m, b13, b2, activation, gate_up_interleaved, alpha, limit)
    if config is None:
        config = pick_config(tokens, top_k, w13.shape[0], hidden_dim, inter, hidden.dtype, block_m=block_m)
    act = torch.empty(sorted_token_ids.shape[0], inter, dtype=hidden.dtype, device=hidden.device)
    launch_stage1(hidden, sorted_token_ids, sorted_expert_ids, num_valid, w13, b13, act, block_m, activation,
                  gate_up_interleaved, alpha, limit, config, w3=w3)
    # pairs the sort dropped (masked experts, ids outside [0, E)) leave their rows unwritten
    alloc = torch.empty if every_pair_routed else torch.zeros
    rows = alloc(tokens * top_k, hidden_dim, dtype=hidden.dtype, device=hidden.device)
    launch_stage2(act, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, w2, b2, rows, tokens,
                  top_k, block_m, config)
    if top_k == 1:
        return rows
    return rows.view(tokens, top_k, hidden_dim).sum(dim=1)


def experts_triton(hidden, ids, weights, w13, w2, b13, b2, activation, gate_up_interleaved, alpha, limit,
                   expert_mask=None, w3=None):
    from ... import dispatch

    tokens, top_k = ids.shape
    num_experts = w13.shape[0]
    config = pick_config(tokens, top_k, num_experts, hidden.shape[1], w2.shape[2], hidden.dtype)
    _, sort = dispatch.select("sort", ids.device, ids=ids, num_experts=num_experts, block_m=config.block_m)
    sorted_out = sort(ids, weights, num_experts, config.block_m, expert_mask)
    return experts_sorted_triton(hidden, *sorted_out, w13, w2, top_k, config.block_m, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, w3=w3, config=config)


def moe_triton(hidden, logits, w13, w2, top_k, b13, b2, scoring, renormalize, order, correction_bias, n_group,
               topk_group, scaling, activation, gate_up_interleaved, alpha, limit, w3=None):
    from ... import dispatch

    from . import supports_route
    from .decode import moe_decode_triton, use_decode

    tokens = hidden.shape[0]
    num_experts = w13.shape[0]
    route_args = (scoring, renormalize, order, correction_bias, n_group, topk_group, scaling)
    if use_decode(tokens, top_k, num_experts) and supports_route(logits=logits, top_k=top_k) is None:
        return moe_decode_triton(hidden, logits, w13, w2, top_k, b13, b2, *route_args, activation,
                                 gate_up_interleaved, alpha, limit, w3=w3)
    config = pick_config(tokens, top_k, num_experts, hidden.shape[1], w2.shape[2], hidden.dtype)
    _, route_sort = dispatch.select("route_sort", logits.device, logits=logits, top_k=top_k,
                                    block_m=config.block_m, scoring=scoring, order=order)
    outs = route_sort(logits, top_k, config.block_m, *route_args, None)
    return experts_sorted_triton(hidden, *outs[:4], w13, w2, top_k, config.block_m, b13, b2, activation,
                                 gate_up_interleaved, alpha, limit, w3=w3, config=config, every_pair_routed=True)


def supports_experts(hidden=None, w13=None, w2=None, activation=None, top_k=None, block_m=None, w3=None, **_):
    """Takes separate up weights (``w3``): the up rows have their own base pointer and strides."""
    from . import _device_reason

    reason = _device_reason(hidden)  # CUDA; CPU tensors only under TRITON_INTERPRET=1 when forced (tests)
    if reason:
        return reason
    if hidden.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {hidden.dtype}"
    if activation not in ACT_CODES:
        return f"activation {activation}"
    if block_m is not None and (block_m < 16 or block_m & (block_m - 1)):
        return f"block_m={block_m} (tl.dot needs a power of two >= 16)"
    return None

