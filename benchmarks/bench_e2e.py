"""End-to-end generate() on a GPU: tokens/s, prefill time and time per decode step of a wrapped HF MoE model
(random weights at the published widths, --layers of them) in eager, plain torch.compile and torch.compile
with inductor_moe, in the same run. Each (model, batch) runs the family example (examples/<family>.py,
graph mode: static cache, CompileConfig with mode="reduce-overhead") in its own process and appends its
JSON to --out; rows already there are skipped (resumable, one device call of <= 9 minutes at a time).

Usage (GPU machine):
    python3 benchmarks/bench_e2e.py --models qwen3_moe,gpt_oss --batches 1,8,64 --layers 8 \
        --prompt-len 512 --new-tokens 64 --out e2e.json --budget-s 480
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(model, batch, args):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.join(ROOT, "examples", f"{model}.py"), "--layers", str(args.layers),
           "--batch", str(batch), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
           "--repeats", str(args.repeats), "--variants", args.variants, "--progress", "off", "--json", path, *args.extra.split()]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
    print(proc.stdout[-2500:], flush=True)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        print(proc.stderr[-3000:], flush=True)
        return {"model": model, "batch": batch, "error": f"exit {proc.returncode}", "wall_s": time.time() - t0}
    row = json.load(open(path))
    os.remove(path)
    row.update(model=model, wall_s=time.time() - t0, prompt_len=args.prompt_len, new_tokens=args.new_tokens)
    if args.extra:
        row["extra"] = args.extra
    return row


def summary(row):
    v = row.get("variants", {})
    if "inductor" not in v or "inductor_moe" not in v:
        return f"{row['model']} batch {row['batch']}: {row.get('error', 'incomplete')}"
    base, ours = v["inductor"], v["inductor_moe"]
    return (f"{row['model']} batch {row['batch']} prompt {row.get('prompt_len', 512)}{' ' + row['extra'] if row.get('extra') else ''}: decode {ours['decode_step_ms']:.2f} ms/step vs plain compile "
            f"{base['decode_step_ms']:.2f} ({base['decode_step_ms'] / ours['decode_step_ms']:.2f}x), prefill "
            f"{ours['prefill_ms']:.1f} vs {base['prefill_ms']:.1f} ms, tok/s {ours['tokens_per_s']:.0f} vs "
            f"{base['tokens_per_s']:.0f}, eager {v['eager']['decode_step_ms']:.2f} ms/step; agreement "
            f"{'ok' if row.get('ok') else 'MISMATCH'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="qwen3_moe,gpt_oss")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", default="eager,inductor,inductor_moe")
    p.add_argument("--extra", default="", help="more example arguments, e.g. '--size tiny' (a CPU dry run)")
    p.add_argument("--out", default="bench_e2e.json")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--timeout-s", type=float, default=420)
    args = p.parse_args()
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    key = lambda r: (r["model"], r["batch"], r.get("prompt_len", 512), r.get("new_tokens", 64),  # noqa: E731
                     r.get("extra", ""))
    done = {key(r) for r in rows if "error" not in r}
    rows = [r for r in rows if "error" not in r]
    end = time.time() + args.budget_s
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            if (model, batch, args.prompt_len, args.new_tokens, args.extra) in done:
                continue
            if time.time() > end:
                print(f"budget spent: {model} batch {batch} left for the next call")
                continue
            try:
                row = run_one(model, batch, args)
            except subprocess.TimeoutExpired:
                row = {"model": model, "batch": batch, "error": "timeout"}
            rows.append(row)
            json.dump(rows, open(args.out, "w"), indent=1, default=str)
            print(summary(row), flush=True)
    for r in rows:
        print(summary(r))


if __name__ == "__main__":
    main()
