"""sort_triton bit-exact with sort_ref: both paths (one program; histogram + scan + scatter over chunks)."""
import pytest
import torch

pytest.importorskip("triton")

from inductor_moe.kernels.reference.sort import sorted_length  # noqa: E402
from inductor_moe.kernels.triton import sort as sort_mod  # noqa: E402
from inductor_moe.kernels.triton.sort import sort_triton  # noqa: E402

from .routing_cases import DEVICE, routed, sort_both  # noqa: E402

PAIRS = [(1, 1), (3, 2), (8, 2), (8, 4), (60, 4), (257, 9)]


def _mask(experts, seed=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(experts, generator=g) < 0.6
    mask[0] = True
    return mask.to(DEVICE)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("experts,top_k", PAIRS)
def test_sort_matches_reference(experts, top_k, block_m):
    for tokens in (0, 1, 2, 7, 33):
        ids, weights = routed(tokens, experts, top_k, seed=tokens)
        sort_both(sort_triton, ids, weights, experts, block_m)  # int32 ids
        sort_both(sort_triton, ids.long(), weights, experts, block_m, _mask(experts))  # int64 ids, a mask


@pytest.mark.parametrize("experts,top_k,block_m", [(60, 4, 16), (257, 9, 64), (8, 2, 64)])
def test_sort_300_tokens(experts, top_k, block_m):
    ids, weights = routed(300, experts, top_k)
    sort_both(sort_triton, ids, weights, experts, block_m)
    sort_both(sort_triton, ids.long(), weights, experts, block_m, _mask(experts))


@pytest.mark.parametrize("tokens", [0, 1, 7, 33, 300])
@pytest.mark.parametrize("experts,top_k", [(3, 2), (257, 9)])
def test_sort_large_path(experts, top_k, tokens):
    """The chunked path at any size, with chunks of 64 pairs so that several chunks meet."""
    ids, weights = routed(tokens, experts, top_k, seed=1)
    sort_both(sort_triton, ids, weights, experts, 16, path="large", chunk=64)
    sort_both(sort_triton, ids.long(), weights, experts, 64, _mask(experts), path="large", chunk=64)


@pytest.mark.parametrize("path", ["small", "large"])
def test_sort_skewed_and_dropped(path):
    experts, top_k = 8, 2
    kw = dict(path=path, chunk=16)
    ids = torch.full((33, top_k), 5, dtype=torch.int32, device=DEVICE)  # every pair to one expert
    weights = torch.rand(33, top_k, device=DEVICE)
    sort_both(sort_triton, ids, weights, experts, 16, **kw)
    ids[::3, 1] = -1  # out of range: dropped
    ids[::4, 0] = experts
    ids[1, 0] = 2
    sort_both(sort_triton, ids, weights, experts, 16, **kw)
    sort_both(sort_triton, ids.long() + (1 << 40) * (ids < 0).long(), weights, experts, 16, **kw)  # huge int64
    none = torch.zeros(experts, dtype=torch.bool, device=DEVICE)
    out = sort_triton(ids, weights, experts, 16, none, **kw)
    sort_both(sort_triton, ids, weights, experts, 16, none, **kw)
    assert out[3].tolist() == [0, 33] and (out[2] == -1).all()


@pytest.mark.parametrize("block_m", [1, 5, 24])
def test_sort_block_m_not_a_power_of_two(block_m):
    ids, weights = routed(7, 6, 3)
    sort_both(sort_triton, ids, weights, 6, block_m)
    sort_both(sort_triton, ids, weights, 6, block_m, path="large", chunk=8)


def test_sort_multi_trip_loops(monkeypatch):
    """Tiles far smaller than the interpreter's defaults: several expert chunks, pad columns, fill trips,
    tail programs and chunk rows in the scan."""
    monkeypatch.setattr(sort_mod, "TILE_ELEMS", 128)
    monkeypatch.setattr(sort_mod, "PAD_TILE", 256)
    monkeypatch.setattr(sort_mod, "FILL", 32)
    monkeypatch.setattr(sort_mod, "TAIL_BLOCK", 256)
    experts, top_k = 60, 4
    ids, weights = routed(33, experts, top_k)
    sort_both(sort_triton, ids, weights, experts, 16)
    sort_both(sort_triton, ids.long(), weights, experts, 64, _mask(experts), path="large", chunk=32)


def test_sort_inputs_dtypes_and_layout():
    ids, weights = routed(7, 8, 2)
    sort_both(sort_triton, ids, weights.to(torch.bfloat16), 8, 16)
    sort_both(sort_triton, ids, weights.double(), 8, 16)
    ids_t, w_t = ids.t().contiguous().t(), weights.t().contiguous().t()  # non-contiguous views
    sort_both(sort_triton, ids_t, w_t, 8, 16)


def test_sort_output_shapes_only_from_sizes():
    ids, weights = routed(7, 60, 4)
    out = sort_triton(ids, weights, 60, 16)
    length = sorted_length(7, 4, 60, 16)
    assert [t.shape[0] for t in out] == [length, length, length // 16, 2]
    assert sort_mod.small_path_fits(28) and not sort_mod.small_path_fits(4096)


@pytest.mark.slow
@pytest.mark.parametrize("experts,top_k,block_m", [(128, 8, 64), (257, 9, 32)])
def test_sort_many_tokens(experts, top_k, block_m):
    ids, weights = routed(2048, experts, top_k)
    sort_both(sort_triton, ids, weights, experts, block_m)
    sort_both(sort_triton, ids.long(), weights, experts, block_m, _mask(experts))
