"""The FlyDSL two-stage MoE GEMMs' algorithm and layout, checked without FlyDSL: a NumPy emulation built on
``experts_layout.py`` (tests/kernels/flydsl/emulate_experts.py) reproduces ``experts_sorted_ref`` on the
production (E, k) set at small H/I, with uniform, skewed and one-expert routing and every block_m of the
plan; and, tightly, a plain per-(token, slot) computation with the kernels' numerics (bf16 intermediate),
which catches any indexing slip. Plus the preshuffle, LDS and MFMA-operand index maps on their own, and
the Python entry's declines."""
import numpy as np
import pytest
import torch

from inductor_moe.kernels.flydsl import experts_layout as XL
from inductor_moe.kernels.flydsl.experts import preshuffle, supports_experts_sorted
from inductor_moe.kernels.reference import sort_ref
from inductor_moe.kernels.reference.experts import experts_sorted_ref

from .emulate_experts import emulate_experts_sorted, kernel_numerics_oracle

PRODUCTION = [(8, 2), (16, 1), (32, 4), (60, 4), (64, 6), (64, 8), (128, 4), (128, 8), (160, 8), (256, 8),
              (257, 9), (384, 8), (512, 10)]
H, I = 128, 64  # two K-steps in stage 1 (both ping-pong buffers), two column tiles in stage 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ids(tokens, experts, top_k, routing, seed):
    g = torch.Generator().manual_seed(seed)
    if routing == "uniform":
        scores = torch.rand(tokens, experts, generator=g)
        return scores.topk(top_k, dim=1).indices.to(torch.int32)
    if routing == "one_expert":  # every token picks the same k experts
        chosen = torch.randperm(experts, generator=g)[:top_k]
        return chosen.expand(tokens, top_k).to(torch.int32).contiguous()
    popularity = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64) ** 1.5  # skewed (Zipf-like)
    popularity = popularity[torch.randperm(experts, generator=g)]
    return torch.multinomial(popularity.expand(tokens, experts), top_k, replacement=False, generator=g).to(torch.int32)


def _case(experts, top_k, tokens, routing, seed, hidden=H, inter=I):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) * 0.1).to(torch.bfloat16)
    w2 = (torch.randn(experts, hidden, inter, generator=g) * 0.1).to(torch.bfloat16)
    ids = _ids(tokens, experts, top_k, routing, seed)
    weights = torch.rand(tokens, top_k, generator=g)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return x, w13, w2, ids, weights


def _check(experts, top_k, tokens, routing, block_m, seed=0, **shape):
    x, w13, w2, ids, weights = _case(experts, top_k, tokens, routing, seed, **shape)
    sorted_out = sort_ref(ids, weights, experts, block_m)
    stats = {}
    got = emulate_experts_sorted(x, *sorted_out, w13, w2, top_k, block_m, stats=stats)
    want = experts_sorted_ref(x, *sorted_out, w13, w2, top_k, block_m, None, None, "silu", False, 1.702, 7.0)
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    # the reference keeps the intermediate in f32, the kernels round it to bf16: bf16 tolerance
    scale = want.float().abs().max().item() + 1e-6
    err = (got.float() - want.float()).abs().max().item()
    assert err <= 2e-2 * scale, (experts, top_k, routing, block_m, err, scale)
    # the kernels' own numerics, written plainly: equal up to f32 summation order and bf16 output rounding
    oracle = kernel_numerics_oracle(x, ids, weights, w13, w2)
    torch.testing.assert_close(got.float(), oracle.float(), rtol=1e-2, atol=1e-2 * scale)
    # every real (token, slot) wrote its row once per stage-2 column; padding wrote nothing
    hidden, inter = shape.get("hidden", H), shape.get("inter", I)
    assert stats["slot_writes"] == tokens * top_k * hidden
    valid_blocks = int(sorted_out[3][0]) // block_m
    assert stats["blocks_run"] == valid_blocks
    plan = XL.experts_plan(hidden, inter, top_k, block_m, "gfx942")
    want_mfma = valid_blocks * (plan.n_tiles(1) * plan.k_steps(1) * plan.mfma_per_kstep(1)
                                + plan.n_tiles(2) * plan.k_steps(2) * plan.mfma_per_kstep(2))
    assert stats["mfma"] == want_mfma
    return got


@pytest.mark.parametrize("experts,top_k", PRODUCTION)
@pytest.mark.parametrize("routing", ["uniform", "skewed", "one_expert"])
def test_emulation_matches_reference(experts, top_k, routing):
    block_m = XL.BLOCK_MS[(experts + top_k) % len(XL.BLOCK_MS)]
    tokens = 5 if experts >= 256 else 9
    _check(experts, top_k, tokens, routing, block_m, seed=experts * 31 + top_k)


@pytest.mark.parametrize("block_m", XL.BLOCK_MS)
def test_every_block_m_and_more_k_steps(block_m):
    # 3 K-steps in stage 1 and 2 in stage 2, 2 x 3 column tiles, a block with many rows of one expert
    _check(8, 2, 40, "skewed", block_m, seed=block_m, hidden=192, inter=128)


def test_single_token_single_k_step():
    _check(16, 1, 1, "uniform", 16, seed=3, hidden=64, inter=64)


def test_preshuffle_is_the_layout_index():
    e, n, k = 3, 48, 192
    w = torch.arange(e * n * k, dtype=torch.float32).reshape(e, n, k)
    packed = preshuffle(w)
    nn, kk = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    idx = torch.from_numpy(XL.packed_index(nn, kk, k))
    for x in range(e):
        assert torch.equal(packed[x][idx], w[x])
    # a lane's 16 B values of (tile, K-step) are the packed run at b_lane_offset, in operand k order
    lanes = np.arange(XL.WAVE)
    for tile in range(n // 16):
        for ks in range(k // XL.TILE_K):
            start = XL.b_lane_offset(tile, ks, lanes, k)
            for sub in range(XL.KSUB):
                for j in range(4):
                    kk_ = ks * XL.TILE_K + XL.operand_k(sub, lanes, j)
                    assert np.array_equal(start + 4 * sub + j, XL.packed_index(XL.b_column(tile, lanes), kk_, k))


@pytest.mark.parametrize("block_m", XL.BLOCK_MS)
def test_lds_plan_covers_the_tile_once_per_buffer(block_m):
    plan = XL.experts_plan(128, 64, 2, block_m, "gfx942")
    tids = np.arange(XL.THREADS)
    for buf in (0, 1):
        written = {}
        for j in range(plan.a_loads):
            rows = XL.a_load_row(plan, tids, j)
            for t in tids:
                off = int(XL.lds_write_offset(plan, buf, rows[t], XL.a_load_chunk(t)))
                written.setdefault(off, set()).add((int(rows[t]), int(XL.a_load_chunk(t))))
        # each (row, chunk) lands at one offset, all offsets inside this buffer, 16-byte aligned
        assert all(len(v) == 1 for v in written.values())
        assert len(written) == block_m * XL.A_CHUNKS
        lo, hi = buf * plan.lds_buffer_elems, (buf + 1) * plan.lds_buffer_elems
        assert all(lo <= off and off + XL.A_VEC <= hi and off % XL.A_VEC == 0 for off in written)
        # the MFMA reads: lane l of row tile mt reads row mt*16 + l%16, k 16 (l//16) .. +15, inside what was written
        for mt in range(plan.m_tiles):
            for lane in range(XL.WAVE):
                off = XL.lds_read_offset(plan, buf, mt, lane)
                for h in range(2):
                    assert off + 8 * h in written
                    row, chunk = next(iter(written[off + 8 * h]))
                    assert row == mt * 16 + lane % 16 and chunk * XL.A_VEC == XL.operand_k(2 * h, lane, 0)
    assert plan.lds_bytes == 2 * block_m * XL.LDS_ROW * 2


def test_operand_k_order_covers_each_k_once():
    lanes = np.arange(XL.WAVE)
    for c in range(16):
        ks = sorted(int(XL.operand_k(s, g * 16 + c, j)) for g in range(4) for s in range(XL.KSUB) for j in range(4))
        assert ks == list(range(XL.TILE_K))
    assert np.array_equal(XL.operand_k(0, lanes, 0), (lanes // 16) * 16)


def test_supports_declines_with_reasons():
    x = torch.zeros(4, 2880, dtype=torch.bfloat16)
    w13 = torch.zeros(32, 2 * 2880, 2880, dtype=torch.bfloat16, device="meta")
    w2 = torch.zeros(32, 2880, 2880, dtype=torch.bfloat16, device="meta")
    base = dict(hidden=x, w13=w13, w2=w2, top_k=4, block_m=32)
    assert "biases" in supports_experts_sorted(**base, b13=torch.zeros(1))
    assert "w3" in supports_experts_sorted(**base, w3=torch.zeros(1))
    assert "activation" in supports_experts_sorted(**{**base, "activation": "swiglu_oai"})
    assert "interleaved" in supports_experts_sorted(**base, gate_up_interleaved=True)
    assert "dtype" in supports_experts_sorted(**{**base, "hidden": x.float()})
    assert "block_m" in supports_experts_sorted(**{**base, "block_m": 128})
    small = dict(hidden=torch.zeros(4, 96, dtype=torch.bfloat16), w13=torch.zeros(2, 128, 96, dtype=torch.bfloat16),
                 w2=torch.zeros(2, 96, 64, dtype=torch.bfloat16), top_k=1, block_m=16)
    assert "multiple of 64" in supports_experts_sorted(**small)
    # GPT-OSS (2880/2880, E32, k4) with plain silu and no biases: the tiles fit; the CPU device declines
    assert "not an AMD" in supports_experts_sorted(**base)


def test_entry_hands_cpu_calls_to_the_reference():
    from inductor_moe.kernels.flydsl.experts import experts_sorted_flydsl

    x, w13, w2, ids, weights = _case(8, 2, 6, "uniform", 1)
    sorted_out = sort_ref(ids, weights, 8, 16)
    args = (x, *sorted_out, w13, w2, 2, 16, None, None, "silu", False, 1.702, 7.0)
    assert torch.equal(experts_sorted_flydsl(*args), experts_sorted_ref(*args))
