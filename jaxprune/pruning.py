"""``prune``: new masks from scores, with exact counts and monotone masks.

Two ways to say how much, exactly one per call:

* ``sparsity=s``, jaxprune's meaning: after the call, exactly
  ``round(s * N)`` of the N prunable units in scope are pruned, counting the
  ones pruned before (cumulative). If more than that are pruned already,
  nothing changes: masks only ever lose entries.
* ``amount=a``, PyTorch's meaning, for porting code: a float prunes
  ``round(a * R)`` more of the R units still unpruned; an int prunes that many
  more. Ten calls with ``amount=0.1`` leave ``1 - 0.9**10 = 65.1%`` pruned.

``round`` is Python's: half to even, as PyTorch does it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._checks import Scope, check_scope
from jaxprune._lazy import Lazy, evaluated
from jaxprune._tree import PyTree, check_masks_match, first_difference, leaves_with_paths, unflatten
from jaxprune.counts import Target, alive_per_group, is_traced, num_pruned, parse_target, scheduled_count
from jaxprune.select import lowest_k
from jaxprune.structures import NM, Block, Structure, Structured, Unstructured

_STRUCTURES = (Unstructured, Structured, Block, NM)


def prune(
    scores: PyTree,
    masks: PyTree,
    *,
    sparsity: float | jax.Array | None = None,
    amount: float | int | None = None,
    scope: Scope = "global",
    structure: Structure | None = None,
) -> PyTree:
    """Prunes the lowest-scoring units in scope; returns new masks.

    Args:
      scores: a pytree with the structure of the params (e.g. ``jp.magnitude(params)``);
        higher means more important. Read only where ``masks`` is not ``None``.
        Leaves may be ``jp.Lazy`` scores, computed inside each pass of the
        selection instead of stored: ``jp.magnitude(params, lazy=True)``
        gives the same masks about twice as fast on large models (why that
        is not the default: ``jp.magnitude``).
      masks: current masks (``jp.init_masks(params)`` at first). Entries already
        pruned stay pruned and count towards ``sparsity``.
      sparsity: cumulative target in [0, 1]: the fraction of all units in scope
        that are pruned after the call. May be a traced value under ``jit``; a
        new value then does not recompile. With ``scope="layer"`` it may also be
        a pytree of the masks' structure with one target per prunable leaf
        (``None`` elsewhere), e.g. from ``jp.distributions.erk``.
      amount: PyTorch's relative amount: a float in [0, 1] (fraction of the
        still-unpruned units) or a non-negative int (a count).
      scope: ``"global"`` ranks all prunable leaves together (one threshold for
        the whole model); ``"layer"`` applies the target to each leaf on its own.
      structure: the unit of pruning: ``None``/``Unstructured()`` (single
        weights), ``Structured(axis, ord)``, ``Block(shape)`` or ``NM(n, m)``.
        With ``NM``, give neither ``sparsity`` nor ``amount``.

    Returns:
      Masks with the structure of ``masks``.

    Selection rule: units are ranked by score; pruned-before units rank lowest,
    then NaN scores, then -inf, ..., +inf. Among equal scores the unit earlier
    in flat order (leaves in ``jax.tree`` order, then row-major) is pruned
    first. Subnormal scores count as 0. The threshold is found by counting, not
    sorting (see ``jaxprune.select``), so it is linear in N and works on
    sharded params without gathering them.

    A leaf without entries (a 0 in its shape, as ``compact`` can leave) holds
    no units: it takes no part and its mask comes back as it is.

    Under ``jit`` with a traced ``sparsity``, the target is taken as float32
    and ``round(float32(s) * N)`` is computed exactly in integers; out-of-range
    values are clipped to [0, 1] and NaN counts as 0, since a traced value
    cannot raise.

    Raises:
      ValueError: both or neither of ``sparsity``/``amount``; a value out of
        range; an unknown ``scope``; masks that do not mirror ``scores``
        (naming the first differing path); nothing prunable in scope; a leaf
        the structure cannot tile.
      TypeError: a non-number ``sparsity``/``amount``, an unknown structure, a
        non-bool mask, scores that are not real numbers (complex, bool).
    """
    structure, s_flat, m_leaves, treedef, live = _checked(scores, masks, scope, structure)
    new = list(m_leaves)
    if isinstance(structure, NM):
        if sparsity is not None or amount is not None:
            raise ValueError(
                f"NM({structure.n}, {structure.m}) fixes the sparsity at 1 - n/m; pass neither `sparsity` nor `amount`."
            )
        for i in live:
            new[i] = _nm_keep(evaluated(s_flat[i][1]), m_leaves[i], structure=structure)
        return unflatten(treedef, new)

    if _is_tree(sparsity):
        if amount is not None:
            raise ValueError("give exactly one of `sparsity` and `amount`; got both.")
        if scope != "layer":
            raise ValueError(
                "a per-leaf `sparsity` (a pytree, e.g. from jp.distributions) gives each leaf its own target: "
                f"pass scope='layer', got scope={scope!r}."
            )
        target = _per_leaf_target(sparsity, s_flat, m_leaves, treedef, live)
    else:
        target = parse_target(sparsity, amount)
    empty = [s_flat[i][0] for i, m in enumerate(m_leaves) if m is not None and m.size == 0]
    if target.kind == "count" and not is_traced(target.value) and target.value > 0 and empty:
        if scope == "layer" or not live:  # as PyTorch: no weights to take the count from
            raise ValueError(
                f"amount={target.value} should be smaller than the number of parameters to prune=0 "
                f"(leaf {empty[0]!r} is empty)"
            )
    groups = tuple(0 for _ in live) if scope == "global" else tuple(range(len(live)))
    return _select_into(
        s_flat, m_leaves, treedef, live, groups, structure, lambda n, a: num_pruned(target, n, a, scope)
    )


def prune_to_targets(
    scores: PyTree,
    masks: PyTree,
    leaf_groups: list[int | None],
    group_targets: Mapping[int, tuple[jax.Array, float]],
    *,
    scope: Scope = "global",
    structure: Structure | None = None,
) -> PyTree:
    """``prune`` with one cumulative target per group of leaves, for ``Pruner`` (one selection pass for all).

    ``leaf_groups`` has one entry per leaf of ``masks`` (flattened with
    ``None`` as a leaf): ``None`` where the mask is ``None``, else the key
    of the leaf's entry in ``group_targets``, a ``(target, final)`` pair: a
    traced float32 target and the Python float its schedule ends at (see
    ``counts.scheduled_count``). With ``scope="global"`` the leaves of a
    group are ranked together; with ``"layer"`` each leaf on its own.
    """
    structure, s_flat, m_leaves, treedef, live = _checked(scores, masks, scope, structure)
    if isinstance(structure, NM):
        raise ValueError("NM structures fix their sparsity; use prune(..., structure=NM(...)) instead of a schedule.")
    for i in live:
        if leaf_groups[i] is None:
            raise ValueError(f"leaf {s_flat[i][0]!r} is prunable but has no target.")
    if scope == "global":
        used = sorted({leaf_groups[i] for i in live})  # selection groups must be numbered 0..G-1
        selection = tuple(used.index(leaf_groups[i]) for i in live)
        targets = [group_targets[g] for g in used]
    else:
        selection = tuple(range(len(live)))
        targets = [group_targets[leaf_groups[i]] for i in live]

    def counts(sizes, alive):
        already = jnp.asarray(sizes, jnp.uint32) - jnp.asarray(alive, jnp.uint32)
        wanted = [scheduled_count(t, final, n) for (t, final), n in zip(targets, sizes)]
        return jnp.maximum(jnp.stack(wanted), already)

    return _select_into(s_flat, m_leaves, treedef, live, selection, structure, counts)


def _is_tree(sparsity: Any) -> bool:
    """A per-leaf sparsity: a container (dict, list, NamedTuple, nnx.State, ...), not a number or an array."""
    return sparsity is not None and not isinstance(
        sparsity, (numbers.Real, np.ndarray, np.generic, jax.Array, str, bytes, jax.core.Tracer)
    )


def _per_leaf_target(sparsity: PyTree, s_flat, m_leaves, treedef, live) -> Target:
    """Checks a per-leaf ``sparsity`` against the masks; returns one target per live leaf."""
    flat, s_def = leaves_with_paths(sparsity)
    if s_def != treedef:
        where = first_difference(sparsity, unflatten(treedef, m_leaves), "`sparsity`", "`masks`")
        raise ValueError(f"a per-leaf `sparsity` must have the structure of `masks`: {where}.")
    values: list[Any] = []  # None, a traced scalar or a float per leaf
    for (path, v), m in zip(flat, m_leaves):
        if m is None:
            if v is not None:
                raise ValueError(f"`sparsity` leaf {path!r} must be None: its mask is None (not prunable).")
            values.append(None)
        elif is_traced(v):
            if jnp.ndim(v) != 0 or not jnp.issubdtype(v.dtype, jnp.floating):
                raise TypeError(f"`sparsity` leaf {path!r} must be a float scalar, got {v.dtype}{list(v.shape)}.")
            values.append(v)
        else:
            try:
                values.append(parse_target(v, None).value)
            except (TypeError, ValueError) as e:
                raise type(e)(f"`sparsity` leaf {path!r}: {e}") from None
    chosen = [values[i] for i in live]
    if any(is_traced(v) for v in chosen):
        return Target("sparsity", jnp.stack([jnp.asarray(v, jnp.float32) for v in chosen]))
    return Target("sparsity", tuple(float(v) for v in chosen))


def check_structure(structure: Any) -> Structure:
    """``structure`` as a ``Structure`` (``None`` is ``Unstructured()``); anything else raises ``TypeError``."""
    structure = Unstructured() if structure is None else structure
    if not isinstance(structure, _STRUCTURES):
        raise TypeError(
            f"`structure` must be None, Unstructured(), Structured(...), Block(...) or NM(...), got {structure!r}."
        )
    return structure


def _checked(scores, masks, scope, structure):
    """Validates the arguments common to every prune; returns what the selection needs."""
    structure = check_structure(structure)
    check_scope(scope)
    s_flat, m_leaves, treedef = check_masks_match(scores, masks, params_name="scores")
    live = [i for i, m in enumerate(m_leaves) if m is not None]
    if not live:
        raise ValueError("nothing is prunable in scope: every leaf of `masks` is None.")
    for i in live:
        path, s = s_flat[i]
        dtype = s.dtype if isinstance(s, Lazy) else jnp.result_type(s)
        if not jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"`scores` leaf {path!r} must be real numbers (int or float), got {dtype}.")
        structure.check(path, tuple(m_leaves[i].shape))
    # A leaf without entries has nothing to prune and holds no units: it takes no part.
    live = [i for i in live if m_leaves[i].size]
    return structure, s_flat, m_leaves, treedef, live


def _select_into(s_flat, m_leaves, treedef, live, groups, structure, counts):
    """Runs one selection over the live leaves with ``counts(sizes, alive) -> k`` and rebuilds the tree."""
    if not live:
        return unflatten(treedef, m_leaves)
    scores_l = [s_flat[i][1] for i in live]
    masks_l = [m_leaves[i] for i in live]
    sizes, alive = _unit_counts(masks_l, groups, structure)
    k = counts(sizes, alive)
    # A Lazy is no pytree: its inputs go through the jit and its function as a static argument.
    fns = tuple(s.fn if isinstance(s, Lazy) else None for s in scores_l)
    inputs = [s.args if isinstance(s, Lazy) else s for s in scores_l]
    new = list(m_leaves)
    for i, m in zip(live, _select(inputs, masks_l, k, alive, fns=fns, groups=groups, structure=structure)):
        new[i] = m
    return unflatten(treedef, new)


@partial(jax.jit, static_argnames="structure")
def _nm_keep(score: jax.Array, mask: jax.Array, *, structure: NM) -> jax.Array:
    return structure.keep(score, mask)


@partial(jax.jit, static_argnames=("fns", "groups", "structure"))
def _select(inputs, masks, k, num_alive, *, fns, groups, structure):
    scores = [x if fn is None else Lazy(fn, x) for x, fn in zip(inputs, fns)]
    # A lazy score stays lazy where units are single weights (computed inside each pass of the
    # selection); a structure reduces it to unit scores first.
    unstructured = isinstance(structure, Unstructured)
    units = [structure.to_units(s if unstructured else evaluated(s), m) for s, m in zip(scores, masks)]
    pruned = lowest_k([u for u, _ in units], [a for _, a in units], groups, k, num_alive=num_alive)
    return [m & structure.expand(a & ~p, m.shape) for m, (_, a), p in zip(masks, units, pruned)]


@partial(jax.jit, static_argnames=("groups", "structure"))
def _alive_units(masks, *, groups, structure):
    alive = [structure.to_units(jnp.zeros(m.shape, jnp.float32), m)[1] for m in masks]
    return alive_per_group(alive, groups)


def _unit_counts(masks, groups, structure):
    """Units per group (Python ints) and unpruned units per group (array; concrete outside jit)."""
    sizes = [0] * (max(groups) + 1)
    for m, g in zip(masks, groups):
        sizes[g] += math.prod(jax.eval_shape(lambda x: structure.to_units(x, x)[1], m).shape)
    if max(sizes) >= 2**31:
        raise ValueError(f"a scope holds {max(sizes):,} units; jaxprune counts in int32, so at most 2**31 - 1.")
    return sizes, _alive_units(masks, groups=groups, structure=structure)
