"""Hugging Face transformers integration.

1. ``"inductor_moe"`` as a transformers *experts implementation* (the ``ExpertsInterface`` registry behind
   ``@use_experts_implementation``, transformers >= 5.17)::

       model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="inductor_moe")
       # or: model.set_experts_implementation("inductor_moe"); or config._experts_implementation = "inductor_moe"

   Every experts module of the model then runs through ``torch.ops.inductor_moe.experts``: eagerly with no
   compile at all, and under ``torch.compile`` as one opaque op (with ``backend="inductor_moe"`` the router in
   front of it can still be fused into ``inductor_moe.moe``). The module's layout flags are honoured:
   ``is_transposed`` (GPT-OSS stores [E, H, 2I] / [E, I, H]: transposed views are passed, nothing is copied),
   ``is_concatenated`` / the gate function (chunked gate|up or interleaved), ``has_bias``, and the activation
   (``act_fn`` SiLU / GELU / GELU-tanh / ReLU, or GPT-OSS's clamped SwiGLU ``_apply_gate`` with the module's
   ``alpha`` / ``limit``). A module the op cannot express (no gate, a post-expert norm, another activation,
   non-float weights) runs transformers' ``grouped_mm`` implementation instead, and the reason is logged once
   on the ``inductor_moe`` logger (and returned by :func:`experts_plan`).

2. :func:`use_traceable_experts`: switch a model whose config uses the ``eager`` experts loop (a Python loop
   over ``nonzero()``, which breaks the graph on every MoE layer) to a traceable implementation before
   ``torch.compile``, so that the whole decoder compiles into one graph and the inductor_moe pass can see it.

Registration: :func:`register_experts_implementation` is idempotent. Importing this module registers at once
when ``transformers.integrations.moe`` is already imported, and otherwise installs an import hook that
registers right after transformers loads it; it never imports transformers itself (that costs seconds).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
import types

import torch

from . import ops  # noqa: F401  registers torch.ops.inductor_moe.*

__all__ = [
    "IMPLEMENTATION", "experts_plan", "inductor_moe_experts_forward", "is_registered",
    "register_experts_implementation", "use_kernel_layout", "use_traceable_experts",
]

IMPLEMENTATION = "inductor_moe"
FALLBACK = "grouped_mm"
_TARGET = "transformers.integrations.moe"

log = logging.getLogger("inductor_moe")

_lock = threading.Lock()
_registered = False
_plans: dict[tuple, tuple | str] = {}  # plan key -> (activation, interleaved, alpha, limit) or a reason
_logged: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------------------
# the plan: what the op needs from an experts module, or why it cannot take it
# ---------------------------------------------------------------------------------------------------------

def _activation_of(act_cls, approximate) -> str | None:
    """The op's activation name for an ``act_fn`` class, or None."""
    import torch.nn as nn

    try:
        from transformers import activations as hf_act
    except ImportError:  # pragma: no cover
        hf_act = None
    table = {nn.SiLU: "silu", nn.ReLU: "relu"}
    if hf_act is not None:
        table[hf_act.SiLUActivation] = "silu"
        table[hf_act.GELUActivation] = "gelu"  # erf GELU, with or without use_gelu_python
        for name in ("GELUTanh", "PytorchGELUTanh", "NewGELUActivation", "AccurateGELUActivation",
                     "FastGELUActivation"):  # all tanh-approximate GELU
            cls = getattr(hf_act, name, None)
            if cls is not None:
                table[cls] = "gelu_tanh"
    if act_cls is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
    return table.get(act_cls)


def _probe_gate(gate_fn, alpha, limit, act_cls=None) -> tuple | str:
    """Identify a model's own ``_apply_gate`` by running it on a probe and comparing with the op's
    activations (GPT-OSS's clamped SwiGLU with the module's alpha/limit, or act(gate) * up, chunked or
    interleaved). Returns (activation, interleaved, alpha, limit) or a reason."""
    from .kernels.reference.activation import apply_activation

    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(4, 16, generator=gen, dtype=torch.float64) * 4.0  # spans beyond limit=7
    candidates = []
    if isinstance(alpha, (int, float)) and isinstance(limit, (int, float)) and limit > 0:
        candidates += [("swiglu_oai", True), ("swiglu_oai", False)]
    candidates += [(a, i) for a in ("silu", "gelu", "gelu_tanh", "relu") for i in (False, True)]
    ns = types.SimpleNamespace(alpha=alpha, limit=limit)  # what a gate function may read from self
    if act_cls is not None:
        try:
            ns.act_fn = act_cls()
        except Exception:  # an activation that needs arguments: the gate cannot use it on the probe
            pass
    try:
        with torch.no_grad():
            got = gate_fn(ns, probe.clone())
    except Exception as e:  # it reads something else (act_fn, ...): not an activation we know
        return f"custom _apply_gate {getattr(gate_fn, '__qualname__', gate_fn)} not recognised ({type(e).__name__}: {e})"
    a = float(alpha) if isinstance(alpha, (int, float)) else 1.702
    lim = float(limit) if isinstance(limit, (int, float)) else 7.0
    for act, inter in candidates:
        ref = apply_activation(probe, act, inter, a, lim)
        if isinstance(got, torch.Tensor) and got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-9, atol=1e-12):
            return act, inter, a, lim
    return (f"custom _apply_gate {getattr(gate_fn, '__qualname__', gate_fn)} matches none of the op's activations "
            f"(silu/gelu/gelu_tanh/relu gating, swiglu_oai)")


def _compute_plan(cls, act_cls, approximate, has_gate, has_post_norm, is_concatenated, alpha, limit,
                  w13_dtype, w2_dtype) -> tuple | str:
    if not has_gate:
        return "no gate (up_proj only): the op computes gated FFNs act(gate) * up"
    if has_post_norm:
        return "post-expert norm (has_post_expert_norm): the op has no norm between down projection and combine"
    for name, dt in (("gate_up_proj", w13_dtype), ("down_proj", w2_dtype)):
        if dt is None:
            return f"no {name} tensor"
        if not dt.is_floating_point or dt.itemsize < 2:
            return f"{name} dtype {dt}: the op takes float32/float16/bfloat16 weights"
    if w13_dtype != w2_dtype:
        return f"gate_up_proj dtype {w13_dtype} differs from down_proj dtype {w2_dtype}"
    gate_fn = getattr(cls, "_apply_gate", None)
    try:
        from transformers.integrations.moe import _default_apply_gate
    except ImportError:  # pragma: no cover
        _default_apply_gate = None
    if gate_fn is None or gate_fn is _default_apply_gate:
        # act_fn(gate) * up with gate_up.chunk(2): chunked whatever is_concatenated says
        activation = _activation_of(act_cls, approximate)
        if activation is None:
            name = "no act_fn" if act_cls is None else f"act_fn {act_cls.__module__}.{act_cls.__qualname__}"
            return f"{name}: the op supports SiLU, GELU (erf or tanh) and ReLU gating"
        return activation, False, 1.702, 7.0
    # the model's own gate (GPT-OSS): identified by what it computes; its layout wins over is_concatenated
    return _probe_gate(gate_fn, alpha, limit, act_cls)


def _note_fallback(cls_name: str, reason: str) -> None:
    key = (cls_name, reason)
    if key not in _logged:
        _logged.add(key)
        log.warning("inductor_moe experts implementation: %s falls back to %r: %s", cls_name, FALLBACK, reason)


@torch._dynamo.assume_constant_result
def _plan(cls, act_cls, approximate, has_gate, has_post_norm, is_concatenated, alpha, limit, w13_dtype, w2_dtype):
    """Cached per module kind; under torch.compile it runs once at trace time and its result is a constant."""
    key = (cls, act_cls, approximate, has_gate, has_post_norm, is_concatenated, alpha, limit, w13_dtype, w2_dtype)
    plan = _plans.get(key)
    if plan is None:
        plan = _compute_plan(*key)
        _plans[key] = plan
    if isinstance(plan, str):
        _note_fallback(cls.__qualname__, plan)
    return plan


def _dtype(module, name):
    t = getattr(module, name, None)
    return t.dtype if isinstance(t, torch.Tensor) else None


def _module_plan(self):
    act = getattr(self, "act_fn", None)
    return _plan(
        type(self), None if act is None else type(act), getattr(act, "approximate", None),
        bool(getattr(self, "has_gate", True)), bool(getattr(self, "has_post_expert_norm", False)),
        bool(getattr(self, "is_concatenated", True)), getattr(self, "alpha", None), getattr(self, "limit", None),
        _dtype(self, "gate_up_proj"), _dtype(self, "down_proj"),
    )


def experts_plan(module: torch.nn.Module) -> dict:
    """What the ``inductor_moe`` experts implementation does with ``module`` (an experts module of a
    transformers model): ``{"supported": True, "activation", "gate_up_interleaved", "alpha", "limit",
    "transposed", "bias"}`` or ``{"supported": False, "reason": ...}`` (that module then runs ``grouped_mm``)."""
    plan = _module_plan(module)
    if isinstance(plan, str):
        return {"supported": False, "reason": plan}
    activation, interleaved, alpha, limit = plan
    return {"supported": True, "activation": activation, "gate_up_interleaved": interleaved, "alpha": alpha,
            "limit": limit, "transposed": bool(getattr(module, "is_transposed", False)),
            "bias": bool(getattr(module, "has_bias", False))}


# ---------------------------------------------------------------------------------------------------------
# the experts forward
# ---------------------------------------------------------------------------------------------------------

def _fallback_forward(self, hidden_states, top_k_index, top_k_weights):
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ALL_EXPERTS_FUNCTIONS[FALLBACK](self, hidden_states, top_k_index, top_k_weights)


def inductor_moe_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Experts forward for transformers' ``ExpertsInterface``: hidden [T, H], top_k_index [T, k], top_k_weights
    [T, k] -> [T, H] in hidden's dtype, through ``torch.ops.inductor_moe.experts``. Expert-parallel sentinel
    ids (>= num_experts) are dropped by the op, as ``grouped_mm`` does."""
    plan = _module_plan(self)
    if isinstance(plan, str):
        return _fallback_forward(self, hidden_states, top_k_index, top_k_weights)
    activation, interleaved, alpha, limit = plan
    w13, w2 = self.gate_up_proj, self.down_proj
    if getattr(self, "is_transposed", False):  # [E, H, 2I] / [E, I, H] -> strided [E, 2I, H] / [E, H, I] views
        w13, w2 = w13.transpose(1, 2), w2.transpose(1, 2)
    has_bias = getattr(self, "has_bias", False)
    b13 = self.gate_up_proj_bias if has_bias else None
    b2 = self.down_proj_bias if has_bias else None
    x = hidden_states if hidden_states.dtype == w13.dtype else hidden_states.to(w13.dtype)  # autocast inputs
    out = torch.ops.inductor_moe.experts(x, top_k_index, top_k_weights, w13, w2, b13, b2, activation, interleaved,
                                         alpha, limit)
    return out if out.dtype == hidden_states.dtype else out.to(hidden_states.dtype)


# ---------------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------------

def register_experts_implementation() -> bool:
    """Register ``"inductor_moe"`` in transformers' ``ExpertsInterface`` (all instances: the class-wide mapping).
    Returns False when transformers (>= 5.17, with ``transformers.integrations.moe``) is not installed."""
    global _registered
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError:
        return False
    with _lock:
        if not _registered or ExpertsInterface._global_mapping.get(IMPLEMENTATION) is not inductor_moe_experts_forward:
            ExpertsInterface.register(IMPLEMENTATION, inductor_moe_experts_forward)
            _registered = True
    _remove_hook()
    return True


def is_registered() -> bool:
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError:
        return False
    return ExpertsInterface._global_mapping.get(IMPLEMENTATION) is inductor_moe_experts_forward


class _LoaderThenRegister(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_experts_implementation()

    def __getattr__(self, name):  # get_resource_reader, get_source, ... of the real loader
        return getattr(self._loader, name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers the experts implementation right after ``transformers.integrations.moe`` is executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderThenRegister(spec.loader)
                return spec
        return None


_hook: _RegisterOnImport | None = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None:
        try:
            sys.meta_path.remove(_hook)
        except ValueError:
            pass
        _hook = None


def _install() -> None:
    global _hook
    if _TARGET in sys.modules:
        register_experts_implementation()
        return
    try:
        available = importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):
        available = False
    if available and _hook is None:
        _hook = _RegisterOnImport()
        sys.meta_path.insert(0, _hook)


# ---------------------------------------------------------------------------------------------------------
# use_traceable_experts
# ---------------------------------------------------------------------------------------------------------

def _configs(model):
    """(path, config) for the model's config and every nested sub-config, each once."""
    seen, out = set(), []

    def walk(path, cfg):
        if cfg is None or id(cfg) in seen:
            return
        seen.add(id(cfg))
        out.append((path, cfg))
        for key in getattr(cfg, "sub_configs", {}) or {}:
            walk(f"{path}.{key}" if path else key, getattr(cfg, key, None))

    walk("", getattr(model, "config", None))
    return out


def use_traceable_experts(model: torch.nn.Module, implementation: str = FALLBACK) -> dict[str, tuple[str, str]]:
    """Switch every (sub-)config of ``model`` that uses the ``eager`` experts implementation to a traceable one.

    transformers' ``eager`` experts forward loops in Python over ``one_hot(...).nonzero()`` (the experts hit by
    this batch): ``torch.compile`` breaks the graph there on every MoE layer, and the inductor_moe pass never
    sees an experts block. ``grouped_mm`` (the default; sort + grouped GEMMs) and ``batched_mm`` trace into
    one graph that the pass rewrites; ``"inductor_moe"`` calls the fused op directly. Call this before
    ``torch.compile`` / ``generate()`` in graph mode::

        changed = inductor_moe.hf.use_traceable_experts(model)   # {"": ("eager", "grouped_mm")}
        model = torch.compile(model, backend="inductor_moe")

    Only configs set to ``eager`` change; the change is in place (the experts modules read their config at
    each call). Returns {config path ("" for the top-level config, else the sub-config key): (old, new)};
    empty when nothing used ``eager``. Raises ValueError for an implementation transformers does not know.
    """
    if implementation == "eager":
        raise ValueError("implementation: 'eager' is the untraceable loop this helper replaces")
    if implementation == IMPLEMENTATION:
        register_experts_implementation()
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError as e:
        raise RuntimeError("use_traceable_experts needs transformers >= 5.17") from e
    if implementation not in ALL_EXPERTS_FUNCTIONS:
        raise ValueError(f"implementation: {implementation!r} is not a registered experts implementation; "
                         f"known: {sorted(ALL_EXPERTS_FUNCTIONS.keys())}")
    changed = {}
    for path, cfg in _configs(model):
        current = getattr(cfg, "_experts_implementation", None)
        if current == "eager":
            # the internal attribute: the public setter would also rewrite every sub-config
            cfg._experts_implementation_internal = implementation
            changed[path] = (current, implementation)
    if changed:
        log.info("inductor_moe: experts implementation switched to %r for %s", implementation,
                 ", ".join(p or "<config>" for p in changed))
    return changed


@torch.no_grad()
def use_kernel_layout(model: torch.nn.Module) -> list[str]:
    """Re-store transposed expert weights so that each expert's reduction axis is contiguous in memory.

    GPT-OSS (``is_transposed`` experts) keeps ``gate_up_proj`` as [E, H, 2I] and ``down_proj`` as [E, I, H]
    (read as ``x @ W``), row-major, so the expert kernels, which reduce over H (then I), read them along the
    strided axis: at decode that costs ~1.7x the K-contiguous time on an H100 (benchmarks/README.md). This
    helper gives each such parameter the same shape and values with the other strides
    (``w.transpose(1, 2).contiguous().transpose(1, 2)``), in place, one parameter at a time (peak memory: one
    extra copy of one parameter). Nothing else changes: transformers' own experts code computes the same
    results (``_grouped_mm``, ``bmm`` and matmul take either layout), state_dict values are the same, and
    later in-place updates (``load_state_dict``, ``copy_``) keep the new strides. Call it before
    ``torch.compile`` (strides are part of the compiled graph's guards). Returns the parameter names changed.
    """
    changed = []
    for path, module in model.named_modules():
        if not getattr(module, "is_transposed", False):
            continue
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(module, name, None)
            if not isinstance(w, torch.nn.Parameter) or w.dim() != 3 or w.stride(1) == 1:
                continue
            w.data = w.data.transpose(1, 2).contiguous().transpose(1, 2)
            changed.append(f"{path}.{name}" if path else name)
    if changed:
        log.info("inductor_moe: %d expert weights re-stored with the reduction axis contiguous", len(changed))
    return changed


_install()
