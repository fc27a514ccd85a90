"""Experts, transformers' ``batched_mm`` implementation  ==>  ``inductor_moe::experts``.

Emitted by every family decorated with ``@use_experts_implementation`` when
``config._experts_implementation == "batched_mm"`` (what ``generate()`` picks for decode on GPU). The
forward (transformers/integrations/moe.py, ``batched_mm_experts_forward``), S = T * k::

    x = hidden.repeat_interleave(k, dim=0)                  # post-grad: unsqueeze/expand/clone/reshape
    e = ids.reshape(-1)                                     # 5.17: e.clamp(0, E - 1), always
    h = bmm(gate_up_proj[e], x[..., None])[..., 0]          # is_transposed: bmm(x[:, None], W[e])[:, 0]
    h = h + gate_up_proj_bias[e]                            # has_bias (GPT-OSS)
    a = act(gate) * up  (gate, up = h.chunk(2, -1))         # or the experts' own _apply_gate (GPT-OSS:
                                                            #  interleaved halves, clamped swiglu)
    y = bmm(down_proj[e], a[..., None])[..., 0] (+ down_proj_bias[e])
    out = (y * weights.reshape(-1)[:, None]).view(T, k, H).sum(1).to(hidden.dtype)

Anchor: a ``bmm`` of an expert-weight gather ``W[e]`` and the repeated tokens. Everything else is
matched structurally from there, the activation by probing the elementwise region between the gate/up
halves and the second ``bmm``: ``act(gate) * up`` for silu/gelu/gelu_tanh/relu, or GPT-OSS's
``swiglu_oai`` with its ``alpha``/``limit`` taken from the region's constants.

The clamp of 5.17 maps out-of-range ids to real experts while the op drops them: the two agree only for
ids in [0, E), so the clamp is accepted only when the ids are the indices of a top-k over E experts (or
come from a ``route`` op). The expert-parallel form (sentinel ``masked_fill`` of the weights, 5.23) and
a post-expert norm do not match.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import _experts, _fx, _router
from ._experts import copies as _copies
from ._experts import norm_dim as _norm_dim
from ._experts import squeeze_dims as _squeeze_dims
from ._fx import aten, fail

NAME = "experts_batched_mm"

@dataclass
class BatchedMatch:
    anchor: Node
    output: Node
    hidden: Node
    ids: Node
    weights: Node
    w13: Node  # as stored: [E, 2I, H], or [E, H, 2I] when transposed
    w2: Node  # [E, H, I], or [E, I, H] when transposed
    transposed: bool
    b13: Node | None
    b2: Node | None
    activation: str
    interleaved: bool
    alpha: float
    limit: float
    nodes: set[Node] = field(default_factory=set)

    def experts_kwargs(self) -> dict:
        return _experts.experts_kwargs(self.b13, self.b2, self.activation, self.interleaved, self.alpha, self.limit)


def _same(a, b) -> bool:
    return statically_known_true(a == b)


def _weight_gather(node, what: str) -> tuple[Node, Node]:
    """(W, flat_ids) of ``W[flat_ids]`` with W 3-D."""
    g = _fx.expect(node, aten.index.Tensor, f"the {what} gather W[expert_ids]")
    w, indices = g.args
    if len(indices) != 1 or indices[0] is None:
        fail(f"{what} gather with more than one index", g)
    wv = _fx.val(w)
    if wv is None or wv.dim() != 3 or not wv.is_floating_point():
        fail(f"{what} weights are not a 3-D float tensor", g)
    return w, indices[0]


def _repeat_interleave(x: Node, nodes: set) -> tuple[Node, int]:
    """(hidden, k) of ``hidden.repeat_interleave(k, dim=0)`` in its decomposed or its ATen form."""
    if _fx.is_op(x, aten.repeat_interleave.self_int):
        if _fx.arg(x, 2, "dim") != 0:
            fail("repeat_interleave is not over dim 0", x)
        nodes.add(x)
        return x.args[0], _fx.int_const(x.args[1], "repeats", x)
    view = _fx.expect(x, _fx.VIEW_OPS, "the repeated tokens, reshape(T * k, H)")
    nodes.add(view)
    src = view.args[0]
    if _fx.is_op(src, aten.clone.default):
        nodes.add(src)
        src = src.args[0]
    expand = _fx.expect(src, aten.expand.default, "expand(T, k, H) of the tokens")
    unsq = _fx.expect(expand.args[0], aten.unsqueeze.default, "hidden.unsqueeze(1)")
    if _norm_dim(unsq.args[1], 3) != 1:
        fail("tokens are not unsqueezed on dim 1 before the expand", unsq)
    hidden = unsq.args[0]
    hv, ev = _fx.val(hidden), _fx.val(expand)
    if hv is None or hv.dim() != 2 or ev.dim() != 3:
        fail("repeated tokens are not a [T, H] tensor expanded to [T, k, H]", expand)
    top_k = _fx.int_const(ev.shape[1], "repeats", expand)
    if not (_same(ev.shape[0], hv.shape[0]) and _same(ev.shape[2], hv.shape[1])):
        fail("expand does not repeat each token", expand)
    vv = _fx.val(view)
    if vv.dim() != 2 or not _same(vv.shape[0], hv.shape[0] * top_k) or not _same(vv.shape[1], hv.shape[1]):
        fail("repeated tokens are not reshaped to [T * k, H]", view)
    nodes.update({expand, unsq})
    return hidden, top_k


def _ids_in_range(ids: Node, num_experts: int) -> bool:
    """Whether ``ids`` are provably in [0, num_experts): top-k indices over an E-wide last dim, or the ids
    of a route op, through dtype casts."""
    src = _fx.strip_convert(ids)
    if not _fx.is_op(src, operator.getitem):
        return False
    parent, index = src.args
    if index != 1:
        return False
    if _fx.is_op(parent, aten.topk.default):
        v = _fx.val(parent.args[0])
        return (v is not None and v.dim() >= 1 and _fx.is_last_dim(_fx.arg(parent, 2, "dim", -1), v.dim())
                and _same(v.shape[-1], num_experts))
    if _fx.is_op(parent, torch.ops.inductor_moe.route.default):
        return _same(_fx.val(parent.args[0]).shape[-1], num_experts)
    return False


def _match_ids(index: Node, num_experts: int, top_k: int, nodes: set) -> tuple[Node, Node]:
    """(ids [T, k], flat ids) from the index of the weight gathers, past the 5.17 clamp."""
    flat, clamped = index, False
    if _fx.is_op(flat, aten.clamp.default):
        lo, hi = _fx.arg(flat, 1, "min"), _fx.arg(flat, 2, "max")
        if lo != 0 or hi != num_experts - 1:
            fail(f"expert ids clamped to [{lo}, {hi}], not [0, {num_experts - 1}]", flat)
        nodes.add(flat)
        flat, clamped = flat.args[0], True
    elif _fx.is_op(flat, aten.clamp_max.default) and _fx.is_op(flat.args[0], aten.clamp_min.default):
        if flat.args[1] != num_experts - 1 or flat.args[0].args[1] != 0:
            fail(f"expert ids clamped to [{flat.args[0].args[1]}, {flat.args[1]}], not [0, {num_experts - 1}]",
                 flat)
        nodes.update({flat, flat.args[0]})
        flat, clamped = flat.args[0].args[0], True
    view = _fx.expect(flat, _fx.VIEW_OPS, "expert_ids = ids.reshape(-1)")
    ids = view.args[0]
    iv = _fx.val(ids)
    if iv is None or iv.dim() != 2 or iv.dtype not in (torch.int32, torch.int64) or iv.shape[1] != top_k:
        fail(f"expert ids are not an integer [T, {top_k}] tensor", ids)
    if clamped and not _ids_in_range(ids, num_experts):
        # the clamp would send out-of-range ids to real experts; the op drops them
        fail("expert ids are clamped and not provably in [0, E) (top-k or route indices)", index)
    nodes.add(view)
    return ids, view


def _same_ids(a: Node, b: Node) -> bool:
    """Whether two gather indices are the same flat expert ids (the same node, or the same clamp)."""
    if a is b:
        return True
    strip = lambda n: _fx.strip(n, aten.clamp.default, aten.clamp_max.default, aten.clamp_min.default)  # noqa: E731
    return strip(a) is strip(b) and a.target == b.target and a.args[1:] == b.args[1:]


def _bmm_operands(bmm: Node, transposed: bool) -> tuple[Node, Node]:
    """(weight gather, vector operand) of one expert bmm."""
    return (bmm.args[1], bmm.args[0]) if transposed else (bmm.args[0], bmm.args[1])


def _unsqueezed(node: Node, transposed: bool, what: str) -> Node:
    """x of ``x.unsqueeze(1)`` (transposed) or ``x.unsqueeze(-1)``."""
    unsq = _fx.expect(node, aten.unsqueeze.default, f"{what}.unsqueeze({1 if transposed else -1})")
    if _norm_dim(unsq.args[1], 3) != (1 if transposed else 2):
        fail(f"{what} is unsqueezed on the wrong dim for this bmm layout", unsq)
    return unsq.args[0]


def _squeezed(bmm: Node, transposed: bool, nodes: set) -> Node:
    users = list(bmm.users)
    want = 1 if transposed else 2
    if len(users) != 1 or _squeeze_dims(users[0]) is None:
        fail("bmm output is not squeezed", bmm)
    sq = users[0]
    if [_norm_dim(d, 3) for d in _squeeze_dims(sq)] != [want]:
        fail("bmm output is squeezed on the wrong dim", sq)
    nodes.add(sq)
    return sq


def _bias_add(node: Node, flat_ids: Node, num_experts: int, width, what: str, nodes: set):
    """(output, bias) past ``node + B[flat_ids]``; bias None where there is no such add."""
    users = list(node.users)
    if len(users) != 1 or not _fx.is_op(users[0], aten.add.Tensor):
        return node, None
    add = users[0]
    other = add.args[1] if add.args[0] is node else add.args[0]
    if not _fx.is_op(other, aten.index.Tensor) or add.kwargs.get("alpha", 1) != 1:
        return node, None
    b, idx = _weight_gather_1d(other, what)
    if not _same_ids(idx, flat_ids):
        fail(f"{what} bias is gathered with other expert ids", other)
    bv = _fx.val(b)
    if not (_same(bv.shape[0], num_experts) and _same(bv.shape[1], width)):
        fail(f"{what} bias is not [E, {width}]", other)
    if _fx.val(add).dtype != _fx.val(node).dtype:
        fail(f"{what} bias add changes the dtype", add)
    nodes.update({add, other})
    return add, b


def _weight_gather_1d(node: Node, what: str) -> tuple[Node, Node]:
    b, indices = node.args
    if len(indices) != 1 or indices[0] is None:
        fail(f"{what} bias gather with more than one index", node)
    bv = _fx.val(b)
    if bv is None or bv.dim() != 2 or not bv.is_floating_point():
        fail(f"{what} bias is not a 2-D float tensor", node)
    return b, indices[0]


def _is_bmm_of_gather(node: Node) -> bool:
    return _fx.is_op(node, aten.bmm.default) and any(
        _fx.is_op(a, aten.index.Tensor) and len(a.args[1]) == 1 and _fx.val(a.args[0]) is not None
        and _fx.val(a.args[0]).dim() == 3 for a in node.args[:2])


def _is_repeated(node) -> bool:
    if not _fx.is_op(node, aten.unsqueeze.default):
        return False
    x = node.args[0]
    if _fx.is_op(x, aten.repeat_interleave.self_int):
        return True
    if not _fx.is_op(x, *_fx.VIEW_OPS):
        return False
    x = x.args[0]
    if _fx.is_op(x, aten.clone.default):
        x = x.args[0]
    return _fx.is_op(x, aten.expand.default)


def anchors(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if _is_bmm_of_gather(n) and any(_is_repeated(a) for a in n.args[:2])]


def match(bmm1: Node) -> BatchedMatch:
    nodes: set[Node] = {bmm1}
    transposed = _fx.is_op(bmm1.args[1], aten.index.Tensor) and _is_repeated(bmm1.args[0])
    gather1, vec1 = _bmm_operands(bmm1, transposed)
    w13, index = _weight_gather(gather1, "gate_up")
    nodes.add(gather1)
    nodes.add(vec1)
    hidden, top_k = _repeat_interleave(_unsqueezed(vec1, transposed, "the repeated tokens"), nodes)
    hv, w13v = _fx.val(hidden), _fx.val(w13)
    if not hv.is_floating_point():
        fail("hidden states are not float", hidden)
    num_experts = _fx.int_const(w13v.shape[0], "number of experts", gather1)
    hidden_dim = hv.shape[1]
    two_i, w13_h = (w13v.shape[2], w13v.shape[1]) if transposed else (w13v.shape[1], w13v.shape[2])
    if not _same(w13_h, hidden_dim):
        fail(f"gate_up weights {tuple(w13v.shape)} do not match the hidden size", gather1)
    if not isinstance(two_i, int) or two_i % 2:
        fail("gate_up width is not an even constant", gather1)
    inter = two_i // 2
    if w13v.dtype != hv.dtype:
        fail(f"expert weights are {w13v.dtype} but hidden states are {hv.dtype}", gather1)

    ids, flat_ids = _match_ids(index, num_experts, top_k, nodes)
    if not _same(_fx.val(ids).shape[0], hv.shape[0]):
        fail("expert ids and hidden states disagree on T", ids)

    h = _squeezed(bmm1, transposed, nodes)
    h, b13 = _bias_add(h, index, num_experts, two_i, "gate_up", nodes)
    activation, interleaved, alpha, limit, act_out = _match_activation(h, inter, nodes)

    # down projection: bmm(W2[e], a[..., None]) or bmm(a[:, None], W2[e])
    users = list(act_out.users)
    if len(users) != 1:
        fail("activation output has several users", act_out)
    vec2 = users[0]
    if _fx.is_op(vec2, _fx.CONVERT):
        fail("activation output is cast before the down projection", vec2)
    _unsqueezed(vec2, transposed, "the activation output")
    bmms = [u for u in vec2.users if _fx.is_op(u, aten.bmm.default)]
    if len(bmms) != 1 or len(vec2.users) != 1:
        fail("activation output does not feed one bmm", vec2)
    bmm2 = bmms[0]
    gather2, vec = _bmm_operands(bmm2, transposed)
    if vec is not vec2:
        fail("second bmm does not take the activation output in the layout of the first", bmm2)
    w2, index2 = _weight_gather(gather2, "down")
    if not _same_ids(index2, index):
        fail("down weights are gathered with other expert ids", gather2)
    w2v = _fx.val(w2)
    want = (num_experts, inter, hidden_dim) if transposed else (num_experts, hidden_dim, inter)
    if not all(_same(a, b) for a, b in zip(w2v.shape, want)):
        fail(f"down weights {tuple(w2v.shape)} are not {'[E, I, H]' if transposed else '[E, H, I]'}", gather2)
    if w2v.dtype != hv.dtype:
        fail("down weights have another dtype than the hidden states", gather2)
    nodes.update({vec2, bmm2, gather2})
    y = _squeezed(bmm2, transposed, nodes)
    y, b2 = _bias_add(y, index, num_experts, hidden_dim, "down", nodes)

    out, weights = _match_combine(y, top_k, hv, nodes)
    m = BatchedMatch(bmm1, out, hidden, ids, weights, w13, w2, transposed, b13, b2, activation, interleaved, alpha,
                     limit, nodes)

    inputs = {hidden, ids, weights, w13, w2, b13, b2}
    for n in nodes - inputs:
        outside = [u for u in n.users if u not in nodes and not _fx.is_op(u, aten.sym_size.int)]
        if n is not out and outside and n not in _id_side(flat_ids, index):
            fail(f"intermediate {n.name} is also used by {outside[0].name} outside the experts block", n)
    _router.dry_run(_experts_call(transposed), (hidden, ids, weights, w13, w2), m.experts_kwargs(), bmm1)
    return m


def _experts_call(transposed: bool):
    """The experts op on the weights as stored (transposed ones are permuted to [E, 2I, H] / [E, H, I])."""

    def call(hidden, ids, weights, w13, w2, **kwargs):
        if transposed:
            w13, w2 = w13.permute(0, 2, 1), w2.permute(0, 2, 1)
        return torch.ops.inductor_moe.experts.default(hidden, ids, weights, w13, w2, **kwargs)

    return call


def _id_side(flat_ids: Node, index: Node) -> set[Node]:
    """The flat ids and their clamp: cheap index math other blocks may share."""
    out, n = {flat_ids}, index
    while n is not flat_ids and isinstance(n, Node):
        out.add(n)
        n = n.args[0]
    return out


def _match_activation(h: Node, inter: int, nodes: set):
    """(activation, interleaved, alpha, limit, act_out) of the elementwise gating of ``h`` [S, 2I]."""
    gate, up, interleaved = _experts.gate_up_halves(h, inter, nodes)
    # the activation output: the one node that feeds the down projection's unsqueeze
    for cand in _router.rowwise_descendants(gate, up):
        if any(_fx.is_op(u, aten.unsqueeze.default) for u in cand.users):
            region = _experts.activation_region(cand, gate, up)
            break
    else:
        fail("no elementwise output of gate and up feeds the down projection", h)
    nodes.update({gate, up}, region.nodes)
    activation, alpha, limit = _experts.identify_activation(region, gate)
    return activation, interleaved, alpha, limit, region.output


def _match_combine(y: Node, top_k: int, hv, nodes: set) -> tuple[Node, Node]:
    copies = _copies(y, nodes)
    if len(copies) != 1 or len(copies[0].users) != 1:
        fail("down projection output has several users", y)
    y = copies[0]
    (mul,) = y.users
    _fx.expect(mul, aten.mul.Tensor, "multiply by the routing weights")
    scale = mul.args[1] if mul.args[0] is y else mul.args[0]
    unsq = _fx.expect(scale, aten.unsqueeze.default, "weights.reshape(-1).unsqueeze(-1)")
    if _norm_dim(unsq.args[1], 2) != 1:
        fail("routing weights are not unsqueezed on the last dim", unsq)
    flat_w = _fx.expect(unsq.args[0], _fx.VIEW_OPS, "weights.reshape(-1)")
    weights = flat_w.args[0]
    wv = _fx.val(weights)
    if wv is None or wv.dim() != 2 or wv.shape[1] != top_k or not wv.is_floating_point():
        fail(f"routing weights are not a float [T, {top_k}] tensor", weights)
    if _fx.val(flat_w).dim() != 1:
        fail("routing weights are not flattened", flat_w)
    nodes.update({mul, unsq, flat_w})

    (view,) = list(mul.users) if len(mul.users) == 1 else fail("weighted output has several users", mul)
    _fx.expect(view, _fx.VIEW_OPS, "view(T, k, H)")
    vv = _fx.val(view)
    if vv.dim() != 3 or vv.shape[1] != top_k or not _same(vv.shape[2], hv.shape[1]) or not _same(
            vv.shape[0], hv.shape[0]):
        fail("weighted output is not viewed as [T, k, H]", view)
    (total,) = list(view.users) if len(view.users) == 1 else fail("[T, k, H] view has several users", view)
    _fx.expect(total, aten.sum.dim_IntList, "sum over the top-k slots")
    if list(total.args[1]) not in ([1], [-2]) or _fx.arg(total, 2, "keepdim", False):
        fail("sum is not over the top-k dim", total)
    if _fx.arg(total, 3, "dtype") is not None:
        fail("sum with a dtype argument", total)
    nodes.update({view, total})
    return total, weights


def replace(graph: Graph, m: BatchedMatch) -> Node:
    with graph.inserting_before(m.output):
        w13, w2 = m.w13, m.w2
        if m.transposed:
            w13 = _fx.call(graph, aten.permute.default, (m.w13, [0, 2, 1]))
            w2 = _fx.call(graph, aten.permute.default, (m.w2, [0, 2, 1]))
        out = _fx.call(graph, torch.ops.inductor_moe.experts.default, (m.hidden, m.ids, m.weights, w13, w2),
                       m.experts_kwargs(), meta_from=m.anchor)
        result = _fx.convert(graph, out, _fx.val(m.output).dtype)
    m.output.replace_all_uses_with(result)
    return out
