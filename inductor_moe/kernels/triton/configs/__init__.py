"""Tile configurations of the Triton expert GEMMs.

``pick_config(T, k, E, H, I, dtype)`` looks the shape up in ``<device name>.json`` beside this file
(written by ``benchmarks/tune_experts.py``; a device without one borrows a sibling's, ``SIBLINGS``): per "E=..,H=..,I=..,k=..,dtype=.." a list of
{"max_tokens": T, ...config...} entries, the first entry whose max_tokens >= T wins. Unseen shapes and
devices get ``default_config``, a heuristic on the expected rows per expert (T*k/E): small blocks that
stream the weights for decode, large tiles for prefill. No autotuning at run time (it cannot run inside
a captured CUDA graph).
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ExpertsConfig:
    block_m: int  # rows of the sorted layout per program (the sort's block_m)
    n1: int  # stage-1 intermediate columns per program
    k1: int
    warps1: int
    stages1: int
    n2: int  # stage-2 hidden columns per program
    k2: int
    warps2: int
    stages2: int
    group_m: int = 8  # row blocks per group of the grouped program order (both stages)


def default_config(tokens: int, top_k: int, num_experts: int, hidden: int, inter: int) -> ExpertsConfig:
    rows_per_expert = tokens * top_k / max(num_experts, 1)
    if rows_per_expert <= 16:  # decode: weight streaming, many small programs
        return ExpertsConfig(16, 64, 128, 4, 4, 64, 128, 4, 4)
    if rows_per_expert <= 96:
        return ExpertsConfig(32, 64, 64, 4, 4, 64, 64, 4, 4)
    return ExpertsConfig(64, 128, 64, 8, 3, 128, 64, 8, 3)


def shape_key(num_experts, hidden, inter, top_k, dtype) -> str:
    return f"E={num_experts},H={hidden},I={inter},k={top_k},dtype={str(dtype).replace('torch.', '')}"


def device_file(device_name: str) -> Path:
    return _DIR / (device_name.replace(" ", "_") + ".json")


# Devices without a table of their own borrow one of the same architecture (same SM count and tensor cores;
# an H200 differs from an H100 by memory bandwidth and size): better than the untuned heuristic.
SIBLINGS = {"NVIDIA H200": "NVIDIA H100 80GB HBM3", "NVIDIA H100": "NVIDIA H100 80GB HBM3",
            "NVIDIA H100 NVL": "NVIDIA H100 80GB HBM3"}


def table_device(device_name: str) -> str | None:
    """The device whose table ``device_name`` uses: its own, else its sibling's (``SIBLINGS``), else None."""
    for name in (device_name, SIBLINGS.get(device_name)):
        if name is not None and device_file(name).exists():
            return name
    return None


@functools.lru_cache(None)
def _table(device_name: str) -> dict:
    name = table_device(device_name)
    return json.loads(device_file(name).read_text()) if name else {}


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def decode_key(num_experts, hidden, inter, top_k, dtype, w13_k_contiguous=True, w2_k_contiguous=True) -> str:
    """Table key of the decode tiles: the shape key, "/decode/", and the layout of w13 and w2 ("k": the
    reduction axis is contiguous, HF's usual storage; "n": transposed, GPT-OSS's), e.g. ".../decode/kk"."""
    layout = ("k" if w13_k_contiguous else "n") + ("k" if w2_k_contiguous else "n")
    return f"{shape_key(num_experts, hidden, inter, top_k, dtype)}/decode/{layout}"


def pick_decode_tiles(key: str) -> dict | None:
    """Tuned (BLOCK_N, BLOCK_K, num_warps) of the decode kernels, {"up": (...), "down": (...)}, or None (then
    ``decode.tiles_for`` picks by layout)."""
    entry = _table(_device_name()).get(key)
    return {k: tuple(v) for k, v in entry.items() if k in ("up", "down")} if entry else None


def pick_config(tokens, top_k, num_experts, hidden, inter, dtype, block_m: int | None = None) -> ExpertsConfig:
    entries = _table(_device_name()).get(shape_key(num_experts, hidden, inter, top_k, dtype), [])
    config = next((ExpertsConfig(**{k: v for k, v in e.items() if k not in ("max_tokens", "us")})
                   for e in entries if tokens <= e["max_tokens"]), None)
    config = config or default_config(tokens, top_k, num_experts, hidden, inter)
    if block_m is not None and block_m != config.block_m:  # experts_sorted: the caller fixed block_m
        config = ExpertsConfig(**{**asdict(config), "block_m": block_m})
    return config
