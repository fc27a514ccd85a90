"""The decode path of the Triton ``moe`` (kernels/triton/decode.py) against ``moe_ref``: every router kind,
activation and weight layout, f32 and bf16 (no tl.dot inside, so bf16 is exact under the interpreter too),
and the choice between it and the sorted path."""
import pytest
import torch

pytest.importorskip("triton")

from inductor_moe.kernels.triton.decode import moe_decode_triton, tiles_for, use_decode  # noqa: E402
from inductor_moe.ops.moe import moe_ref  # noqa: E402

from .routing_cases import DEVICE, logits_for, mode_kwargs  # noqa: E402

ROUTE_DEFAULTS = dict(scoring="softmax", renormalize=True, order="softmax_then_topk", correction_bias=None,
                      n_group=1, topk_group=1, scaling=1.0)


def _route_args(mode, experts):
    kw = {**ROUTE_DEFAULTS, **(mode_kwargs(mode, experts) if mode != "group" else dict(
        scoring="sigmoid", correction_bias=mode_kwargs("sigmoid_bias", experts)["correction_bias"], n_group=4,
        topk_group=2, scaling=2.5))}
    return tuple(kw[k] for k in ROUTE_DEFAULTS)


def _weights(E, H, I, dtype, bias, transposed, seed=0):
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(E, 2 * I, H, generator=g) * 0.1
    w2 = torch.randn(E, H, I, generator=g) * 0.1
    if transposed:  # GPT-OSS storage [E, H, 2I] / [E, I, H], passed as strided views
        w13, w2 = w13.transpose(1, 2).contiguous().transpose(1, 2), w2.transpose(1, 2).contiguous().transpose(1, 2)
    b13 = torch.randn(E, 2 * I, generator=g) * 0.1 if bias else None
    b2 = torch.randn(E, H, generator=g) * 0.1 if bias else None
    return [t.to(dtype).to(DEVICE) if t is not None else None for t in (w13, w2, b13, b2)]


def _err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("mode", ["softmax", "softmax_raw", "sigmoid_bias", "topk_softmax", "group"])
@pytest.mark.parametrize("activation,interleaved,bias,transposed", [
    ("silu", False, False, False), ("gelu", False, True, False), ("swiglu_oai", True, True, True),
])
@pytest.mark.parametrize("T", [1, 3])
def test_decode_matches_reference_f32(mode, activation, interleaved, bias, transposed, T):
    E, k, H, I = 16, 4, 48, 40  # H, I not multiples of the tiles: masked edges
    w13, w2, b13, b2 = _weights(E, H, I, torch.float32, bias, transposed)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    logits = logits_for(T, E)
    args = (x, logits, w13, w2, k, b13, b2, *_route_args(mode, E), activation, interleaved, 1.702, 7.0)
    got = moe_decode_triton(*args, tiles1=(16, 32, 4), tiles2=(16, 32, 4))
    assert _err(got, moe_ref(*args)) < 1e-5


@pytest.mark.parametrize("tiles", [None, (8, 64, 2), (32, 16, 4)])
def test_decode_bf16_and_tiles(tiles):
    T, E, k, H, I = 2, 12, 3, 64, 24
    w13, w2, _, _ = _weights(E, H, I, torch.bfloat16, False, False, seed=3)
    x = torch.randn(T, H).to(torch.bfloat16).to(DEVICE)
    logits = logits_for(T, E, seed=4)
    args = (x, logits, w13, w2, k, None, None, *ROUTE_DEFAULTS.values(), "silu", False, 1.702, 7.0)
    got = moe_decode_triton(*args, tiles1=tiles, tiles2=tiles)
    assert got.dtype == torch.bfloat16 and _err(got, moe_ref(*args)) < 1e-2


def test_decode_zero_tokens():
    w13, w2, _, _ = _weights(4, 16, 8, torch.float32, False, False)
    x = torch.zeros(0, 16, device=DEVICE)
    out = moe_decode_triton(x, torch.zeros(0, 4, device=DEVICE), w13, w2, 2, None, None,
                            *ROUTE_DEFAULTS.values(), "silu", False, 1.702, 7.0)
    assert out.shape == (0, 16)


def test_use_decode_and_tiles():
    assert use_decode(1, 8, 128) and use_decode(3, 8, 128) and not use_decode(4, 8, 128)
    assert use_decode(1, 2, 8) and not use_decode(2, 2, 8) and not use_decode(0, 2, 8)
    w = torch.empty(2, 8, 32)
    assert tiles_for(w)[1] > tiles_for(w.transpose(1, 2).contiguous().transpose(1, 2))[1]  # K-contiguous: long K


def test_moe_triton_takes_the_decode_path(monkeypatch):
    from inductor_moe.kernels.triton import decode, experts

    calls = []
    monkeypatch.setattr(decode, "moe_decode_triton", lambda *a, **k: calls.append(a[0].shape[0]) or a[0])
    w13, w2, _, _ = _weights(16, 16, 16, torch.float32, False, False)
    import inductor_moe

    for T in (1, 9):
        x = torch.randn(T, 16).to(DEVICE)
        with inductor_moe.force_backend("triton"):  # CPU tensors reach Triton (the interpreter) only when forced
            experts.moe_triton(x, logits_for(T, 16), w13, w2, 2, None, None, *ROUTE_DEFAULTS.values(), "silu",
                               False, 1.702, 7.0)
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("T", [1, 3])
def test_decode_separate_w3(dtype, T):
    """Separate gate (w13 [E, I, H]) and up (w3 [E, I, H], here a strided view) weights: the same as the
    fused [gate | up] w13."""
    E, k, H, I = 16, 4, 48, 40
    w13, w2, b13, b2 = _weights(E, H, I, dtype, True, False, seed=5)
    w1 = w13[:, :I].contiguous()
    w3 = w13[:, I:].transpose(1, 2).contiguous().transpose(1, 2)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(6)).to(dtype).to(DEVICE)
    logits = logits_for(T, E)
    route = (*ROUTE_DEFAULTS.values(), "silu", False, 1.702, 7.0)
    got = moe_decode_triton(x, logits, w1, w2, k, b13, b2, *route, tiles1=(16, 32, 4), tiles2=(16, 32, 4), w3=w3)
    want = moe_ref(x, logits, w13, w2, k, b13, b2, *route)
    assert _err(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)
