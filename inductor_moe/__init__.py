"""inductor_moe: fused Mixture-of-Experts routers and expert FFNs for torch.compile, no model changes.

    import inductor_moe
    model = torch.compile(model, backend="inductor_moe")          # this compile only
    # or
    inductor_moe.enable(); model = torch.compile(model)         # every Inductor compile
    inductor_moe.stats()                                           # matches, rejections, fallbacks
    print(inductor_moe.explain(model, *example_inputs))           # per MoE block: matched, fused, why not
"""
from . import ops  # noqa: F401  registers torch.ops.inductor_moe.*
from . import hf  # noqa: F401  registers experts_implementation="inductor_moe" once transformers loads
from .backend import inductor_moe_backend, register as _register_backend
from .dispatch import force_backend
from .explain import ExplainReport, explain
from .pass_manager import disable, enable, is_enabled
from .stats import events, reset_stats, stats

__version__ = "0.1.0"

_register_backend()

__all__ = [
    "ExplainReport", "disable", "enable", "events", "explain", "force_backend", "inductor_moe_backend", "is_enabled",
    "reset_stats", "stats",
]
