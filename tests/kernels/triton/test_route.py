"""route_triton against route_ref: every routing mode, E not a power of two, T across the BLOCK_T sizes."""
import pytest
import torch

pytest.importorskip("triton")

from inductor_moe.kernels.reference import route_ref  # noqa: E402
from inductor_moe.kernels.triton.route import route_triton  # noqa: E402

from .routing_cases import DEVICE, MODES, assert_route_equal, bias_for, logits_for, mode_kwargs  # noqa: E402

PAIRS = [(1, 1), (3, 2), (8, 1), (8, 4), (60, 4), (257, 9)]


def _check(logits, top_k, **kw):
    assert_route_equal(route_triton(logits, top_k, **kw), route_ref(logits, top_k, **kw))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("experts,top_k", PAIRS)
def test_route_modes(experts, top_k, mode):
    kw = mode_kwargs(mode, experts)
    for tokens in (1, 7, 33):
        _check(logits_for(tokens, experts, seed=tokens), top_k, **kw)


@pytest.mark.parametrize("tokens", [0, 2, 300])
@pytest.mark.parametrize("experts,top_k,mode", [(60, 4, "softmax"), (257, 9, "sigmoid_bias"), (3, 2, "topk_softmax")])
def test_route_token_counts(tokens, experts, top_k, mode):
    _check(logits_for(tokens, experts, seed=5), top_k, **mode_kwargs(mode, experts))


@pytest.mark.parametrize("experts,top_k,n_group,topk_group,scoring", [
    (256, 8, 8, 4, "sigmoid"),  # DeepSeek-V3
    (60, 4, 4, 2, "softmax"),
    (12, 3, 12, 5, "sigmoid"),  # groups of one expert: the group score is its only score
    (9, 2, 3, 1, "softmax"),  # every pick from the best group
])
@pytest.mark.parametrize("bias", [False, True])
def test_route_group_limited(experts, top_k, n_group, topk_group, scoring, bias):
    kw = dict(scoring=scoring, n_group=n_group, topk_group=topk_group, scaling=2.5,
              correction_bias=bias_for(experts) if bias else None)
    for tokens in (1, 33):
        _check(logits_for(tokens, experts, seed=tokens), top_k, **kw)


def test_route_several_programs():
    """Tiles of 2 tokens: a grid of programs, the last one partly past T."""
    for experts, top_k, kw in ((60, 4, {}), (256, 8, dict(scoring="sigmoid", n_group=8, topk_group=4))):
        logits = logits_for(7, experts)
        assert_route_equal(route_triton(logits, top_k, **kw, block_t=2), route_ref(logits, top_k, **kw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_route_input_dtypes_and_strides(dtype):
    logits = logits_for(9, 20, dtype=dtype)
    bias = bias_for(40).to(dtype)[::2]  # strided bias
    _check(logits, 3, scoring="sigmoid", correction_bias=bias)
    wide = logits_for(9, 40)
    _check(wide[:, ::2], 3)  # non-contiguous logits
    _check(logits_for(20, 9).t(), 2)


def test_route_ties_go_to_the_lower_expert():
    logits = torch.tensor([
        [1.0, 3.0, 3.0, 0.0, 3.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [2.0, -1.0, 2.0, 2.0, -1.0],
    ], device=DEVICE)
    weights, ids = route_triton(logits, 2)
    assert ids.tolist() == [[1, 2], [0, 1], [0, 2]]
    torch.testing.assert_close(weights, torch.full((3, 2), 0.5, device=DEVICE))
    _, ids = route_triton(logits, 3, order="topk_then_softmax")
    assert ids.tolist() == [[1, 2, 4], [0, 1, 2], [0, 2, 3]]
    # the reference picks the same values (torch.topk's order among equal values is unspecified)
    ref_w, ref_ids = route_ref(logits, 3, order="topk_then_softmax")
    assert torch.equal(logits.gather(1, ids.long()), logits.gather(1, ref_ids.long()))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter, on NaN rows
def test_route_nan_logits_keep_ids_in_range():
    experts, top_k = 10, 4
    logits = logits_for(4, experts)
    logits[0, 7] = float("nan")
    logits[1] = float("nan")
    logits[2, 3] = float("-inf")
    logits[3, :] = float("-inf")
    for kw in (dict(), dict(scoring="sigmoid"), dict(order="topk_then_softmax", renormalize=False),
               dict(scoring="sigmoid", n_group=2, topk_group=1, correction_bias=bias_for(experts))):
        weights, ids = route_triton(logits, top_k, **kw)
        assert ((ids >= 0) & (ids < experts)).all(), (kw, ids)
        assert all(len(set(row)) == top_k for row in ids.tolist()), (kw, ids)  # distinct experts per token
        if kw.get("scoring") == "sigmoid" and "n_group" not in kw:
            assert ids[0, 0] == 7 and weights[0].isnan().any()  # a NaN ranks first, as in torch.topk
        assert ids[1].tolist() == [0, 1, 2, 3]  # an all-NaN row: the lowest experts
    # a finite row next to NaN rows is unaffected
    _check(logits[2:3], top_k)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_route_many_tokens(mode):
    _check(logits_for(2048, 257, seed=11), 9, **mode_kwargs(mode, 257))
    _check(logits_for(2048, 256, seed=12), 8, scoring="sigmoid", n_group=8, topk_group=4,
           correction_bias=bias_for(256), scaling=2.5)
