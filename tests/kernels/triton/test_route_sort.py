"""route_sort_triton: the one-launch kernel and the route + sort fallback, against route_ref + sort_ref.
Ids, token ids, expert ids and num_valid are bit-exact with the reference; weights match to the route
tolerance and the sorted weights are bit-exact with sort_ref of the kernel's own weights."""
import pytest
import torch

pytest.importorskip("triton")

from inductor_moe.kernels.reference import route_ref, sort_ref  # noqa: E402
from inductor_moe.kernels.triton import route_sort as rs_mod  # noqa: E402
from inductor_moe.kernels.triton import sort as sort_mod  # noqa: E402
from inductor_moe.kernels.triton.route_sort import fused_unfit, route_sort_triton  # noqa: E402

from .routing_cases import (  # noqa: E402
    DEVICE, WEIGHT_TOL, assert_route_equal, assert_sorted_equal, bias_for, logits_for, mode_kwargs,
)


def _check(logits, top_k, block_m, expert_mask=None, fused=None, **kw):
    args = dict(scoring="softmax", renormalize=True, order="softmax_then_topk", correction_bias=None, n_group=1,
                topk_group=1, scaling=1.0)
    args.update(kw)
    got = route_sort_triton(logits, top_k, block_m, **args, expert_mask=expert_mask, fused=fused)
    ref_w, ref_ids = route_ref(logits, top_k, **args)
    assert_route_equal(got[4:], (ref_w, ref_ids))
    experts = logits.shape[1]
    want = sort_ref(ref_ids, ref_w, experts, block_m, expert_mask)
    assert_sorted_equal(got[:4], sort_ref(got[5], got[4], experts, block_m, expert_mask))
    for i in (0, 2, 3):
        assert torch.equal(got[i], want[i])
    torch.testing.assert_close(got[1], want[1], rtol=WEIGHT_TOL, atol=WEIGHT_TOL)


def _mask(experts):
    mask = torch.arange(experts, device=DEVICE) % 3 != 1
    return mask


@pytest.mark.parametrize("mode", ["softmax", "sigmoid_bias", "topk_softmax"])
@pytest.mark.parametrize("experts,top_k", [(1, 1), (3, 2), (8, 4), (60, 4), (257, 9)])
def test_route_sort_fused(experts, top_k, mode):
    kw = mode_kwargs(mode, experts)
    for tokens, block_m, mask in ((0, 16, None), (1, 64, None), (7, 16, _mask(experts)), (33, 64, None)):
        _check(logits_for(tokens, experts, seed=tokens), top_k, block_m, mask, fused=True, **kw)


def test_route_sort_fused_group_limited():
    experts = 256
    kw = dict(scoring="sigmoid", correction_bias=bias_for(experts), n_group=8, topk_group=4, scaling=2.5)
    _check(logits_for(7, experts), 8, 16, _mask(experts), fused=True, **kw)
    _check(logits_for(2, experts), 8, 64, fused=True, **kw)


def test_route_sort_fused_multi_trip_loops(monkeypatch):
    monkeypatch.setattr(sort_mod, "TILE_ELEMS", 128)
    monkeypatch.setattr(sort_mod, "PAD_TILE", 256)
    monkeypatch.setattr(sort_mod, "FILL", 32)
    monkeypatch.setattr(sort_mod, "TAIL_BLOCK", 256)
    _check(logits_for(7, 60), 4, 16, _mask(60), fused=True)


@pytest.mark.parametrize("tokens", [2, 300])
def test_route_sort_fallback(tokens):
    experts, top_k = 257, 9
    _check(logits_for(tokens, experts), top_k, 64, _mask(experts), fused=False,
           **mode_kwargs("sigmoid_bias", experts))


def test_route_sort_skewed_to_one_expert():
    experts, top_k = 60, 4
    logits = logits_for(33, experts)
    logits[:, 17] += 100.0  # every token picks expert 17 first
    for fused in (True, False):
        _check(logits, top_k, 16, fused=fused)
        _check(logits, top_k, 16, _mask(experts), fused=fused, order="topk_then_softmax")


def test_route_sort_picks_the_fused_kernel_by_size(monkeypatch):
    assert fused_unfit(16, 257, 9) is None
    assert fused_unfit(300, 257, 9) is not None
    assert "beyond" in fused_unfit(1, 8192, 2)
    calls = []
    monkeypatch.setattr(rs_mod, "route_triton", lambda *a: calls.append("route") or route_ref(*a))
    monkeypatch.setattr(rs_mod, "sort_triton", lambda *a: calls.append("sort") or sort_ref(*a))
    route_sort_triton(logits_for(3, 8), 2, 16)
    assert calls == []
    monkeypatch.setattr(rs_mod, "FUSED_MAX_TILE", 8)
    route_sort_triton(logits_for(3, 8), 2, 16)
    assert calls == ["route", "sort"]


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("tokens", [4, 3000])
def test_route_sort_and_sort_capture_in_a_cuda_graph(tokens):
    experts, top_k, block_m = 128, 8, 32
    logits = logits_for(tokens, experts)
    mask = _mask(experts)
    run = lambda: (route_sort_triton(logits, top_k, block_m, expert_mask=mask),  # noqa: E731
                   sort_mod.sort_triton(ids, weights, experts, block_m))
    weights, ids = route_ref(logits, top_k)
    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused, sorted_out = run()
    logits.copy_(logits_for(tokens, experts, seed=9))
    weights2, ids2 = route_ref(logits, top_k)
    weights.copy_(weights2)
    ids.copy_(ids2)
    graph.replay()
    assert_route_equal(fused[4:], (weights2, ids2))
    assert_sorted_equal(fused[:4], sort_ref(fused[5], fused[4], experts, block_m, mask))
    assert_sorted_equal(sorted_out, sort_ref(ids2, weights2, experts, block_m))


@pytest.mark.slow
def test_route_sort_many_tokens():
    experts = 256
    kw = dict(scoring="sigmoid", correction_bias=bias_for(experts), n_group=8, topk_group=4, scaling=2.5)
    _check(logits_for(1500, experts), 8, 64, _mask(experts), **kw)
