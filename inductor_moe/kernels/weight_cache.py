"""Weights packed once into a kernel's preferred layout, cached by the weight's identity and version.

Some kernels want expert weights in another layout than the model keeps them (FlyDSL's MFMA preshuffle,
MXFP4 repacking). Packing runs once per *weight version*, never per call:

    packed = weight_cache.get(w13, "flydsl.preshuffle.gfx942", lambda w: preshuffle(w))

The key is the weight's storage (a weak reference to the storage object, so an alias or view of a
parameter that the compiled graph receives hits the same entry as the parameter itself), its view
geometry (offset, shape, strides, dtype) and the ``kind`` string naming the layout. An entry is valid
while

- the storage is alive: entries whose source storage was freed are dropped on the next ``get`` (and by
  :func:`sweep`), so a freed model leaves no packed copies behind;
- the weight's version counter is unchanged: an in-place update (``copy_``, ``load_state_dict``,
  optimizer steps) bumps ``tensor._version``, and the next ``get`` packs again.

CUDA graphs: a replay reads the packed copy that existed at capture and runs no Python, so an in-place
weight update *after capture* is not seen by the replay. Re-capture after updating weights
(``torch.compiler.reset()`` or a fresh ``torch.compile``), or use a kernel that needs no packing (the Triton
kernels read the model's weights directly, through their strides, and need none).

Counters (``stats()``): hits, packs (misses + version changes), and entries / bytes held.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

__all__ = ["clear", "get", "stats", "sweep"]


@dataclass
class _Entry:
    ref: StorageWeakRef
    version: int
    value: Any


_lock = threading.Lock()
_entries: dict[tuple, _Entry] = {}
_counts = {"hits": 0, "packs": 0, "invalidated": 0, "freed": 0}


def _key(weight: torch.Tensor, kind: str) -> tuple[tuple, StorageWeakRef]:
    ref = StorageWeakRef(weight.untyped_storage())
    geometry = (weight.storage_offset(), tuple(weight.shape), tuple(weight.stride()), weight.dtype, weight.device)
    return (ref.cdata, geometry, kind), ref


def get(weight: torch.Tensor, kind: str, pack: Callable[[torch.Tensor], Any]) -> Any:
    """The packed form of ``weight`` for layout ``kind``: ``pack(weight)`` on the first call and after
    every in-place change of ``weight``; the cached value otherwise."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight_cache.get: weight must be a torch.Tensor, got {type(weight).__name__}")
    if not isinstance(kind, str) or not kind:
        raise ValueError("weight_cache.get: kind must be a non-empty string naming the packed layout")
    key, ref = _key(weight, kind)
    version = weight._version
    with _lock:
        _sweep_locked()
        entry = _entries.get(key)
        if entry is not None and entry.version == version:
            _counts["hits"] += 1
            return entry.value
        if entry is not None:
            _counts["invalidated"] += 1
    with torch.no_grad():
        value = pack(weight)
    with _lock:
        _entries[key] = _Entry(ref, version, value)
        _counts["packs"] += 1
    return value


def _sweep_locked() -> None:
    dead = [k for k, e in _entries.items() if e.ref.expired()]
    for k in dead:
        del _entries[k]
    _counts["freed"] += len(dead)


def sweep() -> int:
    """Drop the entries whose source weight was freed; returns how many were dropped."""
    with _lock:
        before = len(_entries)
        _sweep_locked()
        return before - len(_entries)


def clear() -> None:
    """Drop every packed weight (e.g. after loading new weights into a captured model)."""
    with _lock:
        _entries.clear()


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def stats() -> dict[str, int]:
    """Cache counters and what it holds now."""
    with _lock:
        return {**_counts, "entries": len(_entries), "bytes": sum(_nbytes(e.value) for e in _entries.values())}
