"""FX helpers for the hand-written matchers: checked walks that fail with a reason naming the node,
row-wise regions evaluated on probe tensors, and node insertion that keeps ``meta["val"]`` right.

Why probes: the ATen forms of softmax, SiLU and renormalization differ between torch versions, dtypes
and decompositions (casts to f32 and back, ``x * sigmoid(x)`` vs ``x / (1 + exp(-x))``). The structural
walk limits a region to elementwise ops and last-dim reductions with one or two inputs and no other
tensors; evaluating it on random probes then decides which known function it is. Anything else is
left unmatched, with the reason recorded.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, Node

aten = torch.ops.aten
prims = torch.ops.prims

CONVERT = prims.convert_element_type.default
VIEW_OPS = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)
ROW_REDUCTIONS = (aten.amax.default, aten.sum.dim_IntList, aten.amin.default)


class MatchFail(Exception):
    """A candidate that does not match; ``reason`` says why, ``node`` where."""

    def __init__(self, reason: str, node: Node | None = None):
        self.reason = reason
        self.node = node
        super().__init__(f"{reason} (at {node.name})" if node is not None else reason)


def fail(reason: str, node: Node | None = None):
    raise MatchFail(reason, node)


def val(node) -> torch.Tensor | None:
    if isinstance(node, Node):
        v = node.meta.get("val")
        return v if isinstance(v, torch.Tensor) else None
    return None


def is_op(node, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def expect(node, targets, what: str) -> Node:
    if not isinstance(targets, (tuple, list)):
        targets = (targets,)
    if not is_op(node, *targets):
        got = node.target if isinstance(node, Node) else type(node).__name__
        fail(f"expected {what}, found {got}", node if isinstance(node, Node) else None)
    return node


def arg(node: Node, index: int, name: str, default=None):
    """Positional-or-keyword argument of a call_function node."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def getitem_of(node, source: Node | None = None) -> tuple[Node, int]:
    expect(node, operator.getitem, "a getitem")
    parent, index = node.args
    if source is not None and parent is not source:
        fail(f"expected an output of {source.name}", node)
    return parent, index


def strip(node, *targets):
    """Skip a chain of single-input wrappers (converts, views) upwards."""
    while is_op(node, *targets):
        node = node.args[0]
    return node


def strip_convert(node):
    return strip(node, CONVERT)


def is_last_dim(dims, ndim: int) -> bool:
    if isinstance(dims, int):
        dims = [dims]
    return list(dims) in ([-1], [ndim - 1])


def int_const(x, what: str, node: Node) -> int:
    if isinstance(x, int):
        return x
    fail(f"{what} is not a constant ({x})", node)


# ---------------------------------------------------------------------------------------------------
# row-wise regions


def _is_pointwise(node: Node) -> bool:
    target = node.target
    if target is CONVERT:
        return True
    tags = getattr(target, "tags", ())
    return torch.Tag.pointwise in tags


def _is_row_reduction(node: Node) -> bool:
    if not is_op(node, *ROW_REDUCTIONS):
        return False
    v = val(node.args[0])
    dims = arg(node, 1, "dim")
    keepdim = arg(node, 2, "keepdim", False)
    return v is not None and dims is not None and keepdim and is_last_dim(dims, v.dim())


def is_rowwise(node: Node) -> bool:
    return node.op == "call_function" and (_is_pointwise(node) or _is_row_reduction(node))


def _tensor_inputs(node: Node) -> list[Node]:
    return [n for n in node.all_input_nodes if val(n) is not None]


@dataclass
class Region:
    """Nodes computing ``output`` from ``inputs`` through row-wise ops only, in graph order."""

    inputs: tuple[Node, ...]
    output: Node
    nodes: list[Node]

    def evaluate(self, *values: torch.Tensor) -> torch.Tensor:
        env = dict(zip(self.inputs, values))

        def load(a):
            if isinstance(a, Node):
                if a not in env:
                    fail("region reads a value from outside", a)
                return env[a]
            if isinstance(a, (list, tuple)):
                return type(a)(load(x) for x in a)
            return a

        for node in self.nodes:
            env[node] = node.target(*load(node.args), **{k: load(v) for k, v in node.kwargs.items()})
        return env[self.output]


def backward_region(output: Node, inputs: Iterable[Node]) -> Region:
    """The row-wise region between ``inputs`` and ``output``; fails if any other tensor feeds it."""
    inputs = tuple(inputs)
    stop = set(inputs)
    seen: set[Node] = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node in stop or node in seen:
            continue
        if not is_rowwise(node):
            fail(f"{node.target} is not an elementwise op or a last-dim reduction", node)
        seen.add(node)
        stack.extend(_tensor_inputs(node))
    graph_order = {n: i for i, n in enumerate(output.graph.nodes)}
    return Region(inputs, output, sorted(seen, key=graph_order.__getitem__))


def matches(region: Region, probes: list[tuple[torch.Tensor, ...]], expected: Callable, tol: float) -> bool:
    """Whether ``region`` computes ``expected`` on every probe (relative max error <= tol)."""
    try:
        for probe in probes:
            got = region.evaluate(*probe).float()
            want = expected(*[p.float() for p in probe]).float()
            if got.shape != want.shape:
                return False
            scale = want.abs().max().clamp(min=1e-6)
            if not torch.isfinite(got).all() or ((got - want).abs().max() / scale) > tol:
                return False
        return True
    except MatchFail:
        return False
    except Exception:  # an op that rejects the probe (shape, dtype) is simply not this function
        return False


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2


# ---------------------------------------------------------------------------------------------------
# graph editing


def fake_call(fn: Callable, *args, **kwargs):
    """Run ``fn`` on the fake values of node arguments, in the graph's fake mode."""

    def to_val(a):
        if isinstance(a, Node):
            return a.meta["val"]
        if isinstance(a, (list, tuple)):
            return type(a)(to_val(x) for x in a)
        return a

    fake_args = to_val(args)
    fake_kwargs = {k: to_val(v) for k, v in kwargs.items()}
    fake_mode = detect_fake_mode([a for a in list(fake_args) + list(fake_kwargs.values())
                                  if isinstance(a, torch.Tensor)])
    if fake_mode is None:
        fail("no fake mode on the graph's values")
    with fake_mode:
        return fn(*fake_args, **fake_kwargs)


def call(graph: Graph, fn, args: tuple, kwargs: dict | None = None, meta_from: Node | None = None) -> Node:
    kwargs = kwargs or {}
    node = graph.call_function(fn, args, kwargs)
    node.meta["val"] = fake_call(fn, *args, **kwargs)
    if meta_from is not None:
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in meta_from.meta:
                node.meta[key] = meta_from.meta[key]
    return node


def call_multi(graph: Graph, fn, args: tuple, kwargs: dict | None = None, meta_from: Node | None = None):
    """Insert a call with a tuple result; return the getitem nodes of its outputs."""
    node = call(graph, fn, args, kwargs, meta_from)
    outs = []
    for i, v in enumerate(node.meta["val"]):
        item = graph.call_function(operator.getitem, (node, i))
        item.meta["val"] = v
        outs.append(item)
    return outs


def convert(graph: Graph, node: Node, dtype: torch.dtype) -> Node:
    if val(node).dtype == dtype:
        return node
    return call(graph, CONVERT, (node, dtype))


def module_path(node: Node) -> str:
    """The innermost module a node came from (``model.layers.0.mlp.experts``), for diagnostics."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<root>"
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L['self']", "<root>")
