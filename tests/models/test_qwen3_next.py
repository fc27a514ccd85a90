"""Qwen3-Next: the MoE block is Qwen2-MoE's (softmax -> top-k -> renormalize, ``norm_topk_prob`` True by
default; grouped_mm experts; a sigmoid-gated shared expert that stays as it is), the token mixers alternate
a gated delta net (linear attention) and gated full attention.

Without flash-linear-attention / causal-conv1d (CPU), transformers runs the gated delta net through its
PyTorch fallbacks. They compile with torch 2.13, but the tiny model with a gated delta net layer takes
~80 s to compile with dynamic shapes on 2 CPU cores (cold Inductor cache), so the model case is slow and CI
compiles the MoE block itself with dynamic shapes. The model case uses sequences of at least 4 tokens: the
linear-attention cache pads a prefill shorter than the conv kernel (``update_conv_state``: ``seq_len <
conv_kernel_size``), so a first call with 3 tokens guards ``2 <= seq_len <= 3`` and a 5-token call then
recompiles the whole model (measured: two compiles, 163 s, both rewritten)."""
import expecttest
import pytest
import torch

import inductor_moe
from tests.models.tiny_moe import TOL, block_ops, check_logits, moe_block, tiny_model
from tests.utils import rel_l2

MATCHES = ("experts_grouped_mm", "router_softmax_topk", "moe_fused")


def test_block_fp32_dynamic():
    block = moe_block(tiny_model("qwen3_next"))  # Qwen3NextSparseMoeBlock
    compiled = torch.compile(block, backend="inductor_moe", dynamic=True)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for tokens in [(2, 3), (3, 5), (2, 8)]:
            x = torch.randn(*tokens, 32, generator=gen)
            assert rel_l2(compiled(x), block(x)) <= 1e-5
    s = inductor_moe.stats()
    assert s["graphs"]["seen"] == 1
    assert s["matches"] == dict.fromkeys(MATCHES, 1) and s["rejected"] == []


def test_block_bf16():
    ops, err = block_ops(tiny_model("qwen3_next", torch.bfloat16))
    assert err <= TOL[torch.bfloat16]
    assert "inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')" in ops
    assert inductor_moe.stats()["matches"] == dict.fromkeys(MATCHES, 1)


@pytest.mark.slow
def test_logits_with_gated_delta_net_dynamic():
    """Layer 0 gated delta net, layer 1 full attention, each with a MoE block: one graph for every shape,
    both blocks rewritten."""
    model = tiny_model("qwen3_next", torch.float32, layers=2)
    assert model.config.layer_types == ["linear_attention", "full_attention"]
    s = check_logits(model, shapes=[(2, 5), (3, 7), (2, 9)], dynamic=True)
    assert s["graphs"] == {"seen": 1, "rewritten": 1}
    assert s["matches"] == dict.fromkeys(MATCHES, 2) and s["rejected"] == []


class TestSnapshot(expecttest.TestCase):
    def test_block_ops(self):
        ops, err = block_ops(tiny_model("qwen3_next"))
        self.assertLess(err, 1e-5)
        # router mm, the fused op, then the shared expert's gate and its gate/up/down mms, untouched
        self.assertExpectedInline("\n".join(ops), """\
aten.mm
inductor_moe.moe(2, scoring='softmax', renormalize=True, activation='silu')
aten.mm
aten.mm
aten.mm
aten.mm""")
