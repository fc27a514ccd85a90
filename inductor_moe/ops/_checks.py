"""Argument checks shared by the ops' real and fake implementations.

Every failure names the argument. They run on shapes and dtypes only (never on tensor values), so
they cost no host sync and also run at trace time through the fake impls.
"""
from __future__ import annotations

import torch

from ..kernels.reference.activation import ACTIVATIONS

SCORINGS = ("softmax", "sigmoid")
ORDERS = ("softmax_then_topk", "topk_then_softmax")
MAX_TOKENS = 1 << 24  # token index field of the packed sorted ids


MAX_TOP_K = 127  # slot field of the packed sorted ids: (slot << 24) | token stays a positive int32


def int_arg(name: str, value, lo: int, hi: int | None = None, what: str = ""):
    """``lo <= value <= hi`` for an int; a SymInt (symbolic trace) is checked only where the bound is
    decidable without a guard, and again at run time with the concrete value."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        _fail(name, f"expected an int, got {value!r}", TypeError)
    bad_lo = value < lo if isinstance(value, int) else statically_known_true(value < lo)
    bad_hi = hi is not None and (value > hi if isinstance(value, int) else statically_known_true(value > hi))
    if bad_lo or bad_hi:
        _fail(name, f"must be in [{lo}, {hi if hi is not None else 'inf'}]{what}, got {value}")


def top_k_arg(name: str, top_k, num_experts):
    int_arg(name, top_k, 1, min(num_experts, MAX_TOP_K),
            f" (num_experts={num_experts}; the sorted layout packs the slot in 7 bits)")


def too_many_tokens(tokens) -> bool:
    """T >= 2**24, decided without adding a guard when T is symbolic (checked again at run time)."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return tokens >= MAX_TOKENS if isinstance(tokens, int) else statically_known_true(tokens >= MAX_TOKENS)


def _fail(name: str, msg: str, exc=ValueError):
    raise exc(f"{name}: {msg}")


def tensor(name: str, t, ndim: int | None = None, dtypes=None, floating: bool = False):
    if not isinstance(t, torch.Tensor):
        _fail(name, f"expected a Tensor, got {type(t).__name__}", TypeError)
    if ndim is not None and t.dim() != ndim:
        _fail(name, f"expected {ndim}-D, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        _fail(name, f"expected a floating dtype, got {t.dtype}", TypeError)
    if dtypes is not None and t.dtype not in dtypes:
        _fail(name, f"expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}", TypeError)


def same_device(ref_name: str, ref: torch.Tensor, **others):
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            _fail(name, f"on {t.device} but {ref_name} is on {ref.device}")


def shape(name: str, t: torch.Tensor, expected: tuple, what: str):
    if tuple(t.shape) != tuple(expected):
        _fail(name, f"expected shape {tuple(expected)} ({what}), got {tuple(t.shape)}")


def route_args(logits, top_k, scoring, renormalize, order, correction_bias, n_group, topk_group, scaling):
    tensor("logits", logits, ndim=2, floating=True)
    num_experts = logits.shape[1]
    top_k_arg("top_k", top_k, num_experts)
    if scoring not in SCORINGS:
        _fail("scoring", f"expected one of {SCORINGS}, got {scoring!r}")
    if order not in ORDERS:
        _fail("order", f"expected one of {ORDERS}, got {order!r}")
    if order == "topk_then_softmax":
        if scoring != "softmax":
            _fail("scoring", "order='topk_then_softmax' takes scoring='softmax'")
        if correction_bias is not None or n_group != 1:
            _fail("order", "'topk_then_softmax' takes no correction_bias and n_group=1")
    if correction_bias is not None:
        tensor("correction_bias", correction_bias, ndim=1, floating=True)
        shape("correction_bias", correction_bias, (num_experts,), "one per expert")
        same_device("logits", logits, correction_bias=correction_bias)
    if n_group < 1 or num_experts % n_group != 0:
        _fail("n_group", f"must be >= 1 and divide num_experts={num_experts}, got {n_group}")
    if n_group > 1:
        if not 1 <= topk_group <= n_group:
            _fail("topk_group", f"must be in [1, n_group={n_group}], got {topk_group}")
        if top_k > topk_group * (num_experts // n_group):
            _fail("top_k", f"{top_k} exceeds the {topk_group} groups x {num_experts // n_group} experts kept")
    if not isinstance(scaling, (int, float)) or not scaling > 0:
        _fail("scaling", f"must be a positive number, got {scaling!r}")
    return num_experts


def sort_args(ids, weights, num_experts, block_m, expert_mask):
    tensor("ids", ids, ndim=2, dtypes=(torch.int32, torch.int64))
    tensor("weights", weights, ndim=2, floating=True)
    shape("weights", weights, tuple(ids.shape), "same as ids")
    same_device("ids", ids, weights=weights, expert_mask=expert_mask)
    if num_experts < 1:
        _fail("num_experts", f"must be >= 1, got {num_experts}")
    top_k_arg("ids", ids.shape[1], num_experts)
    block(block_m)
    if too_many_tokens(ids.shape[0]):
        _fail("ids", f"{ids.shape[0]} tokens; the sorted layout packs token indices in 24 bits (< {MAX_TOKENS})")
    if expert_mask is not None:
        tensor("expert_mask", expert_mask, ndim=1, dtypes=(torch.bool,))
        shape("expert_mask", expert_mask, (num_experts,), "one per expert")


def block(block_m):
    int_arg("block_m", block_m, 1)


def activation_args(activation, gate_up_interleaved, alpha, limit):
    if activation not in ACTIVATIONS:
        _fail("activation", f"unsupported {activation!r}; expected one of {ACTIVATIONS}")
    if activation == "swiglu_oai" and not limit > 0:
        _fail("limit", f"must be > 0 for swiglu_oai, got {limit}")


def expert_weights(hidden, w13, w2, b13, b2, w3=None, gate_up_interleaved=False):
    """Check hidden [T,H], w13 [E,2I,H], w2 [E,H,I], b13 [E,2I], b2 [E,H]; return E.

    With ``w3`` (separate gate and up weights, gpt-fast's ``w1``/``w3``): w13 is the gate projection
    [E,I,H] alone and w3 the up projection with the same shape, dtype and device; biases keep their
    shapes (b13 [E,2I]: gate then up), and the gate/up layout must be the chunked one."""
    tensor("hidden", hidden, ndim=2, floating=True)
    tensor("w13", w13, ndim=3, floating=True)
    tensor("w2", w2, ndim=3, floating=True)
    same_device("hidden", hidden, w13=w13, w2=w2, b13=b13, b2=b2)
    num_experts, rows, hidden_dim = w13.shape
    if hidden.shape[1] != hidden_dim:
        _fail("w13", f"expected [E, {'I' if w3 is not None else '2I'}, H={hidden.shape[1]}], got {tuple(w13.shape)}")
    if w3 is not None:
        tensor("w3", w3, ndim=3, floating=True)
        shape("w3", w3, tuple(w13.shape), "[E, I, H]: the up projection, same shape as w13 (the gate projection)")
        if w3.dtype != w13.dtype:
            _fail("w3", f"dtype {w3.dtype} differs from w13's {w13.dtype}", TypeError)
        same_device("hidden", hidden, w3=w3)
        if gate_up_interleaved:
            _fail("w3", "separate gate (w13) and up (w3) weights take gate_up_interleaved=False")
        two_i = 2 * rows
    else:
        two_i = rows
        if two_i % 2:
            _fail("w13", f"dim 1 holds gate and up (2I) and must be even, got {two_i}")
    shape("w2", w2, (num_experts, hidden_dim, two_i // 2), "[E, H, I] matching w13")
    for name, w in (("w13", w13), ("w2", w2)):
        if w.dtype != hidden.dtype:
            _fail(name, f"dtype {w.dtype} differs from hidden's {hidden.dtype}", TypeError)
    if b13 is not None:
        tensor("b13", b13, ndim=2, floating=True)
        shape("b13", b13, (num_experts, two_i), "[E, 2I]")
    if b2 is not None:
        tensor("b2", b2, ndim=2, floating=True)
        shape("b2", b2, (num_experts, hidden_dim), "[E, H]")
    return num_experts


def routing(hidden, ids, weights, num_experts):
    tensor("ids", ids, ndim=2, dtypes=(torch.int32, torch.int64))
    tensor("weights", weights, ndim=2, floating=True)
    shape("ids", ids, (hidden.shape[0], ids.shape[1]), "[T, k] with T from hidden")
    shape("weights", weights, tuple(ids.shape), "same as ids")
    same_device("hidden", hidden, ids=ids, weights=weights)
    top_k_arg("ids", ids.shape[1], num_experts)


def experts_call(hidden, ids, weights, num_experts, activation, gate_up_interleaved, alpha, limit, expert_mask):
    """The checks shared by the experts ops once their weights gave ``num_experts``: routing, activation
    spec, token count and the optional expert mask."""
    routing(hidden, ids, weights, num_experts)
    activation_args(activation, gate_up_interleaved, alpha, limit)
    if too_many_tokens(hidden.shape[0]):
        _fail("hidden", f"{hidden.shape[0]} tokens; the sorted layout needs T < {MAX_TOKENS}")
    if expert_mask is not None:
        tensor("expert_mask", expert_mask, ndim=1, dtypes=(torch.bool,))
        shape("expert_mask", expert_mask, (num_experts,), "one per expert")
        same_device("hidden", hidden, expert_mask=expert_mask)


def sorted_layout(hidden, sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid, num_experts, top_k, block_m):
    from ..kernels.reference.sort import sorted_length

    block(block_m)
    top_k_arg("top_k", top_k, num_experts)
    length = sorted_length(hidden.shape[0], top_k, num_experts, block_m)
    tensor("sorted_token_ids", sorted_token_ids, ndim=1, dtypes=(torch.int32,))
    shape("sorted_token_ids", sorted_token_ids, (length,), "T*k + E*(block_m-1) rounded up to block_m")
    tensor("sorted_weights", sorted_weights, ndim=1, dtypes=(torch.float32,))
    shape("sorted_weights", sorted_weights, (length,), "same as sorted_token_ids")
    tensor("sorted_expert_ids", sorted_expert_ids, ndim=1, dtypes=(torch.int32,))
    shape("sorted_expert_ids", sorted_expert_ids, (length // block_m,), "one per block_m block")
    tensor("num_valid", num_valid, ndim=1, dtypes=(torch.int32,))
    shape("num_valid", num_valid, (2,), "[padded entries used, T]")
    same_device(
        "hidden", hidden, sorted_token_ids=sorted_token_ids, sorted_weights=sorted_weights,
        sorted_expert_ids=sorted_expert_ids, num_valid=num_valid,
    )
