"""Experts, hand-written in the gpt-fast style (per-token weight gathers + ``einsum``)  ==>
``inductor_moe::experts`` with separate gate (``w13``) and up (``w3``) weights.

The form (gpt-fast ``mixtral-moe``: ``ConditionalFeedForward`` and the combine of ``MOEFeedForward``)::

    w1_weights = w1[ids]; w3_weights = w3[ids]; w2_weights = w2[ids]      # [T, k, I, H] / [T, k, H, I]
    x1 = silu(einsum("ti,taoi->tao", x, w1_weights))
    x3 = einsum("ti,taoi->tao", x, w3_weights)
    y = einsum("tao,taio->tai", x1 * x3, w2_weights)
    out = einsum("tai,ta->ti", y, weights)                  # or (y * weights[..., None]).sum(1)

In the post-grad graph the gathers are ``aten.index.Tensor(W, [ids])`` and every einsum is a ``bmm``
(or ``mm``, or a ``mul`` where a contracted axis has size 1) between chains of view/reshape/permute/
unsqueeze/squeeze/clone whose sizes are baked in (and change with T = 1, k = 1, static or dynamic shapes).
So nothing here depends on the exact chains: the walk tracks which axis is which.

Every tensor on the way is described by its dims, each a tuple of *axes* (an axis is a named extent; a
dim that merges several axes holds them in order; size-1 dims hold none); reshapes regroup the axes in
order (a reshape that would split an axis fails), permutes reorder dims, ``bmm``/``mm``/``mul`` align
their operands' axes (equating them, sizes checked) and record the axes they contract, ``sum`` records
the axes it sums. Leaves are the ids [T, k], the three gathers [T, k, N, K] (their first two axes are the
ids' axes: a gather's row (t, a) is the expert ``ids[t, a]``), the hidden states [T, H], the output of the
activation and the routing weights [T, k]; each product term remembers which leaves it multiplies and
which axes it has summed. At the end the axes must work out as the MoE: the gate and up projections
contract the hidden states with their weights over H alone, the down projection contracts the
activation with its weights over I alone, the routing weights [T, k] multiply that once and the slots
(k) are summed after that; the output is [T, H] with T the ids' tokens. Which weight axis is H (or I)
follows from the contractions, so weights stored transposed are passed as views, never copied. The
activation between the projections is identified by probing (``act(gate) * up``).

Anchor: the first (graph order) weight gather ``W[ids]`` of each 2-D ids tensor. Exactly three gathers
of the same ids (w1, w3, w2); two of them must contract with the same hidden states.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import _experts, _fx, _router
from ._fx import aten, fail

NAME = "experts_gather_einsum"

# order-preserving reshapes: the generic regrouping rule
RESHAPES = (*_fx.VIEW_OPS, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
IDENTITY = (aten.clone.default, aten.alias.default, aten.contiguous.default)
MOVES = (*RESHAPES, *IDENTITY, aten.permute.default, aten.transpose.int, aten.t.default, aten.expand.default)
CONTRACTIONS = (aten.bmm.default, aten.mm.default, aten.mul.Tensor, aten.sum.dim_IntList)


def _is_one(size) -> bool:
    return statically_known_true(size == 1)


def _same(a, b) -> bool:
    return statically_known_true(a == b)


class _Axes:
    """Union-find over axes; each axis has a size (int or SymInt)."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list = []

    def new(self, size) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int, node: Node):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if not _same(self.size[ra], self.size[rb]):
            fail(f"{node.target} aligns axes of sizes {self.size[ra]} and {self.size[rb]}", node)
        self.parent[rb] = ra

    def dims(self, shape) -> tuple:
        """Fresh axes for a leaf of ``shape`` (size-1 dims hold none)."""
        return tuple(() if _is_one(s) else (self.new(s),) for s in shape)

    def resolve(self, dims) -> tuple:
        return tuple(tuple(self.find(a) for a in d) for d in dims)

    def unify_dims(self, x: tuple, y: tuple, node: Node):
        if len(x) != len(y):
            fail(f"{node.target} aligns dims made of {len(x)} and {len(y)} axes", node)
        for a, b in zip(x, y):
            self.union(a, b, node)


@dataclass(frozen=True)
class _Val:
    """A tracked tensor: its dims (tuples of axes), the leaves it is a product of, the axes it summed."""

    dims: tuple
    factors: tuple = ()
    summed: frozenset = frozenset()


# ---------------------------------------------------------------------------------------------------
# rules


def _reshape(ax: _Axes, v: _Val, shape, node: Node) -> _Val:
    axes = [a for d in v.dims for a in d]
    out, i = [], 0
    for s in shape:
        if _is_one(s):
            out.append(())
            continue
        group, prod = [], 1
        while not (group and _same(prod, s)):
            if i >= len(axes):
                fail(f"reshape to {list(shape)} splits an axis (sizes {[ax.size[a] for a in axes]})", node)
            group.append(axes[i])
            prod = prod * ax.size[axes[i]]
            i += 1
        out.append(tuple(group))
    if i != len(axes):
        fail(f"reshape to {list(shape)} does not keep every axis", node)
    return _Val(tuple(out), v.factors, v.summed)


def _move(ax: _Axes, node: Node, v: _Val) -> _Val:
    """The tracked value after one movement op."""
    out = _fx.val(node)
    if out is None:
        fail("movement op without a tensor value", node)
    if _fx.is_op(node, *RESHAPES):
        return _reshape(ax, v, out.shape, node)
    if _fx.is_op(node, *IDENTITY):
        return v
    ndim = len(v.dims)
    if _fx.is_op(node, aten.permute.default):
        perm = [_experts.norm_dim(p, ndim) for p in node.args[1]]
        return _Val(tuple(v.dims[p] for p in perm), v.factors, v.summed)
    if _fx.is_op(node, aten.transpose.int, aten.t.default):
        d0, d1 = (_experts.norm_dim(node.args[1], ndim), _experts.norm_dim(node.args[2], ndim)) if len(
            node.args) > 1 else (0, 1)
        dims = list(v.dims)
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return _Val(tuple(dims), v.factors, v.summed)
    if _fx.is_op(node, aten.expand.default):
        before = _fx.val(node.args[0]).shape
        if len(before) != len(out.shape) or any(_is_one(a) and not _is_one(b) for a, b in zip(before, out.shape)):
            fail("expand broadcasts a dim (the value would be repeated, not an einsum operand)", node)
        return v
    fail(f"{node.target} is not a movement op", node)


def _combine(ax: _Axes, a: _Val, b: _Val, dims: tuple, contracted: tuple, node: Node) -> _Val:
    """The product of two terms with output ``dims`` summed over ``contracted`` axes."""
    shared = set(a.factors) & set(b.factors)
    if shared:
        fail(f"{node.target} multiplies {sorted(n.name for n in shared)[0]} into the same term twice", node)

    def free(v):
        return {ax.find(x) for d in v.dims for x in d}

    for s, t in ((a, b), (b, a)):
        clash = {ax.find(x) for x in s.summed} & (free(t) | {ax.find(x) for x in t.summed})
        if clash:
            fail(f"{node.target} multiplies by an axis the other operand has already summed", node)
    out = [ax.find(x) for d in dims for x in d]
    if len(set(out)) != len(out):
        fail(f"{node.target} keeps one axis twice (a diagonal, not an einsum of the MoE)", node)
    if {ax.find(x) for x in contracted} & set(out):
        fail(f"{node.target} contracts an axis it also keeps", node)
    return _Val(tuple(dims), a.factors + b.factors, frozenset(a.summed | b.summed | set(contracted)))


def _contract(ax: _Axes, node: Node, operands: dict[Node, _Val]) -> _Val:
    """The tracked value of a bmm / mm / mul / sum from the values of its tensor operands."""
    if _fx.is_op(node, aten.sum.dim_IntList):
        v = operands[node.args[0]]
        if _fx.arg(node, 3, "dtype") is not None:
            fail("sum with a dtype argument", node)
        ndim = len(v.dims)
        dims = {_experts.norm_dim(d, ndim) for d in node.args[1]}
        keep = _fx.arg(node, 2, "keepdim", False)
        out = tuple(() if i in dims else d for i, d in enumerate(v.dims) if keep or i not in dims)
        summed = tuple(x for i in dims for x in v.dims[i])
        return _Val(out, v.factors, frozenset(v.summed | set(summed)))
    left, right = node.args[0], node.args[1]
    if not (isinstance(left, Node) and isinstance(right, Node)):
        fail(f"{node.target} by a scalar", node)
    a, b = operands[left], operands[right]
    if _fx.is_op(node, aten.bmm.default):
        if len(a.dims) != 3 or len(b.dims) != 3:
            fail("bmm operands are not 3-D", node)
        ax.unify_dims(a.dims[0], b.dims[0], node)
        ax.unify_dims(a.dims[2], b.dims[1], node)
        return _combine(ax, a, b, (a.dims[0], a.dims[1], b.dims[2]), a.dims[2], node)
    if _fx.is_op(node, aten.mm.default):
        ax.unify_dims(a.dims[1], b.dims[0], node)
        return _combine(ax, a, b, (a.dims[0], b.dims[1]), a.dims[1], node)
    # mul: broadcast from the right; a size-1 dim takes the other operand's axes
    n = max(len(a.dims), len(b.dims))
    da = ((),) * (n - len(a.dims)) + a.dims
    db = ((),) * (n - len(b.dims)) + b.dims
    dims = []
    for x, y in zip(da, db):
        if x and y:
            ax.unify_dims(x, y, node)
        dims.append(x or y)
    return _combine(ax, a, b, tuple(dims), (), node)


# ---------------------------------------------------------------------------------------------------
# the walk


def _real_users(node: Node) -> list[Node]:
    return [u for u in node.users if not _fx.is_op(u, aten.sym_size.int)]


def _forward(ax: _Axes, node: Node, v: _Val, nodes: set) -> tuple[Node, _Val]:
    """Follow single-user movement ops down from ``node``; the last node of the chain and its value."""
    while True:
        users = _real_users(node)
        if len(users) != 1 or not _fx.is_op(users[0], *MOVES):
            return node, v
        node = users[0]
        v = _move(ax, node, v)
        nodes.add(node)


def _back_to_leaf(operand: Node, what: str) -> tuple[Node, list[Node]]:
    """(leaf, movement chain from the leaf down to ``operand``): the leaf is the 2-D node farthest up the
    chain of movement ops above ``operand`` (the gate and up products may reach the same hidden states
    through separate view chains, e.g. Inductor's bmm -> squeeze + mm for a batch of 1 on GPUs)."""
    path, node, found = [], operand, None
    while True:
        v = _fx.val(node)
        if v is not None and v.dim() == 2:
            found = len(path)
        path.append(node)
        if not _fx.is_op(node, *MOVES):
            break
        node = node.args[0]
    if found is None:
        fail(f"{what} is not a 2-D tensor seen through views", operand)
    return path[found], list(reversed(path[:found]))


def _leaf_value(ax: _Axes, leaf: Node, chain: list[Node], leaves: dict) -> tuple[_Val, _Val]:
    """(value at the leaf, value at the chain's end); a leaf met twice keeps its axes."""
    if leaf not in leaves:
        leaves[leaf] = _Val(ax.dims(_fx.val(leaf).shape), (leaf,))
    v = leaves[leaf]
    for n in chain:
        v = _move(ax, n, v)
    return leaves[leaf], v


def _is_weight_gather(node) -> bool:
    if not _fx.is_op(node, aten.index.Tensor):
        return False
    w, indices = node.args[0], node.args[1]
    if not isinstance(indices, (list, tuple)) or len(indices) != 1 or not isinstance(indices[0], Node):
        return False
    wv, iv, out = _fx.val(w), _fx.val(indices[0]), _fx.val(node)
    return (wv is not None and iv is not None and out is not None and wv.dim() == 3 and wv.is_floating_point()
            and iv.dim() == 2 and iv.dtype in (torch.int32, torch.int64) and out.dim() == 4)


def _gathers(ids: Node) -> list[Node]:
    order = _router.graph_order(ids)
    return sorted((u for u in ids.users if _is_weight_gather(u) and u.args[1][0] is ids), key=order.__getitem__)


def anchors(graph: Graph) -> list[Node]:
    out, seen = [], set()
    for n in graph.nodes:
        if _is_weight_gather(n) and n.args[1][0] not in seen:
            seen.add(n.args[1][0])
            out.append(n)
    return out


@dataclass
class EinsumMatch:
    anchor: Node
    output: Node
    hidden: Node
    ids: Node
    weights: Node
    w1: Node
    w3: Node
    w2: Node
    w1_t: bool  # stored [E, H, I] (passed as a transposed view)
    w3_t: bool
    w2_t: bool  # stored [E, I, H]
    activation: str
    alpha: float
    limit: float
    nodes: set[Node] = field(default_factory=set)

    def experts_kwargs(self) -> dict:
        return _experts.experts_kwargs(None, None, self.activation, False, self.alpha, self.limit)


def _operand_values(ax, node: Node, at: dict, leaves: dict, what: str = "routing weights") -> dict:
    """Values of the tensor operands of ``node``: tracked ones from ``at``, the others as new leaves (views
    of the hidden states or routing weights: shared with other code, so not part of the block)."""
    vals = {}
    for operand in node.all_input_nodes:
        if _fx.val(operand) is None:
            continue
        if operand in at:
            vals[operand] = at[operand]
            continue
        leaf, chain = _back_to_leaf(operand, what)
        _, vals[operand] = _leaf_value(ax, leaf, chain, leaves)
    return vals


def match(anchor: Node) -> EinsumMatch:
    ids = anchor.args[1][0]
    gathers = _gathers(ids)
    if len(gathers) != 3:
        fail(f"the ids index {len(gathers)} expert weight tensors, not three (w1, w3, w2)", anchor)
    ax = _Axes()
    iv = _fx.val(ids)
    ids_dims = ax.dims(iv.shape)
    nodes: set[Node] = set(gathers)  # nodes computed by the block: must have no users outside it
    leaves: dict[Node, _Val] = {}
    at: dict[Node, _Val] = {}
    num_experts = _fx.val(gathers[0].args[0]).shape[0]
    contraction, start = {}, {}
    for g in gathers:
        wv = _fx.val(g.args[0])
        if not _same(wv.shape[0], num_experts):
            fail("the gathered weights disagree on the number of experts", g)
        v = _Val(ids_dims + ax.dims(wv.shape[1:]), (g,))
        start[g] = v
        end, v = _forward(ax, g, v, nodes)
        while len(_real_users(end)) == 1 and _fx.is_op(_real_users(end)[0], aten.sum.dim_IntList):
            # an axis summed before the product (an einsum index only the weights have): tracked, so the
            # checks below can say which axis it was
            (end,) = _real_users(end)
            nodes.add(end)
            end, v = _forward(ax, end, _contract(ax, end, {end.args[0]: v}), nodes)
        at[end] = v
        users = _real_users(end)
        if len(users) != 1 or not _fx.is_op(users[0], aten.bmm.default, aten.mm.default, aten.mul.Tensor):
            fail("gathered expert weights do not feed one bmm / mm / mul (through views)", end)
        contraction[g] = users[0]
    if len(set(contraction.values())) != 3:
        fail("two weight gathers meet in one product", anchor)

    # gate and up: the two products of a gather with the same 2-D hidden states
    sources = {}
    for g, c in contraction.items():
        other = [a for a in c.args[:2] if isinstance(a, Node) and a not in at]
        if len(other) == 1:
            try:
                sources[g] = _back_to_leaf(other[0], "hidden states")[0]
            except _fx.MatchFail:
                pass
    by_source: dict[Node, list[Node]] = {}
    for g, s in sources.items():
        by_source.setdefault(s, []).append(g)
    pairs = [gs for gs in by_source.values() if len(gs) == 2]
    if len(pairs) != 1:
        fail("no two weight gathers are multiplied with the same hidden states (gate and up projections)", anchor)
    first = pairs[0]
    (down,) = [g for g in gathers if g not in first]
    hidden = next(s for s, gs in by_source.items() if gs is first)
    hv = _fx.val(hidden)
    if not hv.is_floating_point():
        fail("hidden states are not float", hidden)

    projections = {}
    for g in first:
        c = contraction[g]
        nodes.add(c)
        v = _contract(ax, c, _operand_values(ax, c, at, leaves, "hidden states"))
        end, v = _forward(ax, c, v, nodes)
        projections[g] = (end, v)
    (g_a, (r_a, v_a)), (g_b, (r_b, v_b)) = projections.items()
    if r_a is r_b:
        fail("gate and up projections end in one node", r_a)

    # the activation: act(gate) * up, elementwise; which projection is the gate comes from probing
    act_out, region_nodes = None, None
    for cand in _router.rowwise_descendants(r_a, r_b):
        if not any(not _fx.is_rowwise(u) for u in _real_users(cand)):
            continue
        try:
            region_nodes = _experts.activation_region(cand, r_a, r_b).nodes
        except _fx.MatchFail:
            continue
        read = {i for n in region_nodes for i in n.all_input_nodes}
        if r_a in read and r_b in read:
            act_out = cand
            break
    if act_out is None:
        fail("no elementwise function of both projections feeds the down projection", r_a)
    va, vb = _fx.val(r_a), _fx.val(r_b)
    if tuple(va.shape) != tuple(vb.shape) or tuple(_fx.val(act_out).shape) != tuple(va.shape):
        fail("gate, up and activation output differ in shape (a broadcast)", act_out)
    if len(v_a.dims) != len(v_b.dims):
        fail("gate and up projections differ in rank", act_out)
    for x, y in zip(v_a.dims, v_b.dims):  # the elementwise ops align gate and up axis by axis
        ax.unify_dims(x, y, act_out)
    found, last = None, None
    for gate, up, g_gate, g_up in ((r_a, r_b, g_a, g_b), (r_b, r_a, g_b, g_a)):
        try:
            found = (_experts.identify_activation(_fx.Region((gate, up), act_out, region_nodes), gate), gate, g_gate,
                     g_up)
            break
        except _fx.MatchFail as e:
            last = last or e
    if found is None:
        raise last
    (activation, alpha, limit), gate, g_gate, g_up = found
    nodes.update(region_nodes)
    gate_term = projections[g_gate][1]
    up_term = projections[g_up][1]

    # down projection: the activation (a new leaf) times the third gather
    act_val = _Val(v_a.dims, (act_out,))
    end, v = _forward(ax, act_out, act_val, nodes)
    at[end] = v
    c = contraction[down]
    if end not in c.args[:2]:
        fail("the activation output does not feed the product with the third weight gather", c)
    nodes.add(c)
    v = _contract(ax, c, _operand_values(ax, c, at, leaves, "down operand"))
    down_term = v
    node, v = _forward(ax, c, v, nodes)

    # routing weights and the sum over the slots, until the [T, H] output
    weights, output = None, None
    while True:
        T, A = ax.resolve(ids_dims)
        shape = _fx.val(node).shape
        dims = ax.resolve(v.dims)
        summed = {ax.find(x) for x in v.summed}
        if weights is not None and len(shape) == 2 and dims[0] == T and set(A) <= summed:
            output = node
            break
        users = _real_users(node)
        if len(users) != 1:
            fail("the down projection's output has several users before the [T, H] result", node)
        u = users[0]
        if _fx.is_op(u, *MOVES):
            v = _move(ax, u, v)
        elif _fx.is_op(u, *CONTRACTIONS):
            others = [o for o in u.all_input_nodes if o is not node and _fx.val(o) is not None]
            if any(o in at for o in others):
                fail("the expert outputs are multiplied by another value of the experts block", u)
            if others:
                if weights is not None or len(others) != 1:
                    fail("the expert outputs are multiplied by more than one tensor", u)
                weights = _back_to_leaf(others[0], "routing weights")[0]
            at[node] = v
            v = _contract(ax, u, _operand_values(ax, u, at, leaves))
        else:
            fail(f"the expert outputs reach {u.target} before they are weighted and summed to [T, H]", u)
        nodes.add(u)
        node = u

    # the axes must work out as the MoE
    def classes(dims):
        return [x for d in ax.resolve(dims) for x in d]

    T, A = ax.resolve(ids_dims)
    h_dims = ax.resolve(leaves[hidden].dims)
    if h_dims[0] != T:
        fail("the hidden states' rows are not the ids' tokens", hidden)
    H = h_dims[1]
    if len(H) != 1 or H[0] in T + A:
        fail("the hidden size is not one axis of its own", hidden)
    for name, term, g in (("gate", gate_term, g_gate), ("up", up_term, g_up)):
        if {ax.find(x) for x in term.summed} != set(H):
            fail(f"the {name} projection does not contract over the hidden size alone", contraction[g])
        if set(term.factors) != {hidden, g}:
            fail(f"the {name} projection is not hidden states x gathered weights", contraction[g])
    g_dims = {g: ax.resolve(start[g].dims) for g in gathers}
    inter = [d for d in g_dims[g_gate][2:] if d != H]
    if len(inter) != 1 or len(inter[0]) != 1 or inter[0][0] in T + A + H:
        fail("the gate weights' axes are not hidden size and intermediate size", g_gate)
    (I,) = inter
    if sorted(classes(gate_term.dims)) != sorted(T + A + I):
        fail("the gate projection is not [tokens, slots, intermediate]", gate)
    transposed = {}
    for g, what in ((g_gate, "gate"), (g_up, "up")):
        n_ax, k_ax = g_dims[g][2], g_dims[g][3]
        if (n_ax, k_ax) not in ((I, H), (H, I)):
            fail(f"the {what} weights' axes are not (intermediate, hidden)", g)
        if g_dims[g][:2] != (T, A):
            fail(f"the {what} weights are not gathered per (token, slot)", g)
        transposed[g] = n_ax == H
    if {ax.find(x) for x in down_term.summed} != set(I) or set(down_term.factors) != {act_out, down}:
        fail("the down projection does not contract the activation with its weights over the intermediate size",
             contraction[down])
    d_n, d_k = g_dims[down][2], g_dims[down][3]
    if I not in (d_n, d_k) or d_n == d_k or len(d_n) != 1 or len(d_k) != 1:
        fail("the down weights' axes are not (hidden, intermediate)", down)
    transposed[down] = d_n == I
    H2 = d_k if d_n == I else d_n
    if H2[0] in T + A + I:
        fail("the down projection's output axis is not the hidden size", down)
    if weights is None:
        fail("the expert outputs are not multiplied by routing weights", output)
    wv = _fx.val(weights)
    if not wv.is_floating_point() or ax.resolve(leaves[weights].dims) != (T, A):
        fail("the routing weights are not a float [tokens, slots] tensor paired with the ids", weights)
    if set(v.factors) != {act_out, down, weights}:
        fail("the output is not activation x down weights x routing weights", output)
    if {ax.find(x) for x in v.summed} != set(I + A):
        fail("the output does not sum over the intermediate size and the slots alone", output)
    if ax.resolve(v.dims) != (T, H2) or len(_fx.val(output).shape) != 2:
        fail("the result is not [tokens, hidden]", output)
    if not (_same(_fx.val(output).shape[0], hv.shape[0]) and _same(_fx.val(output).shape[1], hv.shape[1])):
        fail("the result's shape is not the hidden states'", output)
    for g in gathers:
        if _fx.val(g.args[0]).dtype != hv.dtype:
            fail(f"expert weights are {_fx.val(g.args[0]).dtype} but hidden states are {hv.dtype}", g)

    for n in nodes:
        if n is output:
            continue
        outside = [u for u in _real_users(n) if u not in nodes]
        if outside:
            fail(f"intermediate {n.name} is also used by {outside[0].name} outside the experts block", n)
    m = EinsumMatch(anchor, output, hidden, ids, weights, g_gate.args[0], g_up.args[0], down.args[0],
                    transposed[g_gate], transposed[g_up], transposed[down], activation, alpha, limit, nodes)
    _router.dry_run(_experts_call(m), (hidden, ids, weights, m.w1, m.w2, m.w3), m.experts_kwargs(), anchor)
    return m


def _experts_call(m: EinsumMatch):
    def call(hidden, ids, weights, w1, w2, w3, **kwargs):
        w1 = w1.permute(0, 2, 1) if m.w1_t else w1
        w3 = w3.permute(0, 2, 1) if m.w3_t else w3
        w2 = w2.permute(0, 2, 1) if m.w2_t else w2
        return torch.ops.inductor_moe.experts.default(hidden, ids, weights, w1, w2, w3=w3, **kwargs)

    return call


def replace(graph: Graph, m: EinsumMatch) -> Node:
    with graph.inserting_before(m.output):
        w = {}
        for name, node, t in (("w1", m.w1, m.w1_t), ("w3", m.w3, m.w3_t), ("w2", m.w2, m.w2_t)):
            w[name] = _fx.call(graph, aten.permute.default, (node, [0, 2, 1])) if t else node
        out = _fx.call(graph, torch.ops.inductor_moe.experts.default, (m.hidden, m.ids, m.weights, w["w1"], w["w2"]),
                       {**m.experts_kwargs(), "w3": w["w3"]}, meta_from=m.anchor)
        result = _fx.convert(graph, out, _fx.val(m.output).dtype)
    m.output.replace_all_uses_with(result)
    return out
