"""Experts, transformers' ``grouped_mm`` implementation  ==>  ``inductor_moe::experts``.

Emitted by every family decorated with ``@use_experts_implementation`` when
``config._experts_implementation == "grouped_mm"`` (the default of ``from_pretrained``/``from_config``),
e.g. ``Qwen3MoeExperts``. The forward (transformers/integrations/moe.py, ``grouped_mm_experts_forward``)::

    ids_g, perm = sort(ids.reshape(-1));  x_g = hidden[perm // k];  w_g = weights.reshape(-1)[perm]
    offs = cumsum(histc(ids_g, bins=E, min=0, max=E-1), dtype=int32)
    h = grouped_mm(x_g, gate_up_proj.transpose(-2, -1), offs)      # aten._grouped_mm in bf16,
    h = act(gate) * up   (gate, up = h.chunk(2, -1))                # transformers::grouped_mm_fallback
    y = grouped_mm(h, down_proj.transpose(-2, -1), offs) * w_g[:, None]     # in fp32/fp16
    out = y[inverse(perm)].view(T, k, H).sum(1)

Families with ``is_transposed`` (GPT-OSS) multiply their stored [E, H, 2I] / [E, I, H] weights directly and
add per-row biases gathered with the sorted ids (``h = grouped_mm(...) + b13[ids_g]``); their gating is the
experts' own ``_apply_gate`` (GPT-OSS: interleaved halves ``h[..., ::2]``/``h[..., 1::2]``, clamped SwiGLU,
identified with its alpha/limit by probing, as in ``experts_batched_mm``).
transformers 5.17 also masks expert-parallel sentinel rows (``ids_g >= E``) with ``masked_fill``: a no-op
for ids in [0, E), and the op drops ids outside [0, E) the same way, so both forms match.
Anchor: the first grouped mm (its input is the token gather). The activation is identified by probing
the elementwise region between the gate/up halves and the second grouped mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import _experts, _fx, _router
from ._fx import aten, fail

NAME = "experts_grouped_mm"

GROUPED_MM_NAMES = ("aten::_grouped_mm", "transformers::grouped_mm_fallback")

def is_grouped_mm(node) -> bool:
    return (
        isinstance(node, Node)
        and node.op == "call_function"
        and isinstance(node.target, torch._ops.OpOverload)
        and node.target._schema.name in GROUPED_MM_NAMES
    )


@dataclass
class ExpertsMatch:
    anchor: Node
    output: Node
    hidden: Node
    ids: Node
    weights: Node
    w13_t: Node  # [E, H, 2I] as multiplied (HF's storage transposed, or GPT-OSS's storage); the op takes
    w2_t: Node  # [E, I, H]                                                               its transpose
    activation: str
    b13: Node | None = None  # [E, 2I] (GPT-OSS)
    b2: Node | None = None  # [E, H]
    interleaved: bool = False
    alpha: float = 1.702
    limit: float = 7.0
    nodes: set[Node] = field(default_factory=set)

    def experts_kwargs(self) -> dict:
        return _experts.experts_kwargs(self.b13, self.b2, self.activation, self.interleaved, self.alpha, self.limit)


def anchors(graph: Graph) -> list[Node]:
    found = []
    for node in graph.nodes:
        if is_grouped_mm(node) and _fx.is_op(_gather_of(node), aten.index.Tensor):
            found.append(node)
    return found


def _masked(node) -> tuple[Node, Node, object] | None:
    """(x, mask, fill) of ``masked_fill(x, mask, fill)`` or of its decomposition
    ``where(mask, full([], fill), x)``; None for any other node."""
    if _fx.is_op(node, aten.masked_fill.Scalar):
        return node.args[0], node.args[1], node.args[2]
    if _fx.is_op(node, aten.where.self):
        mask, fill, x = node.args
        if _fx.is_op(fill, aten.full.default) and list(fill.args[0]) == []:
            return x, mask, fill.args[1]
    return None


def _gather_of(mm: Node):
    """The token gather feeding a grouped mm's input, past a dtype cast and a sentinel mask."""
    x = _fx.strip_convert(mm.args[0])
    masked = _masked(x)
    return masked[0] if masked else x


def _same(a, b) -> bool:
    return statically_known_true(a == b)


def _check_grouped_mm(mm: Node):
    if mm.target._schema.name == "aten::_grouped_mm":
        if _fx.arg(mm, 3, "bias") is not None:
            fail("grouped mm with a bias argument", mm)
        out_dtype = _fx.arg(mm, 4, "out_dtype")
        if out_dtype is not None and out_dtype != _fx.val(mm).dtype:
            fail("grouped mm with an out_dtype", mm)
    inp = mm.args[0]
    if _fx.is_op(inp, _fx.CONVERT) and _fx.val(inp.args[0]).dtype != _fx.val(inp).dtype:
        fail("activations are cast to another dtype before the grouped mm", mm)


def _unclamped(node: Node, num_experts: int) -> Node:
    """Skip the sentinel clamp of the sorted ids, ``ids_g.clamp_(max=E - 1)`` (transformers 5.17: post-grad
    ``clamp_max``, or ``clamp`` with no lower bound). It only moves ids >= E (expert-parallel sentinels,
    whose rows the sentinel mask zeroes and the op drops) and leaves every id in [0, E) alone."""
    while _fx.is_op(node, aten.clamp.default, aten.clamp_max.default):
        if node.target is aten.clamp_max.default:
            lo, hi = None, node.args[1]
        else:
            lo, hi = _fx.arg(node, 1, "min"), _fx.arg(node, 2, "max")
        if lo not in (None, 0) or hi != num_experts - 1:
            fail(f"sorted expert ids clamped to [{lo}, {hi}], not to max {num_experts - 1}", node)
        node = node.args[0]
    return node


def _sentinel_mask(node: Node, sort_node: Node, num_experts: int, nodes: set) -> Node:
    """Skip ``masked_fill(x, (ids_g >= E).unsqueeze(-1), 0)`` (transformers 5.17), checking the mask."""
    masked = _masked(node)
    if masked is None:
        return node
    x, mask, value = masked
    unsq = _fx.expect(mask, aten.unsqueeze.default, "unsqueeze of the sentinel mask")
    ge = _fx.expect(unsq.args[0], (aten.ge.Scalar,), "ids_g >= num_experts")
    src = _unclamped(ge.args[0], num_experts)
    _fx.getitem_of(src, sort_node)
    if ge.args[1] != num_experts or value != 0:
        fail("masked_fill that is not the expert-parallel sentinel mask", node)
    nodes.update({node, unsq, ge})
    if _fx.is_op(node, aten.where.self):
        nodes.add(node.args[1])
    return x


def match(mm1: Node) -> ExpertsMatch:
    nodes: set[Node] = {mm1}
    _check_grouped_mm(mm1)
    w13_t = mm1.args[1]
    offs = _fx.arg(mm1, 2, "offs")
    w13v = _fx.val(w13_t)
    if w13v is None or w13v.dim() != 3:
        fail("first grouped mm weight is not 3-D [E, H, 2I]", mm1)
    num_experts = _fx.int_const(w13v.shape[0], "number of experts", mm1)

    # token gather: hidden[perm // k], perm from a sort of the flattened ids
    gather = _fx.expect(_gather_of(mm1), aten.index.Tensor, "the token gather hidden[perm // k]")
    nodes.add(gather)
    if _fx.is_op(mm1.args[0], _fx.CONVERT):
        nodes.add(mm1.args[0])
    hidden, indices = gather.args
    if len(indices) != 1:
        fail("token gather with more than one index", gather)
    tok = _fx.expect(indices[0], (aten.div.Tensor_mode, aten.floor_divide.default), "perm // top_k")
    if tok.target is aten.div.Tensor_mode and tok.kwargs.get("rounding_mode") != "floor":
        fail("token index is not a floor division", tok)
    perm, top_k = tok.args[:2]
    top_k = _fx.int_const(top_k, "top_k", tok)
    sort_node, index = _fx.getitem_of(perm)
    if index != 1:
        fail("token index does not come from the sort permutation", perm)
    _fx.expect(sort_node, (aten.sort.default, aten.sort.stable), "aten.sort of the flattened expert ids")
    if _fx.arg(sort_node, 2 if sort_node.target is aten.sort.default else 3, "descending", False):
        fail("descending sort of expert ids", sort_node)
    flat_ids = _fx.expect(sort_node.args[0], _fx.VIEW_OPS, "ids.reshape(-1)")
    ids = flat_ids.args[0]
    nodes.update({tok, perm, sort_node, flat_ids})
    if _sentinel_mask(_fx.strip_convert(mm1.args[0]), sort_node, num_experts, nodes) is not gather:
        fail("the first grouped mm does not read the token gather", mm1)

    hv, iv = _fx.val(hidden), _fx.val(ids)
    if hv is None or hv.dim() != 2 or not hv.is_floating_point():
        fail("gathered hidden states are not a 2-D float tensor", hidden)
    if iv is None or iv.dim() != 2 or iv.dtype not in (torch.int32, torch.int64) or iv.shape[1] != top_k:
        fail(f"expert ids are not an integer [T, {top_k}] tensor", ids)
    if not _same(iv.shape[0], hv.shape[0]):
        fail("expert ids and hidden states disagree on T", ids)
    if not _same(w13v.shape[1], hv.shape[1]):
        fail("first grouped mm weight does not match the hidden size", mm1)
    if w13v.dtype != hv.dtype:
        fail(f"expert weights are {w13v.dtype} but hidden states are {hv.dtype}", mm1)

    _match_offsets(offs, sort_node, num_experts, nodes)

    # second grouped mm: the other user of the offsets
    mms = [u for u in offs.users if is_grouped_mm(u) and u is not mm1]
    if len(mms) != 1:
        fail(f"offsets feed {len(mms) + 1} grouped mms, expected 2", offs)
    mm2 = mms[0]
    nodes.add(mm2)
    _check_grouped_mm(mm2)
    if _fx.arg(mm2, 2, "offs") is not offs:
        fail("second grouped mm takes other offsets", mm2)
    w2_t = mm2.args[1]
    w2v = _fx.val(w2_t)
    inter = w13v.shape[2] // 2
    if w2v is None or w2v.dim() != 3 or not all(_same(a, b) for a, b in zip(w2v.shape, (num_experts, inter, hv.shape[1]))):
        fail("second grouped mm weight is not [E, I, H] matching the first", mm2)
    if w2v.dtype != hv.dtype:
        fail("down-projection weights have another dtype", mm2)

    h, b13 = _bias(mm1, sort_node, num_experts, w13v.shape[2], "gate_up", nodes)
    activation, interleaved, alpha, limit = _match_activation(h, mm2, sort_node, num_experts, inter, nodes)
    y, b2 = _bias(mm2, sort_node, num_experts, hv.shape[1], "down", nodes)

    out, weights = _match_combine(y, perm, sort_node, num_experts, top_k, hv, nodes)

    inputs = {hidden, ids, weights, w13_t, w2_t, offs, b13, b2}
    for n in nodes - inputs:
        # shape queries (sym_size) keep a view alive but read no data
        outside = [u for u in n.users if u not in nodes and not _fx.is_op(u, aten.sym_size.int)]
        if n is not out and outside:
            fail(f"intermediate {n.name} is also used by {outside[0].name} outside the experts block", n)
    m = ExpertsMatch(mm1, out, hidden, ids, weights, w13_t, w2_t, activation, b13, b2, interleaved, alpha, limit,
                     nodes)
    _router.dry_run(_experts_call, (hidden, ids, weights, w13_t, w2_t), m.experts_kwargs(), mm1)
    return m


def _experts_call(hidden, ids, weights, w13_t, w2_t, **kwargs):
    return torch.ops.inductor_moe.experts.default(hidden, ids, weights, w13_t.permute(0, 2, 1),
                                                  w2_t.permute(0, 2, 1), **kwargs)


def _match_offsets(offs: Node, sort_node: Node, num_experts: int, nodes: set):
    cumsum = _fx.expect(offs, aten.cumsum.default, "cumsum of per-expert counts")
    histc = _fx.expect(cumsum.args[0], aten.histc.default, "histc of the sorted ids")
    src = _unclamped(_fx.strip_convert(histc.args[0]), num_experts)
    _fx.getitem_of(src, sort_node)
    bins, lo, hi = (_fx.arg(histc, i, n, d) for i, n, d in ((1, "bins", 100), (2, "min", 0), (3, "max", 0)))
    if bins != num_experts or lo != 0 or hi != num_experts - 1:
        fail(f"histc(bins={bins}, min={lo}, max={hi}) does not count {num_experts} experts", histc)
    nodes.update({cumsum, histc, histc.args[0], src})


def _bias(node: Node, sort_node: Node, num_experts: int, width, what: str, nodes: set) -> tuple[Node, Node | None]:
    """(output, bias) past ``node + B[ids_g]`` (GPT-OSS: ``out.add_(bias)`` of ``_grouped_linear``, the bias
    gathered with the sorted ids); (node, None) where there is no such add."""
    users = list(node.users)
    if len(users) != 1 or not _fx.is_op(users[0], aten.add.Tensor) or users[0].kwargs.get("alpha", 1) != 1:
        return node, None
    add = users[0]
    other = add.args[1] if add.args[0] is node else add.args[0]
    if not _fx.is_op(other, aten.index.Tensor):
        return node, None
    b, indices = other.args
    if len(indices) != 1 or indices[0] is None:
        fail(f"{what} bias gather with more than one index", other)
    _fx.getitem_of(_unclamped(indices[0], num_experts), sort_node)
    bv = _fx.val(b)
    if bv is None or bv.dim() != 2 or not (_same(bv.shape[0], num_experts) and _same(bv.shape[1], width)):
        fail(f"{what} bias is not [E, {width}]", other)
    if _fx.val(add).dtype != _fx.val(node).dtype:
        fail(f"{what} bias add changes the dtype", add)
    nodes.update({add, other})
    if indices[0] is not _unclamped(indices[0], num_experts):
        nodes.add(indices[0])
    return add, b


def _match_activation(h: Node, mm2: Node, sort_node: Node, num_experts: int, inter, nodes: set):
    """(activation, interleaved, alpha, limit) of the elementwise gating between ``h`` (the first
    projection, bias added) and the second grouped mm."""
    masked = [u for u in h.users if _masked(u) is not None]
    if masked:
        h = masked[0]
        _sentinel_mask(h, sort_node, num_experts, nodes)
    gate, up, interleaved = _experts.gate_up_halves(h, inter, nodes)
    act_out = mm2.args[0]
    if _fx.is_op(act_out, _fx.CONVERT):
        nodes.add(act_out)
        act_out = act_out.args[0]
    region = _experts.activation_region(act_out, gate, up)
    nodes.update({gate, up}, region.nodes)
    activation, alpha, limit = _experts.identify_activation(region, gate)
    return activation, interleaved, alpha, limit


def _match_combine(y: Node, perm: Node, sort_node: Node, num_experts: int, top_k: int, hv, nodes: set):
    users = list(y.users)
    if len(users) == 1 and _masked(users[0]) is not None:
        y = users[0]
        _sentinel_mask(y, sort_node, num_experts, nodes)
        users = list(y.users)
    if len(users) != 1:
        fail("down projection output has several users", y)
    mul = _fx.expect(users[0], aten.mul.Tensor, "multiply by the routing weights")
    scale = mul.args[1] if mul.args[0] is y else mul.args[0]
    unsq = _fx.expect(scale, aten.unsqueeze.default, "weights_g[:, None]")
    gathered = _fx.expect(unsq.args[0], aten.index.Tensor, "weights.reshape(-1)[perm]")
    flat_w, (idx,) = gathered.args[0], gathered.args[1]
    if idx is not perm:
        fail("routing weights are gathered with another permutation", gathered)
    flat_w = _fx.expect(flat_w, _fx.VIEW_OPS, "weights.reshape(-1)")
    weights = flat_w.args[0]
    wv = _fx.val(weights)
    if wv is None or wv.dim() != 2 or wv.shape[1] != top_k or not wv.is_floating_point():
        fail(f"routing weights are not a float [T, {top_k}] tensor", weights)
    nodes.update({mul, unsq, gathered, flat_w})

    (restore,) = list(mul.users) if len(mul.users) == 1 else fail("weighted output has several users", mul)
    _fx.expect(restore, aten.index.Tensor, "weighted_out[inverse(perm)]")
    (inv,) = restore.args[1]
    _fx.expect(inv, aten.index_put.default, "inverse permutation (index_put)")
    if list(inv.args[1]) != [perm]:
        fail("inverse permutation is not built from the sort permutation", inv)
    iota = _fx.expect(inv.args[2], (torch.ops.prims.iota.default, aten.arange.default, aten.arange.start_step),
                      "arange")
    nodes.update({restore, inv, iota, inv.args[0]})

    (view,) = list(restore.users) if len(restore.users) == 1 else fail("restored output has several users", restore)
    _fx.expect(view, _fx.VIEW_OPS, "view(T, k, H)")
    vv = _fx.val(view)
    if vv.dim() != 3 or vv.shape[1] != top_k or not _same(vv.shape[2], hv.shape[1]):
        fail("restored output is not viewed as [T, k, H]", view)
    (total,) = list(view.users) if len(view.users) == 1 else fail("[T, k, H] view has several users", view)
    _fx.expect(total, aten.sum.dim_IntList, "sum over the top-k slots")
    if list(total.args[1]) not in ([1], [-2]) or _fx.arg(total, 2, "keepdim", False):
        fail("sum is not over the top-k dim", total)
    nodes.update({view, total})
    return total, weights


def replace(graph: Graph, m: ExpertsMatch) -> Node:
    with graph.inserting_before(m.output):
        w13 = _fx.call(graph, aten.permute.default, (m.w13_t, [0, 2, 1]))
        w2 = _fx.call(graph, aten.permute.default, (m.w2_t, [0, 2, 1]))
        out = _fx.call(
            graph, torch.ops.inductor_moe.experts.default, (m.hidden, m.ids, m.weights, w13, w2),
            m.experts_kwargs(), meta_from=m.anchor,
        )
        result = _fx.convert(graph, out, _fx.val(m.output).dtype)
    m.output.replace_all_uses_with(result)
    return out

