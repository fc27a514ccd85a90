"""A tiny Hugging Face Qwen3-MoE on CPU: compile it with the inductor_moe backend, show what was replaced,
check the logits against eager and time a short greedy ``generate()``."""
from __future__ import annotations

import time

import torch


def build_tiny_qwen3_moe(dtype=torch.float32, layers=2, seed=0):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg)
    with torch.no_grad():  # random weights everywhere (HF leaves the router at zeros)
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.to(dtype).eval()


def _tokens_per_s(model, prompt, new_tokens):
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompt, **kwargs)  # warm-up (compiles)
        start = time.perf_counter()
        out = model.generate(prompt, **kwargs)
        elapsed = time.perf_counter() - start
    return out, prompt.shape[0] * new_tokens / elapsed


def run(layers: int = 2, batch: int = 2, prompt_len: int = 8, new_tokens: int = 16) -> int:
    import warnings

    import inductor_moe

    warnings.filterwarnings("ignore", message=".*lru_cache.*")  # transformers' version checks under dynamo
    model = build_tiny_qwen3_moe(layers=layers)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    print(f"tiny Qwen3-MoE: {layers} layers, {model.config.num_experts} experts, top-{model.config.num_experts_per_tok}, "
          f"experts implementation {model.config._experts_implementation!r}")

    inductor_moe.reset_stats()
    compiled = torch.compile(model, backend="inductor_moe")
    with torch.no_grad():
        ref = model(prompt).logits
        got = compiled(prompt).logits
    err = ((got - ref).norm() / ref.norm()).item()

    print("\nreplaced:")
    for e in inductor_moe.events():
        status = "matched" if e["matched"] else f"left as is: {e['reason']}"
        print(f"  {e['module']:<32} {e['pattern']:<22} {status}")
    print(f"\nlogits vs eager: relative L2 = {err:.2e} ({'ok' if err <= 1e-4 else 'MISMATCH'}, bound 1e-4)")

    eager_out, eager_tps = _tokens_per_s(model, prompt, new_tokens)
    forward = model.forward
    model.forward = torch.compile(forward, backend="inductor_moe")
    try:
        moe_out, moe_tps = _tokens_per_s(model, prompt, new_tokens)
    finally:
        model.forward = forward
    same = torch.equal(eager_out, moe_out)
    print(f"generate(): eager {eager_tps:.1f} tok/s, inductor_moe {moe_tps:.1f} tok/s "
          f"(batch {batch}, {new_tokens} new tokens, CPU); greedy tokens identical: {same}")
    print("\nnext: python -m inductor_moe example qwen3_moe   (generate() in graph mode, side by side with "
          "torch.compile and eager; also mixtral, gpt_oss, deepseek_v3)")
    return 0 if err <= 1e-4 and same else 1
