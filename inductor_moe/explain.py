"""``inductor_moe.explain(model, *example_args, **example_kwargs)``: what the pass did to each MoE block of a
model, and why not where it did nothing.

It compiles ``model`` with the ``inductor_moe`` backend (FX-graph and AOT caches off, so the pass runs on
every graph), calls it once on the example inputs under ``torch.no_grad()`` and reads what the pass and the
ops recorded (``inductor_moe.events()`` / ``stats()``) and what dynamo counted (frames, graphs, graph
breaks). Dynamo is reset before and after (earlier compiles in this process recompile on their next call);
the caller's ``stats()`` / ``events()`` and dynamo's counters are left as they were::

    report = inductor_moe.explain(model, input_ids)
    print(report)          # a fixed-width table, one row per MoE block
    report.rows            # the same as dicts

One row per MoE block (the module that owns a router and an experts module, by path):

- ``module``: the block's path (``model.layers.0.mlp``; ``<root>`` for the model itself)
- ``router`` / ``experts``: the pattern that matched, or None; ``router_rejected`` / ``experts_rejected``:
  each pattern that looked at a candidate there and turned it down: ``{"pattern", "node", "reason"}``
  (``node`` is the candidate's anchor node; the reason ends with ``[at <node>]``, where the walk failed)
- ``fused``: whether ``moe_fused`` joined the two; ``fused_rejected`` likewise
- ``experts_impl``: the transformers experts implementation of the block's experts module (or None)
- ``other``: events of patterns of another kind: ``{"pattern", "matched", "node", "reason"}``
- ``notes``: what else to know, e.g. the ``eager`` experts loop that graph-breaks before the pass sees it

Beside the rows: ``fallbacks`` (``stats()["fallbacks"]``: a kernel family that declined an op call at run
time, per op, with no module path), ``graph_breaks`` (dynamo's, counted), ``compile`` (frames and graphs;
graphs the pass saw and rewrote), ``disabled_patterns``, ``hints``, and the raw ``stats`` and ``events``.

Blocks are found from the model's modules (transformers experts modules, or children named ``experts``)
and from the module paths of the pass's events. A block whose forward is compiled as its own frame (after
a graph break) reports paths relative to itself; such events go to every block with that child, as the
one compiled frame serves them all.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from . import config, stats as _stats

ROUTER_CHILDREN = ("gate", "router")
_ROLES = ("router", "experts", "fused")
EAGER_NOTE = ("transformers' 'eager' experts: a Python loop over nonzero() that graph-breaks, never seen by "
              "the pass; use inductor_moe.hf.use_traceable_experts(model)")


def _role(pattern: str) -> str:
    if pattern.startswith("router_"):
        return "router"
    if pattern.startswith("experts_"):
        return "experts"
    if pattern == "moe_fused":
        return "fused"
    return "other"  # a pattern of another kind (listed under the row, matched or not)


@dataclass
class ExplainReport:
    """What ``explain()`` found. ``str(report)`` is a readable table; the attributes are the data."""

    rows: list[dict]
    fallbacks: list[dict]  # stats()["fallbacks"]: {"op", "reason", "count"}
    graph_breaks: list[dict]  # {"reason" (one line), "count", "detail" (dynamo's full text)}
    compile: dict  # frames, graphs (dynamo), pass_graphs_seen, pass_graphs_rewritten
    disabled_patterns: list[str]
    hints: list[str]
    stats: dict  # the raw stats() of this compile and run
    events: list[dict]  # the raw events()
    output: Any = field(default=None, repr=False)  # what the compiled model returned

    def row(self, module: str) -> dict:
        for r in self.rows:
            if r["module"] == module:
                return r
        raise KeyError(module)

    def __str__(self) -> str:
        return format_report(self)


# ---------------------------------------------------------------------------------------------------------
# compile and run


@contextlib.contextmanager
def _fresh_compile_state():
    from torch._dynamo.utils import counters
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config

    saved_counters = {k: Counter(v) for k, v in counters.items()}
    saved_stats = _stats.save_state()
    torch._dynamo.reset()
    counters.clear()
    _stats.reset_stats()
    try:
        with inductor_config.patch(fx_graph_cache=False, fx_graph_remote_cache=False), \
                functorch_config.patch(enable_autograd_cache=False):
            yield counters
    finally:
        torch._dynamo.reset()
        counters.clear()
        counters.update(saved_counters)
        _stats.restore_state(saved_stats)


def explain(model, *example_args, **example_kwargs) -> ExplainReport:
    """Compile ``model`` (an ``nn.Module`` or a function) with the ``inductor_moe`` backend, run it once on
    the example inputs (no grad) and report, per MoE block, what was matched and fused and why not."""
    with _fresh_compile_state() as counters:
        compiled = torch.compile(model, backend="inductor_moe")
        with torch.no_grad():
            output = compiled(*example_args, **example_kwargs)
        snapshot = _stats.stats()
        events = _stats.events()
        dynamo = {k: dict(v) for k, v in counters.items()}
    return build_report(model, events, snapshot, dynamo, output=output)


# ---------------------------------------------------------------------------------------------------------
# events -> rows


def _is_experts_module(name: str, module) -> bool:
    hf = hasattr(module, "has_gate") and hasattr(module, "is_transposed") and hasattr(module, "config")
    return hf or name.rsplit(".", 1)[-1] == "experts"


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _structure(model) -> tuple[dict[str, dict], set[str]]:
    """{block path: {"experts": path, "experts_impl": str | None}} in module order, and all module names."""
    model = getattr(model, "_orig_mod", model)  # an already torch.compile'd module: its paths are the original's
    if not isinstance(model, torch.nn.Module):
        return {}, set()
    names = {name for name, _ in model.named_modules()}
    blocks: dict[str, dict] = {}
    for name, module in model.named_modules():
        if name and _is_experts_module(name, module) and _parent(name) not in blocks:
            cfg = getattr(module, "config", None)
            impl = getattr(cfg, "_experts_implementation", None) if hasattr(module, "has_gate") else None
            blocks[_parent(name)] = {"experts": name, "experts_impl": impl}
    return blocks, names


def _owners(path: str, blocks: dict, names: set[str]) -> list[str]:
    """The blocks an event's module path belongs to (several for a path relative to a shared frame)."""
    p = "" if path == "<root>" else path
    if p in names or not names:
        inside = [b for b in blocks if b == "" or p == b or p.startswith(b + ".")]
        if inside:
            return [max(inside, key=len)]
        return []
    relative = [b for b in blocks if (f"{b}.{p}" if b else p) in names]
    return relative


def _fallback_block(path: str) -> str:
    p = "" if path == "<root>" else path
    last = p.rsplit(".", 1)[-1]
    return _parent(p) if last in ROUTER_CHILDREN + ("experts",) else p


def _new_row(module: str, experts_impl: str | None = None) -> dict:
    return {"module": module or "<root>", "router": None, "router_rejected": [], "experts": None,
            "experts_rejected": [], "fused": False, "fused_rejected": [], "experts_impl": experts_impl,
            "other": [], "notes": []}


def _short_break(reason: str) -> str:
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    head = lines[0] if lines else reason
    for ln in lines:
        if ln.startswith("Developer debug context:"):
            ctx = ln.split(":", 1)[1].strip()
            if ctx and len(ctx) <= 60:
                return f"{head} ({ctx})"
    return head


def build_report(model, events: list[dict], snapshot: dict, dynamo: dict, output=None) -> ExplainReport:
    blocks, names = _structure(model)
    rows: dict[str, dict] = {b: _new_row(b, info["experts_impl"]) for b, info in blocks.items()}
    shared: dict[str, set] = {}
    for e in events:
        owners = _owners(e["module"], blocks, names)
        if len(owners) > 1:
            for b in owners:
                shared.setdefault(b, set()).add(len(owners))
        if not owners:
            key = _fallback_block(e["module"])
            owners = [key]
            rows.setdefault(key, _new_row(key))
        for b in owners:
            row = rows[b]
            role = _role(e["pattern"])
            if role == "other":
                item = {"pattern": e["pattern"], "matched": e["matched"], "node": e["node"], "reason": e["reason"]}
                if item not in row["other"]:
                    row["other"].append(item)
            elif e["matched"]:
                if role == "fused":
                    row["fused"] = True
                elif row[role] is None:
                    row[role] = e["pattern"]
                elif e["pattern"] not in row[role].split("+"):
                    row[role] += "+" + e["pattern"]
            else:
                item = {"pattern": e["pattern"], "node": e["node"], "reason": e["reason"]}
                if item not in row[f"{role}_rejected"]:
                    row[f"{role}_rejected"].append(item)

    disabled = sorted(config.disabled_patterns)
    graph_breaks = [{"reason": _short_break(r), "count": n, "detail": r}
                    for r, n in dynamo.get("graph_break", {}).items()]
    hints = []
    for b, row in rows.items():
        if row["router"] is None and not row["router_rejected"] and (row["experts"] or row["experts_rejected"]):
            row["notes"].append("router: no candidate (no top-k that a router pattern starts from)")
        if row["experts_impl"] == "eager" and row["experts"] is None:
            row["notes"].append(EAGER_NOTE)
        elif row["experts"] is None and not row["experts_rejected"] and (row["router"] or row["router_rejected"]):
            row["notes"].append("experts: no candidate (no grouped_mm / batched_mm experts form in the graphs)")
        if b in shared:
            n = max(shared[b])
            row["notes"].append(f"compiled as its own frame (graph break), shared by {n} blocks")
    if any(EAGER_NOTE in r["notes"] for r in rows.values()):
        hints.append("inductor_moe.hf.use_traceable_experts(model) before torch.compile switches 'eager' experts to "
                     "'grouped_mm', which traces into one graph that the pass rewrites")
    for name in disabled:
        hints.append(f"{name} is disabled (inductor_moe.config.disabled_patterns)")
    frames = dynamo.get("frames", {})
    compile_info = {
        "frames": frames.get("total", 0),
        "frames_ok": frames.get("ok", 0),
        "graphs": dynamo.get("stats", {}).get("unique_graphs", 0),
        "pass_graphs_seen": snapshot["graphs"]["seen"],
        "pass_graphs_rewritten": snapshot["graphs"]["rewritten"],
    }
    return ExplainReport(rows=list(rows.values()), fallbacks=snapshot["fallbacks"], graph_breaks=graph_breaks,
                         compile=compile_info, disabled_patterns=disabled, hints=hints, stats=snapshot,
                         events=events, output=output)


# ---------------------------------------------------------------------------------------------------------
# the table


def _cell(row: dict, role: str, disabled: list[str]) -> str:
    if role == "fused":
        if row["fused"]:
            return "yes"
        return "disabled" if "moe_fused" in disabled else "no"
    if row[role] is not None:
        return row[role]
    if row[f"{role}_rejected"]:
        return "rejected"
    if role == "experts" and row["experts_impl"] == "eager":
        return "eager loop"
    return "-"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_report(report: ExplainReport) -> str:
    c = report.compile
    n_fused = sum(r["fused"] for r in report.rows)
    n_breaks = sum(b["count"] for b in report.graph_breaks)
    lines = [
        f"inductor_moe.explain: {_n(len(report.rows), 'MoE block')}, {n_fused} fused",
        f"compiled {_n(c['graphs'], 'graph')} from {_n(c['frames'], 'frame')} with {_n(n_breaks, 'graph break')}; "
        f"the pass rewrote {c['pass_graphs_rewritten']} of {_n(c['pass_graphs_seen'], 'graph')}",
        "",
    ]
    header = ("MoE block", "router", "experts", "fused", "experts impl")
    table = [header] + [
        (r["module"], _cell(r, "router", report.disabled_patterns), _cell(r, "experts", report.disabled_patterns),
         _cell(r, "fused", report.disabled_patterns), r["experts_impl"] or "-")
        for r in report.rows
    ]
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()

    lines.append(fmt(header))
    lines.append(fmt(["-" * w for w in widths]))
    if not report.rows:
        lines.append("(no MoE block found: no router or experts candidate in the compiled graphs)")
    for r, cells in zip(report.rows, table[1:]):
        lines.append(fmt(cells))
        for role in _ROLES:
            for rej in r[f"{role}_rejected"]:
                lines.append(f"    {role}: {rej['pattern']} (candidate {rej['node']}): {rej['reason']}")
        for o in r["other"]:
            what = "matched" if o["matched"] else f"(candidate {o['node']}): {o['reason']}"
            lines.append(f"    other: {o['pattern']} {what}")
        for note in r["notes"]:
            lines.append(f"    note: {note}")
    lines.append("")
    if report.graph_breaks:
        lines.append("graph breaks:")
        lines += [f"  {b['count']}x {b['reason']}" for b in report.graph_breaks]
    else:
        lines.append("graph breaks: none")
    if report.fallbacks:
        lines.append("kernel fallbacks (op: family: reason):")
        lines += [f"  {f['count']}x {f['op']}: {f['reason']}" for f in report.fallbacks]
    else:
        lines.append("kernel fallbacks: none")
    for hint in report.hints:
        lines.append(f"hint: {hint}")
    return "\n".join(lines)
