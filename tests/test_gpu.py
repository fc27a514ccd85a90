"""CUDA checks, run on the GPU machine (``pytest -m gpu``): the ops and the rewritten model under
CUDA-graph capture (``mode="reduce-overhead"``), against eager."""
import pytest
import torch

import inductor_moe
from tests.utils import rel_l2, tiny_qwen3_moe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reduce_overhead_captures_and_replays(dtype):
    from torch._dynamo.utils import counters

    counters.clear()
    model = tiny_qwen3_moe(dtype).cuda()
    compiled = torch.compile(model, backend="inductor_moe", mode="reduce-overhead")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for step in range(6):  # new inputs each replay: routing changes
            ids = torch.randint(0, 96, (2, 5), device="cuda", generator=gen)
            got = compiled(input_ids=ids).logits.clone()
            want = model(input_ids=ids).logits
            assert rel_l2(got, want) <= (1e-4 if dtype == torch.float32 else 3e-2), step
    assert inductor_moe.stats()["matches"]["moe_fused"] == 2
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


def test_ops_capture_in_a_cuda_graph():
    """Every op runs inside torch.cuda.graph (no host sync, static shapes) and replays new data."""
    T, H, I, E, k = 7, 32, 16, 8, 2
    x = torch.randn(T, H, device="cuda")
    logits = torch.randn(T, E, device="cuda")
    w13 = torch.randn(E, 2 * I, H, device="cuda") * 0.1
    w2 = torch.randn(E, H, I, device="cuda") * 0.1
    moe = torch.ops.inductor_moe.moe
    moe(x, logits, w13, w2, k)  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe(x, logits, w13, w2, k)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        logits.copy_(torch.randn_like(logits))
        graph.replay()
        torch.cuda.synchronize()
        want = moe(x.cpu(), logits.cpu(), w13.cpu(), w2.cpu(), k)
        assert rel_l2(out.cpu(), want) < 1e-4
