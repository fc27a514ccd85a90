"""The grouped-GEMM prefill path (kernels/triton/experts_grouped.py) under TRITON_INTERPRET=1 on CPU tensors
(torch._grouped_mm has a CPU implementation), against the reference experts. Forced with
INDUCTOR_MOE_GROUPED_MM_MIN_ROWS=0; the GPU run (tools/gpu_check.py, benchmarks) checks bf16 on cuBLAS."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests", allow_module_level=True)
if not hasattr(torch, "_grouped_mm"):
    pytest.skip("torch._grouped_mm missing", allow_module_level=True)

from inductor_moe.kernels.reference import experts_ref, route_ref, sort_ref  # noqa: E402
from inductor_moe.kernels.triton import experts_grouped as eg  # noqa: E402
from inductor_moe.kernels.triton.experts import experts_sorted_triton, experts_triton  # noqa: E402

from .test_experts import _case, _err  # noqa: E402


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv("INDUCTOR_MOE_GROUPED_MM_MIN_ROWS", "0")


@pytest.mark.parametrize("activation,interleaved,bias", [
    ("silu", False, False), ("gelu", False, True), ("swiglu_oai", True, True),
])
@pytest.mark.parametrize("T,k,block_m", [(1, 2, 16), (13, 3, 16), (40, 2, 32)])
def test_grouped_matches_reference_f32(forced, activation, interleaved, bias, T, k, block_m):
    E, H, I = 5, 40, 24
    x, logits, w13, w2, b13, b2 = _case(T, E, k, H, I, torch.float32, bias, interleaved, seed=T)
    weights, ids = route_ref(logits, k)
    sorted_out = sort_ref(ids, weights, E, block_m)
    spec = (b13, b2, activation, interleaved, 1.702, 7.0)
    got = experts_sorted_triton(x, *sorted_out, w13, w2, k, block_m, *spec)
    assert _err(got, experts_ref(x, ids, weights, w13, w2, *spec)) < 1e-5


def test_grouped_bf16_and_dropped_pairs(forced):
    """bf16 (h rounded to bf16 between the GEMM and the activation: within the bf16 bound), ids outside
    [0, E) and a masked expert: their pairs add nothing, as in the reference."""
    T, E, k, H, I = 21, 6, 3, 48, 32
    x, logits, w13, w2, _, _ = _case(T, E, k, H, I, torch.bfloat16, False, seed=3)
    weights, ids = route_ref(logits, k)
    ids[0, 0], ids[5, 2] = -1, E
    mask = torch.ones(E, dtype=torch.bool)
    mask[2] = False
    spec = (None, None, "silu", False, 1.702, 7.0)
    got = experts_triton(x, ids, weights, w13, w2, *spec, expert_mask=mask)
    want = experts_ref(x.float(), ids, weights, w13.float(), w2.float(), *spec, expert_mask=mask)
    assert _err(got, want) < 1e-2


def test_offsets_and_pair_rows():
    ids = torch.tensor([[2, 0], [2, 1], [0, 2]], dtype=torch.int32)
    weights = torch.full((3, 2), 0.5)
    sti, sw, sei, nv = sort_ref(ids, weights, 4, 16)
    offs = eg.group_offsets(sei, nv, 4, 16)
    assert offs.tolist() == [16, 32, 48, 48]  # one block each for experts 0, 1, 2; none for 3
    rows = eg.pair_rows(sti, 3, 2)
    for t in range(3):
        for s in range(2):
            r = rows[t * 2 + s].item()
            assert sti[r].item() == (s << 24) | t and sei[r // 16].item() == ids[t, s].item()


def test_unfit_and_rule(monkeypatch):
    x = torch.zeros(4, 40)
    w13, w2 = torch.zeros(2, 48, 40), torch.zeros(2, 40, 24)
    assert eg.grouped_mm_unfit(x, w13, w2) is None
    assert "w3" in eg.grouped_mm_unfit(x, w13, w2, w3=w13)
    assert "multiples of 8" in eg.grouped_mm_unfit(torch.zeros(4, 36), torch.zeros(2, 48, 36), torch.zeros(2, 36, 24))
    monkeypatch.delenv("INDUCTOR_MOE_GROUPED_MM_MIN_ROWS", raising=False)
    assert not eg.use_grouped_mm(10 ** 6, 2, 2, x, w13, w2)  # small experts: the fused stages always
    big_x = torch.zeros(1, 4096, dtype=torch.bfloat16).expand(4, 4096)  # Mixtral's H*I, as views (no memory)
    big13 = torch.zeros(1, 1, 1, dtype=torch.bfloat16).expand(8, 2 * 14336, 4096)
    big2 = torch.zeros(1, 1, 1, dtype=torch.bfloat16).expand(8, 4096, 14336)
    assert not eg.use_grouped_mm(511, 2, 8, big_x, big13, big2)  # < 128 rows per expert
    monkeypatch.setattr(eg, "grouped_mm_unfit", lambda *a: None)  # the expanded views have no unit stride
    assert eg.use_grouped_mm(512, 2, 8, big_x, big13, big2)
    monkeypatch.setenv("INDUCTOR_MOE_GROUPED_MM_MIN_ROWS", "0")
    assert eg.use_grouped_mm(4, 2, 2, x, w13, w2)  # forced: any size
