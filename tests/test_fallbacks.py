"""Fallbacks: every reason the dispatch and the kernel families record when they decline a call, each reached
through the op (or, where no op input can reach it, through ``dispatch.select``), each ending on the
reference kernel with its exact result and the reason in ``stats()["fallbacks"]``; and the pattern-level
fallback, a model form the pass leaves unfused with its reason in ``stats()["rejected"]``.

No GPU here: ``dispatch.preference`` is set to what a CUDA (NVIDIA) or an AMD Instinct device would get, and
where a reason sits behind the device check, that check is patched to pass. The kernels under test are
replaced by ones that fail if called, so a declined call can only have reached the reference.
"""
import importlib
import types

import pytest
import torch

import inductor_moe
from inductor_moe import dispatch
from inductor_moe.kernels import reference as R
from inductor_moe.kernels.flydsl import route as flydsl_route
from inductor_moe.ops.moe import moe_ref
from inductor_moe.ops.route_sort import route_sort_ref

triton_pred = importlib.import_module("inductor_moe.kernels.triton")  # the predicates need only torch

NVIDIA = ("triton", "reference")
AMD = ("flydsl", "triton", "reference")
CPU_REASON = "triton: cpu tensor (Triton runs CUDA tensors; CPU ones only under TRITON_INTERPRET=1 when forced)"
ops = torch.ops.inductor_moe


def _must_not_run(*args, **kwargs):
    raise AssertionError("a kernel that declined the call ran")


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the kernel registry; no forced backend, no opt-in to unverified kernels."""
    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    monkeypatch.delenv("INDUCTOR_MOE_BACKEND", raising=False)
    monkeypatch.delenv("INDUCTOR_MOE_UNVERIFIED", raising=False)
    return monkeypatch


def _prefer(mp, order):
    mp.setattr(dispatch, "preference", lambda device: order)


def _declining(op, backend, supports, verified=True):
    dispatch._REGISTRY[(op, backend)] = dispatch.KernelEntry(_must_not_run, supports, verified)


def _fallbacks():
    return [(f["op"], f["reason"]) for f in inductor_moe.stats()["fallbacks"]]


def _cuda_like(t):
    """What supports_experts reads of a tensor (device, dtype), as if it were on a CUDA device."""
    return types.SimpleNamespace(device=torch.device("cuda"), dtype=t.dtype, shape=t.shape)


def _experts_predicate(on_cuda: bool):
    triton_experts = pytest.importorskip("inductor_moe.kernels.triton.experts")  # imports triton
    if not on_cuda:
        return triton_experts.supports_experts
    return lambda hidden=None, **kw: triton_experts.supports_experts(hidden=_cuda_like(hidden), **kw)


# ---------------------------------------------------------------------------------------------------------
# inputs, and each op next to its reference kernel


def _logits(tokens=5, experts=8, dtype=torch.float32, seed=0):
    return torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _route(logits, top_k=2, *args):
    return ops.route(logits, top_k, *args), R.route_ref(logits, top_k, *_route_defaults(args))


def _route_defaults(args):
    defaults = ["softmax", True, "softmax_then_topk", None, 1, 1, 1.0]
    return list(args) + defaults[len(args):]


def _sort(experts=8, block_m=16, tokens=5, top_k=2):
    weights, ids = R.route_ref(_logits(tokens, experts), top_k, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    return ops.sort(ids, weights, experts, block_m), R.sort_ref(ids, weights, experts, block_m, None)


def _route_sort(logits, top_k=2, block_m=16):
    args = (logits, top_k, block_m, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0, None)
    return ops.route_sort(*args), route_sort_ref(*args)


def _expert_weights(dtype=torch.float32, tokens=5, hidden=16, inter=8, experts=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) * 0.3).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=g) * 0.3).to(dtype)
    return x, w13, w2


def _experts(dtype=torch.float32):
    x, w13, w2 = _expert_weights(dtype)
    weights, ids = R.route_ref(_logits(), 2, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    rest = (None, None, "silu", False, 1.702, 7.0)
    return ops.experts(x, ids, weights, w13, w2), R.experts_ref(x, ids, weights, w13, w2, *rest)


def _experts_sorted(block_m=16):
    x, w13, w2 = _expert_weights()
    weights, ids = R.route_ref(_logits(), 2, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    layout = R.sort_ref(ids, weights, 8, block_m, None)
    rest = (None, None, "silu", False, 1.702, 7.0)
    got = ops.experts_sorted(x, *layout, w13, w2, 2, block_m)
    return got, R.experts_sorted_ref(x, *layout, w13, w2, 2, block_m, *rest)


def _moe():
    x, w13, w2 = _expert_weights()
    logits = _logits()
    args = (None, None, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0, "silu", False, 1.702, 7.0)
    return ops.moe(x, logits, w13, w2, 2), moe_ref(x, logits, w13, w2, 2, *args)


def _check(got_want, op, reason):
    got, want = got_want
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(g, w), "not the reference kernel's result"
    assert (op, reason) in _fallbacks(), _fallbacks()


# ---------------------------------------------------------------------------------------------------------
# dispatch


def test_no_kernel_in_the_preferred_family(registry):
    _prefer(registry, AMD)
    dispatch._REGISTRY.pop(("route_sort", "flydsl"), None)
    _declining("route_sort", "triton", triton_pred.supports_route_sort)
    _check(_route_sort(_logits()), "route_sort", "flydsl: no kernel for route_sort")
    assert ("route_sort", CPU_REASON) in _fallbacks()


def test_unverified_kernel_is_skipped_unless_opted_in(registry):
    _prefer(registry, AMD)
    _declining("route", "flydsl", flydsl_route.supports_route, verified=False)
    _declining("route", "triton", triton_pred.supports_route)
    _check(_route(_logits()), "route", "flydsl: kernel not yet verified on a GPU (INDUCTOR_MOE_UNVERIFIED=1 to use)")
    assert not any(r.startswith("flydsl: route:") for _, r in _fallbacks()), "the predicate was not asked"

    inductor_moe.reset_stats()
    registry.setenv("INDUCTOR_MOE_UNVERIFIED", "1")  # now the predicate is asked, and turns down a CPU tensor
    _check(_route(_logits()), "route", "flydsl: route: cpu is not an AMD gfx942/gfx950 GPU")
    assert not any("not yet verified" in r for _, r in _fallbacks())


def test_cpu_has_no_fallback_and_reaches_triton_only_when_forced(registry):
    """On a CPU the reference is the only family: nothing is recorded. Triton runs CPU tensors only when
    forced (tests, TRITON_INTERPRET=1)."""
    (w, i), (w_ref, i_ref) = _route(_logits())
    assert torch.equal(w, w_ref) and torch.equal(i, i_ref) and _fallbacks() == []
    if not triton_pred.interpreting() or ("route", "triton") not in dispatch._REGISTRY:
        pytest.skip("needs triton and TRITON_INTERPRET=1")
    entry = dispatch._REGISTRY[("route", "triton")].resolve()
    calls = []
    dispatch._REGISTRY[("route", "triton")] = dispatch.KernelEntry(
        lambda *a: calls.append(1) or entry.fn(*a), entry.supports, True)
    with inductor_moe.force_backend("triton"):
        (w, i), (w_ref, i_ref) = _route(_logits())
    assert calls == [1] and _fallbacks() == []
    torch.testing.assert_close(w, w_ref)
    assert torch.equal(i.long(), i_ref.long())


def test_forced_family_that_declines_raises_instead_of_falling_back(registry):
    _declining("route", "triton", triton_pred.supports_route)
    with inductor_moe.force_backend("triton"), pytest.raises(RuntimeError, match="'triton' cannot run route here"):
        ops.route(_logits(experts=32), 17)
    (reason,) = [r for op, r in _fallbacks() if op == "route"]
    assert reason in ("triton: top_k=17 > 16", CPU_REASON)  # CPU_REASON without TRITON_INTERPRET=1


# ---------------------------------------------------------------------------------------------------------
# Triton route / sort / route_sort (kernels/triton/__init__.py)

ROUTE_CASES = {
    "device": (False, lambda: _route(_logits()), "route", CPU_REASON),
    "logits_dtype": (True, lambda: _route(_logits(dtype=torch.float8_e4m3fn)), "route",
                     "triton: logits dtype torch.float8_e4m3fn"),
    "num_experts": (True, lambda: _route(_logits(3, 4097)), "route", "triton: num_experts=4097 > 4096"),
    "top_k": (True, lambda: _route(_logits(3, 32), 17), "route", "triton: top_k=17 > 16"),
    "sort_device": (False, lambda: _sort(), "sort", CPU_REASON),
    "sort_num_experts": (True, lambda: _sort(experts=4097), "sort", "triton: num_experts=4097 > 4096"),
    "sort_offsets": (True, lambda: _sort(), "sort", "triton: sorted layout too long for int32 offsets"),
    "route_sort_top_k": (True, lambda: _route_sort(_logits(3, 32), 17), "route_sort", "triton: top_k=17 > 16"),
    "route_sort_offsets": (True, lambda: _route_sort(_logits()), "route_sort",
                           "triton: sorted layout too long for int32 offsets"),
}


@pytest.mark.parametrize("case", list(ROUTE_CASES))
def test_triton_route_sort_reasons(registry, case):
    on_cuda, call, op, reason = ROUTE_CASES[case]
    _prefer(registry, NVIDIA)
    for name in ("route", "sort", "route_sort"):
        _declining(name, "triton", getattr(triton_pred, f"supports_{name}"))
    if on_cuda:
        registry.setattr(triton_pred, "_device_reason", lambda t: None)
    if case.endswith("offsets"):  # 10 + 8 * 16 entries > 64: the int32-offset limit, scaled down
        registry.setattr(triton_pred, "MAX_OFFSET", 64)
    _check(call(), op, reason)


# ---------------------------------------------------------------------------------------------------------
# Triton experts / experts_sorted / moe (kernels/triton/experts.py: supports_experts)

EXPERTS_CASES = {
    "experts_device": (False, _experts, "experts", CPU_REASON),
    "experts_sorted_device": (False, _experts_sorted, "experts_sorted", CPU_REASON),
    "moe_device": (False, _moe, "moe", CPU_REASON),
    "dtype": (True, lambda: _experts(torch.float64), "experts", "triton: dtype torch.float64"),
    "block_m": (True, lambda: _experts_sorted(block_m=8), "experts_sorted",
                "triton: block_m=8 (tl.dot needs a power of two >= 16)"),
}


@pytest.mark.parametrize("case", list(EXPERTS_CASES))
def test_triton_experts_reasons(registry, case):
    on_cuda, call, op, reason = EXPERTS_CASES[case]
    _prefer(registry, NVIDIA)
    predicate = _experts_predicate(on_cuda)
    for name in ("experts", "experts_sorted", "moe"):
        _declining(name, "triton", predicate)
    _check(call(), op, reason)


def _split_w3(w13):
    inter = w13.shape[1] // 2
    return w13[:, :inter].contiguous(), w13[:, inter:].contiguous()


@pytest.mark.parametrize("op", ["experts", "experts_sorted", "moe"])
def test_kernel_without_w3_declines_separate_up_weights(registry, op):
    """A family whose kernel function has no ``w3`` parameter (written before the argument existed, e.g. the
    FlyDSL experts kernels) declines calls with separate up weights; calls without ``w3`` still reach it."""
    _prefer(registry, AMD)

    def old_kernel(*args):  # the positional arguments of the op, no w3
        return R.experts_ref(*args) if op == "experts" else (
            R.experts_sorted_ref(*args) if op == "experts_sorted" else moe_ref(*args))

    calls = []
    dispatch._REGISTRY[(op, "flydsl")] = dispatch.KernelEntry(lambda *a: calls.append(1) or old_kernel(*a))
    _declining(op, "triton", lambda **_: "not here")
    x, w13, w2 = _expert_weights()
    w1, w3 = _split_w3(w13)
    weights, ids = R.route_ref(_logits(), 2, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    layout = R.sort_ref(ids, weights, 8, 16, None)
    call = {
        "experts": lambda **kw: ops.experts(x, ids, weights, kw.pop("w13", w13), w2, **kw),
        "experts_sorted": lambda **kw: ops.experts_sorted(x, *layout, kw.pop("w13", w13), w2, 2, 16, **kw),
        "moe": lambda **kw: ops.moe(x, _logits(), kw.pop("w13", w13), w2, 2, **kw),
    }[op]
    fused = call()
    assert calls == [1]
    split = call(w13=w1, w3=w3)
    assert calls == [1], "the kernel without w3 ran a call with w3"
    torch.testing.assert_close(split, fused, rtol=1e-5, atol=1e-5)
    assert (op, "flydsl: separate w3 not supported") in _fallbacks()
    assert dispatch.takes_w3(R.experts_sorted_ref) and dispatch.takes_w3(R.experts_ref) and dispatch.takes_w3(moe_ref)


def test_triton_experts_activation_reason(registry):
    """Every activation the ops accept has a Triton code, so no op call reaches this reason; the predicate
    still declines an unknown one through the dispatch."""
    from inductor_moe.kernels.reference.activation import ACTIVATIONS

    triton_experts = pytest.importorskip("inductor_moe.kernels.triton.experts")
    assert set(ACTIVATIONS) <= set(triton_experts.ACT_CODES)
    _prefer(registry, NVIDIA)
    _declining("experts", "triton", _experts_predicate(on_cuda=True))
    x, w13, w2 = _expert_weights()
    backend, kernel = dispatch.select("experts", x.device, hidden=x, w13=w13, w2=w2, activation="mish", top_k=2)
    assert (backend, kernel) == ("reference", R.experts_ref)
    assert _fallbacks() == [("experts", "triton: activation mish")]


# ---------------------------------------------------------------------------------------------------------
# FlyDSL route (kernels/flydsl/route.py: supports_route), as on an AMD Instinct GPU with the opt-in set

def _bias():
    return torch.randn(8, generator=torch.Generator().manual_seed(3))


FLYDSL_CASES = {
    "correction_bias": (lambda: _route(_logits(), 2, "sigmoid", True, "softmax_then_topk", _bias()),
                        "flydsl: route: correction_bias is not in the FlyDSL kernel"),
    "n_group": (lambda: _route(_logits(), 2, "sigmoid", True, "softmax_then_topk", None, 4, 2),
                "flydsl: route: grouped top-k (n_group > 1) is not in the FlyDSL kernel"),
    "dtype": (lambda: _route(_logits(dtype=torch.float64)),
              "flydsl: route: logits dtype torch.float64 (the kernel reads bf16, f16, f32)"),
    "layout": (lambda: _route(_logits(3, 2049)), "flydsl: route: num_experts: 2049 needs 33 values per lane "
                                                 "(> 32, the register budget); at most 2048 experts"),
}


def _as_on_amd(mp):
    """The FlyDSL route kernel registered as the package does (unverified, opted in), on a gfx942 'device'."""
    _prefer(mp, AMD)
    mp.setenv("INDUCTOR_MOE_UNVERIFIED", "1")
    mp.setattr(flydsl_route, "_device_arch", lambda device: "gfx942")
    dispatch.register_kernel("route", "flydsl", flydsl_route.route_flydsl, flydsl_route.supports_route,
                             verified=False)
    _declining("route", "triton", triton_pred.supports_route)  # declines the CPU tensor


@pytest.mark.parametrize("case", list(FLYDSL_CASES))
def test_flydsl_route_reasons(registry, case):
    """Each reason is recorded and the call reaches the reference: same result, same reason."""
    call, reason = FLYDSL_CASES[case]
    _as_on_amd(registry)
    _check(call(), "route", reason)


def test_flydsl_declines_correction_bias_in_the_dispatch(registry):
    """ops/route.py passes correction_bias and n_group to dispatch.select, so FlyDSL's supports_route declines
    them there and the next family in line is tried."""
    _as_on_amd(registry)
    _declining("route", "flydsl", flydsl_route.supports_route, verified=False)
    _check(_route(_logits(), 2, "sigmoid", True, "softmax_then_topk", _bias()), "route",
           "flydsl: route: correction_bias is not in the FlyDSL kernel")


def test_flydsl_route_logits_over_2gib(registry):
    """4 GiB of logits cannot be allocated here: the predicate sees meta tensors through the dispatch."""
    _prefer(registry, AMD)
    registry.setenv("INDUCTOR_MOE_UNVERIFIED", "1")
    registry.setattr(flydsl_route, "_device_arch", lambda device: "gfx942")
    _declining("route", "flydsl", flydsl_route.supports_route, verified=False)
    _declining("route", "triton", lambda **_: "declines")
    logits = torch.empty(1 << 20, 1024, device="meta")
    backend, kernel = dispatch.select("route", logits.device, logits=logits, top_k=2, scoring="softmax",
                                      order="softmax_then_topk")
    assert (backend, kernel) == ("reference", R.route_ref)
    assert ("route", "flydsl: route: logits of 2 GiB or more (32-bit byte offsets)") in _fallbacks()
    logits = torch.empty((1 << 20) - 1, 512, device="meta")  # just under: taken
    assert dispatch.select("route", logits.device, logits=logits, top_k=2)[0] == "flydsl"


def test_flydsl_launcher_hands_declined_calls_to_the_reference():
    """route_flydsl, called directly, checks again and runs the reference for a call it cannot take."""
    logits, bias = _logits(), _bias()
    args = (logits, 2, "sigmoid", True, "softmax_then_topk", bias, 1, 1, 2.5)
    got, want = flydsl_route.route_flydsl(*args), R.route_ref(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert _fallbacks() == [("route", "flydsl: route: correction_bias is not in the FlyDSL kernel")]


# ---------------------------------------------------------------------------------------------------------
# FlyDSL sort (kernels/flydsl/sort.py: supports_sort)

FLYDSL_SORT_CASES = {
    "num_experts": (lambda: _sort(experts=513), "flydsl: sort: num_experts: must be an int in [1, 512], got 513"),
    "offsets": (lambda: _sort(), "flydsl: sort: tokens: 5 tokens x top_k 2 (block_m 16) need byte offsets past 2**31"),
    "device": (lambda: _sort(), "flydsl: sort: cpu is not an AMD gfx942/gfx950 GPU"),
}


@pytest.mark.parametrize("case", list(FLYDSL_SORT_CASES))
def test_flydsl_sort_reasons(registry, case):
    from inductor_moe.kernels.flydsl import sort as flydsl_sort

    call, reason = FLYDSL_SORT_CASES[case]
    _prefer(registry, AMD)
    registry.setenv("INDUCTOR_MOE_UNVERIFIED", "1")
    _declining("sort", "flydsl", flydsl_sort.supports_sort, verified=False)
    _declining("sort", "triton", triton_pred.supports_sort)
    if case == "offsets":  # the 2**31 byte-offset limit, scaled down to these 5 tokens
        registry.setattr(flydsl_sort.SL, "MAX_BYTE_OFFSET", 64)
    _check(call(), "sort", reason)


def test_flydsl_sort_ids_dtype_and_launcher(registry):
    """The op takes int32/int64 ids only, so the predicate's dtype reason is reached through the dispatch;
    sort_flydsl, called directly, checks again and runs the reference."""
    from inductor_moe.kernels.flydsl import sort as flydsl_sort

    _prefer(registry, AMD)
    registry.setenv("INDUCTOR_MOE_UNVERIFIED", "1")
    _declining("sort", "flydsl", flydsl_sort.supports_sort, verified=False)
    _declining("sort", "triton", lambda **_: "declines")
    ids = torch.zeros(5, 2, dtype=torch.int16)
    assert dispatch.select("sort", ids.device, ids=ids, num_experts=8, block_m=16) == ("reference", R.sort_ref)
    assert ("sort", "flydsl: sort: ids dtype torch.int16 (the kernels read int32, int64)") in _fallbacks()

    inductor_moe.reset_stats()
    weights, ids = R.route_ref(_logits(), 2, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    got, want = flydsl_sort.sort_flydsl(ids, weights, 8, 16), R.sort_ref(ids, weights, 8, 16, None)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert _fallbacks() == [("sort", "flydsl: sort: cpu is not an AMD gfx942/gfx950 GPU")]


# ---------------------------------------------------------------------------------------------------------
# Triton MXFP4 experts (kernels/triton/experts_mxfp4.py: supports_experts_mxfp4, registered unverified)


def _experts_mxfp4():
    from inductor_moe.kernels.reference.experts_mxfp4 import experts_mxfp4_ref
    from inductor_moe.quant.mxfp4 import quantize_mxfp4

    x, w13, w2 = _expert_weights(hidden=32, inter=32, experts=4)
    (w13_q, w13_s), (w2_q, w2_s) = quantize_mxfp4(w13), quantize_mxfp4(w2)
    weights, ids = R.route_ref(_logits(experts=4), 2, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0)
    got = ops.experts_mxfp4(x, ids, weights, w13_q, w2_q, w13_s, w2_s)
    return got, experts_mxfp4_ref(x, ids, weights, w13_q, w2_q, w13_s, w2_s, None, None, "silu", False, 1.702, 7.0)


@pytest.mark.parametrize("opt_in", [False, True], ids=["unverified", "device"])
def test_triton_mxfp4_reasons(registry, opt_in):
    mx = pytest.importorskip("inductor_moe.kernels.triton.experts_mxfp4")  # imports triton
    _prefer(registry, NVIDIA)
    _declining("experts_mxfp4", "triton", mx.supports_experts_mxfp4, verified=False)
    if opt_in:
        registry.setenv("INDUCTOR_MOE_UNVERIFIED", "1")
        _check(_experts_mxfp4(), "experts_mxfp4", CPU_REASON)
    else:
        _check(_experts_mxfp4(), "experts_mxfp4",
               "triton: kernel not yet verified on a GPU (INDUCTOR_MOE_UNVERIFIED=1 to use)")


def test_triton_mxfp4_dtype_and_activation_reasons(registry):
    """The op takes bf16/f16/f32 hidden and the activations Triton has, so these two reasons are reached
    through the dispatch, with the device check passed."""
    mx = pytest.importorskip("inductor_moe.kernels.triton.experts_mxfp4")
    _prefer(registry, NVIDIA)
    registry.setenv("INDUCTOR_MOE_UNVERIFIED", "1")
    registry.setattr(mx, "_device_reason", lambda t: None)
    _declining("experts_mxfp4", "triton", mx.supports_experts_mxfp4, verified=False)
    f64, f32 = torch.zeros(2, 32, dtype=torch.float64), torch.zeros(2, 32)
    assert dispatch.select("experts_mxfp4", f64.device, hidden=f64, activation="silu")[0] == "reference"
    assert dispatch.select("experts_mxfp4", f32.device, hidden=f32, activation="mish")[0] == "reference"
    assert _fallbacks() == [("experts_mxfp4", "triton: dtype torch.float64"),
                            ("experts_mxfp4", "triton: activation mish")]


# ---------------------------------------------------------------------------------------------------------
# pattern level: a router form no pattern knows stays as Inductor compiles it, with its reasons recorded


def test_unsupported_router_form_stays_unfused_with_reasons():
    pytest.importorskip("transformers")
    from tests.models.tiny_moe import moe_block, tiny_model
    from tests.test_explain import SigmoidTopKRouter
    from tests.utils import capture_graphs, rel_l2

    block = moe_block(tiny_model("qwen3_moe"))
    block.gate = SigmoidTopKRouter(block.gate)
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    with capture_graphs() as graphs, torch.no_grad():
        got = torch.compile(block, backend="inductor_moe")(x)
        want = block(x)
    assert rel_l2(got, want) < 1e-5
    assert "aten.topk" in graphs[0] and "inductor_moe.experts(activation='silu')" in graphs[0]
    assert not any(op.startswith(("inductor_moe.route", "inductor_moe.moe")) for op in graphs[0])
    s = inductor_moe.stats()
    assert s["matches"] == {"experts_grouped_mm": 1}
    reasons = {r["pattern"]: r["reason"] for r in s["rejected"]}
    assert set(reasons) == {"router_softmax_topk", "moe_fused"}
    assert "not softmax(logits)" in reasons["router_softmax_topk"]
    assert "do not come from one route op" in reasons["moe_fused"]
