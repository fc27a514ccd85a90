"""The FlyDSL fused route+sort kernel's algorithm and layout, checked without FlyDSL: a NumPy emulation built on
``route_sort_layout.py`` (tests/kernels/flydsl/emulate_route_sort.py) against ``route_sort_ref`` on the
production (E, k) set at decode T, with and without an expert mask, with ties and skewed routing.

What "matches" means, per output:
- the sort outputs (sorted_token_ids, sorted_expert_ids, num_valid) are bit-exact with ``route_sort_ref``
  whenever the routing picks the same ids (always, for f32 logits without ties; checked), and
  sorted_weights is then ``route_sort_ref``'s within the router's f32 rounding (rtol 2e-6: the kernel's
  exp2 arithmetic is not torch.softmax's);
- in every case the four sort outputs are bit-exact with ``sort_ref`` run on the emulation's own weights
  and ids (so ties, where the kernel may order equal logits differently from torch.topk, are covered);
- weights / ids against ``route_ref`` as the router's own test checks them (same chosen logits slot by
  slot, same ids where a logit is untied, weights within rtol 2e-6);
- every output element is written exactly once, and LDS is read only where it was written.
"""
import pytest
import torch

from inductor_moe.kernels.flydsl import route_sort_layout as RL
from inductor_moe.kernels.flydsl.route_sort import fused_unfit, route_sort_flydsl, supports_route_sort
from inductor_moe.kernels.reference import sort_ref
from inductor_moe.ops.route_sort import route_sort_ref

from .emulate_route_sort import emulate_route_sort

PRODUCTION = [(8, 2), (16, 1), (32, 4), (60, 4), (64, 6), (64, 8), (128, 4), (128, 8), (160, 8), (256, 8),
              (257, 9), (384, 8), (512, 10)]
TOKENS = (1, 2, 7, 16)
BLOCK_MS = (16, 32, 64, 128)
ROUTINGS = [  # (scoring, renormalize, order, scaling)
    ("softmax", True, "softmax_then_topk", 1.0),
    ("softmax", False, "softmax_then_topk", 1.0),
    ("softmax", False, "topk_then_softmax", 1.0),
    ("sigmoid", True, "softmax_then_topk", 2.5),
]
SORT_NAMES = ("sorted_token_ids", "sorted_weights", "sorted_expert_ids", "num_valid")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(tokens, experts, dtype, seed, skew=0.0):
    """N(0, 2) logits; ``skew`` adds a Zipf-like popularity per expert (a few experts win most tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, experts, generator=g) * 2
    if skew:
        popularity = torch.log(1.0 / torch.arange(1, experts + 1, dtype=torch.float32) ** 1.2)
        x = x + skew * popularity[torch.randperm(experts, generator=g)]
    return x.to(dtype)


def _mask(experts, seed):
    return torch.rand(experts, generator=torch.Generator().manual_seed(seed + 2)) < 0.5


def _check(x, top_k, block_m, scoring="softmax", renormalize=True, order="softmax_then_topk", scaling=1.0,
           mask=None, arch="gfx942", require_same_ids=False):
    got = emulate_route_sort(x, top_k, block_m, scoring, renormalize, order, scaling, mask, arch)
    want = route_sort_ref(x, top_k, block_m, scoring, renormalize, order, None, 1, 1, scaling, mask)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
    w, ids = got[4], got[5]
    w_ref, ids_ref = want[4], want[5]
    # the routing, as test_route_emulation checks it
    xf = x.float()
    assert torch.equal(xf.gather(1, ids.long()), xf.gather(1, ids_ref.long()))
    chosen = xf.gather(1, ids_ref.long())
    untied = (xf.unsqueeze(1) == chosen.unsqueeze(2)).sum(-1) == 1
    assert torch.equal(ids[untied], ids_ref[untied])
    torch.testing.assert_close(w, w_ref, rtol=2e-6, atol=1e-7)
    # the sort of the kernel's own routing: bit-exact
    for name, a, b in zip(SORT_NAMES, got[:4], sort_ref(ids, w, x.shape[1], block_m, mask)):
        assert torch.equal(a, b), (name, tuple(x.shape), top_k, block_m, mask is not None)
    # against route_sort_ref itself, where the routing picked the same ids
    same = torch.equal(ids, ids_ref)
    assert same or not require_same_ids, "untied logits must route identically"
    if same:
        for i in (0, 2, 3):
            assert torch.equal(got[i], want[i]), (SORT_NAMES[i], tuple(x.shape), top_k, block_m)
        torch.testing.assert_close(got[1], want[1], rtol=2e-6, atol=1e-7)
        assert torch.equal(got[1] == 0, want[1] == 0)
    return got


@pytest.mark.parametrize("experts,top_k", PRODUCTION)
def test_emulation_matches_reference(experts, top_k):
    for i, tokens in enumerate(TOKENS):
        seed = experts * 1000 + top_k * 10 + i
        for j, (scoring, renorm, order, scaling) in enumerate(ROUTINGS):
            block_m = BLOCK_MS[(i + j) % 4]
            # f32 logits: no ties, so the routing equals route_ref's and the sort is route_sort_ref's exactly
            x = _logits(tokens, experts, torch.float32, seed + j)
            _check(x, top_k, block_m, scoring, renorm, order, scaling, require_same_ids=True)
            # bf16 (ties happen), expert parallelism: half the experts local
            x = _logits(tokens, experts, torch.bfloat16, seed + j)
            _check(x, top_k, BLOCK_MS[(i + j + 1) % 4], scoring, renorm, order, scaling, mask=_mask(experts, seed))


@pytest.mark.parametrize("experts,top_k", [(8, 2), (32, 4), (128, 8), (257, 9), (512, 10)])
def test_skewed_routing_and_long_runs(experts, top_k):
    # most tokens on a few experts: runs of many blocks, whole blocks of one expert, many empty experts
    for tokens, block_m in [(16, 1), (16, 4), (7, 3), (2, 256)]:
        x = _logits(tokens, experts, torch.float32, seed=experts + tokens, skew=4.0)
        got = _check(x, top_k, block_m, require_same_ids=True)
        _check(x, top_k, block_m, mask=_mask(experts, tokens))
        assert got[3][0] <= got[0].numel()


def test_f16_and_gfx950_layouts():
    for experts, top_k in [(60, 4), (128, 8), (257, 9), (512, 10)]:
        x = _logits(16, experts, torch.float16, seed=experts)
        _check(x, top_k, 32, arch="gfx950")
        _check(x, top_k, 64, "softmax", False, "softmax_then_topk", 0.5, mask=_mask(experts, 1), arch="gfx950")


def test_ties_go_to_the_lower_expert_and_stay_stable():
    # equal logits across lanes and slots: the lower expert first; equal experts across tokens keep
    # (token, slot) order inside their run
    x = torch.zeros(7, 257)
    x[:, [3, 70, 200, 256]] = 5.0
    x[1, 1] = 5.0
    got = _check(x, 4, 4)
    assert got[5][0].tolist() == [3, 70, 200, 256] and got[5][1].tolist() == [1, 3, 70, 200]
    sti, sei, nv = got[0], got[2], got[3]
    assert sei[:nv[0] // 4].tolist() == [1, 3, 3, 70, 70, 200, 200, 256, 256]
    run_3 = sti[4:12].tolist()  # expert 3: tokens 0..6 in order (slot 0, except token 1's slot 1), 1 pad
    assert run_3[:7] == [0, (1 << 24) | 1, 2, 3, 4, 5, 6] and run_3[7] == (4 << 24) | 7
    # bf16 rows that are all equal: every expert tied
    _check(torch.ones(16, 128, dtype=torch.bfloat16), 8, 16, mask=torch.arange(128) % 3 == 0)


def test_masks_nothing_local_and_everything_local():
    x = _logits(16, 128, torch.float32, seed=5)
    got = _check(x, 8, 32, mask=torch.zeros(128, dtype=torch.bool))
    assert got[3].tolist() == [0, 16] and (got[2] == -1).all() and (got[0] == (8 << 24) | 16).all()
    assert not got[1].any()
    everything = _check(x, 8, 32, mask=torch.ones(128, dtype=torch.bool))
    plain = _check(x, 8, 32)
    assert all(torch.equal(a, b) for a, b in zip(everything, plain))


def test_capacity_edge_many_passes_and_steps():
    # the largest T each shape fuses: several routing passes and up to 32 scatter steps of wave 0
    for experts, top_k in [(8, 2), (128, 8), (257, 9)]:
        tokens = RL.max_fused_tokens(top_k)
        x = _logits(tokens, experts, torch.float32, seed=tokens)
        _check(x, top_k, 64, require_same_ids=True)
        _check(x.to(torch.bfloat16), top_k, 16, mask=_mask(experts, 3))


def test_plan_capacity_and_lds_budget():
    assert [RL.capacity_tokens(t, 8) for t in (1, 2, 7, 8, 9, 16, 17, 200, 256)] == [8, 8, 8, 8, 16, 16, 32, 256, 256]
    assert RL.capacity_tokens(200, 9) == 227 and RL.max_fused_tokens(9) == 227
    # LDS: keys + weight bits (capacity * k each), E counters, one total per wave; 16-byte aligned arrays
    assert RL.lds_bytes_for(16, 8, 128) == 512 + 512 + 512 + 16  # Qwen3 decode: 1.5 KiB
    assert RL.lds_bytes_for(1, 4, 32) == 128 + 128 + 128 + 16  # GPT-OSS
    assert RL.lds_bytes_for(16, 8, 256) == 512 + 512 + 1024 + 16  # DeepSeek-size
    assert RL.lds_bytes_for(16, 9, 257) == 576 + 576 + 1040 + 20  # arrays start 16-byte aligned; no tail pad
    worst = max(RL.lds_bytes_for(RL.max_fused_tokens(k), k, e) for e, k in PRODUCTION)
    assert worst == 2 * 4 * 2040 + 4 * 512 + 32 and worst <= RL.LDS_BUDGET["gfx942"] < RL.LDS_BUDGET["gfx950"]
    assert RL.LDS_BUDGET == {"gfx942": 65536, "gfx950": 163840}
    plan = RL.route_sort_plan(257, 9, 32, True, "bf16", "softmax_renorm", "gfx942", 16)
    assert (plan.threads, plan.waves, plan.route.tpt, plan.route.tokens_per_workgroup) == (320, 5, 64, 5)
    sizes = RL.route_sort_sizes(plan, 16)
    assert (sizes.passes, sizes.steps, sizes.pairs) == (4, 3, 144) and sizes.pad_value == (9 << 24) | 16
    plan = RL.route_sort_plan(128, 8, 32, False, "bf16", "softmax_renorm", "gfx950", 16)
    assert (plan.threads, plan.route.tokens_per_workgroup, RL.route_sort_sizes(plan, 16).passes) == (256, 16, 1)


def test_unfit_calls_name_the_reason():
    assert RL.fused_unfit(16, 128, 8, 32, "bf16", "gfx942") is None
    assert "pairs" in RL.fused_unfit(257, 128, 8, 32, "bf16", "gfx942")
    assert "num_experts" in RL.fused_unfit(1, 1024, 8, 32, "bf16", "gfx942")
    assert "dtype" in RL.fused_unfit(1, 128, 8, 32, "fp8", "gfx942")
    assert "arch" in RL.fused_unfit(1, 128, 8, 32, "bf16", "gfx90a")
    assert "block_m" in RL.fused_unfit(1, 128, 8, 0, "bf16", "gfx942")
    assert "no tokens" in RL.fused_unfit(0, 128, 8, 32, "bf16", "gfx942")
    x = torch.zeros(4, 64, dtype=torch.bfloat16)
    assert fused_unfit(x, 6, 32, arch="gfx950") is None
    assert "correction_bias" in fused_unfit(x, 6, 32, correction_bias=torch.zeros(64), arch="gfx950")
    assert "n_group" in fused_unfit(x, 6, 32, n_group=2, arch="gfx950")
    assert "order" in fused_unfit(x, 6, 32, scoring="sigmoid", order="topk_then_softmax", arch="gfx950")
    assert "not an AMD" in fused_unfit(x, 6, 32)
    with pytest.raises(ValueError, match="mode"):
        RL.route_sort_plan(8, 2, 16, False, "bf16", "nope", "gfx942", 8)
    with pytest.raises(ValueError, match="capacity"):
        RL.route_sort_plan(8, 2, 16, False, "bf16", "softmax_renorm", "gfx942", 1025)
    with pytest.raises(ValueError, match="tokens"):
        RL.route_sort_sizes(RL.route_sort_plan(8, 2, 16, False, "bf16", "softmax_renorm", "gfx942", 8), 9)


def test_route_sort_flydsl_hands_cpu_calls_to_the_reference():
    import inductor_moe

    x = _logits(5, 64, torch.bfloat16, seed=1)
    mask = _mask(64, 1)
    assert "not an AMD" in supports_route_sort(logits=x, top_k=6, block_m=32, scoring="softmax",
                                               order="softmax_then_topk")
    got = route_sort_flydsl(x, 6, 32, "softmax", False, "softmax_then_topk", None, 1, 1, 2.0, mask)
    want = route_sort_ref(x, 6, 32, "softmax", False, "softmax_then_topk", None, 1, 1, 2.0, mask)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert any(f["op"] == "route_sort" and "flydsl" in f["reason"] for f in inductor_moe.stats()["fallbacks"])


def test_registration_line_resolves(monkeypatch):
    # the line the FlyDSL package's register() is to carry (flydsl/__init__.py is not this change's)
    from inductor_moe import dispatch

    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    dispatch.register_kernel("route_sort", "flydsl", "inductor_moe.kernels.flydsl.route_sort:route_sort_flydsl",
                             "inductor_moe.kernels.flydsl.route_sort:supports_route_sort", verified=False)
    entry = dispatch._REGISTRY[("route_sort", "flydsl")].resolve()
    assert entry.fn is route_sort_flydsl and entry.supports is supports_route_sort and not entry.verified
    backend, _ = dispatch.select("route_sort", torch.device("cpu"), logits=torch.zeros(2, 8), top_k=2, block_m=16,
                                 scoring="softmax", order="softmax_then_topk")
    assert backend == "reference"
