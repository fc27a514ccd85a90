"""The FlyDSL router's algorithm and layout, checked without FlyDSL: a NumPy emulation built on
``layout.py`` (tests/kernels/flydsl/emulate.py) reproduces ``route_ref`` on the production (E, k) set."""
import numpy as np
import pytest
import torch

from inductor_moe.kernels.flydsl import layout as L
from inductor_moe.kernels.flydsl.route import kernel_mode, route_flydsl, supports_route
from inductor_moe.kernels.reference import route_ref

from .emulate import emulate_route

PRODUCTION = [(8, 2), (16, 1), (32, 4), (60, 4), (64, 6), (64, 8), (128, 4), (128, 8), (160, 8), (256, 8),
              (257, 9), (384, 8), (512, 10)]
TOKENS = (1, 5, 70)
ROUTINGS = [  # (scoring, renormalize, order)
    ("softmax", True, "softmax_then_topk"),
    ("softmax", False, "softmax_then_topk"),
    ("softmax", False, "topk_then_softmax"),
    ("sigmoid", True, "softmax_then_topk"),
    ("sigmoid", False, "softmax_then_topk"),
]


def _logits(tokens, experts, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, experts, generator=g) * 2).to(dtype)


def _check_against_ref(x, top_k, scoring, renormalize, order, scaling=1.0, arch="gfx942"):
    w, ids = emulate_route(x, top_k, scoring, renormalize, order, scaling, arch)
    w_ref, ids_ref = route_ref(x, top_k, scoring, renormalize, order, scaling=scaling)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.shape == w_ref.shape
    xf = x.float()
    # the same experts in the same order, up to the order of exactly equal logits (bf16 has many ties):
    # the chosen logits agree slot by slot, and ids agree wherever a logit is not tied within the row
    assert torch.equal(xf.gather(1, ids.long()), xf.gather(1, ids_ref.long()))
    assert (ids >= 0).all() and (ids < x.shape[1]).all()
    assert all(len(set(r)) == top_k for r in ids.tolist())
    chosen = xf.gather(1, ids_ref.long())
    untied = (xf.unsqueeze(1) == chosen.unsqueeze(2)).sum(-1) == 1
    assert torch.equal(ids[untied], ids_ref[untied])
    torch.testing.assert_close(w, w_ref, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("experts,top_k", PRODUCTION)
def test_emulation_matches_reference(experts, top_k):
    for i, tokens in enumerate(TOKENS):
        for dtype in (torch.bfloat16, torch.float32):
            x = _logits(tokens, experts, dtype, seed=experts * 100 + top_k + i)
            for scoring, renormalize, order in ROUTINGS:
                _check_against_ref(x, top_k, scoring, renormalize, order)


@pytest.mark.parametrize("arch", ["gfx942", "gfx950"])
def test_emulation_f16_scaling_and_archs(arch):
    for experts, top_k in [(60, 4), (257, 9), (512, 10)]:
        x = _logits(9, experts, torch.float16, seed=experts)
        _check_against_ref(x, top_k, "softmax", True, "softmax_then_topk", scaling=2.5, arch=arch)
        _check_against_ref(x, top_k, "softmax", False, "softmax_then_topk", scaling=0.5, arch=arch)


def test_ties_go_to_the_lower_expert():
    # equal logits spread over different lanes and slots of one token: the lower expert comes first
    x = torch.zeros(2, 257)
    x[0, [3, 70, 200, 256]] = 5.0
    x[1, [256, 1, 128]] = 5.0
    w, ids = emulate_route(x, 4, "softmax", True, "softmax_then_topk")
    assert ids[0].tolist() == [3, 70, 200, 256]
    assert ids[1].tolist() == [1, 128, 256, 0]
    torch.testing.assert_close(w[0], torch.full((4,), 0.25))


def test_padding_never_wins_even_against_minus_inf():
    # E=60 bf16 pads the row to 64 slots; E=257 to 320. Real -inf logits still beat the padding.
    for experts, top_k in [(60, 4), (257, 9)]:
        x = torch.full((3, experts), float("-inf"))
        x[:, 5] = 1.0
        _, ids = emulate_route(x.to(torch.bfloat16), top_k, "softmax", True, "softmax_then_topk")
        assert (ids < experts).all()
        assert ids[:, 0].tolist() == [5, 5, 5]
        # then the -inf experts, lowest first
        assert ids[0, 1:].tolist() == [e for e in range(top_k) if e != 5][: top_k - 1]


def test_order_key_orders_like_floats():
    g = np.random.default_rng(0)
    vals = np.concatenate([g.standard_normal(2000).astype(np.float32) * 1e3,
                           np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32)])
    keys = [L.float_key(int(b)) for b in vals.view(np.int32)]
    order = np.argsort(np.array(keys), kind="stable")
    assert (np.diff(vals[order]) >= 0).all()
    assert all(L.float_key(L.float_key(int(b))) == int(b) for b in vals.view(np.int32)[:50])
    assert min(keys) > L.KEY_EMPTY


def test_layout_of_production_shapes():
    expected = {  # E -> (vector width, threads per token, chunks per thread) for bf16
        8: (8, 1, 1), 16: (8, 2, 1), 32: (8, 4, 1), 60: (4, 8, 2), 64: (8, 8, 1), 128: (8, 16, 1),
        160: (8, 32, 1), 256: (8, 32, 1), 257: (1, 64, 5), 384: (8, 64, 1), 512: (8, 64, 1),
    }
    for experts, (vec, tpt, cpt) in expected.items():
        lay = L.route_layout(experts, 1, "bf16", "gfx942")
        assert (lay.vec, lay.tpt, lay.cpt) == (vec, tpt, cpt), experts
        assert lay.tokens_per_workgroup == 256 // tpt
        assert lay.tpt * lay.cpt * lay.vec >= experts
        assert [d for d, _ in lay.steps] == [1 << i for i in range(tpt.bit_length() - 1)]
    assert L.route_layout(512, 10, "f32", "gfx942").vec == 4
    assert L.grid_size(0, 128, "bf16") == 0 and L.grid_size(17, 128, "bf16") == 2
    assert L.output_vector_width(8) == 4 and L.output_vector_width(6) == 2 and L.output_vector_width(9) == 1
    assert L.butterfly_step(32, "gfx950") == "permlane32_swap" and L.butterfly_step(32, "gfx942") == "ds_bpermute"


def _dpp_source(ctrl: int, lane: int) -> int:
    """The lane a GFX9 DPP move reads (ISA manual semantics), for the controls the kernel uses."""
    if ctrl < 0x100:  # quad_perm
        return (lane & ~3) | ((ctrl >> (2 * (lane & 3))) & 3)
    if ctrl == 0x141:  # row_half_mirror
        return (lane & ~7) | (7 - (lane & 7))
    if 0x121 <= ctrl <= 0x12F:  # row_ror:n
        return (lane & ~15) | (((lane & 15) + (ctrl - 0x120)) & 15)
    raise AssertionError(hex(ctrl))


def _swizzle_source(offset: int, lane: int) -> int:
    assert not offset & 0x8000  # bit mode
    and_mask, or_mask, xor_mask = offset & 0x1F, (offset >> 5) & 0x1F, (offset >> 10) & 0x1F
    return (lane & ~31) | ((((lane & 31) & and_mask) | or_mask) ^ xor_mask)


def test_cross_lane_controls_read_the_butterfly_partner():
    controls = {1: L.DPP_QUAD_PERM_XOR1, 2: L.DPP_QUAD_PERM_XOR2, 4: L.DPP_ROW_HALF_MIRROR, 8: L.DPP_ROW_ROR8}
    for lane in range(64):
        for distance, ctrl in controls.items():
            assert _dpp_source(ctrl, lane) == L.butterfly_partner(lane, distance)
        assert _swizzle_source(L.SWIZZLE_XOR16, lane) == L.butterfly_partner(lane, 16) == lane ^ 16
        # row_half_mirror reads a lane of the other quad of the 8, which is what the all-reduce needs
        assert L.butterfly_partner(lane, 4) // 4 == (lane ^ 4) // 4


def test_layout_errors_name_the_constraint():
    with pytest.raises(ValueError, match="arch"):
        L.route_layout(128, 8, "bf16", "gfx90a")
    with pytest.raises(ValueError, match="dtype"):
        L.route_layout(128, 8, "fp8", "gfx942")
    with pytest.raises(ValueError, match="top_k"):
        L.route_layout(8, 9, "bf16", "gfx942")
    with pytest.raises(ValueError, match="num_experts.*values per lane"):
        L.route_layout(2049, 8, "bf16", "gfx942")
    with pytest.raises(ValueError, match="block_threads"):
        L.route_layout(128, 8, "bf16", "gfx942", block_threads=100)
    with pytest.raises(ValueError, match="num_experts"):
        L.route_layout(0, 1, "bf16", "gfx942")
    with pytest.raises(ValueError, match="distance"):
        L.butterfly_partner(3, 64)
    with pytest.raises(ValueError, match="order"):
        kernel_mode("sigmoid", True, "topk_then_softmax")
    assert L.route_layout(2048, 8, "bf16", "gfx942").vpt == 32


def test_route_flydsl_hands_cpu_and_unsupported_calls_to_the_reference():
    import inductor_moe

    x = _logits(4, 64, torch.bfloat16, seed=1)
    assert "not an AMD" in supports_route(x, 6)
    assert "correction_bias" in supports_route(x, 6, correction_bias=torch.zeros(64))
    w, ids = route_flydsl(x, 6, renormalize=False, scaling=2.0)
    w_ref, ids_ref = route_ref(x, 6, renormalize=False, scaling=2.0)
    assert torch.equal(w, w_ref) and torch.equal(ids, ids_ref)
    assert any(f["op"] == "route" and "flydsl" in f["reason"] for f in inductor_moe.stats()["fallbacks"])


def test_register_enters_the_route_kernel_unverified(monkeypatch):
    from inductor_moe import dispatch
    from inductor_moe.kernels import flydsl

    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    flydsl.register()
    assert "flydsl" in dispatch.registered("route")
    entry = dispatch._REGISTRY[("route", "flydsl")].resolve()
    assert entry.fn is route_flydsl and entry.supports is supports_route and not entry.verified
    # on this CPU machine the dispatch still picks the reference
    backend, _ = dispatch.select("route", torch.device("cpu"), logits=torch.zeros(2, 8), top_k=2,
                                 scoring="softmax", order="softmax_then_topk")
    assert backend == "reference"
