"""The one place that picks a kernel family for an op call: reference, Triton or FlyDSL.

Choice, per call, from the device, the dtype and what each family has registered:
- CUDA (NVIDIA): Triton, else reference.
- ROCm gfx942/gfx950: FlyDSL, else Triton, else reference.
- anything else (CPU, ...): reference.
A family that declines a call (its ``supports`` predicate returns a reason) is skipped, and the reason is
recorded in ``inductor_moe.stats()["fallbacks"]``. A kernel function without a ``w3`` parameter declines the
experts ops' calls with separate up weights (reason "separate w3 not supported"); ``call`` passes ``w3``
by keyword only when it is given. ``force_backend("reference")`` (a context manager, or
``INDUCTOR_MOE_BACKEND=reference`` in the environment) overrides the choice, for tests and debugging.
The choice is plain Python at call time: under CUDA graphs it is made once, at capture.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from . import stats as _stats

BACKENDS = ("flydsl", "triton", "reference")


@dataclass
class KernelEntry:
    # a callable, or "package.module:function" imported on first use (so importing inductor_moe does not
    # import Triton or FlyDSL kernels; TRITON_INTERPRET is read when a kernel module is imported)
    fn: Callable | str
    # returns None when the family takes the call, else a short reason it declines
    supports: Callable[..., str | None] | str | None = None
    # False until the kernel has passed tools/gpu_check.py on a real GPU: such a kernel runs only when
    # forced (force_backend / INDUCTOR_MOE_BACKEND) or with INDUCTOR_MOE_UNVERIFIED=1
    verified: bool = True

    def resolve(self) -> "KernelEntry":
        if isinstance(self.fn, str):
            self.fn = _load(self.fn)
        if isinstance(self.supports, str):
            self.supports = _load(self.supports)
        return self


def _load(path: str) -> Callable:
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


_REGISTRY: dict[tuple[str, str], KernelEntry] = {}
_local = threading.local()


def register_kernel(op: str, backend: str, fn: Callable | str, supports: Callable[..., str | None] | str | None = None,
                    verified: bool = True):
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; expected one of {BACKENDS}")
    _REGISTRY[(op, backend)] = KernelEntry(fn, supports, verified)


def registered(op: str) -> list[str]:
    return [b for b in BACKENDS if (op, b) in _REGISTRY]


@contextlib.contextmanager
def force_backend(backend: str | None):
    """Run every op call inside the block on ``backend`` (None restores automatic choice)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; expected one of {BACKENDS}")
    previous = getattr(_local, "forced", None)
    _local.forced = backend
    try:
        yield
    finally:
        _local.forced = previous


def forced_backend() -> str | None:
    forced = getattr(_local, "forced", None)
    return forced if forced is not None else os.environ.get("INDUCTOR_MOE_BACKEND") or None


def _is_amd_instinct(device: torch.device) -> bool:
    if device.type != "cuda" or torch.version.hip is None:
        return False
    arch = torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
    return arch in ("gfx942", "gfx950")


def preference(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        if _is_amd_instinct(device):
            return ("flydsl", "triton", "reference")
        return ("triton", "reference")
    return ("reference",)


def takes_w3(fn: Callable) -> bool:
    """Whether a kernel function takes the experts ops' optional ``w3`` (separate up weights) argument."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "w3" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def call(kernel: Callable, args: tuple, w3=None):
    """Call a kernel with an op's positional arguments; ``w3`` (experts ops) goes by keyword, and only when
    given, so kernel functions written before it existed keep working (``select`` keeps w3 calls away
    from them)."""
    return kernel(*args) if w3 is None else kernel(*args, w3=w3)


def select(op: str, device: torch.device, **call_info) -> tuple[str, Callable]:
    """Return (backend name, kernel) for ``op`` on ``device``; ``call_info`` goes to ``supports``."""
    forced = forced_backend()
    order = (forced,) if forced else preference(device)
    for backend in order:
        entry = _REGISTRY.get((op, backend))
        if entry is None:
            if backend != "reference" and not forced:
                _stats.record_fallback(op, f"{backend}: no kernel for {op}")
            continue
        if not entry.verified and not forced and os.environ.get("INDUCTOR_MOE_UNVERIFIED") != "1":
            _stats.record_fallback(op, f"{backend}: kernel not yet verified on a GPU (INDUCTOR_MOE_UNVERIFIED=1 to use)")
            continue
        entry.resolve()
        reason = None
        if call_info.get("w3") is not None and not takes_w3(entry.fn):
            reason = "separate w3 not supported"
        if reason is None and entry.supports is not None:
            reason = entry.supports(**call_info)
        if reason is None:
            return backend, entry.fn
        _stats.record_fallback(op, f"{backend}: {reason}")
    if forced and forced != "reference":
        raise RuntimeError(f"INDUCTOR_MOE_BACKEND / force_backend: {forced!r} cannot run {op} here")
    return "reference", _REGISTRY[(op, "reference")].resolve().fn
