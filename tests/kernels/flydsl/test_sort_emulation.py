"""The FlyDSL moe_sorting kernels' algorithm and layout, checked without FlyDSL: a NumPy emulation built on
``sort_layout.py`` (tests/kernels/flydsl/emulate_sort.py) reproduces ``sort_ref`` bit for bit on the
production (E, k) set, on all three paths (tiny, small, large), with skewed routing, expert masks, dropped ids
and int64 ids, and writes every output element exactly once."""
import pytest
import torch

from inductor_moe.kernels.flydsl import sort_layout as SL
from inductor_moe.kernels.flydsl.sort import sort_flydsl, supports_sort
from inductor_moe.kernels.reference import sort_ref

from .emulate_sort import emulate_sort

PRODUCTION = [(8, 2), (16, 1), (32, 4), (60, 4), (64, 6), (64, 8), (128, 4), (128, 8), (160, 8), (256, 8),
              (257, 9), (384, 8), (512, 10)]
TOKENS = (1, 7, 33, 1000, 4096)
BLOCK_MS = (16, 32, 64, 128)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """``sort_ref`` at T=4096 took 0.8 s on two threads and 15 ms on one on a 2-core machine (measured:
    its index_put scales badly), so this module runs the reference single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _skewed_ids(tokens, experts, top_k, seed, dtype=torch.int32, dropped=0.0):
    """k distinct experts per token drawn with Zipf-like weights (a few experts get most tokens, many get
    none); a ``dropped`` fraction of the ids set to -1 or E (outside [0, E): the sort drops them)."""
    g = torch.Generator().manual_seed(seed)
    popularity = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64) ** 1.2
    popularity = popularity[torch.randperm(experts, generator=g)]
    ids = torch.multinomial(popularity.expand(tokens, experts), top_k, replacement=False, generator=g)
    if dropped:
        bad = torch.rand(tokens, top_k, generator=g) < dropped
        ids = torch.where(bad, torch.where(torch.rand(tokens, top_k, generator=g) < 0.5, -1, experts), ids)
    return ids.to(dtype)


def _weights(tokens, top_k, seed):
    return torch.rand(tokens, top_k, generator=torch.Generator().manual_seed(seed + 1))


def _mask(experts, seed):
    return torch.rand(experts, generator=torch.Generator().manual_seed(seed + 2)) < 0.5


def _check(ids, weights, experts, block_m, mask=None, path=None):
    got = emulate_sort(ids, weights, experts, block_m, mask, path=path)
    want = sort_ref(ids, weights, experts, block_m, mask)
    names = ("sorted_token_ids", "sorted_weights", "sorted_expert_ids", "num_valid")
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), (name, ids.shape, experts, block_m, mask is not None, path)


@pytest.mark.parametrize("experts,top_k", PRODUCTION)
def test_emulation_matches_reference(experts, top_k):
    for i, tokens in enumerate(TOKENS):
        seed = experts * 1000 + top_k * 10 + i
        weights = _weights(tokens, top_k, seed)
        ids = _skewed_ids(tokens, experts, top_k, seed)
        _check(ids, weights, experts, BLOCK_MS[i % 4])
        # expert parallelism: half the experts local, some ids outside [0, E), int64 ids
        ids = _skewed_ids(tokens, experts, top_k, seed, dtype=torch.int64, dropped=0.1)
        _check(ids, weights, experts, BLOCK_MS[(i + 1) % 4], _mask(experts, seed))


TINY_TOKENS = (1, 2, 7, 16)
TINY_BLOCK_MS = (1, 16, 32, 64)


@pytest.mark.parametrize("experts,top_k", PRODUCTION)
def test_tiny_path_matches_reference(experts, top_k):
    # decode sizes: the tiny path wherever T * k <= 64 (forced there too), else path_for picks small; with
    # and without an expert mask, ids outside [0, E) (int64 ids among them), every block_m of TINY_BLOCK_MS
    for tokens in TINY_TOKENS:
        pairs = tokens * top_k
        path = "tiny" if pairs <= SL.TINY_MAX_PAIRS else "small"
        assert SL.path_for(pairs) == path
        for j, block_m in enumerate(TINY_BLOCK_MS):
            seed = experts * 1000 + top_k * 100 + tokens * 10 + j
            weights = _weights(tokens, top_k, seed)
            ids = _skewed_ids(tokens, experts, top_k, seed)
            _check(ids, weights, experts, block_m)
            _check(ids, weights, experts, block_m, path=path)
            dtype = torch.int64 if j % 2 else torch.int32
            ids = _skewed_ids(tokens, experts, top_k, seed, dtype=dtype, dropped=0.2)
            _check(ids, weights, experts, block_m, path=path)
            _check(ids, weights, experts, block_m, _mask(experts, seed), path=path)


def test_tiny_path_edges():
    # a full wave of pairs on one expert, on the last expert, all dropped, nothing local, duplicates in a row
    for experts, top_k, block_m in [(8, 2, 16), (512, 1, 64), (257, 8, 3), (64, 4, 1)]:
        tokens = SL.TINY_MAX_PAIRS // top_k
        w = _weights(tokens, top_k, experts)
        for fill in (0, experts - 1, -1, experts):
            _check(torch.full((tokens, top_k), fill, dtype=torch.int32), w, experts, block_m, path="tiny")
        _check(_skewed_ids(tokens, experts, top_k, 1), w, experts, block_m, torch.zeros(experts, dtype=torch.bool),
               path="tiny")
        dup = torch.randint(0, min(experts, 5), (tokens, top_k), generator=torch.Generator().manual_seed(4))
        _check(dup.to(torch.int32), w, experts, block_m, path="tiny")
    _check(torch.zeros((0, 2), dtype=torch.int32), torch.zeros(0, 2), 8, 16, path="tiny")  # T = 0
    plan = SL.sort_plan(512, 10, 32, False, "i32", "gfx942")
    assert plan.tiny_epl == 8 and plan.tiny_lds() == {"start": 512} and plan.tiny_tail_vec == 4
    assert SL.tiny_epl(64) == 1 and SL.tiny_epl(65) == 2 and SL.tiny_tail_vec(24) == 4 and SL.tiny_tail_vec(6) == 1
    with pytest.raises(ValueError, match="tokens"):
        SL.sort_sizes(plan, 7, "tiny")  # 70 pairs


@pytest.mark.parametrize("experts,top_k", [(8, 2), (128, 8), (257, 9), (512, 10)])
def test_both_paths_match_reference(experts, top_k):
    # the small path far past its threshold (many steps per wave) and below it (tiny inputs), and the
    # large path on tiny inputs
    for tokens, path in [(1000, "small"), (1, "small"), (1, "large"), (33, "large"), (300, "large")]:
        seed = experts + tokens
        ids = _skewed_ids(tokens, experts, top_k, seed, dropped=0.05)
        _check(ids, _weights(tokens, top_k, seed), experts, 32, _mask(experts, seed), path=path)


def test_odd_block_m_duplicates_and_degenerate_routing():
    g = torch.Generator().manual_seed(0)
    for block_m in (1, 3, 24, 256):
        ids = torch.randint(0, 60, (500, 4), generator=g, dtype=torch.int32)  # duplicates inside a row too
        _check(ids, _weights(500, 4, block_m), 60, block_m)
        _check(ids, _weights(500, 4, block_m), 60, block_m, path="large")
    everything_to_one = torch.full((4096, 8), 77, dtype=torch.int32)
    _check(everything_to_one, _weights(4096, 8, 1), 128, 64)
    all_dropped = torch.full((33, 4), -1, dtype=torch.int64)
    _check(all_dropped, _weights(33, 4, 2), 32, 16)
    nothing_local = torch.zeros(32, dtype=torch.bool)
    _check(_skewed_ids(1000, 32, 4, 3), _weights(1000, 4, 3), 32, 16, nothing_local)
    _check(torch.zeros((0, 2), dtype=torch.int32), torch.zeros(0, 2), 8, 16)  # T = 0: all padding


def test_bf16_weights_are_cast_like_the_reference():
    ids = _skewed_ids(7, 64, 6, 5)
    _check(ids, _weights(7, 6, 5).to(torch.bfloat16), 64, 16)


def test_sizes_follow_the_plan():
    plan = SL.sort_plan(128, 8, 64, False, "i32", "gfx942")
    assert SL.sort_sizes(plan, 8).path == "tiny" and SL.sort_sizes(plan, 9).path == "small"
    assert SL.sort_sizes(plan, 256).path == "small" and SL.sort_sizes(plan, 257).path == "large"
    assert plan.small_threads == 256 and SL.small_threads(257) == 320 and SL.small_threads(512) == 512
    for tokens in (257, 1000, 4096, 16384, 100_000):
        sizes = SL.sort_sizes(plan, tokens)
        per_chunk = SL.CHUNK_THREADS * sizes.steps
        assert sizes.chunks <= SL.MAX_CHUNKS
        assert (sizes.chunks - 1) * per_chunk < sizes.pairs <= sizes.chunks * per_chunk
        assert sizes.length == sizes.blocks * 64 and sizes.pad_value == (8 << 24) | tokens
    small = SL.sort_sizes(plan, 256)
    assert small.steps * plan.small_threads >= small.pairs and small.chunks == 1
    for experts in (1, 8, 60, 128, 257, 512):
        p = SL.sort_plan(experts, 1, 16, True, "i64", "gfx950")
        assert p.scan_rows * p.scan_cols <= SL.SCAN_THREADS and p.scan_cols >= experts
        for fields in (p.tiny_lds(), p.small_lds(), p.chunk_lds(), p.scan_lds()):
            assert SL.lds_bytes(fields) <= 64 * 1024  # gfx942's LDS per workgroup
    assert SL.sort_plan(512, 10, 32, False, "i32", "gfx942").experts_per_chunk_thread == 2


def test_dpp_row_shr_reads_inside_the_row():
    for shift in SL.SCAN_SHIFTS:
        for lane in range(64):
            src = SL.dpp_row_shr_source(lane, shift)
            if lane % 16 < shift:
                assert src == -1
            else:
                assert src == lane - shift and src // 16 == lane // 16
    assert SL.ROW_LAST_LANES == tuple(16 * r + 15 for r in range(4))


def test_layout_errors_name_the_constraint():
    with pytest.raises(ValueError, match="num_experts"):
        SL.sort_plan(513, 8, 32, False, "i32", "gfx942")
    with pytest.raises(ValueError, match="top_k"):
        SL.sort_plan(8, 9, 32, False, "i32", "gfx942")
    with pytest.raises(ValueError, match="block_m"):
        SL.sort_plan(8, 2, 0, False, "i32", "gfx942")
    with pytest.raises(ValueError, match="ids_dtype"):
        SL.sort_plan(8, 2, 16, False, "i16", "gfx942")
    with pytest.raises(ValueError, match="arch"):
        SL.sort_plan(8, 2, 16, False, "i32", "gfx90a")
    plan = SL.sort_plan(8, 2, 16, False, "i32", "gfx942")
    with pytest.raises(ValueError, match="path"):
        SL.sort_sizes(plan, 5, "medium")
    with pytest.raises(ValueError, match="tokens"):
        SL.sort_sizes(plan, 0, "large")
    with pytest.raises(ValueError, match="tokens"):
        SL.sort_sizes(plan, 1 << 24)
    with pytest.raises(ValueError, match="byte offsets"):
        SL.check_offsets(1 << 23, 127, 256, 16)
    with pytest.raises(ValueError, match="shift"):
        SL.dpp_row_shr_source(3, 3)


def test_supports_sort_declines_with_a_reason():
    ids = torch.zeros(4, 8, dtype=torch.int32)
    assert "not an AMD" in supports_sort(ids=ids, num_experts=128, block_m=32)
    assert "num_experts" in supports_sort(ids=ids, num_experts=1024, block_m=32)
    assert "int16" in supports_sort(ids=ids.to(torch.int16), num_experts=128, block_m=32)
    assert "top_k" in supports_sort(ids=ids, num_experts=4, block_m=32)


def test_sort_flydsl_hands_cpu_calls_to_the_reference():
    import inductor_moe

    ids = _skewed_ids(9, 64, 6, 7)
    w = _weights(9, 6, 7)
    got = sort_flydsl(ids, w, 64, 16, _mask(64, 7))
    want = sort_ref(ids, w, 64, 16, _mask(64, 7))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert any(f["op"] == "sort" and "flydsl" in f["reason"] for f in inductor_moe.stats()["fallbacks"])


def test_register_enters_the_sort_kernel_unverified(monkeypatch):
    from inductor_moe import dispatch
    from inductor_moe.kernels import flydsl

    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    flydsl.register()
    assert "flydsl" in dispatch.registered("sort")
    entry = dispatch._REGISTRY[("sort", "flydsl")].resolve()
    assert entry.fn is sort_flydsl and entry.supports is supports_sort and not entry.verified
    backend, _ = dispatch.select("sort", torch.device("cpu"), ids=torch.zeros(2, 2, dtype=torch.int32),
                                 num_experts=8, block_m=16)
    assert backend == "reference"
