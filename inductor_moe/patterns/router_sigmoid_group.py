"""Router: sigmoid scores + correction bias -> group-limited top-k -> weights gathered from the unbiased
scores -> optional renormalize -> scale  ==>  ``inductor_moe::route(scoring="sigmoid", ...)``.

Emitted by DeepSeek-V3 (``DeepseekV3TopkRouter``), GLM4-MoE and their copies::

    logits = linear(hidden.float(), W.float())
    scores = logits.sigmoid()
    choice = scores + e_score_correction_bias
    group_scores = choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    keep = zeros_like(group_scores).scatter_(1, group_idx, 1).unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
    choice = choice.masked_fill(~keep.bool(), -inf)              # post-grad: where(~keep, -inf, choice)
    ids = topk(choice, k=top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if norm_topk_prob: weights /= weights.sum(-1, keepdim=True) + 1e-20
    weights = weights * routed_scaling_factor

Anchor: an ``aten.topk`` whose indices feed an ``aten.gather`` (weights gathered from the scores rather
than taken from the top-k values). The scores are the gather's source; their logits and scoring
(sigmoid, or softmax) are found by probing. The selection is matched structurally: the optional group
mask (every step checked: the two-best-per-group sum, the group top-k, the scatter into a zero [T, G]
tensor, the group-major expansion to [T, E], the negation and the -inf fill), then the optional
correction bias, which must be a [E] tensor added to those same scores. The weights are the row-wise exits
below the gather that equal ``c * w`` or ``c * w / w.sum(-1)`` for a constant ``c > 0`` (probed; ``c``
is taken from the region's constants). ``sorted=False`` leaves the order of the k ids unspecified, so
the op's descending order is one valid answer; ids and weights stay paired.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import _fx, _router
from ._fx import aten, fail

NAME = "router_sigmoid_group"

NEG_INF = float("-inf")


@dataclass
class GroupRouterMatch:
    topk: Node
    logits: Node
    top_k: int
    scoring: str
    correction_bias: Node | None
    n_group: int
    topk_group: int
    renormalize: bool
    scaling: float
    weight_exits: list[Node]
    ids: Node
    value_region: set[Node]

    @property
    def anchor(self) -> Node:
        return self.topk

    def route_kwargs(self) -> dict:
        kwargs = {"scoring": self.scoring, "renormalize": self.renormalize}
        if self.correction_bias is not None:
            kwargs["correction_bias"] = self.correction_bias
        if self.n_group > 1:
            kwargs.update(n_group=self.n_group, topk_group=self.topk_group)
        if self.scaling != 1.0:
            kwargs["scaling"] = self.scaling
        return kwargs


def _gathers(ids: Node) -> list[Node]:
    return [u for u in ids.users if _fx.is_op(u, aten.gather.default) and _fx.arg(u, 2, "index") is ids]


def anchors(graph: Graph) -> list[Node]:
    found = []
    for node in graph.nodes:
        if _fx.is_op(node, aten.topk.default):
            for user in node.users:
                if _fx.is_op(user, operator.getitem) and user.args[1] == 1 and _gathers(user):
                    found.append(node)
                    break
    return found


def _same(a, b) -> bool:
    return statically_known_true(a == b)


def _is_neg_inf(x) -> bool:
    if isinstance(x, (int, float)):
        return x == NEG_INF
    if _fx.is_op(x, aten.full.default) and list(x.args[0]) == []:
        return x.args[1] == NEG_INF
    return False


def _masked_fill(sel: Node) -> tuple[Node, Node, bool] | None:
    """(x, mask, mask_means_drop) for ``masked_fill(x, mask, -inf)``, ``where(mask, -inf, x)`` or
    ``where(mask, x, -inf)``; None for any other node."""
    if _fx.is_op(sel, aten.masked_fill.Scalar) and _is_neg_inf(sel.args[2]):
        return sel.args[0], sel.args[1], True
    if _fx.is_op(sel, aten.where.self):
        mask, a, b = sel.args[:3]
        if _is_neg_inf(a) and isinstance(b, Node):
            return b, mask, True
        if _is_neg_inf(b) and isinstance(a, Node):
            return a, mask, False
    return None


def _keep_mask(mask: Node, drop: bool) -> Node:
    """The float/bool [T, E] keep mask before its conversion to bool, from the mask of the -inf fill."""
    if drop:
        mask = _fx.expect(mask, (aten.bitwise_not.default, aten.logical_not.default), "~keep")
        mask = mask.args[0]
    if _fx.is_op(mask, _fx.CONVERT):
        if mask.args[1] is not torch.bool:
            fail("group mask is converted to a non-bool dtype", mask)
        return mask.args[0]
    if _fx.is_op(mask, aten.ne.Scalar) and mask.args[1] == 0:
        return mask.args[0]
    if _fx.val(mask) is not None and _fx.val(mask).dtype is torch.bool:
        return mask
    fail("group mask is not a bool conversion of the scattered group selection", mask)


def _scalar(x):
    """The value of a Python number, ``scalar_tensor(v)`` or ``full([], v)``; None for anything else."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x
    if _fx.is_op(x, aten.scalar_tensor.default):
        return x.args[0]
    if _fx.is_op(x, aten.full.default) and list(x.args[0]) == []:
        return x.args[1]
    return None


def _match_group_selection(node: Node, n_group: int, nodes: set) -> Node:
    """The chosen group indices [T, topk_group] of the [T, G] group mask ``node``: a scatter of a nonzero
    value into zeros, or (topk_group == 1, as Inductor rewrites that scatter) the one-hot
    ``where(idx.expand(T, G) == arange(G), c, 0)``."""
    nv = _fx.val(node)
    if nv is None or nv.dim() != 2 or not _same(nv.shape[1], n_group):
        fail("group mask is not [T, G]", node)
    if _fx.is_op(node, aten.scatter.value):
        base, dim, group_idx, value = node.args[:4]
        if dim not in (1, -1) or not isinstance(value, (int, float)) or value == 0:
            fail("scatter is not (dim=1, value != 0)", node)
        if not (_fx.is_op(base, aten.full.default) and base.args[1] == 0):
            fail("groups are not scattered into a zero tensor", node)
        nodes.update({node, base})
        return group_idx
    one_hot = node
    if _fx.is_op(one_hot, _fx.CONVERT):
        nodes.add(one_hot)
        one_hot = one_hot.args[0]
    if _fx.is_op(one_hot, aten.where.self):
        cond, on, off = one_hot.args
        if _scalar(on) in (None, 0) or _scalar(off) != 0:
            fail("group one-hot is not where(chosen, c != 0, 0)", one_hot)
        eq = _fx.expect(cond, aten.eq.Tensor, "chosen group index == arange(G)")
        a, b = eq.args
        if not _fx.is_op(a, aten.expand.default):
            a, b = b, a
        expand = _fx.expect(a, aten.expand.default, "the chosen group index expanded to [T, G]")
        iota = _fx.strip(b, *_fx.VIEW_OPS)
        _fx.expect(iota, (torch.ops.prims.iota.default, aten.arange.default, aten.arange.start), "arange(G)")
        iv = _fx.val(iota)
        if iv is None or tuple(iv.shape) != (n_group,) or _fx.val(b).dim() != 2 or _fx.val(b).shape[0] != 1:
            fail("group one-hot does not compare with arange(G) as [1, G]", iota)
        if _fx.is_op(iota, torch.ops.prims.iota.default) and (
                iota.kwargs.get("start", 0) != 0 or iota.kwargs.get("step", 1) != 1):
            fail("group one-hot compares with a shifted arange", iota)
        if _fx.is_op(iota, aten.arange.start) and iota.args[0] != 0:
            fail("group one-hot compares with a shifted arange", iota)
        group_idx = expand.args[0]
        gv = _fx.val(group_idx)
        if gv is None or gv.dim() != 2 or gv.shape[1] != 1:
            fail("group one-hot expands something other than one group index per token", expand)
        nodes.update({one_hot, eq, expand, iota})
        return group_idx
    fail(f"expected the chosen groups scattered into zeros, found {node.target}", node)


def _match_group_mask(sel: Node, choice_shape, nodes: set) -> tuple[Node, int, int]:
    """Parse the group limit above the final top-k input; return (choice, n_group, topk_group)."""
    filled = _masked_fill(sel)
    if filled is None:
        fail("internal: not a -inf fill", sel)
    choice, mask, drop = filled
    nodes.add(sel)
    keep = _keep_mask(mask, drop)
    tokens, num_experts = choice_shape

    # [T, G] -> unsqueeze(-1) -> expand(T, G, E/G) -> (clone) -> reshape(T, E)
    kv = _fx.val(keep)
    if kv is None or kv.dim() != 2 or not (_same(kv.shape[0], tokens) and _same(kv.shape[1], num_experts)):
        fail("group mask is not [T, E]", keep)
    flat = keep
    while _fx.is_op(flat, *_fx.VIEW_OPS, aten.clone.default):
        vv = _fx.val(flat)
        if _fx.is_op(flat, *_fx.VIEW_OPS) and vv is not None and vv.dim() == 2:
            if not (_same(vv.shape[0], tokens) and _same(vv.shape[1], num_experts)):
                fail("group mask is not reshaped to [T, E]", flat)
        flat = flat.args[0]
    expand = _fx.expect(flat, aten.expand.default, "expand of the per-group mask to [T, G, E/G]")
    ev = _fx.val(expand)
    if ev is None or ev.dim() != 3:
        fail("group mask expansion is not 3-D", expand)
    n_group = _fx.int_const(ev.shape[1], "number of groups", expand)
    if n_group < 1 or num_experts % n_group or not _same(ev.shape[2], num_experts // n_group):
        fail(f"group mask expansion {tuple(ev.shape)} does not split {num_experts} experts in groups", expand)
    if not _same(ev.shape[0], tokens):
        fail("group mask expansion disagrees with T", expand)
    unsq = _fx.expect(expand.args[0], aten.unsqueeze.default, "unsqueeze(-1) of the [T, G] group mask")
    if unsq.args[1] not in (-1, 2):
        fail("group mask is not unsqueezed on its last dim", unsq)
    group_idx = _match_group_selection(unsq.args[0], n_group, nodes)
    nodes.update({unsq, expand})

    group_topk, index = _fx.getitem_of(group_idx)
    if index != 1:
        fail("scattered groups are not top-k indices", group_idx)
    _fx.expect(group_topk, aten.topk.default, "top-k over the group scores")
    topk_group = _fx.int_const(_fx.arg(group_topk, 1, "k"), "topk_group", group_topk)
    if not _fx.is_last_dim(_fx.arg(group_topk, 2, "dim", -1), 2) or not _fx.arg(group_topk, 3, "largest", True):
        fail("group top-k is not the largest over the group dim", group_topk)

    # group score = sum of the two best choice scores of the group
    group_sum = _fx.expect(group_topk.args[0], aten.sum.dim_IntList, "sum of the best scores per group")
    if list(group_sum.args[1]) not in ([-1], [2]) or _fx.arg(group_sum, 2, "keepdim", False):
        fail("group score is not a sum over the experts of a group", group_sum)
    best_in_group, index = _fx.getitem_of(group_sum.args[0])
    if index != 0:
        fail("group score does not sum top-k values", group_sum)
    _fx.expect(best_in_group, aten.topk.default, "top-2 within each group")
    per_group = num_experts // n_group
    k_in = _fx.int_const(_fx.arg(best_in_group, 1, "k"), "per-group k", best_in_group)
    if k_in != min(2, per_group):
        fail(f"group score sums the best {k_in} of each group, the op sums the best {min(2, per_group)}",
             best_in_group)
    if not _fx.is_last_dim(_fx.arg(best_in_group, 2, "dim", -1), 3) or not _fx.arg(best_in_group, 3, "largest", True):
        fail("per-group top-k is not the largest over the last dim", best_in_group)
    grouped = _fx.expect(best_in_group.args[0], _fx.VIEW_OPS, "choice.view(-1, G, E/G)")
    gv = _fx.val(grouped)
    if gv.dim() != 3 or not (_same(gv.shape[1], n_group) and _same(gv.shape[2], per_group)):
        fail("choice scores are not viewed as [T, G, E/G]", grouped)
    if grouped.args[0] is not choice:
        fail("group scores and the masked selection come from different scores", grouped)
    nodes.update({group_topk, group_sum, best_in_group, grouped})
    return choice, n_group, topk_group


def _match_bias(choice: Node, scores: Node, num_experts) -> Node | None:
    if choice is scores:
        return None
    add = _fx.expect(choice, aten.add.Tensor, "scores + correction bias")
    if len(add.args) != 2 or add.kwargs.get("alpha", 1) != 1:
        fail("bias add with alpha", add)
    a, b = add.args
    bias = b if a is scores else a if b is scores else None
    if bias is None or not isinstance(bias, Node):
        fail("selection scores are not the gathered scores plus a bias", add)
    bv = _fx.val(bias)
    if bv is None or bv.dim() != 1 or not bv.is_floating_point() or not _same(bv.shape[0], num_experts):
        fail("correction bias is not a float [E] tensor", bias)
    if _fx.val(add).dtype != _fx.val(scores).dtype:
        fail("biased scores have another dtype than the scores", add)
    return bias


def _classify_exit(w: Node, exit_node: Node, top_k: int, constants: list[float]) -> tuple[bool, float] | None:
    """(renormalize, scaling) when the region from the gathered weights to ``exit_node`` is ``c * w`` or
    ``c * w / w.sum(-1)``; None otherwise."""
    region = _fx.backward_region(exit_node, [w])
    gen = torch.Generator().manual_seed(4)
    dtype = _fx.val(w).dtype
    probes = [((torch.rand(6, top_k, generator=gen) * 0.9 + 0.05).to(dtype),) for _ in range(3)]
    # tiny scores too: a renormalization epsilon other than ~0 (the op's 1e-20) shows there
    probes.append(((torch.rand(6, top_k, generator=gen) * 9e-5 + 1e-5).to(dtype),))
    tol = max(_fx.tolerance(dtype), _fx.tolerance(_fx.val(exit_node).dtype))
    # estimate c from one probe (in f64 where the region allows), then prefer a constant of the graph
    try:
        p = probes[0][0]
        got = region.evaluate(p).double()
    except Exception:  # noqa: BLE001
        return None
    candidates = []
    for c in constants:
        if c != 0:
            candidates += [float(c), 1.0 / float(c)]
    for renorm in (True, False):
        base = p.double() / p.double().sum(-1, keepdim=True) if renorm else p.double()
        estimate = (got / base).mean().item()
        if not math.isfinite(estimate) or estimate <= 0:
            continue
        options = [c for c in [1.0] + candidates if abs(c - estimate) <= 1e-2 * abs(estimate)]
        options.append(estimate)
        for c in options:
            if renorm:
                fn = lambda v, c=c: c * (v / v.sum(dim=-1, keepdim=True))  # noqa: E731
            else:
                fn = lambda v, c=c: c * v  # noqa: E731
            if _fx.matches(region, probes, fn, tol):
                return renorm, c
    return None


def match(topk: Node) -> GroupRouterMatch:
    top_k = _router.topk_args(topk)
    vals, ids = _router.topk_outputs(topk)
    if ids is None:
        fail("top-k indices are unused", topk)
    if vals is not None:
        fail("top-k values are used as well as the gathered scores", vals)
    gathers = _gathers(ids)
    if len(gathers) != 1:
        fail(f"top-k indices feed {len(gathers)} gathers, expected 1", ids)
    gather = gathers[0]
    if _fx.arg(gather, 1, "dim") not in (1, -1) or _fx.arg(gather, 3, "sparse_grad", False):
        fail("scores are not gathered along the expert dim", gather)
    scores = gather.args[0]
    sv = _fx.val(scores)
    sel = topk.args[0]
    selv = _fx.val(sel)
    if sv is None or sv.dim() != 2 or tuple(sv.shape) != tuple(selv.shape):
        fail("gathered scores are not [T, E] like the selection", gather)
    tokens, num_experts = selv.shape
    num_experts = _fx.int_const(num_experts, "number of experts", topk)

    if sv.dtype is not torch.float32:
        # the op scores and selects in f32: selecting on rounded scores could pick other experts
        fail(f"router scores are {sv.dtype}, the op selects on f32 scores", scores)
    logits, scoring = _router.find_scoring_source(scores)

    nodes: set[Node] = set()
    if _masked_fill(sel) is not None:
        choice, n_group, topk_group = _match_group_mask(sel, (tokens, num_experts), nodes)
    else:
        choice, n_group, topk_group = sel, 1, 1
    bias = _match_bias(choice, scores, num_experts)

    region = _router.forward_region(gather)
    constants = _router.scalar_constants(region)
    kinds = {n: _classify_exit(gather, n, top_k, constants) for n in _router.region_exits(region)}
    known = {n: k for n, k in kinds.items() if k is not None}
    if not known:
        fail("the gathered scores reach no weights of a known form (c * w or c * w / sum(w))", gather)
    # one route op gives one form: prefer the renormalized one, then the one most exits share
    forms = sorted(set(known.values()), key=lambda f: (not f[0], -list(known.values()).count(f)))
    renormalize, scaling = forms[0]
    exits = [n for n, k in known.items() if k == forms[0]]

    m = GroupRouterMatch(topk, logits, top_k, scoring, bias, n_group, topk_group, renormalize, scaling, exits,
                         ids, set(region))
    _router.dry_run(torch.ops.inductor_moe.route.default, (logits, top_k), m.route_kwargs(), topk)
    return m


def replace(graph: Graph, m: GroupRouterMatch) -> Node:
    return _router.replace_route(graph, m, m.route_kwargs())
