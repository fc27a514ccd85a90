"""Property-based tests (hypothesis) of the Triton kernels, as tests/ops/test_properties.py does for the op
contracts: random T (0 and 1 included), E (1 and non-powers of two), top_k, block_m, id dtypes, expert
masks and skewed / tied routing, through the ops with the Triton family forced. On CPU this runs under
the interpreter (f32, and bf16 through the upcast path); few examples each, since the interpreter is slow."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import inductor_moe  # noqa: E402
from tests.ops.naive import naive_experts, naive_sort  # noqa: E402
from tests.ops.test_ops import check_sort_invariants  # noqa: E402
from tests.ops.test_properties import routing  # noqa: E402

from .routing_cases import DEVICE  # noqa: E402

OPS = torch.ops.inductor_moe
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(routing(), st.sampled_from([torch.int32, torch.int64]), st.sampled_from([1, 4, 16]), st.booleans(),
       st.booleans())
def test_triton_route_sort_and_route_sort(r, ids_dtype, block_m, masked, fused_op):
    tokens, num_experts, top_k, logits, g = r
    mask = (torch.rand(num_experts, generator=g) > 0.3).to(DEVICE) if masked else None
    logits = logits.to(DEVICE)
    with inductor_moe.force_backend("reference"):
        want_w, want_ids = OPS.route(logits, top_k)
    with inductor_moe.force_backend("triton"):
        if fused_op:
            *out, weights, ids = OPS.route_sort(logits, top_k, block_m, expert_mask=mask)
        else:
            weights, ids = OPS.route(logits, top_k)
            out = OPS.sort(ids.to(ids_dtype), weights, num_experts, block_m, mask)
    assert ids.dtype == torch.int32 and ((ids >= 0) & (ids < num_experts)).all()
    if tokens:
        probs = torch.softmax(logits.float(), -1)
        chosen = probs.gather(1, ids.long()).sort(-1, descending=True).values
        torch.testing.assert_close(chosen, probs.topk(top_k).values, rtol=0, atol=1e-6)  # ties aside
        torch.testing.assert_close(weights.sort(-1).values, want_w.sort(-1).values, rtol=1e-5, atol=1e-6)
    ids_in = ids.to(torch.int32 if fused_op else ids_dtype)
    check_sort_invariants(ids_in.cpu(), weights.cpu(), num_experts, block_m,
                          None if mask is None else mask.cpu(), tuple(t.cpu() for t in out))
    for got, want in zip(out, naive_sort(ids_in.cpu(), weights.cpu(), num_experts, block_m,
                                         None if mask is None else mask.cpu())):
        assert torch.equal(got.cpu(), want.to(got.dtype))


@SETTINGS
@given(routing(), st.integers(1, 2), st.integers(1, 2), st.sampled_from([torch.float32, torch.bfloat16]),
       st.sampled_from(["silu", "swiglu_oai"]), st.booleans())
def test_triton_moe_vs_naive(r, h_mult, i_mult, dtype, activation, bias):
    tokens, num_experts, top_k, logits, g = r
    hidden_dim, inter = 16 * h_mult, 16 * i_mult
    hidden = torch.randn(tokens, hidden_dim, generator=g).to(dtype).to(DEVICE)
    w13 = (torch.randn(num_experts, 2 * inter, hidden_dim, generator=g) * 0.3).to(dtype).to(DEVICE)
    w2 = (torch.randn(num_experts, hidden_dim, inter, generator=g) * 0.3).to(dtype).to(DEVICE)
    b13 = (torch.randn(num_experts, 2 * inter, generator=g) * 0.3).to(dtype).to(DEVICE) if bias else None
    b2 = (torch.randn(num_experts, hidden_dim, generator=g) * 0.3).to(dtype).to(DEVICE) if bias else None
    interleaved = activation == "swiglu_oai"
    logits = logits.to(DEVICE)
    with inductor_moe.force_backend("triton"):
        out = OPS.moe(hidden, logits, w13, w2, top_k, b13, b2, activation=activation,
                      gate_up_interleaved=interleaved)
        # the Triton router's own choice: tied logits may pick other (equally valid) experts than torch.topk
        weights, ids = OPS.route(logits, top_k)
    want = naive_experts(hidden.cpu(), ids.cpu(), weights.cpu(), w13.cpu(), w2.cpu(),
                         None if b13 is None else b13.cpu(), None if b2 is None else b2.cpu(), activation,
                         interleaved)
    assert out.shape == (tokens, hidden_dim) and out.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.cpu().double(), want, **tol)
