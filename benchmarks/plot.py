"""PNG plots of the benchmark JSON (needs matplotlib; it runs on any machine, the GPU is not needed):

- ``layer_time_vs_T.png``: per-layer time against T (log-log), one panel per layer, inductor_moe against
  the HF peers and the floor (from ``bench_moe_layer.py``'s JSON);
- ``e2e_tokens_per_s.png``: decode tokens/s per model and batch, eager / plain torch.compile /
  inductor_moe (from ``bench_e2e.py``'s JSON).

Usage: python benchmarks/plot.py [--layer-json results/bench_moe_layer.json]
       [--e2e-json results/bench_e2e.json] [--out-dir results/]
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SERIES = [  # (json key, label, style)
    ("inductor_moe_graph_us", "inductor_moe (CUDA graph)", "o-"),
    ("inductor_moe_eager_us", "inductor_moe (eager call)", "o:"),
    ("hf_grouped_mm_graph_us", "HF grouped_mm (CUDA graph)", "s--"),
    ("hf_batched_mm_graph_us", "HF batched_mm (CUDA graph)", "^--"),
    ("compile_default_graph_us", "HF grouped_mm, torch.compile (CUDA graph)", "s-."),
    ("compile_reduce_overhead_us", "HF grouped_mm, torch.compile reduce-overhead", "d-."),
    ("einsum_max_autotune_graph_us", "gather+einsum, max-autotune (CUDA graph)", "x-."),
    ("floor_us", "floor (bytes or flops)", "k-"),
]


def plot_layers(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["T"])
        for key, label, style in SERIES:
            pts = [(r["T"], r[key]) for r in mine if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, label=label, linewidth=1.5 if key == "inductor_moe_graph_us" else 1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens T")
        ax.set_ylabel("us per layer call")
        ax.set_title(layer)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_e2e(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "variants" in r]
    labels = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    variants = ("eager", "inductor", "inductor_moe")
    names = {"eager": "eager", "inductor": "torch.compile", "inductor_moe": "torch.compile + inductor_moe"}
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(rows)), 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        vals = [1e3 / r["variants"][v]["decode_step_ms"] * r["batch"] if v in r["variants"] else 0 for r in rows]
        ax.bar([j + i * width for j in range(len(rows))], vals, width, label=names[v])
    ax.set_xticks([j + width for j in range(len(rows))], labels)
    ax.set_ylabel("decode tokens/s")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layer-json", default=os.path.join(HERE, "results", "bench_moe_layer.json"))
    p.add_argument("--e2e-json", default=os.path.join(HERE, "results", "bench_e2e.json"))
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if os.path.exists(args.layer_json):
        out = os.path.join(args.out_dir, "layer_time_vs_T.png")
        plot_layers(json.load(open(args.layer_json)), out)
        print("wrote", out)
    if os.path.exists(args.e2e_json):
        out = os.path.join(args.out_dir, "e2e_tokens_per_s.png")
        plot_e2e(json.load(open(args.e2e_json)), out)
        print("wrote", out)


if __name__ == "__main__":
    main()
