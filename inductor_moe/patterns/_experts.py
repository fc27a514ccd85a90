"""Helpers shared by the experts patterns (``experts_grouped_mm``, ``experts_batched_mm``): the gate/up
halves of the first projection (chunked or interleaved), the activation between the two projections
(identified by probing), and value copies through unsqueeze/squeeze round trips."""
from __future__ import annotations

import itertools

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import _fx, _router
from ._fx import aten, fail

# candidate activations act(gate) * up, checked by probing
GATED_ACTIVATIONS = {
    "silu": lambda g, u: torch.nn.functional.silu(g) * u,
    "gelu": lambda g, u: torch.nn.functional.gelu(g) * u,
    "gelu_tanh": lambda g, u: torch.nn.functional.gelu(g, approximate="tanh") * u,
    "relu": lambda g, u: torch.relu(g) * u,
}



def swiglu_oai(alpha: float, limit: float):
    """GPT-OSS's clamped SwiGLU, as a probe candidate."""
    def fn(gate, up):
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return gate * torch.sigmoid(gate * alpha) * (up + 1)

    return fn


def squeeze_dims(node: Node) -> list[int] | None:
    if _fx.is_op(node, aten.squeeze.dim):
        return [node.args[1]]
    if _fx.is_op(node, aten.squeeze.dims):
        return list(node.args[1])
    return None


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def copies(node: Node, nodes: set) -> list[Node]:
    """The nodes holding the value of ``node`` past ``unsqueeze(d) -> squeeze(d)`` round trips (GPT-OSS's
    ``gate_up[..., ::2]`` leaves them): ``node`` itself when it has no such single use."""
    users = list(node.users)
    if len(users) == 1 and _fx.is_op(users[0], aten.unsqueeze.default) and users[0].users:
        unsq = users[0]
        ndim = _fx.val(unsq).dim()
        d = norm_dim(unsq.args[1], ndim)
        squeezes = list(unsq.users)
        if all(squeeze_dims(u) is not None and [norm_dim(x, ndim) for x in squeeze_dims(u)] == [d]
               for u in squeezes):
            nodes.add(unsq)
            nodes.update(squeezes)
            return [c for sq in squeezes for c in copies(sq, nodes)]
    return [node]


def gate_up_halves(h: Node, inter, nodes: set) -> tuple[Node, Node, bool]:
    """(gate, up, interleaved) of the first projection's output ``h`` [S, 2I]: ``split``/``chunk`` in two
    halves on the last dim, or the GPT-OSS slices ``[..., 0::2]`` / ``[..., 1::2]``."""
    halves, layouts = {}, set()
    for copy in copies(h, nodes):
        for u in copy.users:
            if _fx.is_op(u, aten.split.Tensor, aten.split_with_sizes.default):
                sizes = u.args[1]
                sizes = [sizes, sizes] if isinstance(sizes, int) else list(sizes)
                if not _fx.is_last_dim(_fx.arg(u, 2, "dim", 0), 2) or len(sizes) < 2 or not all(
                        _same(s, inter) for s in sizes[:2]):
                    fail("gate_up is not chunked in two halves on the last dim", u)
                for g in u.users:
                    index = _fx.getitem_of(g, u)[1]
                    if index in halves:
                        fail("gate_up is split twice", u)
                    halves[index] = g
                nodes.add(u)
                layouts.add("chunked")
            elif _fx.is_op(u, aten.slice.Tensor):
                dim, start = _fx.arg(u, 1, "dim", 0), _fx.arg(u, 2, "start", None) or 0
                end, step = _fx.arg(u, 3, "end", None), _fx.arg(u, 4, "step", 1)
                if not _fx.is_last_dim(dim, 2) or step != 2 or start not in (0, 1) or not (
                        end is None or (isinstance(end, int) and end >= 2 * inter)):
                    fail("gate_up slice is not [..., 0::2] or [..., 1::2]", u)
                if start in halves:
                    fail("gate_up is sliced twice the same way", u)
                halves[start] = u
                nodes.add(u)
                layouts.add("interleaved")
            else:
                fail(f"gate_up output feeds {u.target}, not a split into gate and up halves", u)
    if set(halves) != {0, 1} or len(layouts) != 1:
        fail("gate_up output is not split into gate and up halves", h)
    return halves[0], halves[1], layouts == {"interleaved"}


def activation_region(out: Node, gate: Node, up: Node) -> _fx.Region:
    """The elementwise region computing ``out`` from ``gate`` and ``up`` alone."""
    try:
        return _fx.backward_region(out, [gate, up])
    except _fx.MatchFail as e:
        fail(f"the gate/up activation also reads {e.node.name if e.node is not None else 'another value'} "
             "(a runtime scalar? dynamic=True makes float attributes such as alpha graph inputs)", out)


def identify_activation(region, gate: Node) -> tuple[str, float, float]:
    """(activation, alpha, limit) of ``region`` by probing: ``act(gate) * up`` for silu/gelu/gelu_tanh/relu,
    or GPT-OSS's ``swiglu_oai`` with its ``alpha``/``limit`` taken from the region's constants."""
    dtype = _fx.val(gate).dtype
    gen = torch.Generator().manual_seed(2)
    probes = [tuple((torch.randn(4, 16, generator=gen) * s).to(dtype) for _ in range(2)) for s in (0.5, 3.0, 8.0, 16.0)]
    tol = _fx.tolerance(dtype)
    for name, fn in GATED_ACTIVATIONS.items():
        if _fx.matches(region, probes, fn, tol):
            return name, 1.702, 7.0
    constants = sorted({abs(float(c)) for c in _router.scalar_constants(region.nodes) if c != 0})
    for alpha, limit in itertools.product(constants, constants):
        if limit > 0 and _fx.matches(region, probes, swiglu_oai(alpha, limit), tol):
            return "swiglu_oai", alpha, limit
    fail("the gate/up activation is not one of " + ", ".join([*GATED_ACTIVATIONS, "swiglu_oai"]), region.output)


def _same(a, b) -> bool:
    return statically_known_true(a == b)


def experts_kwargs(b13, b2, activation: str, interleaved: bool, alpha: float, limit: float) -> dict:
    """Keyword arguments of ``inductor_moe::experts`` beyond the defaults."""
    kwargs = {}
    if b13 is not None:
        kwargs["b13"] = b13
    if b2 is not None:
        kwargs["b2"] = b2
    kwargs["activation"] = activation
    if interleaved:
        kwargs["gate_up_interleaved"] = True
    if activation == "swiglu_oai":
        kwargs.update(alpha=alpha, limit=limit)
    return kwargs
