"""``trace_units``: the unit sets of any model, read from its traced program (the jaxpr).

Torch-Pruning finds coupled channels by running the model with hooks and
treating every operation it does not know as channel-preserving. Here the
model is traced once with ``jax.make_jaxpr``; every axis of every value gets
one graph node per position, and each primitive couples positions by a rule
written for it (``rules.py``). An operation without a rule stops the trace
(or, on request, keeps what it touches out of every set): nothing is guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxprune._tree import PyTree, leaves_with_paths
from jaxprune.structural import rules  # noqa: F401  (fills the table of rules)
from jaxprune.structural.graph import Graph
from jaxprune.structural.unit_sets import UnitAxis, UnitSet, affine
from jaxprune.structural.walk import Value, Walker

_UNKNOWN = ("error", "exclude")
_HEADS = ("whole", "dims")


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def trace_units(
    fn: Callable[..., Any],
    tree: PyTree,
    *args: Any,
    unknown: str = "error",
    heads: str = "whole",
    **kwargs: Any,
) -> list[UnitSet]:
    """The unit sets of ``fn(tree, *args, **kwargs)``: which positions of ``tree``'s leaves are one channel.

    ``fn`` is traced (``jax.make_jaxpr``, nothing is computed) and every
    axis of every leaf followed through the program: matmul and convolution
    features (grouped and depthwise ones too), elementwise ops with
    broadcasting (residual adds, gates), concatenations and slices, reshapes
    (flattens; a split into attention heads), transposes, reductions, the
    gather of an embedding table, and the programs inside ``jit``,
    ``custom_jvp``/``custom_vjp``, ``scan``, ``while``, ``cond`` and ``remat``.
    Axes tied to the arguments in ``args``/``kwargs`` or to the outputs
    (input features, logits, the vocabulary) are never prunable.

    ``compact`` then gives a model that computes the masked one's outputs,
    as long as ``fn`` takes its sizes (widths, head counts, group counts)
    from its inputs' shapes; anything computed from positions along a pruned
    axis (``iota``) is assumed to be recomputed from the compacted shapes.

    Args:
      fn: the model, ``fn(tree, *args, **kwargs)``; array leaves of ``args``/``kwargs`` are its inputs,
        anything else (flags, ints) is passed as it is.
      tree: the pytree whose leaves are pruned (params, and batch statistics to carry along).
      *args: the model's inputs (arrays of the real shapes, or ``jax.ShapeDtypeStruct``).
      unknown: a primitive without a rule that reads a leaf: ``"error"`` raises, naming it;
        ``"exclude"`` keeps every axis it touches out of all sets, with a warning.
      heads: a reshape that splits an axis into ``[heads, head_dim]``: ``"whole"`` makes each head a
        unit; ``"dims"`` makes position i of every head one unit (which changes no softmax scale only
        if ``fn`` computes it from the compacted head_dim).
      **kwargs: more inputs of ``fn``.

    Returns:
      One ``UnitSet`` per family of units, in the order of the leaves. Sets whose units
      a normalisation reduces over (LayerNorm over the channels) name it in ``.normalized``.

    Raises:
      ValueError: ``fn`` does not trace on these inputs, a leaf of ``tree`` is never read,
        or (``unknown="error"``) a primitive without a rule reads a leaf.
    """
    return trace_with_state(fn, tree, args, kwargs, unknown=unknown, heads=heads, state_out=False)


def trace_with_state(
    fn: Callable[..., Any],
    tree: PyTree,
    args: tuple,
    kwargs: dict,
    *,
    unknown: str = "error",
    heads: str = "whole",
    state_out: bool = False,
) -> list[UnitSet]:
    """``trace_units``; with ``state_out``, ``fn`` returns ``(outputs, new_tree)`` and the new tree is a carry.

    A carried leaf (a BatchNorm statistic updated in training mode) couples
    with the leaf it replaces instead of being an output, so its axes stay prunable.
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable as fn(tree, *args, **kwargs), got {type(fn).__name__} {fn!r}.")
    if unknown not in _UNKNOWN:
        raise ValueError(f"`unknown` must be one of {_UNKNOWN}, got {unknown!r}.")
    if heads not in _HEADS:
        raise ValueError(f"`heads` must be one of {_HEADS}, got {heads!r}.")
    flat, tree_def = leaves_with_paths(tree)
    leaf_at = [i for i, (_, x) in enumerate(flat) if _is_array(x)]
    if not leaf_at:
        raise ValueError("`tree` has no array leaves to trace.")
    paths = [flat[i][0] for i in leaf_at]
    inputs, in_def = jax.tree.flatten((args, kwargs))
    input_at = [i for i, x in enumerate(inputs) if _is_array(x)]

    def traced(leaves, arrays):
        t = [x for _, x in flat]
        for i, v in zip(leaf_at, leaves):
            t[i] = v
        a = list(inputs)
        for i, v in zip(input_at, arrays):
            a[i] = v
        call_args, call_kwargs = jax.tree.unflatten(in_def, a)
        out = fn(jax.tree.unflatten(tree_def, t), *call_args, **call_kwargs)
        if not state_out:
            return out, []
        out, new_tree = out
        new = dict(leaves_with_paths(new_tree)[0])
        return out, [new[p] for p in paths]

    try:
        closed = jax.make_jaxpr(traced)([flat[i][1] for i in leaf_at], [inputs[i] for i in input_at])
    except Exception as err:
        why = f"{type(err).__name__}: {err}"
        raise ValueError(f"`fn` could not be traced on `tree` and the given inputs: {why}") from err
    jaxpr = closed.jaxpr
    unread = _unread(jaxpr, len(leaf_at), len(jaxpr.outvars) - (len(leaf_at) if state_out else 0))
    if unread:
        names = ", ".join(repr(paths[i]) for i in unread[:5]) + (", ..." if len(unread) > 5 else "")
        raise ValueError(
            f"`fn` never reads the leaves {names} of `tree`: pass the tree fn computes with "
            "(a fn that closes over its params instead of using `tree` shows up here)."
        )

    g = Graph()
    walker = Walker(g, paths, unknown, whole_heads=heads == "whole")
    leaf_vals = [Value(walker.fresh(v.aval.shape), frozenset([i])) for i, v in enumerate(jaxpr.invars[: len(leaf_at)])]
    input_vals = [Value(walker.fresh(v.aval.shape, True), frozenset(), True) for v in jaxpr.invars[len(leaf_at) :]]
    consts = [Value(walker.fresh(np.shape(c), fixed=True), frozenset()) for c in closed.consts]
    outs = walker.walk(_live(jaxpr), consts, leaf_vals + input_vals)
    n_state = len(leaf_at) if state_out else 0
    for o in outs[: len(outs) - n_state]:
        for a in o.axes:
            g.fix(a)
    for leaf, new in zip(leaf_vals, outs[len(outs) - n_state :]):
        for a, b in zip(leaf.axes, new.axes):
            if len(a) == len(b):
                g.unite(a, b)
            else:
                g.fix(a)
                g.fix(b)
    leaf_nodes = [a for v in leaf_vals for a in v.axes]
    labels = g.resolve(leaf_nodes, inner=heads == "dims")
    walker.check_unknown(labels, leaf_vals)
    return _sets(g, labels, leaf_vals, paths)


def _unread(jaxpr, n_leaves: int, n_outputs: int) -> list[int]:
    """The leaves no equation reads and no output is (a carried leaf passed through unchanged is not read)."""
    used = {id(v) for e in jaxpr.eqns for v in e.invars} | {id(v) for v in jaxpr.outvars[:n_outputs]}
    return [i for i, v in enumerate(jaxpr.invars[:n_leaves]) if id(v) not in used]


def _live(jaxpr):
    """``jaxpr`` without the equations whose results nothing uses: dead code couples nothing.

    (``jp.lstm`` stacks its layers' final states, which ties the layers' widths together in a
    program that then drops them.)
    """
    live = {id(v) for v in jaxpr.outvars}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(id(v) in live for v in eqn.outvars):
            kept.append(eqn)
            live |= {id(v) for v in eqn.invars}
    return jaxpr.replace(eqns=kept[::-1])


def _sets(g: Graph, labels: np.ndarray, leaf_vals: list[Value], paths: list[str]) -> list[UnitSet]:
    """Groups the units (components that reach a leaf and hold nothing fixed) into sets of one layout.

    Vectorised over units (a ResNet-18 has ~5,000): each leaf axis that holds units is a *table* of
    (unit, position) pairs; a unit's layout (which tables, how many positions in each) is hashed to
    find its family, and each family's positions in a table sort into one ``[units, per_unit]`` matrix.
    """
    fixed = g.flags(labels, g.fixed)
    is_unit = g.flags(labels, [a for v in leaf_vals for a in v.axes]) & ~fixed
    tables = []  # (leaf, axis, unit of each position, position)
    for i, v in enumerate(leaf_vals):
        for a, nodes in enumerate(v.axes):
            comp = labels[nodes]
            hit = np.nonzero(is_unit[comp])[0]
            if len(hit):
                tables.append((i, a, comp[hit], hit))
    if not tables:
        return []
    layout = np.zeros(len(is_unit), np.uint64)
    for t, (_, _, comp, _) in enumerate(tables):
        units, counts = np.unique(comp, return_counts=True)
        layout[units] += _mix(np.uint64(t) << np.uint64(32) | counts.astype(np.uint64))
    units = np.unique(np.concatenate([comp for _, _, comp, _ in tables]))
    _, family_of = np.unique(layout[units], return_inverse=True)
    family = np.full(len(is_unit), -1, np.int64)
    family[units] = family_of
    # A family's units are ordered by their first position in the first table the family appears in.
    rank = np.full(len(is_unit), np.iinfo(np.int64).max, np.int64)
    seen = np.zeros(family_of.max() + 1, bool)
    family_size = np.bincount(family_of)
    entries: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
    for i, a, comp, pos in tables:
        f = family[comp]
        first = ~seen[f]
        np.minimum.at(rank, comp[first], pos[first])
        seen[f] = True
        order = np.lexsort((pos, rank[comp], f))
        fams, starts = np.unique(f[order], return_index=True)
        for fam, part in zip(fams, np.split(order, starts[1:])):
            entries[int(fam)].append((i, a, pos[part].reshape(int(family_size[fam]), -1)))
    reduced = [(why, g.flags(labels, [nodes])) for nodes, why in g.reduced]
    sets = []
    for fam, places in entries.items():
        members = units[family_of == fam]
        members = members[np.argsort(rank[members], kind="stable")]
        for lo, hi in _affine_runs([m for _, _, m in places]):
            set_entries = tuple(_entry(paths[i], a, len(leaf_vals[i].axes[a]), m[lo:hi]) for i, a, m in places)
            normalized = tuple(sorted({why for why, flag in reduced if flag[members[lo:hi]].any()}))
            first = places[0]
            sets.append(((first[0], first[1], int(first[2][lo, 0])), UnitSet(set_entries, normalized)))
    sets.sort(key=lambda s: s[0])
    return [s for _, s in sets]


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each entry (splitmix64's finaliser): layouts are summed, so their hashes must not collide."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _affine_runs(matrices: list[np.ndarray]) -> list[tuple[int, int]]:
    """Row ranges of one family that every entry can describe with an offset, a stride and blocks."""

    def fits(lo, hi):
        return all(affine(m[lo:hi]) is not None for m in matrices)

    n = len(matrices[0])
    if fits(0, n):
        return [(0, n)]
    runs, lo = [], 0
    for hi in range(2, n + 1):
        if not fits(lo, hi):
            runs.append((lo, hi - 1))
            lo = hi - 1
    return [*runs, (lo, n)]


def _entry(path: str, axis: int, length: int, positions: np.ndarray) -> UnitAxis:
    found = affine(positions)
    assert found is not None  # _affine_runs cut the rows into runs that affine() describes
    offset, stride, blocks = found
    n, per = positions.shape
    if offset == 0 and stride == 1 and n * per == length and (not blocks or blocks == ((per, n),)):
        return UnitAxis(path, axis, per)  # the whole axis, in `per` equal blocks: the hand-written form
    return UnitAxis(path, axis, offset=offset, size=n, stride=stride, blocks=blocks)
