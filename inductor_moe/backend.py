"""The ``inductor_moe`` dynamo backend: Inductor with the MoE pass installed for this compile.

``torch.compile(model, backend="inductor_moe", mode=..., options=...)``: ``mode`` and ``options`` become
Inductor config patches exactly as with the default backend, so ``mode="reduce-overhead"`` still gives
cudagraph trees and ``mode="max-autotune"`` still autotunes. Registered with dynamo on import of
``inductor_moe`` and as a ``torch_dynamo_backends`` entry point (usable without importing the package).
"""
from __future__ import annotations

import torch
from torch._dynamo.backends.registry import register_backend

from .pass_manager import config_patches


def inductor_moe_backend(gm: torch.fx.GraphModule, example_inputs, mode: str | None = None,
                         options: dict | None = None):
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    from . import ops  # noqa: F401  (entry-point use: make sure the ops exist)

    patches = {}
    if mode is not None and mode != "default":
        patches.update(list_mode_options(mode))
    if options:
        patches.update(options)
    patches.update(config_patches())
    return compile_fx(gm, example_inputs, config_patches=patches)


def register() -> None:
    from torch._dynamo.backends.registry import _COMPILER_FNS

    if "inductor_moe" not in _COMPILER_FNS:
        register_backend(name="inductor_moe")(inductor_moe_backend)
