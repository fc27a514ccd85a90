"""Inputs and comparisons shared by the Triton route/sort tests."""
import os

import torch

from inductor_moe.kernels.reference import route_ref, sort_ref

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
# interpreter: numpy f32 math, ~1 ulp from torch; GPU: the compiled exp is an approximation
WEIGHT_TOL = 1e-6 if DEVICE == "cpu" else 4e-6

# route modes: keyword arguments of route_ref (bias filled in by ``mode_kwargs``)
MODES = {
    "softmax": dict(),
    "softmax_raw": dict(renormalize=False, scaling=1.5),
    "sigmoid_bias": dict(scoring="sigmoid", bias=True, scaling=2.5),
    "sigmoid_raw": dict(scoring="sigmoid", renormalize=False),
    "topk_softmax": dict(order="topk_then_softmax", renormalize=False),
}


def logits_for(tokens, experts, seed=0, dtype=torch.float32):
    """Tie-free rows: a shuffled grid over [-3, 3) plus jitter under half a step (so sums of two scores,
    the group scores, do not tie either)."""
    g = torch.Generator().manual_seed(seed)
    step = 6.0 / max(experts, 1)
    rows = [torch.randperm(experts, generator=g) for _ in range(tokens)]
    grid = torch.stack(rows).float() if tokens else torch.zeros(0, experts)
    x = (grid - experts / 2) * step + torch.rand(tokens, experts, generator=g) * 0.4 * step
    return x.to(dtype).to(DEVICE)


def bias_for(experts, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(experts, generator=g) * 0.05).to(DEVICE)


def mode_kwargs(mode, experts):
    kw = dict(MODES[mode])
    if kw.pop("bias", False):
        kw["correction_bias"] = bias_for(experts)
    return kw


def routed(tokens, experts, top_k, seed=0):
    weights, ids = route_ref(logits_for(tokens, experts, seed), top_k)
    return ids, weights


def assert_route_equal(got, want):
    (w, ids), (rw, rids) = got, want
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert ids.shape == rids.shape and w.shape == rw.shape
    assert torch.equal(ids, rids), (ids, rids)
    torch.testing.assert_close(w, rw, rtol=WEIGHT_TOL, atol=WEIGHT_TOL)


def assert_sorted_equal(got, want):
    names = ("sorted_token_ids", "sorted_weights", "sorted_expert_ids", "num_valid")
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), (name, a, b)


def sort_both(sort_fn, ids, weights, experts, block_m, mask=None, **kw):
    assert_sorted_equal(sort_fn(ids, weights, experts, block_m, mask, **kw),
                        sort_ref(ids, weights, experts, block_m, mask))
