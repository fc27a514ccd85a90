"""The one Inductor graph pass that runs every inductor_moe matcher.

It is installed as ``post_grad_custom_pre_pass`` (torch accepts one pass per hook): by the
``inductor_moe`` backend through config patches, or globally by ``inductor_moe.enable()``. It runs on the
post-grad ATen graph (functionalized, decomposed), before Inductor's own pattern passes.
A pass that was already installed there by someone else is kept and run after ours.

``uuid()`` hashes the sources of the patterns and op contracts plus ``inductor_moe.config``, so the
FX-graph and AOT caches never serve a graph rewritten by another version or setting, and graphs compiled
without the pass never collide with ones compiled with it.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from . import config, stats
from .patterns import PATTERNS, MatchFail
from .patterns._fx import module_path

try:  # torch >= 2.11 passes is_inference to passes of this type
    from torch._inductor.custom_graph_pass import CustomInferenceAwareGraphPass as _Base
except ImportError:  # pragma: no cover
    _Base = CustomGraphPass

log = logging.getLogger("inductor_moe")

_PKG = Path(__file__).resolve().parent


@functools.lru_cache(None)
def _source_files() -> tuple[str, ...]:
    dirs = [_PKG / "patterns", _PKG / "ops"]
    files = [str(p) for d in dirs for p in sorted(d.glob("*.py"))]
    return tuple(files + [str(_PKG / "pass_manager.py")])


class MoEGraphPass(_Base):
    def __init__(self, chained=None):
        self.chained = chained  # a pass installed before enable(), run after ours

    def __call__(self, graph, is_inference: bool | None = None):
        rewrite_graph(graph, is_inference)
        if self.chained is not None:
            if isinstance(self.chained, _Base) and _Base is not CustomGraphPass:
                self.chained(graph, is_inference=is_inference)
            else:
                self.chained(graph)

    def uuid(self):
        chained = self.chained.uuid() if isinstance(self.chained, CustomGraphPass) else None
        return (get_hash_for_files(_source_files()).hex(), repr(config.snapshot()), chained)


def _is_training_graph(graph) -> bool:
    """Fallback for torch versions that do not pass ``is_inference`` to the pass: AOTAutograd names the
    inputs of partitioned forward/backward graphs ``primals_*``/``tangents_*``, those of inference graphs
    ``arg*``."""
    return any(n.op == "placeholder" and n.name.startswith(("primals_", "tangents_")) for n in graph.nodes)


def rewrite_graph(graph, is_inference: bool | None = None) -> int:
    """Run every enabled pattern over ``graph``; return the number of replacements."""
    if is_inference is None:
        is_inference = not _is_training_graph(graph)
    replaced = 0
    for pattern in PATTERNS:
        if pattern.NAME in config.disabled_patterns:
            continue
        for anchor in pattern.anchors(graph):
            if anchor.graph is not graph or not anchor.users:
                continue  # removed or orphaned by an earlier replacement
            where = module_path(anchor)
            if is_inference is False:
                _reject(pattern.NAME, where, anchor, "training graph (autograd): left to Inductor")
                continue
            try:
                m = pattern.match(anchor)
            except MatchFail as e:
                node = e.node.name if e.node is not None else anchor.name
                _reject(pattern.NAME, where, anchor, f"{e.reason} [at {node}]")
                continue
            pattern.replace(graph, m)
            graph.eliminate_dead_code()
            stats.record_match(pattern.NAME)
            stats.record_event(pattern.NAME, where, anchor.name, matched=True, reason="")
            replaced += 1
    if replaced:
        graph.lint()
    stats.record_graph(rewritten=bool(replaced))
    return replaced


def _reject(name, where, anchor, reason):
    log.info("inductor_moe: %s not applied at %s (%s): %s", name, where, anchor.name, reason)
    stats.record_rejection(name, reason)
    stats.record_event(name, where, anchor.name, matched=False, reason=reason)


_installed: dict = {}


def enable() -> None:
    """Install the pass for every later ``torch.compile`` (Inductor backend) in this process."""
    current = inductor_config.post_grad_custom_pre_pass
    if isinstance(current, MoEGraphPass):
        return
    _installed["previous"] = current
    inductor_config.post_grad_custom_pre_pass = MoEGraphPass(chained=current)


def disable() -> None:
    """Remove the pass installed by ``enable()``, restoring what was there before."""
    if isinstance(inductor_config.post_grad_custom_pre_pass, MoEGraphPass):
        inductor_config.post_grad_custom_pre_pass = _installed.pop("previous", None)


def is_enabled() -> bool:
    return isinstance(inductor_config.post_grad_custom_pre_pass, MoEGraphPass)


def config_patches() -> dict:
    """Inductor config patches that install the pass for one compile (the backend's way)."""
    current = inductor_config.post_grad_custom_pre_pass
    if isinstance(current, MoEGraphPass):
        return {}
    return {"post_grad_custom_pre_pass": MoEGraphPass(chained=current)}
