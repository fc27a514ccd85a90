"""Tests of the ``torch.ops.inductor_moe`` op contracts: against the naive loops of ``tests/ops/naive.py``, the
sort layout invariants, composition, ``torch.library.opcheck`` and argument checks (eager and fake)."""
from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing._internal.optests.generate_tests import ALL_TEST_UTILS

import inductor_moe  # noqa: F401  registers torch.ops.inductor_moe.*

from .naive import TOKEN_BITS, naive_experts, naive_route, naive_sort, naive_sorted_length

OPS = torch.ops.inductor_moe
H, I = 8, 4  # hidden size, expert intermediate size (w13 has 2I rows)

TOKENS = (0, 1, 2, 7)
EXPERTS_TOPK = [(e, k) for e in (1, 3, 8) for k in range(1, min(e, 4) + 1) if not (e == 8 and k == 3)]
DTYPES = (torch.float32, torch.bfloat16)
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "swiglu_oai")
LAYOUTS = ("contig", "transposed", "sliced")


# -------------------------------------------------------------------------------------------------- helpers
def gen(*seed) -> torch.Generator:
    """A generator seeded from any tuple of plain values, stable across runs (unlike ``hash`` of a str)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(seed).encode()))


def randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values as ``t`` in a given memory layout: contiguous, a transposed view of a tensor whose last two
    dims are swapped (GPT-OSS stores w13 as [E, H, 2I]), or a slice at a storage offset of a larger tensor."""
    if layout == "contig":
        return t.contiguous()
    if layout == "transposed":
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert t.dim() < 2 or t.shape[-1] <= 1 or t.shape[-2] <= 1 or not out.is_contiguous()
        return out
    if layout == "sliced":
        big = torch.zeros(*(s + 3 for s in t.shape), dtype=t.dtype)
        view = big[tuple(slice(1, 1 + s) for s in t.shape)]
        view.copy_(t)
        assert view.storage_offset() > 0
        return view
    raise AssertionError(layout)


def distinct_ids(g, tokens, top_k, num_experts, dtype=torch.int32):
    """[T, k] ids with distinct experts per row, as a router produces."""
    rows = [torch.randperm(num_experts, generator=g)[:top_k] for _ in range(tokens)]
    out = torch.stack(rows) if rows else torch.empty(0, top_k, dtype=torch.long)
    return out.to(dtype)


def random_mask(g, num_experts):
    mask = torch.rand(num_experts, generator=g) < 0.6
    if num_experts > 1:
        mask[0], mask[-1] = True, False
    return mask


def expert_weights(g, num_experts, dtype, layout="contig", biases=False, bias_dtype=None):
    """w13 [E, 2I, H], w2 [E, H, I] (and b13 [E, 2I], b2 [E, H]) scaled so the FFN output is O(1)."""
    w13 = with_layout(randn(g, num_experts, 2 * I, H, dtype=dtype, scale=0.5), layout)
    w2 = with_layout(randn(g, num_experts, H, I, dtype=dtype, scale=0.5), layout)
    b13 = b2 = None
    if biases:
        bias_dtype = bias_dtype or dtype
        b13 = randn(g, num_experts, 2 * I, dtype=bias_dtype, scale=0.5)
        b2 = randn(g, num_experts, H, dtype=bias_dtype, scale=0.5)
    return w13, w2, b13, b2


def assert_close_to_naive(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype):
    assert got.dtype == dtype
    assert got.shape == expected.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------------- route
ROUTE_CONFIGS = {
    "softmax": dict(scoring="softmax", renormalize=True),
    "softmax_raw_scaled": dict(scoring="softmax", renormalize=False, scaling=2.5),
    "sigmoid_bias": dict(scoring="sigmoid", renormalize=True, correction_bias=True),
    "sigmoid_raw": dict(scoring="sigmoid", renormalize=False),
    "softmax_bias_scaled": dict(scoring="softmax", renormalize=True, correction_bias=True, scaling=0.5),
    "topk_then_softmax": dict(order="topk_then_softmax"),
    "topk_then_softmax_scaled": dict(order="topk_then_softmax", renormalize=False, scaling=3.0),
}


def route_inputs(tokens, num_experts, top_k, dtype, config: dict, seed=0, layout="contig", min_margin=1e-4):
    """Random logits (and correction bias) whose top-k and top-group choices are not near-ties, the op's
    kwargs, and the naive result."""
    for attempt in range(200):
        g = gen(tokens, num_experts, top_k, str(dtype), seed, attempt)
        logits = with_layout(randn(g, tokens, num_experts, dtype=dtype, scale=2.0), layout)
        kwargs = dict(config)
        if kwargs.get("correction_bias") is True:
            kwargs["correction_bias"] = torch.rand(num_experts, generator=g) * 0.3
        naive = naive_route(logits, top_k, **kwargs)
        if naive.margin > min_margin:
            return logits, kwargs, naive
    raise AssertionError("could not draw tie-free router logits")


def check_route(weights, ids, naive, tokens, top_k):
    """Ids as sets per row (distinct, in descending selection score), weights matched by expert id."""
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (tokens, top_k)
    assert weights.is_contiguous() and ids.is_contiguous()
    for t in range(tokens):
        got, expected = ids[t].tolist(), naive.ids[t].tolist()
        assert len(set(got)) == top_k, f"row {t}: repeated experts {got}"
        assert set(got) == set(expected), f"row {t}: experts {got}, expected {expected}"
        by_id = dict(zip(expected, naive.weights[t].tolist()))
        torch.testing.assert_close(
            weights[t].double(), torch.tensor([by_id[e] for e in got], dtype=torch.float64), rtol=1e-5, atol=1e-7
        )
        scores = [naive.select[t, e].item() for e in got]
        assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:])), f"row {t}: not descending {scores}"


@pytest.mark.parametrize("config", list(ROUTE_CONFIGS))
@pytest.mark.parametrize("num_experts,top_k", EXPERTS_TOPK)
@pytest.mark.parametrize("tokens", TOKENS)
def test_route_vs_naive(tokens, num_experts, top_k, config):
    for dtype in DTYPES:  # f32 and bf16 logits; the weights are f32 either way
        logits, kwargs, naive = route_inputs(tokens, num_experts, top_k, dtype, ROUTE_CONFIGS[config])
        weights, ids = OPS.route(logits, top_k, **kwargs)
        check_route(weights, ids, naive, tokens, top_k)
        if kwargs.get("renormalize", True) and kwargs.get("scaling", 1.0) == 1.0 and tokens:
            torch.testing.assert_close(weights.sum(-1), torch.ones(tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
@pytest.mark.parametrize("config", ["softmax", "sigmoid_bias", "topk_then_softmax"])
def test_route_non_contiguous(config, layout):
    logits, kwargs, naive = route_inputs(7, 8, 3, torch.float32, ROUTE_CONFIGS[config], layout=layout)
    assert not logits.is_contiguous()
    weights, ids = OPS.route(logits, 3, **kwargs)
    check_route(weights, ids, naive, 7, 3)
    ref_w, ref_ids = OPS.route(logits.contiguous(), 3, **kwargs)
    # same choice; the weights may differ in the last bit (vectorized vs strided elementwise kernels)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w, rtol=1e-6, atol=1e-7)


GROUP_CASES = [  # (E, n_group, topk_group, top_k)
    (8, 4, 2, 3), (8, 4, 1, 2), (8, 4, 2, 4), (8, 8, 3, 3), (8, 2, 1, 4), (3, 3, 2, 2), (6, 3, 2, 4), (6, 2, 2, 4),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
@pytest.mark.parametrize("case", GROUP_CASES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
def test_route_group_limited_vs_naive(tokens, case, scoring, bias):
    num_experts, n_group, topk_group, top_k = case
    config = dict(scoring=scoring, renormalize=True, correction_bias=bias or None, n_group=n_group,
                  topk_group=topk_group, scaling=2.5)
    for dtype in DTYPES:
        logits, kwargs, naive = route_inputs(tokens, num_experts, top_k, dtype, config)
        weights, ids = OPS.route(logits, top_k, **kwargs)
        check_route(weights, ids, naive, tokens, top_k)
        size = num_experts // n_group
        for t in range(tokens):  # the chosen experts lie in at most topk_group groups
            assert len({e // size for e in ids[t].tolist()}) <= topk_group


def test_route_group_limited_excludes_best_single_expert():
    """A group whose one expert is best overall but whose top-2 sum is low must be excluded."""
    logits = torch.tensor([[5.0, -5.0, 1.0, 1.0, 0.5, 0.5, -1.0, -1.0]])  # groups of 2: sums
    # sigmoid scores: group 0 = 0.993+0.007 = 1.0, group 1 = 2*0.731 = 1.46, group 2 = 2*0.622 = 1.24
    weights, ids = OPS.route(logits, 2, scoring="sigmoid", n_group=4, topk_group=1)
    assert sorted(ids[0].tolist()) == [2, 3]
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5]]))
    weights, ids = OPS.route(logits, 3, scoring="sigmoid", n_group=4, topk_group=2)
    assert ids[0].tolist()[:2] in ([2, 3], [3, 2]) and ids[0, 2].item() in (4, 5)  # 4 and 5 tie


def test_route_docstring_example():
    weights, ids = OPS.route(torch.tensor([[0.0, 1.0, 2.0]]), 2)
    assert ids.tolist() == [[2, 1]]
    e = math.e
    torch.testing.assert_close(weights, torch.tensor([[e * e / (e * e + e), e / (e * e + e)]]))


def _check_tie_aware(weights, ids, naive, top_k):
    for t in range(ids.shape[0]):
        got = ids[t].tolist()
        assert len(set(got)) == top_k
        chosen = sorted((naive.select[t, e].item() for e in got), reverse=True)
        best = sorted(naive.select[t].tolist(), reverse=True)[:top_k]
        assert chosen == pytest.approx(best, abs=1e-6), f"row {t}: chose {got}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", ["softmax", "sigmoid_raw", "sigmoid_bias", "topk_then_softmax", "group"])
def test_route_ties(config, dtype):
    """With tied scores any of the tied experts may be chosen: the chosen experts' selection scores must be the
    top-k scores, and each weight must belong to the expert it is reported for."""
    logits = torch.tensor([
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 2.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0],
        [3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ], dtype=dtype)
    top_k = 3
    kwargs = dict(ROUTE_CONFIGS.get(config, {}))
    if config == "sigmoid_bias":
        kwargs["correction_bias"] = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.5, 0.5])
    if config == "group":
        # tied experts, tied groups, but the set of the 2 best groups of 2 is never ambiguous
        kwargs = dict(scoring="sigmoid", n_group=4, topk_group=2)
        logits = torch.tensor([
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            [2.0, 2.0, 0.0, 0.0, 2.0, 2.0, -1.0, -1.0],
            [0.0, 1.0, 1.0, 0.0, -1.0, -1.0, -2.0, -2.0],
        ], dtype=dtype)
    weights, ids = OPS.route(logits, top_k, **kwargs)
    naive = naive_route(logits, top_k, **kwargs)
    _check_tie_aware(weights, ids, naive, top_k)
    # every weight is computed from its own expert: recompute from the op's own choice
    for t in range(logits.shape[0]):
        x = logits[t].double()
        got = ids[t].long()
        if kwargs.get("order") == "topk_then_softmax":
            expected = torch.softmax(x[got], 0)
        else:
            probs = torch.softmax(x, 0) if kwargs.get("scoring", "softmax") == "softmax" else torch.sigmoid(x)
            expected = probs[got]
            if kwargs.get("renormalize", True):
                expected = expected / expected.sum()
        torch.testing.assert_close(weights[t].double(), expected * kwargs.get("scaling", 1.0), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------- sort
SORT_VARIANTS = {  # ids dtype, weights dtype, mask, ids with repeats / out-of-range entries
    "i32_f32": (torch.int32, torch.float32, False, False),
    "i64_bf16_mask": (torch.int64, torch.bfloat16, True, False),
    "i64_f32_mask_dup": (torch.int64, torch.float32, True, True),
    "i32_bf16_dup": (torch.int32, torch.bfloat16, False, True),
}


def sort_inputs(tokens, num_experts, top_k, variant, seed=0):
    ids_dtype, w_dtype, masked, dup = SORT_VARIANTS[variant]
    g = gen(tokens, num_experts, top_k, variant, seed)
    if dup:  # repeats within a row, and ids outside [0, E) which the contract drops
        ids = torch.randint(-1, num_experts + 1, (tokens, top_k), generator=g).to(ids_dtype)
    else:
        ids = distinct_ids(g, tokens, top_k, num_experts, ids_dtype)
    weights = torch.rand(tokens, top_k, generator=g).to(w_dtype)
    mask = random_mask(g, num_experts) if masked else None
    return ids, weights, mask


def check_sort_invariants(ids, weights, num_experts, block_m, mask, out):
    """The sort contract, checked from its definition (independently of naive_sort)."""
    sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid = out
    tokens, top_k = ids.shape
    length = math.ceil((tokens * top_k + num_experts * (block_m - 1)) / block_m) * block_m
    assert sorted_token_ids.dtype == torch.int32 and sorted_token_ids.shape == (length,)
    assert sorted_weights.dtype == torch.float32 and sorted_weights.shape == (length,)
    assert sorted_expert_ids.dtype == torch.int32 and sorted_expert_ids.shape == (length // block_m,)
    assert num_valid.dtype == torch.int32 and num_valid.shape == (2,)
    used, t_out = num_valid.tolist()
    assert t_out == tokens
    assert 0 <= used <= length and used % block_m == 0
    pad = (top_k << TOKEN_BITS) | tokens
    stid, sw, seid = sorted_token_ids.tolist(), sorted_weights.tolist(), sorted_expert_ids.tolist()
    ids_l, w_l = ids.tolist(), weights.float().tolist()

    def kept(e):
        return 0 <= e < num_experts and (mask is None or bool(mask[e]))

    expected_pairs = {(t, s) for t in range(tokens) for s in range(top_k) if kept(ids_l[t][s])}
    counts = {}
    for t, s in expected_pairs:
        counts[ids_l[t][s]] = counts.get(ids_l[t][s], 0) + 1
    assert used == sum(-(-c // block_m) * block_m for c in counts.values())

    # past num_valid[0]: padding only, and blocks -1
    assert all(v == pad for v in stid[used:]) and all(w == 0.0 for w in sw[used:])
    assert all(e == -1 for e in seid[used // block_m:])
    # runs: each block's expert is kept, blocks ascend by expert, one run per expert with pairs
    run_experts = seid[:used // block_m]
    assert all(kept(e) for e in run_experts)
    assert run_experts == sorted(run_experts)
    assert sorted(set(run_experts)) == sorted(counts)
    seen = []
    for e in sorted(counts):
        first = run_experts.index(e)
        n_blocks = run_experts.count(e)
        assert n_blocks == -(-counts[e] // block_m)
        run = list(range(first * block_m, (first + n_blocks) * block_m))
        real = [i for i in run if stid[i] != pad]
        assert real == run[:counts[e]], f"expert {e}: padding inside the run"
        pairs = [(stid[i] & ((1 << TOKEN_BITS) - 1), stid[i] >> TOKEN_BITS) for i in real]
        assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs), f"expert {e}: not (token, slot) ascending"
        for (t, s), i in zip(pairs, real):
            assert 0 <= t < tokens and 0 <= s < top_k and ids_l[t][s] == e
            assert sw[i] == w_l[t][s]
        assert all(sw[i] == 0.0 for i in run[counts[e]:])
        seen += pairs
    assert len(seen) == len(expected_pairs) and set(seen) == expected_pairs  # every kept pair exactly once


@pytest.mark.parametrize("block_m", [1, 3, 4, 16])
@pytest.mark.parametrize("num_experts,top_k", EXPERTS_TOPK)
@pytest.mark.parametrize("tokens", TOKENS)
def test_sort_vs_naive(tokens, num_experts, top_k, block_m):
    for variant in SORT_VARIANTS:
        ids, weights, mask = sort_inputs(tokens, num_experts, top_k, variant)
        out = OPS.sort(ids, weights, num_experts, block_m, mask)
        expected = naive_sort(ids, weights, num_experts, block_m, mask)
        names = ("sorted_token_ids", "sorted_weights", "sorted_expert_ids", "num_valid")
        for name, got, exp in zip(names, out, expected):
            assert got.dtype == exp.dtype and got.shape == exp.shape, f"{variant}: {name}"
            assert torch.equal(got, exp), f"{variant}: {name}: got {got.tolist()}, expected {exp.tolist()}"
        check_sort_invariants(ids, weights, num_experts, block_m, mask, out)


@pytest.mark.parametrize("seed", range(12))
def test_sort_invariants_random(seed):
    g = gen("invariants", seed)
    tokens = int(torch.randint(0, 40, (), generator=g))
    num_experts = int(torch.randint(1, 17, (), generator=g))
    top_k = int(torch.randint(1, min(num_experts, 6) + 1, (), generator=g))
    block_m = int(torch.randint(1, 33, (), generator=g))
    ids = distinct_ids(g, tokens, top_k, num_experts, (torch.int32, torch.int64)[seed % 2])
    weights = torch.rand(tokens, top_k, generator=g)
    mask = random_mask(g, num_experts) if seed % 3 else None
    out = OPS.sort(ids, weights, num_experts, block_m, mask)
    check_sort_invariants(ids, weights, num_experts, block_m, mask, out)
    for got, exp in zip(out, naive_sort(ids, weights, num_experts, block_m, mask)):
        assert torch.equal(got, exp)


def test_sort_docstring_example():
    ids = torch.tensor([[1, 0], [1, 2], [0, 1]], dtype=torch.int32)
    weights = torch.arange(6, dtype=torch.float32).view(3, 2) / 10
    stid, sw, seid, nv = OPS.sort(ids, weights, 3, 2)
    pad = (2 << 24) | 3
    assert stid.tolist() == [1 << 24 | 0, 0 << 24 | 2, 0 | 0, 0 | 1, 1 << 24 | 2, pad, 1 << 24 | 1, pad] + [pad] * 2
    assert seid.tolist() == [0, 1, 1, 2, -1]  # L = 3*2 + 3*(2-1) = 9, rounded up to 10
    assert nv.tolist() == [8, 3]
    assert sw.tolist() == pytest.approx([0.1, 0.4, 0.0, 0.2, 0.5, 0.0, 0.3, 0.0] + [0.0] * 2)


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_sort_non_contiguous(layout):
    ids, weights, mask = sort_inputs(7, 8, 4, "i64_f32_mask_dup")
    ids_v, weights_v = with_layout(ids, layout), with_layout(weights, layout)
    assert not ids_v.is_contiguous() and not weights_v.is_contiguous()
    for got, exp in zip(OPS.sort(ids_v, weights_v, 8, 4, mask), naive_sort(ids, weights, 8, 4, mask)):
        assert torch.equal(got, exp)


@pytest.mark.parametrize("tokens,top_k,num_experts,block_m", [
    (0, 1, 1, 1), (0, 2, 8, 4), (1, 1, 1, 16), (7, 4, 8, 16), (5, 3, 3, 4), (100, 8, 64, 32), (3, 2, 5, 7),
])
def test_sort_length_formula(tokens, top_k, num_experts, block_m):
    ids = torch.zeros(tokens, top_k, dtype=torch.int32)
    ids[:] = torch.arange(top_k, dtype=torch.int32)
    stid, sw, seid, nv = OPS.sort(ids, torch.ones(tokens, top_k), num_experts, block_m)
    worst = tokens * top_k + num_experts * (block_m - 1)
    length = (worst + block_m - 1) // block_m * block_m
    assert stid.numel() == sw.numel() == length and seid.numel() == length // block_m
    assert length == naive_sorted_length(tokens, top_k, num_experts, block_m)


def test_sort_all_masked():
    ids = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)
    stid, sw, seid, nv = OPS.sort(ids, torch.ones(2, 2), 3, 4, torch.zeros(3, dtype=torch.bool))
    assert nv.tolist() == [0, 2]
    assert (stid == ((2 << 24) | 2)).all() and (sw == 0).all() and (seid == -1).all()


# -------------------------------------------------------------------------------------------------- experts
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_experts,top_k", EXPERTS_TOPK)
@pytest.mark.parametrize("tokens", TOKENS)
def test_experts_vs_naive_shapes(tokens, num_experts, top_k, dtype):
    g = gen("experts", tokens, num_experts, top_k, str(dtype))
    hidden = randn(g, tokens, H, dtype=dtype)
    ids = distinct_ids(g, tokens, top_k, num_experts)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, _, _ = expert_weights(g, num_experts, dtype)
    out = OPS.experts(hidden, ids, weights, w13, w2)
    assert out.is_contiguous()
    assert_close_to_naive(out, naive_experts(hidden, ids, weights, w13, w2), dtype)


EXPERT_VARIANTS = list(itertools.product(ACTIVATIONS, (False, True)))  # activation, gate_up_interleaved


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation,interleaved", EXPERT_VARIANTS)
def test_experts_activations_vs_naive(activation, interleaved, dtype, biases, layout):
    g = gen("act", activation, interleaved, str(dtype), biases, layout)
    tokens, num_experts, top_k = 7, 8, 2
    hidden = with_layout(randn(g, tokens, H, dtype=dtype), layout)
    ids = distinct_ids(g, tokens, top_k, num_experts, torch.int64 if biases else torch.int32)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, layout, biases)
    # limit small enough that swiglu_oai clamps some gate and up values
    kwargs = dict(activation=activation, gate_up_interleaved=interleaved, alpha=1.702, limit=0.75)
    out = OPS.experts(hidden, ids, weights, w13, w2, b13, b2, **kwargs)
    assert_close_to_naive(out, naive_experts(hidden, ids, weights, w13, w2, b13, b2, **kwargs), dtype)


def test_swiglu_oai_clamps():
    """The swiglu_oai limit is live in the activation test above: some gate/up pre-activations exceed it."""
    g = gen("act", "swiglu_oai", True, str(torch.float32), True, "contig")
    hidden = randn(g, 7, H)
    w13 = randn(g, 8, 2 * I, H, scale=0.5)
    assert (hidden @ w13.transpose(1, 2)).abs().max() > 0.75


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", "swiglu_oai"])
def test_experts_gpt_oss_layout(activation, dtype):
    """GPT-OSS: w13 as a transposed view of [E, H, 2I] (interleaved), w2 of [E, I, H], f32 biases, top-4 of 8."""
    g = gen("gptoss", activation, str(dtype))
    tokens, num_experts, top_k = 7, 8, 4
    hidden = randn(g, tokens, H, dtype=dtype)
    w13 = randn(g, num_experts, H, 2 * I, dtype=dtype, scale=0.5).transpose(1, 2)
    w2 = randn(g, num_experts, I, H, dtype=dtype, scale=0.5).transpose(1, 2)
    b13 = randn(g, num_experts, 2 * I, scale=0.5)
    b2 = randn(g, num_experts, H, scale=0.5)
    ids = distinct_ids(g, tokens, top_k, num_experts, torch.int64)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=g), -1).to(dtype)
    kwargs = dict(activation=activation, gate_up_interleaved=True, alpha=1.702, limit=1.0)
    out = OPS.experts(hidden, ids, weights, w13, w2, b13, b2, **kwargs)
    assert_close_to_naive(out, naive_experts(hidden, ids, weights, w13, w2, b13, b2, **kwargs), dtype)


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_experts,top_k", [(1, 1), (3, 2), (8, 4)])
@pytest.mark.parametrize("tokens", TOKENS)
def test_experts_expert_mask_vs_naive(tokens, num_experts, top_k, dtype, ids_dtype):
    g = gen("mask", tokens, num_experts, top_k, str(dtype), str(ids_dtype))
    hidden = randn(g, tokens, H, dtype=dtype)
    ids = distinct_ids(g, tokens, top_k, num_experts, ids_dtype)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, biases=True, bias_dtype=torch.float32)
    mask = random_mask(g, num_experts)
    out = OPS.experts(hidden, ids, weights, w13, w2, b13, b2, expert_mask=mask)
    assert_close_to_naive(out, naive_experts(hidden, ids, weights, w13, w2, b13, b2, expert_mask=mask), dtype)


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64], ids=str)
def test_experts_drops_ids_out_of_range(ids_dtype):
    """experts = sort + experts_sorted, and sort drops ids outside [0, E): such slots contribute nothing."""
    g = gen("oob", str(ids_dtype))
    hidden = randn(g, 7, H)
    ids = torch.randint(-1, 5, (7, 3), generator=g).to(ids_dtype)  # E = 4: -1 and 4 are dropped
    ids[0] = torch.tensor([-1, 4, -1])
    weights = torch.rand(7, 3, generator=g)
    w13, w2, b13, b2 = expert_weights(g, 4, torch.float32, biases=True)
    out = OPS.experts(hidden, ids, weights, w13, w2, b13, b2)
    assert (out[0] == 0).all()
    assert_close_to_naive(out, naive_experts(hidden, ids, weights, w13, w2, b13, b2), torch.float32)


def test_experts_top_k_above_128():
    """Either the op rejects a top_k whose slot does not fit the packed int32 (naming the argument), or it
    computes the right result (it rejects: top_k <= 127)."""
    tokens, top_k, num_experts = 2, 129, 131
    g = gen("bigk")
    hidden = randn(g, tokens, H)
    ids = distinct_ids(g, tokens, top_k, num_experts)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, _, _ = expert_weights(g, num_experts, torch.float32)
    try:
        out = OPS.experts(hidden, ids, weights, w13, w2)
    except ValueError as e:
        assert str(e).startswith(("top_k", "ids")), e
        return
    assert_close_to_naive(out, naive_experts(hidden, ids, weights, w13, w2), torch.float32)


@pytest.mark.parametrize("block_m", [1, 2, 5, 16])
@pytest.mark.parametrize("num_experts,top_k", [(1, 1), (3, 3), (8, 2), (8, 4)])
@pytest.mark.parametrize("tokens", TOKENS)
def test_experts_sorted_vs_naive(tokens, num_experts, top_k, block_m):
    """experts_sorted on a layout built by naive_sort (not by the op), so it is checked on its own."""
    for dtype in DTYPES:
        _experts_sorted_vs_naive(tokens, num_experts, top_k, dtype, block_m)


def _experts_sorted_vs_naive(tokens, num_experts, top_k, dtype, block_m):
    g = gen("sorted", tokens, num_experts, top_k, str(dtype), block_m)
    hidden = with_layout(randn(g, tokens, H, dtype=dtype), "sliced")
    ids = distinct_ids(g, tokens, top_k, num_experts)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, "transposed", biases=block_m % 2 == 0)
    mask = random_mask(g, num_experts) if block_m == 5 else None
    layout = naive_sort(ids, weights, num_experts, block_m, mask)
    act = ("silu", "gelu", "relu", "swiglu_oai")[block_m % 4]
    out = OPS.experts_sorted(hidden, *layout, w13, w2, top_k, block_m, b13, b2, activation=act,
                             gate_up_interleaved=act == "swiglu_oai")
    expected = naive_experts(hidden, ids, weights, w13, w2, b13, b2, activation=act,
                             gate_up_interleaved=act == "swiglu_oai", expert_mask=mask)
    assert out.is_contiguous()
    assert_close_to_naive(out, expected, dtype)


# ------------------------------------------------------------------------------------------------------ moe
MOE_ROUTES = ["softmax", "sigmoid_bias", "topk_then_softmax", "group"]


MOE_CASES = [(e, k, c) for e, k in [(1, 1), (3, 2), (8, 1), (8, 4)] for c in MOE_ROUTES if not (c == "group" and e == 1)]


@pytest.mark.parametrize("num_experts,top_k,config", MOE_CASES)
@pytest.mark.parametrize("tokens", TOKENS)
def test_moe_vs_naive(tokens, num_experts, top_k, config):
    for dtype in DTYPES:
        _moe_vs_naive(tokens, num_experts, top_k, config, dtype)


def _moe_vs_naive(tokens, num_experts, top_k, config, dtype):
    if config == "group":  # one expert per group
        route_cfg = dict(scoring="sigmoid", correction_bias=True, n_group=num_experts, topk_group=top_k, scaling=2.0)
    else:
        route_cfg = ROUTE_CONFIGS[config]
    layout = "transposed" if config in ("sigmoid_bias", "group") else "contig"
    logits, route_kwargs, naive = route_inputs(tokens, num_experts, top_k, dtype, route_cfg, seed=1, layout=layout)
    g = gen("moe", tokens, num_experts, top_k, config, str(dtype))
    hidden = with_layout(randn(g, tokens, H, dtype=dtype), "sliced" if layout == "contig" else "contig")
    biases = config in ("topk_then_softmax", "group")
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, layout, biases=biases)
    act = dict(activation="swiglu_oai", gate_up_interleaved=True, limit=1.0) if biases else dict(activation="gelu")
    out = OPS.moe(hidden, logits, w13, w2, top_k, b13, b2, **route_kwargs, **act)
    expected = naive_experts(hidden, naive.ids, naive.weights, w13, w2, b13, b2, **act)
    assert out.is_contiguous()
    assert_close_to_naive(out, expected, dtype)


@pytest.mark.parametrize("config", ["softmax", "sigmoid_bias", "topk_then_softmax"])
@pytest.mark.parametrize("block_m", [1, 4])
@pytest.mark.parametrize("num_experts,top_k", [(1, 1), (3, 3), (8, 2), (8, 4)])
@pytest.mark.parametrize("tokens", TOKENS)
def test_route_sort_vs_naive(tokens, num_experts, top_k, block_m, config):
    for dtype in DTYPES:
        logits, kwargs, naive = route_inputs(tokens, num_experts, top_k, dtype, ROUTE_CONFIGS[config], seed=2)
        mask = random_mask(gen("rs", num_experts), num_experts) if block_m == 4 and config != "softmax" else None
        *layout, weights, ids = OPS.route_sort(logits, top_k, block_m, **kwargs, expert_mask=mask)
        check_route(weights, ids, naive, tokens, top_k)
        for got, exp in zip(layout, naive_sort(ids, weights, num_experts, block_m, mask)):
            assert torch.equal(got, exp), f"{dtype}: got {got.tolist()}, expected {exp.tolist()}"


# ----------------------------------------------------------------------------------------------- composition
@pytest.mark.parametrize("block_m", [1, 3, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,num_experts,top_k", [(0, 3, 2), (1, 1, 1), (7, 8, 4), (2, 3, 3), (33, 8, 2)])
def test_experts_is_sort_then_experts_sorted(tokens, num_experts, top_k, dtype, block_m):
    g = gen("compose", tokens, num_experts, top_k, str(dtype), block_m)
    hidden = randn(g, tokens, H, dtype=dtype)
    ids = distinct_ids(g, tokens, top_k, num_experts, torch.int64)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, biases=True)
    mask = random_mask(g, num_experts) if block_m == 3 else None
    kwargs = dict(activation="gelu_tanh")
    out = OPS.experts(hidden, ids, weights, w13, w2, b13, b2, **kwargs, expert_mask=mask)
    layout = OPS.sort(ids, weights, num_experts, block_m, mask)
    composed = OPS.experts_sorted(hidden, *layout, w13, w2, top_k, block_m, b13, b2, **kwargs)
    if dtype == torch.float32:
        torch.testing.assert_close(out, composed, rtol=1e-6, atol=1e-6)
    else:  # one final rounding to bf16: at most one ulp apart
        torch.testing.assert_close(out, composed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", ["softmax", "sigmoid_bias", "topk_then_softmax"])
@pytest.mark.parametrize("tokens", TOKENS)
def test_moe_is_route_then_experts(tokens, config, dtype):
    num_experts, top_k = 8, 3
    logits, kwargs, _ = route_inputs(tokens, num_experts, top_k, dtype, ROUTE_CONFIGS[config], seed=3)
    g = gen("moe-compose", tokens, config, str(dtype))
    hidden = randn(g, tokens, H, dtype=dtype)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, "transposed", biases=True)
    act = dict(activation="swiglu_oai", gate_up_interleaved=True, alpha=1.5, limit=1.0)
    out = OPS.moe(hidden, logits, w13, w2, top_k, b13, b2, **kwargs, **act)
    weights, ids = OPS.route(logits, top_k, **kwargs)
    composed = OPS.experts(hidden, ids, weights, w13, w2, b13, b2, **act)
    torch.testing.assert_close(out, composed, rtol=0, atol=0)


@pytest.mark.parametrize("config", ["softmax", "sigmoid_bias", "topk_then_softmax"])
@pytest.mark.parametrize("block_m", [1, 4, 16])
@pytest.mark.parametrize("tokens", TOKENS)
def test_route_sort_is_route_then_sort(tokens, block_m, config):
    num_experts, top_k = 8, 2
    logits, kwargs, _ = route_inputs(tokens, num_experts, top_k, torch.bfloat16, ROUTE_CONFIGS[config], seed=4)
    mask = random_mask(gen("rs-compose"), num_experts) if block_m == 4 else None
    out = OPS.route_sort(logits, top_k, block_m, **kwargs, expert_mask=mask)
    weights, ids = OPS.route(logits, top_k, **kwargs)
    expected = (*OPS.sort(ids, weights, num_experts, block_m, mask), weights, ids)
    assert len(out) == 6
    for got, exp in zip(out, expected):
        assert got.dtype == exp.dtype and torch.equal(got, exp)


# ------------------------------------------------------------------------ separate gate / up weights (w3)
def split_w3(w13: torch.Tensor, layout: str = "contig"):
    """gpt-fast's w1 (gate rows) and w3 (up rows) of a fused [E, 2I, H] w13, each [E, I, H]."""
    inter = w13.shape[1] // 2
    return with_layout(w13[:, :inter].contiguous(), layout), with_layout(w13[:, inter:].contiguous(), layout)


@pytest.mark.parametrize("layout", ["contig", "transposed"])
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_w3_is_cat_of_gate_and_up(activation, dtype, biases, layout):
    """experts / experts_sorted / moe with w13 = gate [E, I, H] and w3 = up [E, I, H] give what they give with
    the fused w13 = cat([gate, up], 1)."""
    g = gen("w3", activation, str(dtype), biases, layout)
    tokens, num_experts, top_k = 7, 8, 2
    hidden = randn(g, tokens, H, dtype=dtype)
    ids = distinct_ids(g, tokens, top_k, num_experts)
    weights = torch.rand(tokens, top_k, generator=g)
    logits = randn(g, tokens, num_experts)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, biases=biases)
    w1, w3 = split_w3(w13, layout)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(OPS.experts(hidden, ids, weights, w1, w2, b13, b2, activation=activation, w3=w3),
                               OPS.experts(hidden, ids, weights, w13, w2, b13, b2, activation=activation), **tol)
    layout_out = OPS.sort(ids, weights, num_experts, 4)
    torch.testing.assert_close(
        OPS.experts_sorted(hidden, *layout_out, w1, w2, top_k, 4, b13, b2, activation=activation, w3=w3),
        OPS.experts_sorted(hidden, *layout_out, w13, w2, top_k, 4, b13, b2, activation=activation), **tol)
    torch.testing.assert_close(OPS.moe(hidden, logits, w1, w2, top_k, b13, b2, activation=activation, w3=w3),
                               OPS.moe(hidden, logits, w13, w2, top_k, b13, b2, activation=activation), **tol)
    assert_close_to_naive(OPS.experts(hidden, ids, weights, w1, w2, b13, b2, activation=activation, w3=w3),
                          naive_experts(hidden, ids, weights, w13, w2, b13, b2, activation=activation), dtype)


def test_w3_is_the_last_argument():
    """Existing positional callers keep working: w3 is last in every experts op's schema, default None."""
    for name in ("experts", "experts_sorted", "moe"):
        schema = getattr(OPS, name).default._schema
        last = schema.arguments[-1]
        assert last.name == "w3" and str(last.type) == "Optional[Tensor]" and last.default_value is None


# --------------------------------------------------------------------------------------------------- opcheck
def _opcheck_cases():
    """Every op, optional tensors None and given, on T=5 / E=8 (both dtypes for the expert ops), and once more
    on T=1 / E=4 (a size-1 token dim, specialized under dynamic shapes)."""
    g = gen("opcheck")
    swiglu = dict(activation="swiglu_oai", gate_up_interleaved=True, alpha=1.5, limit=1.0)
    cases = []
    for tokens, num_experts, top_k in ((5, 8, 3), (1, 4, 2)):
        full = tokens > 1
        logits = torch.randn(tokens, num_experts, generator=g)
        bias = torch.rand(num_experts, generator=g)
        mask = torch.arange(num_experts) % 3 != 1
        groups = dict(scoring="sigmoid", correction_bias=bias, n_group=num_experts // 2, topk_group=2, scaling=2.5)
        cases += [
            ("route", (logits, top_k, "sigmoid", True, "softmax_then_topk", bias, num_experts // 2, 2, 2.5), {}),
            ("route_sort", (logits, top_k, 16), dict(groups, expert_mask=mask)),
        ]
        if full:
            cases += [
                ("route", (logits, 2), {}),
                ("route", (logits.to(torch.bfloat16), 4), dict(order="topk_then_softmax")),
                ("route_sort", (logits, 2, 4), {}),
            ]
        ids = distinct_ids(g, tokens, top_k, num_experts)
        weights = torch.rand(tokens, top_k, generator=g)
        cases.append(("sort", (ids.long(), weights.to(torch.bfloat16), num_experts, 16, mask), {}))
        if full:
            cases.append(("sort", (ids, weights, num_experts, 4), {}))
        for dtype in DTYPES if full else (torch.float32,):
            hidden = randn(g, tokens, H, dtype=dtype)
            w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, "transposed", biases=True)
            layout = OPS.sort(ids, weights, num_experts, 4)
            cases += [
                ("experts", (hidden, ids.long(), weights, w13, w2, b13, b2), dict(expert_mask=mask, **swiglu)),
                ("experts_sorted", (hidden, *layout, w13, w2, top_k, 4, b13, b2), swiglu),
                ("moe", (hidden, logits.to(dtype), w13, w2, top_k, b13, b2), dict(groups, **swiglu)),
            ]
            w1, w3 = split_w3(w13)
            cases += [
                ("experts", (hidden, ids.long(), weights, w1, w2, b13, b2), dict(expert_mask=mask, w3=w3)),
                ("experts_sorted", (hidden, *layout, w1, w2, top_k, 4, b13, b2), dict(activation="gelu", w3=w3)),
                ("moe", (hidden, logits.to(dtype), w1, w2, top_k), dict(w3=w3)),
            ]
            if full and dtype == torch.float32:
                cases += [
                    ("experts", (hidden, ids, weights, w13, w2), {}),
                    ("experts_sorted", (hidden, *layout, w13, w2, top_k, 4), {}),
                    ("moe", (hidden, logits, w13, w2, top_k), {}),
                ]
    return cases


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("test_util", list(ALL_TEST_UTILS))
@pytest.mark.parametrize("case", range(len(OPCHECK_CASES)),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OPCHECK_CASES)])
def test_opcheck(case, test_util):
    name, args, kwargs = OPCHECK_CASES[case]
    torch.library.opcheck(getattr(OPS, name).default, args, kwargs, test_utils=test_util)


def test_all_ops_covered_by_opcheck():
    assert {c[0] for c in OPCHECK_CASES} == set(inductor_moe.ops.OP_NAMES)


# ----------------------------------------------------------------------------------------------- bad inputs
def _base(dtype=torch.float32, tokens=3, num_experts=4, top_k=2):
    g = gen("bad")
    hidden = randn(g, tokens, H, dtype=dtype)
    logits = randn(g, tokens, num_experts)
    ids = distinct_ids(g, tokens, top_k, num_experts)
    weights = torch.rand(tokens, top_k, generator=g)
    w13, w2, b13, b2 = expert_weights(g, num_experts, dtype, biases=True)
    layout = tuple(OPS.sort(ids, weights, num_experts, 4))
    return dict(hidden=hidden, logits=logits, ids=ids, weights=weights, w13=w13, w2=w2, b13=b13, b2=b2,
                layout=layout, mask=torch.ones(num_experts, dtype=torch.bool))


def _route(logits=None, top_k=2, **kw):
    b = _base()
    return "route", (b["logits"] if logits is None else logits, top_k), kw


def _route_sort(logits=None, top_k=2, block_m=4, **kw):
    b = _base()
    return "route_sort", (b["logits"] if logits is None else logits, top_k, block_m), kw


def _sort(ids=None, weights=None, num_experts=4, block_m=4, mask=None):
    b = _base()
    ids = b["ids"] if ids is None else ids
    weights = b["weights"] if weights is None else weights
    return "sort", (ids, weights, num_experts, block_m, mask), {}


def _experts(**over):
    b = _base()
    args = dict(hidden=b["hidden"], ids=b["ids"], weights=b["weights"], w13=b["w13"], w2=b["w2"], b13=None,
                b2=None)
    kw = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return "experts", tuple(args.values()), kw


def _experts_sorted(top_k=2, block_m=4, **over):
    b = _base()
    stid, sw, seid, nv = b["layout"]
    args = dict(hidden=b["hidden"], sorted_token_ids=stid, sorted_weights=sw, sorted_expert_ids=seid, num_valid=nv,
                w13=b["w13"], w2=b["w2"])
    kw = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return "experts_sorted", (*args.values(), top_k, block_m), kw


def _moe(top_k=2, **over):
    b = _base()
    args = dict(hidden=b["hidden"], logits=b["logits"], w13=b["w13"], w2=b["w2"])
    kw = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return "moe", (*args.values(), top_k), kw


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


BAD_INPUTS = {
    # route (and the route half of route_sort / moe)
    "route_logits_rank": (lambda: _route(logits=_t(3, 4, 1)), ValueError, "logits"),
    "route_logits_int": (lambda: _route(logits=_t(3, 4, dtype=torch.int32)), TypeError, "logits"),
    "route_top_k_gt_E": (lambda: _route(top_k=5), ValueError, "top_k"),
    "route_top_k_zero": (lambda: _route(top_k=0), ValueError, "top_k"),
    "route_top_k_negative": (lambda: _route(top_k=-1), ValueError, "top_k"),
    "route_bad_scoring": (lambda: _route(scoring="tanh"), ValueError, "scoring"),
    "route_bad_order": (lambda: _route(order="sort_then_pray"), ValueError, "order"),
    "route_topk_then_softmax_sigmoid": (lambda: _route(order="topk_then_softmax", scoring="sigmoid"), ValueError,
                                        "scoring"),
    "route_topk_then_softmax_bias": (lambda: _route(order="topk_then_softmax", correction_bias=_t(4)), ValueError,
                                     "order"),
    "route_topk_then_softmax_groups": (lambda: _route(order="topk_then_softmax", n_group=2), ValueError, "order"),
    "route_bias_shape": (lambda: _route(correction_bias=_t(5)), ValueError, "correction_bias"),
    "route_bias_rank": (lambda: _route(correction_bias=_t(1, 4)), ValueError, "correction_bias"),
    "route_bias_int": (lambda: _route(correction_bias=_t(4, dtype=torch.int64)), TypeError, "correction_bias"),
    "route_n_group_not_dividing": (lambda: _route(n_group=3), ValueError, "n_group"),
    "route_n_group_zero": (lambda: _route(n_group=0), ValueError, "n_group"),
    "route_topk_group_too_big": (lambda: _route(n_group=2, topk_group=3), ValueError, "topk_group"),
    "route_topk_group_zero": (lambda: _route(n_group=2, topk_group=0), ValueError, "topk_group"),
    "route_top_k_exceeds_groups": (lambda: _route(top_k=3, n_group=4, topk_group=2), ValueError, "top_k"),
    "route_scaling_zero": (lambda: _route(scaling=0.0), ValueError, "scaling"),
    "route_scaling_negative": (lambda: _route(scaling=-1.0), ValueError, "scaling"),
    "route_sort_top_k": (lambda: _route_sort(top_k=5), ValueError, "top_k"),
    "route_sort_block_m_zero": (lambda: _route_sort(block_m=0), ValueError, "block_m"),
    "route_sort_block_m_negative": (lambda: _route_sort(block_m=-4), ValueError, "block_m"),
    "route_sort_mask_dtype": (lambda: _route_sort(expert_mask=_t(4, dtype=torch.int32)), TypeError, "expert_mask"),
    "route_sort_mask_shape": (lambda: _route_sort(expert_mask=_t(5, dtype=torch.bool)), ValueError, "expert_mask"),
    "route_sort_scoring": (lambda: _route_sort(scoring="relu"), ValueError, "scoring"),
    # sort
    "sort_ids_rank": (lambda: _sort(ids=_t(6, dtype=torch.int32), weights=_t(6)), ValueError, "ids"),
    "sort_ids_float": (lambda: _sort(ids=_t(3, 2)), TypeError, "ids"),
    "sort_ids_int16": (lambda: _sort(ids=_t(3, 2, dtype=torch.int16)), TypeError, "ids"),
    "sort_weights_int": (lambda: _sort(weights=_t(3, 2, dtype=torch.int32)), TypeError, "weights"),
    "sort_weights_shape": (lambda: _sort(weights=_t(3, 3)), ValueError, "weights"),
    "sort_top_k_gt_E": (lambda: _sort(num_experts=1), ValueError, "ids"),
    "sort_num_experts_zero": (lambda: _sort(ids=_t(3, 0, dtype=torch.int32), weights=_t(3, 0), num_experts=0),
                              ValueError, "num_experts"),
    "sort_block_m_zero": (lambda: _sort(block_m=0), ValueError, "block_m"),
    "sort_block_m_negative": (lambda: _sort(block_m=-1), ValueError, "block_m"),
    "sort_mask_dtype": (lambda: _sort(mask=_t(4, dtype=torch.uint8)), TypeError, "expert_mask"),
    "sort_mask_shape": (lambda: _sort(mask=_t(3, dtype=torch.bool)), ValueError, "expert_mask"),
    "sort_mask_rank": (lambda: _sort(mask=_t(1, 4, dtype=torch.bool)), ValueError, "expert_mask"),
    # experts
    "experts_hidden_rank": (lambda: _experts(hidden=_t(3, H, 1)), ValueError, "hidden"),
    "experts_hidden_int": (lambda: _experts(hidden=_t(3, H, dtype=torch.int32)), TypeError, "hidden"),
    "experts_w13_rank": (lambda: _experts(w13=_t(2 * I, H)), ValueError, "w13"),
    "experts_w2_rank": (lambda: _experts(w2=_t(4, H)), ValueError, "w2"),
    "experts_E_mismatch": (lambda: _experts(w2=_t(5, H, I)), ValueError, "w2"),
    "experts_hidden_size_mismatch": (lambda: _experts(hidden=_t(3, H + 1)), ValueError, "w13"),
    "experts_w2_hidden_mismatch": (lambda: _experts(w2=_t(4, H + 1, I)), ValueError, "w2"),
    "experts_w2_inter_mismatch": (lambda: _experts(w2=_t(4, H, I + 1)), ValueError, "w2"),
    "experts_odd_2I": (lambda: _experts(w13=_t(4, 2 * I + 1, H), w2=_t(4, H, I)), ValueError, "w13"),
    "experts_w13_dtype": (lambda: _experts(w13=_t(4, 2 * I, H, dtype=torch.bfloat16)), TypeError, "w13"),
    "experts_w2_dtype": (lambda: _experts(w2=_t(4, H, I, dtype=torch.float16)), TypeError, "w2"),
    "experts_b13_shape": (lambda: _experts(b13=_t(4, I)), ValueError, "b13"),
    "experts_b2_shape": (lambda: _experts(b2=_t(4, I)), ValueError, "b2"),
    "experts_b2_int": (lambda: _experts(b2=_t(4, H, dtype=torch.int32)), TypeError, "b2"),
    "experts_ids_float": (lambda: _experts(ids=_t(3, 2)), TypeError, "ids"),
    "experts_ids_rank": (lambda: _experts(ids=_t(3, dtype=torch.int32)), ValueError, "ids"),
    "experts_ids_tokens": (lambda: _experts(ids=_t(4, 2, dtype=torch.int32), weights=_t(4, 2)), ValueError, "ids"),
    "experts_top_k_gt_E": (lambda: _experts(ids=_t(3, 5, dtype=torch.int32), weights=_t(3, 5)), ValueError, "ids"),
    "experts_weights_shape": (lambda: _experts(weights=_t(3, 1)), ValueError, "weights"),
    "experts_weights_int": (lambda: _experts(weights=_t(3, 2, dtype=torch.int64)), TypeError, "weights"),
    "experts_activation": (lambda: _experts(activation="swish"), ValueError, "activation"),
    "experts_swiglu_limit": (lambda: _experts(activation="swiglu_oai", limit=0.0), ValueError, "limit"),
    "experts_mask_dtype": (lambda: _experts(expert_mask=_t(4)), TypeError, "expert_mask"),
    "experts_mask_shape": (lambda: _experts(expert_mask=_t(8, dtype=torch.bool)), ValueError, "expert_mask"),
    "experts_w3_shape": (lambda: _experts(w13=_t(4, I, H), w3=_t(4, I + 1, H)), ValueError, "w3"),
    "experts_w3_rank": (lambda: _experts(w13=_t(4, I, H), w3=_t(I, H)), ValueError, "w3"),
    "experts_w3_float": (lambda: _experts(w13=_t(4, I, H), w3=_t(4, I, H, dtype=torch.int32)), TypeError, "w3"),
    "experts_w3_dtype": (lambda: _experts(w13=_t(4, I, H), w3=_t(4, I, H, dtype=torch.bfloat16)), TypeError, "w3"),
    "experts_w3_interleaved": (lambda: _experts(w13=_t(4, I, H), w3=_t(4, I, H), gate_up_interleaved=True),
                               ValueError, "w3"),
    "experts_w3_fused_w13": (lambda: _experts(w3=_t(4, 2 * I, H)), ValueError, "w2"),  # w13 is the gate alone
    "experts_w3_device": (lambda: _experts(w13=_t(4, I, H), w3=_t(4, I, H).to("meta")), ValueError, "w3"),
    # experts_sorted
    "sorted_w3_shape": (lambda: _experts_sorted(w13=_t(4, I, H), w3=_t(4, I, H + 1)), ValueError, "w3"),
    "sorted_w3_interleaved": (lambda: _experts_sorted(w13=_t(4, I, H), w3=_t(4, I, H), gate_up_interleaved=True,
                                                      activation="swiglu_oai"), ValueError, "w3"),
    "sorted_token_ids_length": (lambda: _experts_sorted(sorted_token_ids=_t(7, dtype=torch.int32)), ValueError,
                                "sorted_token_ids"),
    "sorted_token_ids_dtype": (lambda: _experts_sorted(sorted_token_ids=_base()["layout"][0].long()), TypeError,
                               "sorted_token_ids"),
    "sorted_length_mismatch_top_k": (lambda: _experts_sorted(top_k=3), ValueError, "sorted_token_ids"),
    "sorted_length_mismatch_block_m": (lambda: _experts_sorted(block_m=8), ValueError, "sorted_token_ids"),
    "sorted_weights_length": (lambda: _experts_sorted(sorted_weights=_t(3)), ValueError, "sorted_weights"),
    "sorted_weights_dtype": (lambda: _experts_sorted(sorted_weights=_base()["layout"][1].double()), TypeError,
                             "sorted_weights"),
    "sorted_expert_ids_length": (lambda: _experts_sorted(sorted_expert_ids=_t(1, dtype=torch.int32)), ValueError,
                                 "sorted_expert_ids"),
    "sorted_num_valid_shape": (lambda: _experts_sorted(num_valid=_t(3, dtype=torch.int32)), ValueError,
                               "num_valid"),
    "sorted_block_m_zero": (lambda: _experts_sorted(block_m=0), ValueError, "block_m"),
    "sorted_top_k_zero": (lambda: _experts_sorted(top_k=0), ValueError, "top_k"),
    "sorted_top_k_gt_E": (lambda: _experts_sorted(top_k=5), ValueError, "top_k"),
    "sorted_hidden_int": (lambda: _experts_sorted(hidden=_t(3, H, dtype=torch.int64)), TypeError, "hidden"),
    "sorted_w13_dtype": (lambda: _experts_sorted(w13=_t(4, 2 * I, H, dtype=torch.bfloat16)), TypeError, "w13"),
    "sorted_activation": (lambda: _experts_sorted(activation="tanh"), ValueError, "activation"),
    # moe
    "moe_logits_shape": (lambda: _moe(logits=_t(3, 5)), ValueError, "logits"),
    "moe_logits_tokens": (lambda: _moe(logits=_t(2, 4)), ValueError, "logits"),
    "moe_logits_int": (lambda: _moe(logits=_t(3, 4, dtype=torch.int32)), TypeError, "logits"),
    "moe_top_k_gt_E": (lambda: _moe(top_k=5), ValueError, "top_k"),
    "moe_top_k_zero": (lambda: _moe(top_k=0), ValueError, "top_k"),
    "moe_E_mismatch": (lambda: _moe(w2=_t(3, H, I)), ValueError, "w2"),
    "moe_hidden_size": (lambda: _moe(hidden=_t(3, H + 2)), ValueError, "w13"),
    "moe_w13_dtype": (lambda: _moe(w13=_t(4, 2 * I, H, dtype=torch.float64)), TypeError, "w13"),
    "moe_activation": (lambda: _moe(activation="softplus"), ValueError, "activation"),
    "moe_scoring": (lambda: _moe(scoring="max"), ValueError, "scoring"),
    "moe_order": (lambda: _moe(order="random"), ValueError, "order"),
    "moe_bias_shape": (lambda: _moe(correction_bias=_t(3)), ValueError, "correction_bias"),
    "moe_n_group": (lambda: _moe(n_group=3), ValueError, "n_group"),
    "moe_w3_shape": (lambda: _moe(w13=_t(4, I, H), w3=_t(5, I, H)), ValueError, "w3"),
    "moe_w3_dtype": (lambda: _moe(w13=_t(4, I, H), w3=_t(4, I, H, dtype=torch.float64)), TypeError, "w3"),
}


def _to_fake(x, mode):
    return mode.from_tensor(x) if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case):
    """Each check raises the documented exception type, naming the argument, both eagerly and at trace time
    (through the fake impl)."""
    build, exc, arg = BAD_INPUTS[case]
    name, args, kwargs = build()
    op = getattr(OPS, name)
    with pytest.raises(exc, match=rf"^{arg}: "):  # eager
        op(*args, **kwargs)
    fake_mode = FakeTensorMode()
    args = tuple(_to_fake(a, fake_mode) for a in args)
    kwargs = {k: _to_fake(v, fake_mode) for k, v in kwargs.items()}
    with fake_mode, pytest.raises(exc, match=rf"^{arg}: "):  # fake
        op(*args, **kwargs)


@pytest.mark.parametrize("name", ["route", "route_sort", "sort", "experts", "experts_sorted", "moe"])
def test_bad_input_table_builds_valid_base(name):
    """The unmodified base arguments of the table above are accepted (so each case fails for its own reason)."""
    builders = {"route": _route, "route_sort": _route_sort, "sort": _sort, "experts": _experts,
                "experts_sorted": _experts_sorted, "moe": _moe}
    op_name, args, kwargs = builders[name]()
    getattr(OPS, op_name)(*args, **kwargs)


# ------------------------------------------------------------------------------------------- token limit (2**24)
def test_token_limit_eager():
    """T >= 2**24 does not fit the 24-bit token field of the sorted layout: sort / route_sort / experts / moe
    refuse it (checked on shapes, before any work). H = E = k = 1 keeps the tensors at 64 MiB."""
    big = 1 << 24
    ids = torch.empty(big, 1, dtype=torch.int32)
    weights = torch.empty(big, 1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"^ids: "):
        OPS.sort(ids, weights, 1, 4)
    with pytest.raises(ValueError, match=r"^logits: "):
        OPS.route_sort(torch.empty(big, 1, dtype=torch.bfloat16), 1, 4)
    hidden = torch.empty(big, 1, dtype=torch.bfloat16)
    w13, w2 = torch.zeros(1, 2, 1, dtype=torch.bfloat16), torch.zeros(1, 1, 1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"^hidden: "):
        OPS.experts(hidden, ids, weights, w13, w2)
    with pytest.raises(ValueError, match=r"^hidden: "):
        OPS.moe(hidden, torch.empty(big, 1, dtype=torch.bfloat16), w13, w2, 1)


@pytest.mark.parametrize("tokens,ok", [((1 << 24) - 1, True), (1 << 24, False)])
def test_token_limit_fake(tokens, ok):
    """The same limit in the fake impls (what torch.compile traces), with the largest allowed T accepted."""
    with FakeTensorMode():
        ids = torch.empty(tokens, 2, dtype=torch.int32)
        weights = torch.empty(tokens, 2)
        hidden = torch.empty(tokens, H)
        logits = torch.empty(tokens, 4)
        w13, w2 = torch.empty(4, 2 * I, H), torch.empty(4, H, I)
        calls = {
            "ids": lambda: OPS.sort(ids, weights, 4, 16),
            "logits": lambda: OPS.route_sort(logits, 2, 16),
            "hidden": lambda: OPS.experts(hidden, ids, weights, w13, w2),
            "hidden ": lambda: OPS.moe(hidden, logits, w13, w2, 2),
        }
        for arg, call in calls.items():
            if ok:
                out = call()
                assert (out[0] if isinstance(out, tuple) else out).shape[0] >= tokens
            else:
                with pytest.raises(ValueError, match=rf"^{arg.strip()}: "):
                    call()


# --------------------------------------------------------------------------------------- symbolic int arguments
# torch.library infers ``SymInt`` for the ``int`` arguments (see the op schemas), and torch.compile does pass a
# SymInt there: automatic dynamic turns an int argument that changes between calls into one. The checks
# ``isinstance(top_k, int)`` (route_args) and ``isinstance(block_m, int)`` (_checks.block) reject it.
def _trace_symbolic(fn, *args):
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="symbolic")(*args)


def test_route_symbolic_top_k():
    _trace_symbolic(lambda logits, sel: OPS.route(logits, sel.shape[0]), torch.randn(5, 8), torch.zeros(2))


def test_sort_symbolic_block_m():
    ids = torch.tensor([[0, 1], [1, 2], [3, 0]], dtype=torch.int32)
    _trace_symbolic(lambda i, w, sel: OPS.sort(i, w, 4, sel.shape[0]), ids, torch.rand(3, 2), torch.zeros(4))


def test_compiled_route_with_changing_top_k():
    compiled = torch.compile(lambda logits, k: OPS.route(logits, k), backend="aot_eager")
    logits = torch.randn(5, 8)
    for k in (2, 3, 4):  # the second call recompiles with k dynamic
        weights, ids = compiled(logits, k)
        assert ids.shape == (5, k)


def test_experts_sorted_symbolic_top_k():
    """experts_sorted has no isinstance check on top_k: a SymInt top_k traces."""
    g = gen("sym")
    hidden = randn(g, 3, H)
    ids = distinct_ids(g, 3, 2, 4)
    weights = torch.rand(3, 2, generator=g)
    w13, w2, _, _ = expert_weights(g, 4, torch.float32)

    def fn(hidden, ids, weights, w13, w2, sel):
        layout = OPS.sort(ids, weights, 4, 4)
        return OPS.experts_sorted(hidden, *layout, w13, w2, sel.shape[0], 4)

    gm = _trace_symbolic(fn, hidden, ids, weights, w13, w2, torch.zeros(2))
    torch.testing.assert_close(gm(hidden, ids, weights, w13, w2, torch.zeros(2)),
                               OPS.experts(hidden, ids, weights, w13, w2), rtol=1e-6, atol=1e-6)
