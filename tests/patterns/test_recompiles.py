"""The rewrite adds no guard and no graph: over T = 1, 2, 7, 64, 513 and 4096 tokens (varied batch and
sequence, default dynamic shapes: static first, then automatic dynamic), the inductor_moe backend compiles
exactly the frames and graphs, and recompiles for exactly the reasons, that plain torch.compile does."""
import pytest
import torch
from torch._dynamo.utils import counters, guard_failures

pytest.importorskip("transformers")

import inductor_moe  # noqa: E402
from tests.models.tiny_moe import HIDDEN, VOCAB, moe_block, tiny_model  # noqa: E402
from tests.utils import rel_l2  # noqa: E402

# (batch, sequence): T = 1, 2, 7, 64, 513, 4096
SHAPES = [(1, 1), (2, 1), (1, 7), (4, 16), (27, 19), (16, 256)]


def _compile_record(fn, backend, inputs) -> tuple[dict, list]:
    torch._dynamo.reset()
    counters.clear()
    guard_failures.clear()
    inductor_moe.reset_stats()
    compiled = torch.compile(fn, backend=backend)
    with torch.no_grad():
        outs = [compiled(x) for x in inputs]
    record = {
        "frames": dict(counters["frames"]),
        "graphs": counters["stats"]["unique_graphs"],
        "calls_captured": counters["stats"]["calls_captured"],
        "graph_breaks": dict(counters["graph_break"]),
        "recompile_reasons": sorted(str(r) for reasons in guard_failures.values() for r in reasons),
    }
    return record, outs


def _same_as_inductor(fn, inputs, tol):
    plain, plain_outs = _compile_record(fn, "inductor", inputs)
    moe, moe_outs = _compile_record(fn, "inductor_moe", inputs)
    s = inductor_moe.stats()
    assert moe == plain
    # not vacuous: several graphs (static, then dynamic), each rewritten by the pass
    assert plain["graphs"] >= 3 and plain["recompile_reasons"], plain
    assert s["graphs"] == {"seen": plain["graphs"], "rewritten": plain["graphs"]}
    assert s["matches"]["moe_fused"] >= plain["graphs"]
    for got, want in zip(moe_outs, plain_outs):
        assert rel_l2(got, want) < tol


def test_block_recompiles_as_plain_compile():
    block = moe_block(tiny_model("qwen3_moe"))
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, s, HIDDEN, generator=gen) for b, s in SHAPES]
    _same_as_inductor(block, inputs, 1e-5)


@pytest.mark.slow
def test_model_recompiles_as_plain_compile():
    model = tiny_model("qwen3_moe", layers=2)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, VOCAB, (b, s), generator=gen) for b, s in SHAPES]

    def logits(ids):
        return model(input_ids=ids).logits

    _same_as_inductor(logits, inputs, 1e-4)
