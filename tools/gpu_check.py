"""GPU correctness of the inductor_moe ops on the dispatch's CUDA path (the Triton kernels) against an
independent f32 per-expert loop, over the production (E, top_k) set at H/I = 2048/768 and the layers of
design.md section 4 at their real size (GPT-OSS: interleaved clamped SwiGLU with biases, transposed
storage), token counts 1..16384, routing skews (uniform, a few hot experts, every token to one expert) and
router kinds (softmax-topk-renorm everywhere, topk-then-softmax on every other pair, DeepSeek-style
group-limited sigmoid with correction bias where E divides into 8 groups).

Per row: ``moe`` (decode or sorted path, by T) vs the loop over the router's own ids; ``route`` ids vs
``route_ref`` (as sets per row, >= 99.9% of rows equal: near-ties
may swap; weights compared on the rows that agree); ``experts`` vs the loop on the same ids.
Resumable: rows already in --out are skipped. Usage (device machine):
    python3 tools/gpu_check.py [--quick] [--out results.json] [--budget-s 240]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import inductor_moe  # noqa: E402
from inductor_moe.kernels.reference import route_ref  # noqa: E402

PAIRS = [(8, 2), (16, 1), (32, 4), (60, 4), (64, 6), (64, 8), (128, 4), (128, 8), (160, 8), (256, 8), (257, 9),
         (384, 8), (512, 10)]
LAYERS = {  # design.md section 4 at full size: (E, k, H, I, activation)
    "gpt_oss": (32, 4, 2880, 2880, "swiglu_oai"),
    "mixtral": (8, 2, 4096, 14336, "silu"),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a dry run of the script on the reference path
TOKENS = [1, 2, 7, 16, 33, 128, 1000, 4096, 16384]
ROUTERS = {
    "softmax": dict(),
    "topk_softmax": dict(order="topk_then_softmax", renormalize=False),
    "group_sigmoid": dict(scoring="sigmoid", n_group=8, topk_group=4, scaling=2.5),
}


def loop_reference(x, ids, weights, w13, w2, b13=None, b2=None, activation="silu", interleaved=False):
    """out[t] = sum_j w[t,j] * (act(x w13[e]^T + b13) w2[e]^T + b2), per expert with boolean masks, f32."""
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    xf = x.float()
    for e in torch.unique(ids).tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = xf[tok] @ w13[e].float().t()
        if b13 is not None:
            h = h + b13[e].float()
        g, u = (h[:, 0::2], h[:, 1::2]) if interleaved else h.chunk(2, dim=-1)
        if activation == "swiglu_oai":
            g, u = g.clamp(max=7.0), u.clamp(-7.0, 7.0)
            y = g * torch.sigmoid(1.702 * g) * (u + 1)
        else:
            y = F.silu(g) * u
        y = y @ w2[e].float().t()
        if b2 is not None:
            y = y + b2[e].float()
        out.index_add_(0, tok, y * weights[tok, slot, None].float())
    return out


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def logits_for(kind, T, E, gen):
    if kind == "uniform":
        return torch.randn(T, E, device=DEVICE, generator=gen)
    if kind == "skewed":  # a few hot experts
        bias = torch.zeros(E, device=DEVICE)
        bias[: max(1, E // 16)] = 4.0
        return torch.randn(T, E, device=DEVICE, generator=gen) + bias
    logits = torch.full((T, E), -10.0, device=DEVICE)  # every token to expert 0 first
    logits[:, 0] = 10.0
    return logits + torch.rand(T, E, device=DEVICE, generator=gen) * 0.1


def cases(quick):
    """(name, E, k, H, I, activation, T, routing skew, router kind)."""
    pairs = PAIRS[::3] if quick else PAIRS
    tokens = [1, 7, 128, 4096] if quick else TOKENS
    for i, (E, k) in enumerate(pairs):
        for T in tokens:
            for skew in ("uniform", "skewed", "one_expert") if T in (7, 1000) else ("uniform",):
                yield f"E{E}k{k}", E, k, 2048, 768, "silu", T, skew, "softmax"
            if i % 2 and T in (1, 7, 128, 4096):
                yield f"E{E}k{k}", E, k, 2048, 768, "silu", T, "uniform", "topk_softmax"
            if E % 8 == 0 and E // 8 >= 2 and T in (1, 7, 128, 4096):
                yield f"E{E}k{k}", E, k, 2048, 768, "silu", T, "uniform", "group_sigmoid"
    for name, (E, k, H, I, act) in LAYERS.items():
        for T in tokens:
            yield name, E, k, H, I, act, T, "uniform", "softmax"


class Weights:
    """One set of expert weights per shape, kept while consecutive cases share it."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, E, H, I, act, gen):
        if self.key != (E, H, I, act):
            self.value = None
            torch.cuda.empty_cache()
            bf = torch.bfloat16
            w13 = torch.randn(E, 2 * I, H, device=DEVICE, dtype=bf, generator=gen) * 0.02
            w2 = torch.randn(E, H, I, device=DEVICE, dtype=bf, generator=gen) * 0.02
            b13 = b2 = None
            if act == "swiglu_oai":  # GPT-OSS: [E, H, 2I] / [E, I, H] storage, biases
                w13 = w13.transpose(1, 2).contiguous().transpose(1, 2)
                w2 = w2.transpose(1, 2).contiguous().transpose(1, 2)
                b13 = torch.randn(E, 2 * I, device=DEVICE, dtype=bf, generator=gen) * 0.02
                b2 = torch.randn(E, H, device=DEVICE, dtype=bf, generator=gen) * 0.02
            self.key, self.value = (E, H, I, act), (w13, w2, b13, b2)
        return self.value


def run_case(case, weights, gen):
    name, E, k, H, I, act, T, skew, router = case
    w13, w2, b13, b2 = weights.get(E, H, I, act, gen)
    interleaved = act == "swiglu_oai"
    x = torch.randn(T, H, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    logits = logits_for(skew, T, E, gen)
    route_kw = dict(ROUTERS[router])
    if router == "group_sigmoid":
        route_kw["correction_bias"] = torch.randn(E, device=DEVICE, generator=gen) * 0.1
    spec = dict(activation=act, gate_up_interleaved=interleaved)
    out = torch.ops.inductor_moe.moe(x, logits, w13, w2, k, b13, b2, **route_kw, **spec)
    weights_, ids = torch.ops.inductor_moe.route(logits, k, **route_kw)
    ref_w, ref_ids = route_ref(logits, k, **route_kw)
    same_row = (ids.sort(-1).values == ref_ids.sort(-1).values).all(-1)
    ids_ok = bool(same_row.float().mean() >= 0.999)
    # weights where the row picked the same experts (a near-tie swap changes the picked scores too)
    order, ref_order = ids.sort(-1).indices, ref_ids.sort(-1).indices
    w_err = rel(weights_.gather(1, order)[same_row], ref_w.gather(1, ref_order)[same_row])
    want = loop_reference(x, ids, weights_, w13, w2, b13, b2, act, interleaved)
    err = rel(out, want)
    exp_out = torch.ops.inductor_moe.experts(x, ids, weights_, w13, w2, b13, b2, **spec)
    exp_err = rel(exp_out, want)
    ok = (err <= 1e-2 and exp_err <= 1e-2 and w_err <= 1e-4 and ids_ok
          and bool(torch.isfinite(out).all()) and bool(torch.isfinite(exp_out).all()))
    return dict(layer=name, E=E, k=k, H=H, I=I, T=T, routing=skew, router=router, rel_l2=err,
                experts_rel_l2=exp_err, weights_rel=w_err, ids_ok=ids_ok, ok=ok)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--budget-s", type=float, default=240)
    p.add_argument("--min-tokens", type=int, default=0, help="only cases with T >= this (e.g. the prefill paths)")
    args = p.parse_args()
    rows = json.load(open(args.out)) if args.out and os.path.exists(args.out) else []
    done = {(r["layer"], r["T"], r["routing"], r["router"]) for r in rows}
    start = time.time()
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    weights = Weights()
    left = 0
    for case in cases(args.quick):
        if (case[0], case[6], case[7], case[8]) in done or case[6] < args.min_tokens:
            continue
        if time.time() - start > args.budget_s:
            left += 1
            continue
        row = run_case(case, weights, gen)
        rows.append(row)
        print(f"{row['layer']:8s} E={row['E']:4d} k={row['k']:2d} T={row['T']:6d} {row['routing']:10s} "
              f"{row['router']:13s} moe {row['rel_l2']:.2e} experts {row['experts_rel_l2']:.2e} "
              f"{'ok' if row['ok'] else 'FAIL'}", flush=True)
        if args.out:
            json.dump(rows, open(args.out, "w"), indent=1)
    failures = sum(not r["ok"] for r in rows)
    paths = {f["op"] + ": " + f["reason"] for f in inductor_moe.stats()["fallbacks"]}
    print("fallbacks:", sorted(paths))
    print(f"{len(rows) - failures} passed, {failures} failed, {left} cases left for the next call")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
