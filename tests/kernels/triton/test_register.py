"""register(): the dispatch entries and their ``supports`` predicates; the ops run on the Triton kernels
when forced."""
import pytest
import torch

pytest.importorskip("triton")

import inductor_moe  # noqa: E402
from inductor_moe import dispatch  # noqa: E402
from inductor_moe.kernels import triton as triton_kernels  # noqa: E402
from inductor_moe.kernels.reference import route_ref, sort_ref  # noqa: E402

from .routing_cases import DEVICE, assert_route_equal, assert_sorted_equal, logits_for  # noqa: E402


@pytest.fixture
def registry():
    saved = dict(dispatch._REGISTRY)
    triton_kernels.register()
    yield dispatch._REGISTRY
    dispatch._REGISTRY.clear()
    dispatch._REGISTRY.update(saved)


def test_register_names_the_three_ops(registry):
    for op in ("route", "sort", "route_sort"):
        entry = registry[(op, "triton")]
        assert isinstance(entry.fn, str) and entry.fn.startswith("inductor_moe.kernels.triton.")
        assert entry.verified is False  # register()'s default: opt-in until tools/gpu_check.py has run them


def test_supports_predicates(monkeypatch):
    logits = torch.zeros(4, 8, device=DEVICE)
    ids = torch.zeros(4, 2, dtype=torch.int32, device=DEVICE)
    with inductor_moe.force_backend("triton"):  # DEVICE is the CPU under the interpreter
        assert triton_kernels.supports_route(logits=logits, top_k=2) is None
        assert triton_kernels.supports_sort(ids=ids, num_experts=8, block_m=16) is None
        assert triton_kernels.supports_route_sort(logits=logits, top_k=2, block_m=16) is None
        assert "num_experts" in triton_kernels.supports_route(logits=torch.zeros(1, 8192, device=DEVICE), top_k=2)
        assert "top_k" in triton_kernels.supports_route(logits=torch.zeros(1, 64, device=DEVICE), top_k=17)
        assert "num_experts" in triton_kernels.supports_sort(ids=ids, num_experts=5000, block_m=16)
        assert "int32" in triton_kernels.supports_sort(ids=ids, num_experts=8, block_m=1 << 30)
    cpu = torch.zeros(4, 8)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with inductor_moe.force_backend("triton"):
        assert "cpu" in triton_kernels.supports_route(logits=cpu, top_k=2)
        assert "cpu" in triton_kernels.supports_sort(ids=cpu.int(), num_experts=8, block_m=16)
        assert "cpu" in triton_kernels.supports_route_sort(logits=cpu, top_k=2, block_m=16)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "cpu" in triton_kernels.supports_route(logits=cpu, top_k=2)  # not unless asked for
    with inductor_moe.force_backend("triton"):
        assert triton_kernels.supports_route(logits=cpu, top_k=2) is None


def test_package_registers_the_triton_kernels_verified():
    for op in ("route", "sort", "route_sort", "experts_sorted", "experts", "moe"):
        assert dispatch._REGISTRY[(op, "triton")].verified  # through tools/gpu_check.py on an H100


def test_cpu_calls_stay_on_the_reference_unless_forced():
    logits = logits_for(3, 8).cpu()
    assert dispatch.select("route", logits.device, logits=logits, top_k=2)[0] == "reference"


def test_ops_run_the_triton_kernels_when_forced(registry):
    logits = logits_for(5, 12)
    with inductor_moe.force_backend("triton"):
        weights, ids = torch.ops.inductor_moe.route(logits, 3)
        sorted_out = torch.ops.inductor_moe.sort(ids, weights, 12, 16)
        fused = torch.ops.inductor_moe.route_sort(logits, 3, 16)
    assert_route_equal((weights, ids), route_ref(logits, 3))
    assert_sorted_equal(sorted_out, sort_ref(ids, weights, 12, 16))
    assert_sorted_equal(fused[:4], sorted_out)
    assert inductor_moe.stats()["fallbacks"] == [] or all(
        "triton" not in f["reason"] for f in inductor_moe.stats()["fallbacks"])
