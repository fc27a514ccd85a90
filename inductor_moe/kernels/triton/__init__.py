"""Triton kernels: router (``route``), moe_sorting (``sort``), both in one launch (``route_sort``) and the
two-stage expert GEMMs (``experts``).

Importing this package imports neither Triton nor a kernel module (``TRITON_INTERPRET`` is read when a
kernel module is first imported): ``register()`` names the kernels by "module:function" strings that the
dispatch imports on first use, and the ``supports_*`` predicates below need only torch.
"""
from __future__ import annotations

import os

import torch

from .limits import MAX_EXPERTS, MAX_OFFSET, MAX_TOP_K

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device_reason(t: torch.Tensor) -> str | None:
    if t.device.type == "cuda":
        return None
    if t.device.type == "cpu" and interpreting():
        from ...dispatch import forced_backend

        if forced_backend() == "triton":  # tests: the interpreter on CPU tensors, only when asked for
            return None
    return f"{t.device.type} tensor (Triton runs CUDA tensors; CPU ones only under TRITON_INTERPRET=1 when forced)"


def _route_reason(logits, top_k) -> str | None:
    reason = _device_reason(logits)
    if reason:
        return reason
    if logits.dtype not in _FLOATS:
        return f"logits dtype {logits.dtype}"
    if logits.shape[1] > MAX_EXPERTS:
        return f"num_experts={logits.shape[1]} > {MAX_EXPERTS}"
    if top_k > MAX_TOP_K:
        return f"top_k={top_k} > {MAX_TOP_K}"
    return None


def _layout_reason(tokens, top_k, num_experts, block_m) -> str | None:
    if num_experts > MAX_EXPERTS:
        return f"num_experts={num_experts} > {MAX_EXPERTS}"
    if tokens * top_k + num_experts * block_m > MAX_OFFSET:
        return "sorted layout too long for int32 offsets"
    return None


def supports_route(logits=None, top_k=None, **_) -> str | None:
    return _route_reason(logits, top_k)


def supports_sort(ids=None, num_experts=None, block_m=None, **_) -> str | None:
    return _device_reason(ids) or _layout_reason(ids.shape[0], ids.shape[1], num_experts, block_m)


def supports_route_sort(logits=None, top_k=None, block_m=None, **_) -> str | None:
    # batches too big for the one-launch kernel run route + sort inside route_sort_triton: no reason here
    return _route_reason(logits, top_k) or _layout_reason(logits.shape[0], top_k, logits.shape[1], block_m)


def register(verified: bool = False) -> None:
    """Register the Triton route, sort and route_sort kernels with ``inductor_moe.dispatch`` (imported on
    first use). ``verified=False`` (the default for a kernel not yet through tools/gpu_check.py on a GPU)
    keeps them opt-in: force_backend("triton") or INDUCTOR_MOE_UNVERIFIED=1; the package registers them
    verified (251/251 gpu_check cases on an H100)."""
    from ... import dispatch

    for op, module, fn in (
        ("route", "route", "route_triton"),
        ("sort", "sort", "sort_triton"),
        ("route_sort", "route_sort", "route_sort_triton"),
    ):
        dispatch.register_kernel(op, "triton", f"{__name__}.{module}:{fn}", f"{__name__}:supports_{op}",
                                 verified=verified)


__all__ = ["register", "supports_route", "supports_sort", "supports_route_sort", "interpreting"]
