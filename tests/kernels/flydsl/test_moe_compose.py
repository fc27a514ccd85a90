"""The FlyDSL ``experts``/``moe`` compositions: argument plumbing (on CPU every piece hands its call to the
reference, so the composition must reproduce ``experts_ref``/``moe_ref`` exactly), block_m choice, and the
decline reasons the dispatch records."""
import pytest
import torch

from inductor_moe.kernels.flydsl import moe as fm
from inductor_moe.kernels.reference import experts_ref
from inductor_moe.ops.moe import moe_ref


def _layer(T=5, E=8, k=2, H=64, I=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(dtype)
    logits = torch.randn(T, E, generator=g)
    w13 = (torch.randn(E, 2 * I, H, generator=g) * 0.05).to(dtype)
    w2 = (torch.randn(E, H, I, generator=g) * 0.05).to(dtype)
    return hidden, logits, w13, w2, k


def test_experts_composition_matches_reference_on_cpu():
    hidden, logits, w13, w2, k = _layer()
    weights, ids = torch.topk(logits.softmax(-1), k)
    ids = ids.to(torch.int32)
    mask = torch.tensor([True, False] * 4)
    for expert_mask in (None, mask):
        got = fm.experts_flydsl(hidden, ids, weights, w13, w2, None, None, "silu", False, 1.702, 7.0, expert_mask)
        want = experts_ref(hidden, ids, weights, w13, w2, None, None, "silu", False, 1.702, 7.0, expert_mask)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_moe_composition_matches_reference_on_cpu():
    hidden, logits, w13, w2, k = _layer(T=7, E=16, k=4)
    args = (hidden, logits, w13, w2, k, None, None, "softmax", True, "softmax_then_topk", None, 1, 1, 1.0, "silu",
            False, 1.702, 7.0)
    torch.testing.assert_close(fm.moe_flydsl(*args), moe_ref(*args), rtol=0, atol=0)


@pytest.mark.parametrize("T,k,E,want", [(1, 8, 128, 16), (64, 8, 128, 16), (512, 8, 128, 32), (4096, 8, 128, 64),
                                        (1, 2, 8, 16), (1000, 2, 8, 64)])
def test_block_m_follows_rows_per_expert(T, k, E, want):
    assert fm.pick_block_m(T, k, E) == want


def test_declines_name_the_reason():
    hidden, _, w13, w2, k = _layer()
    assert "not an AMD" in fm.supports_experts(hidden=hidden, w13=w13, w2=w2, top_k=k, activation="silu")
    assert "w3" in fm.supports_moe(hidden=hidden, w13=w13[:, :64], w2=w2, top_k=k, w3=w13[:, 64:])
    assert "gelu" in fm.supports_experts(hidden=hidden, w13=w13, w2=w2, top_k=k, activation="gelu")
    assert "dtype" in fm.supports_experts(hidden=hidden.float(), w13=w13.float(), w2=w2.float(), top_k=k)
    assert "needed" in fm.supports_experts()
