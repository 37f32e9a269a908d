"""How each primitive couples the positions of its operands' and results' axes: one rule per primitive.

Each rule gets the walker, the equation and its operands' ``Value``s, and
returns each result's axes: arrays of graph nodes that it *aliases* (reuses
an operand's), *unites* with others (``w.g.unite``), or *fixes*
(``w.g.fix``: never prunable). A primitive the table lacks is a missing rule,
never a guess (``walk.py``). Adding one: a function here, registered with
``@rule("name")``, and a test.
"""

from __future__ import annotations

import numpy as np
from jax.extend import core as jcore

from jaxprune.structural.walk import RULES, Axes, Value, Walker, rule


def _out_shape(eqn, k: int = 0) -> tuple[int, ...]:
    return tuple(eqn.outvars[k].aval.shape)


# ---- elementwise: operands of one shape (or scalars); every axis couples position by position.


@rule(
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil",
    "clamp", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "digamma", "div", "eq", "erf", "erf_inv",
    "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "igamma", "imag", "integer_pow", "is_finite", "le", "lgamma",
    "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow", "real",
    "reduce_precision", "rem", "round", "rsqrt", "select_n", "shift_left", "shift_right_arithmetic",
    "shift_right_logical", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient", "sub", "tan", "tanh", "xor",
    "population_count", "clz",
)  # fmt: skip
def _elementwise(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    shape = _out_shape(eqn)
    out: list[np.ndarray | None] = [None] * len(shape)
    for x in ins:
        if len(x.axes) != len(shape):
            continue  # a scalar operand
        for d, a in enumerate(x.axes):
            if len(a) != shape[d]:
                w.g.fix(a)  # a size-1 axis broadcast by the primitive itself: one value for all, no channel
                continue
            first = out[d]
            if first is None:
                out[d] = a
            else:
                w.g.unite(first, a)
    axes = [a if a is not None else w.g.new(n) for a, n in zip(out, shape)]
    return [axes for _ in eqn.outvars]


@rule("bitcast_convert_type")
def _bitcast(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    """Same width: elementwise. Narrower: one value becomes a new last axis of parts; wider: the reverse."""
    x, shape = ins[0].axes, _out_shape(eqn)
    if len(shape) == len(x):
        return [list(x)]
    if len(shape) > len(x):
        return [[*x, w.g.new(shape[-1], fixed=True)]]
    w.g.fix(x[-1])
    return [list(x[:-1])]


@rule("device_put", "optimization_barrier", "sharding_constraint", "mesh_cast", "reshard", "pvary", "name")
def _identity(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    return [list(x.axes) for x in ins[: len(eqn.outvars)]]


@rule("iota")
def _iota(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    # Free, not fixed: positions along a pruned axis are assumed to be recomputed from the compacted
    # shapes (jp.lstm's gate constants are), as a function that takes its sizes from its inputs does.
    return [list(w.fresh(_out_shape(eqn)))]


@rule(
    "random_bits", "random_seed", "random_wrap", "random_unwrap", "random_split", "random_fold_in", "random_clone",
    "threefry2x32", "rng_bit_generator", "rng_uniform",
)  # fmt: skip
def _random(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    return [list(w.fresh(v.aval.shape)) for v in eqn.outvars]


# ---- shape changes


@rule("broadcast_in_dim")
def _broadcast_in_dim(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    shape = eqn.params["shape"]
    out: list[np.ndarray | None] = [None] * len(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if len(ins[0].axes[i]) == shape[d]:
            out[d] = ins[0].axes[i]
        else:  # a size-1 axis repeated: one value for every position, no channel
            w.g.fix(ins[0].axes[i])
    return [[a if a is not None else w.g.new(n) for a, n in zip(out, shape)]]


@rule("squeeze")
def _squeeze(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    gone = {d % len(ins[0].axes) for d in eqn.params["dimensions"]}
    return [[a for d, a in enumerate(ins[0].axes) if d not in gone]]


@rule("expand_dims")
def _expand_dims(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    shape = _out_shape(eqn)
    new = {d % len(shape) for d in eqn.params["dimensions"]}
    rest = iter(ins[0].axes)
    return [[w.g.new(1) if d in new else next(rest) for d in range(len(shape))]]


@rule("transpose")
def _transpose(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    return [[ins[0].axes[p] for p in eqn.params["permutation"]]]


@rule("rev")
def _rev(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    dims = set(eqn.params["dimensions"])
    return [[a[::-1] if d in dims else a for d, a in enumerate(ins[0].axes)]]


@rule("reshape")
def _reshape(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    if eqn.params.get("dimensions") is not None:
        return w.no_rule(eqn, ins, ins[0].leaves)
    x = ins[0].axes
    src = [len(a) for a in x]
    dst = list(eqn.params["new_sizes"])
    out: list[np.ndarray | None] = [None] * len(dst)
    if 0 in src or 0 in dst:
        for axis in x:
            w.g.fix(axis)
        return [list(w.fresh(dst, fixed=True))]
    # Size-1 axes carry no channel; the rest fall into runs of equal products, each a merge, a split or both.
    i_dims = [d for d, n in enumerate(src) if n != 1]
    o_dims = [d for d, n in enumerate(dst) if n != 1]
    i = j = 0
    while i < len(i_dims):
        a, b = [i_dims[i]], [o_dims[j]]
        pa, pb = src[a[0]], dst[b[0]]
        while pa != pb:
            if pa < pb:
                i += 1
                a.append(i_dims[i])
                pa *= src[i_dims[i]]
            else:
                j += 1
                b.append(o_dims[j])
                pb *= dst[o_dims[j]]
        i, j = i + 1, j + 1
        if len(a) == 1:
            flat = x[a[0]]
        else:
            flat = w.g.new(pa)
            w.g.product(flat, [x[d] for d in a])
        if len(b) == 1:
            out[b[0]] = flat
        else:
            parts = [w.g.new(dst[d]) for d in b]
            w.g.product(flat, parts)
            for d, p in zip(b, parts):
                out[d] = p
    return [[a if a is not None else w.g.new(n) for a, n in zip(out, dst)]]


@rule("concatenate")
def _concatenate(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    d = eqn.params["dimension"]
    first = list(ins[0].axes)
    for x in ins[1:]:
        for k, a in enumerate(x.axes):
            if k != d:
                w.g.unite(first[k], a)
    first[d] = np.concatenate([x.axes[d] for x in ins])
    return [first]


@rule("stack")
def _stack(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    first = list(ins[0].axes)
    for x in ins[1:]:
        for a, b in zip(first, x.axes):
            w.g.unite(a, b)
    first.insert(eqn.params["axis"], w.g.new(len(ins), fixed=True))  # which operand: no channel
    return [first]


@rule("slice")
def _slice(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    p = eqn.params
    strides = p["strides"] or (1,) * len(ins[0].axes)
    return [[a[s:e:st] for a, s, e, st in zip(ins[0].axes, p["start_indices"], p["limit_indices"], strides)]]


@rule("split")
def _split(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    d, x = eqn.params["axis"], ins[0].axes
    outs, start = [], 0
    for size in eqn.params["sizes"]:
        outs.append([a[start : start + size] if k == d else a for k, a in enumerate(x)])
        start += size
    return outs


@rule("pad")
def _pad(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    shape = _out_shape(eqn)
    out = []
    for a, (lo, hi, interior), n in zip(ins[0].axes, eqn.params["padding_config"], shape):
        if (lo, hi, interior) == (0, 0, 0):
            out.append(a)
            continue
        nodes = w.g.new(n, fixed=True)  # padded positions hold the padding value: no channel of the model
        at = lo + np.arange(len(a)) * (interior + 1)
        ok = (at >= 0) & (at < n)
        nodes[at[ok]] = a[ok]
        out.append(nodes)
    return [out]


@rule("dynamic_slice")
def _dynamic_slice(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    out = []
    for a, n in zip(ins[0].axes, eqn.params["slice_sizes"]):
        if len(a) == n:
            out.append(a)
        else:  # a window at a traced offset: which positions it holds is data
            w.g.fix(a)
            out.append(w.g.new(n, fixed=True))
    return [out]


@rule("dynamic_update_slice")
def _dynamic_update_slice(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    x, update = ins[0].axes, ins[1].axes
    for a, b in zip(x, update):
        if len(a) == len(b):
            w.g.unite(a, b)
        else:
            w.g.fix(a)
            w.g.fix(b)
    return [list(x)]


@rule("gather")
def _gather(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    """``x[ids]`` and its kin: the axes indexed by data are fixed, whole slices along the others pass through."""
    x, idx = ins[0].axes, ins[1].axes
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    shape = _out_shape(eqn)
    out: list[np.ndarray | None] = [None] * len(shape)
    indexed = set(dn.collapsed_slice_dims) | set(dn.start_index_map)
    for d in indexed:
        w.g.fix(x[d])
    kept = [d for d in range(len(x)) if d not in dn.collapsed_slice_dims and d not in dn.operand_batching_dims]
    for o, d in zip(dn.offset_dims, kept):
        if sizes[d] == len(x[d]) and d not in indexed:
            out[o] = x[d]
        else:
            w.g.fix(x[d])
    batch_out = [o for o in range(len(shape)) if o not in dn.offset_dims]
    for o, a in zip(batch_out, idx[:-1]):
        out[o] = a
    for a, b in zip(dn.operand_batching_dims, dn.start_indices_batching_dims):
        w.g.unite(x[a], idx[b])
    return [[a if a is not None else w.g.new(n, fixed=True) for a, n in zip(out, shape)]]


# ---- reductions: the reduced axis is gone; a reduction over a channel axis is a normalisation.


@rule("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor", "argmax",
      "argmin")  # fmt: skip
def _reduce(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    axes = set(eqn.params["axes"])
    for d in axes:
        w.g.reduce(ins[0].axes[d], eqn.primitive.name)
    return [[a for d, a in enumerate(ins[0].axes) if d not in axes]]


@rule("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")
def _cumulative(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    w.g.reduce(ins[0].axes[eqn.params["axis"]], eqn.primitive.name)
    return [list(ins[0].axes)]


@rule("sort")
def _sort(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    d = eqn.params["dimension"]
    first = ins[0].axes
    for x in ins:
        for k, a in enumerate(x.axes):
            if k == d:
                w.g.fix(a)
            else:
                w.g.unite(first[k], a)
    return [list(first) for _ in eqn.outvars]


@rule("top_k")
def _top_k(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    x = ins[0].axes
    w.g.fix(x[-1])
    k = w.g.new(_out_shape(eqn)[-1], fixed=True)
    return [[*x[:-1], k] for _ in eqn.outvars]


@rule("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window")
def _reduce_window(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    p = eqn.params
    n_ops = len(eqn.outvars)
    shape = _out_shape(eqn)
    ones = (1,) * len(shape)
    out = []
    for d, a in enumerate(ins[0].axes):
        trivial = (
            p["window_dimensions"][d] == 1
            and p["window_strides"][d] == 1
            and tuple(p["padding"][d]) == (0, 0)
            and (p.get("base_dilation") or ones)[d] == 1
            and (p.get("window_dilation") or ones)[d] == 1
        )
        if trivial:
            for x in ins[1:n_ops]:
                w.g.unite(a, x.axes[d])
            out.append(a)
        else:  # a pooling window mixes the positions of this axis
            for x in ins[:n_ops]:
                w.g.fix(x.axes[d])
            out.append(w.g.new(shape[d], fixed=True))
    return [out for _ in eqn.outvars]


# ---- contractions


@rule("dot_general")
def _dot_general(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    """Contracting and batch axes meet. Between two activations (attention's q.k and p.v), with
    whole heads, only the batch axes (the heads) stay prunable: the head dims are not units."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x, y = ins[0].axes, ins[1].axes
    for a, b in zip((*lc, *lb), (*rc, *rb)):
        w.g.unite(x[a], y[b])
    if ins[0].data and ins[1].data:
        if not w.whole_heads:  # head dims: compaction changes a softmax scale taken from head_dim
            for d in lc:
                w.g.reduce(x[d], "dot_general of two activations")
        else:
            for axes, batch in ((x, lb), (y, rb)):
                for d, a in enumerate(axes):
                    if d not in batch:
                        w.g.fix(a)
    free_x = [a for d, a in enumerate(x) if d not in lc and d not in lb]
    free_y = [a for d, a in enumerate(y) if d not in rc and d not in rb]
    return [[*(x[d] for d in lb), *free_x, *free_y]]


@rule("conv_general_dilated")
def _conv(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    """Features: ``feature_group_count`` G splits them into groups.

    G == 1: input features meet the kernel's input axis. Depthwise (one input
    feature per group): a group is a unit, its input feature with its
    outputs, so pruning it lowers G (taken from the shapes, or updated by
    ``nnx_compact``). Other G: position i of every group's inputs is one unit
    (and position j of every group's outputs), so the groups stay equal.
    """
    p = eqn.params
    x, k = ins[0].axes, ins[1].axes
    lhs, rhs, out_spec = p["dimension_numbers"]
    shape = _out_shape(eqn)
    if p["batch_group_count"] != 1:
        return w.no_rule(eqn, ins, ins[0].leaves | ins[1].leaves)
    out: dict[int, np.ndarray] = {}  # every output axis is set below
    out[out_spec[0]] = x[lhs[0]]
    for d in lhs[2:]:
        w.g.fix(x[d])
    for d in rhs[2:]:
        w.g.fix(k[d])
    for d in out_spec[2:]:
        out[d] = w.g.new(shape[d], fixed=True)
    groups = p["feature_group_count"]
    x_feat, k_in, k_out = x[lhs[1]], k[rhs[1]], k[rhs[0]]
    if groups == 1:
        w.g.unite(x_feat, k_in)
    elif len(k_in) == 1:
        w.g.unite(np.repeat(x_feat, len(k_out) // groups), k_out)
        w.g.fix(k_in)
    else:
        w.g.unite(x_feat, np.tile(k_in, groups))
        per = k_out.reshape(groups, -1)
        w.g.unite(per[1:].reshape(-1), np.tile(per[0], groups - 1))
    out[out_spec[1]] = k_out
    return [[out[d] for d in range(len(shape))]]


# ---- programs inside programs


def _call(key: str):
    def call(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
        inner = eqn.params[key]
        outs = w.closed(inner, ins) if isinstance(inner, jcore.ClosedJaxpr) else w.walk(inner, [], ins)
        return [list(o.axes) for o in outs]

    return call


for _name, _key in [
    ("pjit", "jaxpr"),
    ("jit", "jaxpr"),
    ("closed_call", "call_jaxpr"),
    ("core_call", "call_jaxpr"),
    ("remat2", "jaxpr"),
    ("checkpoint", "jaxpr"),
    ("custom_jvp_call", "call_jaxpr"),
    ("custom_vjp_call", "call_jaxpr"),
    ("custom_vjp_call_jaxpr", "fun_jaxpr"),
    ("custom_lin", "call_jaxpr"),
]:
    RULES[_name] = _call(_key)


def _carry(w: Walker, init: list[Value], body_out: list[Value]) -> None:
    """A loop's carry is one value at every iteration: what goes in couples with what comes out."""
    for a, b in zip(init, body_out):
        for x, y in zip(a.axes, b.axes):
            w.g.unite(x, y)


def _carried(init: list[Value], ins: list[Value]) -> list[Value]:
    """The carry inside a loop: an activation from the second iteration on if anything going in is one."""
    data = any(x.data for x in ins)
    return [Value(x.axes, x.leaves, data or x.data) for x in init]


@rule("scan")
def _scan(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
    for x in xs:
        w.g.fix(x.axes[0])  # the scanned axis is time
    sliced = [Value(x.axes[1:], x.leaves, x.data) for x in xs]
    outs = w.closed(p["jaxpr"], [*consts, *_carried(init, ins), *sliced])
    _carry(w, init, outs[:nk])
    ys = [[w.g.new(p["length"], fixed=True), *y.axes] for y in outs[nk:]]
    return [list(x.axes) for x in init] + ys


@rule("while")
def _while(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
    outs = w.closed(p["body_jaxpr"], [*body_consts, *_carried(init, ins)])
    _carry(w, init, outs)
    w.closed(p["cond_jaxpr"], [*cond_consts, *init])
    return [list(x.axes) for x in init]


@rule("cond")
def _cond(w: Walker, eqn, ins: list[Value]) -> list[Axes]:
    branches = [w.closed(b, ins[1:]) for b in eqn.params["branches"]]
    for other in branches[1:]:
        _carry(w, branches[0], other)  # every branch's outputs are the same values
    return [list(o.axes) for o in branches[0]]
