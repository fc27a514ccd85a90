"""The per-family examples in tiny mode (CPU): each runs generate() in graph mode with inductor_moe, agrees
with eager, and reports what was replaced. Qwen3-MoE must have every MoE block replaced; the other families'
matchers are still being written, so for them only the agreement with eager is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from examples import deepseek_v3, gpt_oss, mixtral, qwen3_moe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--new-tokens", "3", "--prompt-len", "6", "--batch", "2", "--repeats", "1", "--quiet"]


def _run(module, tmp_path, *extra):
    out = tmp_path / "result.json"
    rc = module.main([*QUICK, "--variants", "eager,inductor_moe", "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


def _assert_agrees(result, tol=1e-4):
    r = result["variants"]["inductor_moe"]
    assert result["ok"] and r["ok"]
    assert r["first_token_rel_l2"] <= tol and r["prefill_rel_l2"] <= tol
    assert r["tokens_identical"]
    assert r["decode_step_ms"] > 0 and r["tokens_per_s"] > 0


@pytest.mark.parametrize("entry", ["backend", "enable", "both"])
def test_qwen3_moe_every_block_replaced(entry, tmp_path):
    """both: the experts modules call the op (eager prefill) and the compiled decode graph is still fused."""
    rc, result = _run(qwen3_moe, tmp_path, "--entry", entry)
    assert rc == 0
    _assert_agrees(result)
    layers = result["moe_layers"]
    assert layers == 2
    matched = [e for e in result["events"] if e["matched"]]
    fused = {e["module"] for e in matched if e["pattern"] == "moe_fused"}
    assert fused == {f"model.layers.{i}.mlp.experts" for i in range(layers)}
    assert result["rejected"] == [] and all(e["matched"] for e in result["events"])
    assert result["matches"]["moe_fused"] % layers == 0 and result["matches"]["moe_fused"] >= layers


def test_qwen3_moe_experts_entry(tmp_path):
    rc, result = _run(qwen3_moe, tmp_path, "--entry", "experts")
    assert rc == 0
    _assert_agrees(result)
    assert result["events"] == []  # no graph pass: the experts modules call the op


@pytest.mark.parametrize("module", [mixtral, gpt_oss, deepseek_v3], ids=lambda m: m.FAMILY.name)
def test_family_agrees_with_eager(module, tmp_path, capsys):
    rc, result = _run(module, tmp_path)
    assert rc == 0
    _assert_agrees(result)
    assert result["family"] == module.FAMILY.name and result["moe_layers"] >= 1
    # what was replaced is reported either way (zero matches is allowed while the matchers are written)
    assert isinstance(result["matches"], dict)


@pytest.mark.slow  # the experts implementation itself is covered per family by tests/test_hf.py
@pytest.mark.parametrize("module", [mixtral, gpt_oss, deepseek_v3], ids=lambda m: m.FAMILY.name)
def test_family_experts_entry_agrees_with_eager(module, tmp_path):
    rc, result = _run(module, tmp_path, "--entry", "experts")
    assert rc == 0
    _assert_agrees(result)


def test_gpt_oss_both_entry_fuses_every_layer(tmp_path):
    """HF's experts integration calls the op with the biases and the activation spec positionally (GPT-OSS):
    fuse_moe still turns router + experts into one moe op per layer."""
    rc, result = _run(gpt_oss, tmp_path, "--entry", "both")
    assert rc == 0
    _assert_agrees(result)
    fused = {e["module"] for e in result["events"] if e["matched"] and e["pattern"] == "moe_fused"}
    assert fused == {f"model.layers.{i}.mlp.experts" for i in range(result["moe_layers"])}
    assert result["rejected"] == []


def test_a_disagreement_fails(tmp_path, monkeypatch):
    """The exit status and 'ok' really depend on the numbers: perturb the experts op, expect exit 1."""
    from inductor_moe import dispatch

    original = dispatch._REGISTRY[("experts", "reference")]
    monkeypatch.setitem(dispatch._REGISTRY, ("experts", "reference"), original)
    dispatch.register_kernel("experts", "reference", lambda *a: original.fn(*a) * 1.01)
    try:
        rc, result = _run(qwen3_moe, tmp_path, "--entry", "experts", "--new-tokens", "2")
    finally:
        dispatch._REGISTRY[("experts", "reference")] = original
    assert rc == 1 and not result["ok"]


def test_usage_errors():
    with pytest.raises(SystemExit) as e:
        qwen3_moe.main(["--variants", "eager,bogus"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        qwen3_moe.main(["--prompt", "hi"])  # a text prompt needs a checkpoint's tokenizer
    assert e.value.code == 2


def test_checkpoint_round_trip(tmp_path):
    """--checkpoint DIR loads local weights (no download) and runs; a checkpoint of another family is refused."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(**qwen3_moe.FAMILY.tiny)
    torch.manual_seed(0)
    Qwen3MoeForCausalLM(cfg).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "r.json"
    rc = qwen3_moe.main(["--checkpoint", str(tmp_path / "ckpt"), "--variants", "eager", "--json", str(out), *QUICK])
    assert rc == 0 and json.loads(out.read_text())["source"] == "checkpoint"
    with pytest.raises(SystemExit, match="model_type 'qwen3_moe'"):
        mixtral.main(["--checkpoint", str(tmp_path / "ckpt"), *QUICK])


def test_cli_example_and_bench(capsys):
    from inductor_moe.__main__ import main

    assert main(["example"]) == 2  # lists the names
    assert "deepseek_v3" in capsys.readouterr().out
    assert main(["example", "nope"]) == 2
    assert main(["example", "gpt_oss", "--help"]) == 0
    assert "--checkpoint" in capsys.readouterr().out
    assert main(["example", "qwen3_moe", "--variants", "eager", *QUICK]) == 0
    if not torch.cuda.is_available():
        assert main(["bench"]) == 2
        assert "bench_moe_layer.py" in capsys.readouterr().err
    assert main(["bench", "--help"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("script", ["qwen3_moe", "mixtral", "gpt_oss", "deepseek_v3"])
def test_script_default_run(script):
    """The documented command, all three variants (eager, inductor, inductor_moe), in a fresh process."""
    out = subprocess.run([sys.executable, f"examples/{script}.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "agreement with eager" in out.stdout and ": ok;" in out.stdout
    for name in ("eager", "inductor ", "inductor_moe"):
        assert f"\n{name}" in out.stdout


@pytest.mark.slow
def test_qwen3_moe_bf16(tmp_path):
    rc, result = _run(qwen3_moe, tmp_path, "--dtype", "bfloat16")
    assert rc == 0 and result["variants"]["inductor_moe"]["first_token_rel_l2"] <= 3e-2
