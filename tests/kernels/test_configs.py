"""The Triton expert-GEMM config table: lookup by device and shape, bucket by T, default elsewhere."""
import json

import torch

from inductor_moe.kernels.triton import configs


def test_default_config_by_rows_per_expert(monkeypatch):
    monkeypatch.setattr(configs, "_device_name", lambda: "No Such GPU")  # the H100 has a tuned table
    configs._table.cache_clear()
    decode = configs.default_config(1, 8, 128, 2048, 768)
    prefill = configs.default_config(16384, 8, 128, 2048, 768)
    assert decode.block_m == 16 and prefill.block_m >= 64
    try:
        assert configs.pick_config(1, 8, 128, 2048, 768, torch.bfloat16) == decode  # no table for this device
    finally:
        configs._table.cache_clear()


def test_table_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "_DIR", tmp_path)
    monkeypatch.setattr(configs, "_device_name", lambda: "Fake GPU")
    configs._table.cache_clear()
    key = configs.shape_key(128, 2048, 768, 8, torch.bfloat16)
    small = {"max_tokens": 8, "block_m": 16, "n1": 32, "k1": 128, "warps1": 4, "stages1": 4, "n2": 32, "k2": 128,
             "warps2": 4, "stages2": 4, "us": 30.0}
    large = {**small, "max_tokens": 4096, "block_m": 64, "n1": 128}
    (tmp_path / "Fake_GPU.json").write_text(json.dumps({key: [small, large]}))
    try:
        assert configs.pick_config(5, 8, 128, 2048, 768, torch.bfloat16).n1 == 32
        assert configs.pick_config(100, 8, 128, 2048, 768, torch.bfloat16).block_m == 64
        # past the last bucket, and for other shapes: the default
        assert configs.pick_config(9000, 8, 128, 2048, 768, torch.bfloat16) == configs.default_config(9000, 8, 128, 2048, 768)
        assert configs.pick_config(5, 8, 64, 2048, 768, torch.bfloat16) == configs.default_config(5, 8, 64, 2048, 768)
        # experts_sorted fixes block_m: the table's tiles are kept, the block size is the caller's
        assert configs.pick_config(5, 8, 128, 2048, 768, torch.bfloat16, block_m=32).block_m == 32
    finally:
        configs._table.cache_clear()


def test_sibling_device_borrows_table(tmp_path, monkeypatch):
    """An H200 (no table of its own) uses the H100's tuned table; its own table wins once it exists."""
    monkeypatch.setattr(configs, "_DIR", tmp_path)
    key = configs.shape_key(128, 2048, 768, 8, torch.bfloat16)
    entry = {"max_tokens": 8, "block_m": 16, "n1": 32, "k1": 128, "warps1": 4, "stages1": 4, "n2": 32, "k2": 128,
             "warps2": 4, "stages2": 4}
    (tmp_path / "NVIDIA_H100_80GB_HBM3.json").write_text(json.dumps({key: [entry]}))
    monkeypatch.setattr(configs, "_device_name", lambda: "NVIDIA H200")
    configs._table.cache_clear()
    try:
        assert configs.table_device("NVIDIA H200") == "NVIDIA H100 80GB HBM3"
        assert configs.pick_config(1, 8, 128, 2048, 768, torch.bfloat16).n1 == 32
        (tmp_path / "NVIDIA_H200.json").write_text(json.dumps({key: [{**entry, "n1": 64}]}))
        configs._table.cache_clear()
        assert configs.table_device("NVIDIA H200") == "NVIDIA H200"
        assert configs.pick_config(1, 8, 128, 2048, 768, torch.bfloat16).n1 == 64
        assert configs.table_device("No Such GPU") is None
    finally:
        configs._table.cache_clear()
