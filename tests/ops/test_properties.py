"""Property-based tests (hypothesis) over the op contracts on CPU: random T (0 and 1 included), E (1 and
non-powers of two included), top_k, sizes, dtypes, skewed routing, ties, non-contiguous inputs and id
dtypes, against the naive loops in naive.py; plus the defined behaviour for NaN / inf logits."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.naive import naive_experts, naive_sort
from tests.ops.test_ops import check_sort_invariants

OPS = torch.ops.inductor_moe
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def routing(draw):
    tokens = draw(st.integers(0, 12))
    num_experts = draw(st.integers(1, 12))
    top_k = draw(st.integers(1, min(num_experts, 10)))
    seed = draw(st.integers(0, 2**31 - 1))
    skew = draw(st.sampled_from(["uniform", "one_expert", "few_experts", "ties"]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, num_experts, generator=g) * 2
    if skew == "one_expert":
        logits[:, 0] += 50.0
    elif skew == "few_experts":
        logits[:, : max(1, num_experts // 3)] += 20.0
    elif skew == "ties":
        logits = logits.round()  # many equal logits
    return tokens, num_experts, top_k, logits, g


def _layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "transposed":
        return t.t().contiguous().t()
    if kind == "offset":
        pad = torch.zeros(t.shape[0], t.shape[1] + 3, dtype=t.dtype)
        pad[:, 2 : 2 + t.shape[1]] = t
        return pad[:, 2 : 2 + t.shape[1]]
    return t


@SETTINGS
@given(routing(), st.sampled_from([torch.int32, torch.int64]), st.sampled_from([1, 4, 16]),
       st.booleans(), st.sampled_from(["contig", "transposed", "offset"]))
def test_route_then_sort_invariants(r, ids_dtype, block_m, masked, layout):
    tokens, num_experts, top_k, logits, g = r
    weights, ids = OPS.route(_layout(logits, layout), top_k)
    assert ids.dtype == torch.int32 and ((ids >= 0) & (ids < num_experts)).all()
    if tokens:
        # ties aside, the chosen experts carry the top-k probabilities
        probs = torch.softmax(logits, -1)
        chosen = probs.gather(1, ids.long()).sort(-1, descending=True).values
        torch.testing.assert_close(chosen, probs.topk(top_k).values, rtol=0, atol=1e-6)
        torch.testing.assert_close(weights.sum(-1), torch.ones(tokens), rtol=1e-5, atol=1e-5)
    mask = (torch.rand(num_experts, generator=g) > 0.3) if masked else None
    out = OPS.sort(ids.to(ids_dtype), weights, num_experts, block_m, mask)
    check_sort_invariants(ids.to(ids_dtype), weights, num_experts, block_m, mask, out)
    expected = naive_sort(ids.to(ids_dtype), weights, num_experts, block_m, mask)
    for got, want in zip(out, expected):
        assert torch.equal(got, want.to(got.dtype))


@SETTINGS
@given(routing(), st.integers(1, 3), st.integers(1, 3), st.sampled_from([torch.float32, torch.bfloat16]),
       st.sampled_from(["silu", "gelu_tanh", "swiglu_oai"]), st.booleans())
def test_experts_vs_naive(r, h_mult, i_mult, dtype, activation, bias):
    tokens, num_experts, top_k, logits, g = r
    hidden_dim, inter = 8 * h_mult, 4 * i_mult
    weights, ids = OPS.route(logits, top_k)
    hidden = torch.randn(tokens, hidden_dim, generator=g).to(dtype)
    w13 = (torch.randn(num_experts, 2 * inter, hidden_dim, generator=g) * 0.3).to(dtype)
    w2 = (torch.randn(num_experts, hidden_dim, inter, generator=g) * 0.3).to(dtype)
    b13 = (torch.randn(num_experts, 2 * inter, generator=g) * 0.3).to(dtype) if bias else None
    b2 = (torch.randn(num_experts, hidden_dim, generator=g) * 0.3).to(dtype) if bias else None
    interleaved = activation == "swiglu_oai"
    out = OPS.experts(hidden, ids, weights, w13, w2, b13, b2, activation, interleaved)
    want = naive_experts(hidden, ids, weights, w13, w2, b13, b2, activation, interleaved)
    assert out.shape == (tokens, hidden_dim) and out.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.double(), want, **tol)


def test_nan_and_inf_logits_defined_result():
    """Documented in ops/route.py: a token whose logits hold NaN or +inf gets ids that are still valid
    experts (which ones is unspecified) and NaN weights, hence a NaN output row; other tokens are exact."""
    logits = torch.randn(4, 6)
    logits[1, 2] = math.nan
    logits[3, 0] = math.inf
    weights, ids = OPS.route(logits, 2)
    assert ((ids >= 0) & (ids < 6)).all()
    assert weights[[1, 3]].isnan().all() and not weights[[0, 2]].isnan().any()
    hidden = torch.randn(4, 8)
    w13, w2 = torch.randn(6, 8, 8) * 0.3, torch.randn(6, 8, 4) * 0.3
    out = OPS.moe(hidden, logits, w13, w2, 2)
    assert out[[1, 3]].isnan().all()
    good = [0, 2]
    ref = OPS.moe(hidden[good], logits[good], w13, w2, 2)
    torch.testing.assert_close(out[good], ref)
