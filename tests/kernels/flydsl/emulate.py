"""NumPy emulation of the FlyDSL router kernel (inductor_moe/kernels/flydsl/route.py), lane by lane.

Built on the same ``layout`` functions as the kernel builder: the thread -> (token, lane) map of every
workgroup of the grid, each lane's slots (``slot_expert`` / ``chunk_bound``: padding slots hold
KEY_EMPTY / -inf), the order key, the lane argmax in slot order with a strict ``>``, the butterfly over
``layout.steps`` with ``butterfly_partner`` (row_half_mirror's partner at distance 4, not the XOR one),
the (larger key, lower expert) combine, retiring the winner, and the f32 weight arithmetic in the kernel's
order of operations. It needs neither FlyDSL nor a GPU.
"""
import numpy as np
import torch

from inductor_moe.kernels.flydsl import layout as L
from inductor_moe.kernels.flydsl.route import LOG2E, SIGMOID_RENORM_EPS, TORCH_DTYPES, kernel_mode

F32 = np.float32


def _keys(bits: np.ndarray) -> np.ndarray:
    """layout.float_key, vectorized over int32 bit patterns."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _argmax2(ka, ia, kb, ib):
    take_b = (kb > ka) | ((kb == ka) & (ib < ia))
    return np.where(take_b, kb, ka), np.where(take_b, ib, ia)


def _butterfly(lay, values, combine):
    """values [..., TPT] (one per lane of a token) -> every lane's result after the butterfly."""
    lanes = np.arange(lay.tpt)
    for distance, _step in lay.steps:
        partner = np.array([L.butterfly_partner(int(lane), distance) for lane in lanes])
        assert partner.min() >= 0 and partner.max() < lay.tpt, "a butterfly step left the token's lanes"
        values = combine(values, tuple(v[..., partner] for v in values))
    return values


def _workgroup_rows(lay, num_tokens):
    """Run the grid's thread map: the row each (token, lane) reads and which threads store. Returns the
    [T] row index a token's lanes read (checked consistent) after checking every token is served by
    exactly TPT lanes, lane 0 of them storing."""
    groups = L.grid_size(num_tokens, lay.num_experts, lay.dtype, lay.wave, lay.block_threads)
    served = np.zeros((num_tokens, lay.tpt), dtype=np.int64)
    for block in range(groups):
        for tid in range(lay.block_threads):
            token, lane = L.thread_coords(tid, block, lay.num_experts, lay.dtype, lay.wave, lay.block_threads)
            row = min(token, num_tokens - 1)
            assert 0 <= row < num_tokens
            if token < num_tokens:
                served[token, lane] += 1
    assert (served == 1).all(), "the grid must give every token exactly one thread per lane"
    return np.arange(num_tokens)


def emulate_route(logits: torch.Tensor, top_k: int, scoring="softmax", renormalize=True,
                  order="softmax_then_topk", scaling=1.0, arch="gfx942", block_threads=L.DEFAULT_BLOCK_THREADS):
    """(weights [T, k] f32, ids [T, k] int32) as the kernel computes them."""
    mode = kernel_mode(scoring, renormalize, order)
    dtype = TORCH_DTYPES[logits.dtype]
    num_tokens, num_experts = logits.shape
    lay = L.route_layout(num_experts, top_k, dtype, arch, block_threads)
    rows = _workgroup_rows(lay, num_tokens)
    bits = logits.float().contiguous().view(torch.int32).numpy()[rows]  # bf16/f16 -> f32 is exact

    # 1. slots of each lane: [TPT, VPT] expert, validity from the chunk bounds
    expert = np.array([[L.slot_expert(lane, s, num_experts, dtype, lay.wave) for s in range(lay.vpt)]
                       for lane in range(lay.tpt)])
    valid = np.array([[lane < L.chunk_bound(s // lay.vec, num_experts, dtype, lay.wave) for s in range(lay.vpt)]
                      for lane in range(lay.tpt)])
    assert ((expert < num_experts) == valid).all()
    assert sorted(expert[valid].tolist()) == list(range(num_experts)), "slots must cover each expert once"
    safe = np.where(valid, expert, 0)
    slot_bits = bits[:, safe]  # [T, TPT, VPT]
    keys = np.where(valid, _keys(slot_bits), L.KEY_EMPTY).astype(np.int32)
    xs = np.where(valid, slot_bits.view(F32), F32(-np.inf)).astype(F32)

    # 2. top-k rounds
    win_keys, win_ids = [], []
    for _ in range(top_k):
        best_key = keys[..., 0].copy()
        best_id = np.broadcast_to(expert[:, 0], best_key.shape).copy()
        for s in range(1, lay.vpt):
            better = keys[..., s] > best_key
            best_key = np.where(better, keys[..., s], best_key)
            best_id = np.where(better, expert[:, s], best_id)
        win_key, win_id = _butterfly(lay, (best_key, best_id), lambda a, b: _argmax2(a[0], a[1], b[0], b[1]))
        assert (win_key == win_key[:, :1]).all() and (win_id == win_id[:, :1]).all(), "lanes disagree"
        win_keys.append(win_key[:, 0])
        win_ids.append(win_id[:, 0])
        keys = np.where(expert[None] == win_id[..., None], L.KEY_EMPTY, keys).astype(np.int32)

    # 3. weights (f32, the kernel's order of operations)
    vals = [_keys(k).view(F32) for k in win_keys]
    log2e = F32(LOG2E)
    if mode in ("softmax_renorm", "softmax_full"):
        top = vals[0]
        exps = [np.ones_like(top)] + [np.exp2((v - top) * log2e) for v in vals[1:]]
        if mode == "softmax_renorm":
            denom = exps[0]
            for e in exps[1:]:
                denom = denom + e
        else:
            part = np.zeros(xs.shape[:2], F32)
            for s in range(lay.vpt):
                part = part + np.exp2((xs[..., s] - top[:, None]) * log2e)
            (summed,) = _butterfly(lay, (part,), lambda a, b: (a[0] + b[0],))
            assert (summed == summed[:, :1]).all()
            denom = summed[:, 0]
        scale = F32(scaling) * (F32(1) / denom)
        outs = [e * scale for e in exps]
    else:
        sig = [F32(1) / (np.exp2(v * -log2e) + F32(1)) for v in vals]
        if mode == "sigmoid_renorm":
            denom = sig[0]
            for s_ in sig[1:]:
                denom = denom + s_
            scale = F32(scaling) * (F32(1) / (denom + F32(SIGMOID_RENORM_EPS)))
        else:
            scale = F32(scaling)
        outs = [s_ * scale for s_ in sig]
    weights = np.stack(outs, axis=1).astype(F32)
    ids = np.stack(win_ids, axis=1).astype(np.int32)
    return torch.from_numpy(weights), torch.from_numpy(ids)
