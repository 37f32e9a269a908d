"""Choosing which units go: ``prune_units`` scores whole units across every leaf of their set.

A unit's score is the L_ord norm of the scores of all its entries in the
leaves that have a mask (``jp.magnitude`` gives the group L2 norm that
Torch-Pruning's ``MagnitudeImportance`` uses; ``jp.saliency(params, grads)``
with ``ord=1`` gives its first-order Taylor score). Entries whose leaf has no
mask, such as BatchNorm running statistics, are carried along by ``compact``
but neither scored nor masked.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._checks import check_int, check_ord, check_scope
from jaxprune._lazy import Lazy, evaluated
from jaxprune._placement import put_like
from jaxprune._tree import PyTree, check_masks_match, leaves_with_paths, unflatten
from jaxprune.counts import alive_per_group, is_traced, num_pruned, parse_target
from jaxprune.masks import init_masks, where_flags
from jaxprune.select import lowest_k, lowest_k_host
from jaxprune.structural.unit_sets import UnitAxis, check_sets, locate, touched_paths


def _unit_rows(x, e: UnitAxis, axis: int, xp):
    """``x`` as ``[units, entries per unit]``: each row one unit's entries (a reshape for a plain axis)."""
    length = x.shape[axis]
    moved = xp.moveaxis(x, axis, 0)
    rest = math.prod(moved.shape[1:])
    if e.is_plain():
        n = length // e.groups
        return xp.swapaxes(moved.reshape(e.groups, n, rest), 0, 1).reshape(n, e.groups * rest)
    pos = e.positions(length)
    return moved[pos.reshape(-1)].reshape(pos.shape[0], pos.shape[1] * rest)


def _unit_scores(
    scores: Sequence | Mapping[int, Any], masks: Sequence | Mapping[int, Any], plans: list, ord: float, xp
) -> tuple[list, list]:
    """Each set's unit scores and alive flags, in NumPy (``xp=np``) or JAX (``xp=jnp``) alike.

    A unit's score is the sum of ``|s| ** ord`` over its masked entries (the max for ``inf``): the
    L_ord norm without its root, which orders units the same and keeps equal norms exactly equal.
    """
    unit_scores, unit_alive = [], []
    for masked in plans:
        total, alive = None, None
        for e, i, a in masked:
            if xp is np and e.is_plain() and e.groups == 1:
                part, m_any = _host_axis_scores(scores[i], masks[i], a, ord)
                both = total is not None
                total = part if not both else (xp.maximum(total, part) if ord == float("inf") else total + part)
                alive = m_any if alive is None else alive | m_any
                continue
            m = _unit_rows(masks[i], e, a, xp)
            x = xp.where(m, xp.abs(_unit_rows(scores[i], e, a, xp).astype(xp.float32)), xp.float32(0))
            if ord == float("inf"):
                part = x.max(axis=1, initial=0)
            else:
                part = (x if ord == 1 else x * x if ord == 2 else x**ord).sum(axis=1, dtype=xp.float32)
            both = total is not None
            total = part if not both else (xp.maximum(total, part) if ord == float("inf") else total + part)
            alive = m.any(axis=1) if alive is None else alive | m.any(axis=1)
        unit_scores.append(total)
        unit_alive.append(alive)
    return unit_scores, unit_alive


def _host_axis_scores(score: np.ndarray, mask: np.ndarray, axis: int, ord: float) -> tuple[np.ndarray, np.ndarray]:
    """``_unit_scores``' part for a plain axis, reduced in place over the other axes: no copy of the leaf
    moved into rows (a model's kernels are most of its bytes, and this is most of the host's work)."""
    others = tuple(d for d in range(score.ndim) if d != axis)
    full = bool(mask.all())
    x = np.abs(score.astype(np.float32, copy=False))
    if not full:
        x = np.where(mask, x, np.float32(0))
    if ord == float("inf"):
        part = x.max(axis=others, initial=0) if others else x
    else:
        part = (x if ord == 1 else x * x if ord == 2 else x**ord).sum(axis=others, dtype=np.float32)
    alive = np.ones(score.shape[axis], bool) if full else np.asarray(mask.any(axis=others))
    return part, alive


def _expand(keep, e: UnitAxis, axis: int, shape: tuple[int, ...], xp):
    """``keep`` (one flag per unit) as a mask of ``shape``: positions outside the entry's units are kept."""
    pos = e.positions(shape[axis])
    unit_of = np.full(shape[axis], -1, np.int64)
    unit_of[pos.reshape(-1)] = np.repeat(np.arange(pos.shape[0]), pos.shape[1])
    line = xp.where(unit_of >= 0, keep[np.maximum(unit_of, 0)], True)
    return xp.broadcast_to(line.reshape([-1 if d == axis else 1 for d in range(len(shape))]), shape)


def _excluded(entries: Sequence[UnitAxis], exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(e.path, pat) for e in entries for pat in exclude)


def _check_exclude(exclude) -> tuple[str, ...]:
    if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
        raise TypeError(f"`exclude` must be a list of path patterns (str), e.g. ['head/*'], got {exclude!r}.")
    return tuple(exclude)


def prune_units(
    scores: PyTree,
    masks: PyTree,
    units: Sequence[Sequence[UnitAxis]],
    *,
    sparsity: float | jax.Array | None = None,
    amount: float | int | None = None,
    scope: str = "global",
    ord: float = 2,
    exclude: Sequence[str] = (),
    round_to: int = 1,
) -> PyTree:
    """Prunes whole units across all their entries; ``sparsity``/``amount`` count units, as in ``prune``.

    A unit's score is the L_ord norm of the (unpruned) scores of its entries
    in leaves with a mask; a unit is already pruned when all those entries
    are. Works under ``jit`` with a traced target.

    Args:
      scores: a pytree like ``masks`` (``jp.magnitude(params)``, ``jp.saliency(params, grads)``).
      masks: bool masks; leaves without a mask are not scored (a set needs at least one masked leaf).
      units: unit sets (``trace_units``, ``mlp_units``, or lists of ``UnitAxis``).
      sparsity: cumulative fraction of the units in scope that are pruned after the call.
      amount: PyTorch's relative target (fraction or count of the units still unpruned).
      scope: ``"global"`` ranks the units of all sets together, ``"layer"`` each set on its own.
      ord: the norm over a unit's entries.
      exclude: ``fnmatch`` patterns of leaf paths; a set with an entry whose path matches is left alone.
      round_to: every set keeps a multiple of this many units (its kept count rounded to the
        nearest multiple, never above what is alive), as hardware likes; 1 keeps the exact count.

    Returns:
      New masks: every masked entry of a pruned unit is False.

    Raises:
      ValueError / TypeError: a bad target, scope, pattern or ``round_to``; a set that names a missing leaf,
        reaches outside it, disagrees on its unit count, or has no masked leaf.
    """
    check_scope(scope)
    check_ord(ord)
    target = parse_target(sparsity, amount)
    exclude = _check_exclude(exclude)
    round_to = check_int("round_to", round_to, minimum=1)
    s_flat, m_leaves, treedef = check_masks_match(scores, masks, params_name="scores")
    paths = [p for p, _ in s_flat]
    located = locate(paths, [getattr(x, "shape", None) for _, x in s_flat], units)
    plans = []
    for s, (entries, row) in enumerate(zip(units, located)):
        if _excluded(entries, exclude):
            continue
        masked = [(e, i, a) for e, (i, a) in zip(entries, row) if m_leaves[i] is not None]
        if not masked:
            raise ValueError(
                f"unit set {s} ({entries[0].path!r}, ...) has no leaf with a mask; make its leaves prunable "
                "with jp.unit_masks(params, units) or jp.init_masks(params, where=...)."
            )
        plans.append(masked)
    if not plans:
        return unflatten(treedef, list(m_leaves))
    used = {i for masked in plans for _, i, _ in masked}
    in_xla = is_traced(target.value) or any(
        _traced(s_flat[i][1]) or is_traced(m_leaves[i]) or _spans_devices(s_flat[i][1]) or _spans_devices(m_leaves[i])
        for i in used
    )  # traced, or sharded over several devices (which the host would gather): the selection runs in XLA
    select = _select_traced if in_xla else _select_on_host
    new = select([x for _, x in s_flat], list(m_leaves), plans, target, scope, ord, round_to)
    return unflatten(treedef, new)


def _spans_devices(x) -> bool:
    leaves = x.args if isinstance(x, Lazy) else (x,)
    return any(isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 for a in leaves)


def _traced(score) -> bool:
    return any(is_traced(x) for x in (score.args if isinstance(score, Lazy) else (score,)))


def _groups(n_sets: int, scope: str) -> tuple[int, ...]:
    return tuple(0 for _ in range(n_sets)) if scope == "global" else tuple(range(n_sets))


def _select_traced(scores, masks, plans, target, scope, ord, round_to):
    """The selection in XLA, for a jitted step (a traced target, masks or scores)."""
    unit_scores, unit_alive = _unit_scores([evaluated(x) for x in scores], masks, plans, ord, jnp)
    sizes_per_set = [int(a.shape[0]) for a in unit_alive]
    groups = _groups(len(plans), scope)
    sizes = [sum(n for n, g2 in zip(sizes_per_set, groups) if g2 == g) for g in range(max(groups) + 1)]
    k = num_pruned(target, sizes, alive_per_group(unit_alive, groups), scope)
    pruned = lowest_k(unit_scores, unit_alive, groups, k)
    if round_to > 1:
        pruned = _round_kept(unit_scores, unit_alive, pruned, sizes_per_set, round_to)
    new = list(masks)
    for masked, alive, p in zip(plans, unit_alive, pruned):
        keep = alive & ~p
        for e, i, a in masked:
            new[i] = new[i] & _expand(keep, e, a, new[i].shape, jnp)
    return new


def _select_on_host(scores, masks, plans, target, scope, ord, round_to):
    """The same selection in NumPy, for concrete inputs: a model has thousands of units, not millions of
    weights, and the host takes milliseconds where XLA would compile each step first.

    Scores are float32 sums in another order than XLA's: the two paths agree exactly where the sums are
    exact (integer-valued scores, ties included), and can differ in the last bit elsewhere.
    """
    host_masks = {i: np.asarray(masks[i]) for masked in plans for _, i, _ in masked}
    host_scores = {i: _host_score(scores[i]) for i in host_masks}
    unit_scores, unit_alive = _unit_scores(host_scores, host_masks, plans, ord, np)
    sizes_per_set = [len(a) for a in unit_alive]
    groups = _groups(len(plans), scope)
    n_groups = max(groups) + 1
    sizes = [sum(n for n, g2 in zip(sizes_per_set, groups) if g2 == g) for g in range(n_groups)]
    alive_counts = np.array(
        [sum(int(a.sum()) for a, g2 in zip(unit_alive, groups) if g2 == g) for g in range(n_groups)]
    )
    k = np.asarray(num_pruned(target, sizes, alive_counts, scope))
    pruned = lowest_k_host(unit_scores, unit_alive, groups, k)
    if round_to > 1:
        kept = np.array([int((a & ~p).sum()) for a, p in zip(unit_alive, pruned)])
        alive_n = np.array([int(a.sum()) for a in unit_alive])
        k_sets = np.array(sizes_per_set) - _rounded(kept, alive_n, round_to, np)
        pruned = lowest_k_host(unit_scores, unit_alive, range(len(plans)), k_sets)
    for masked, alive, p in zip(plans, unit_alive, pruned):
        keep = alive & ~p
        for e, i, a in masked:
            host_masks[i] = host_masks[i] & _expand(keep, e, a, host_masks[i].shape, np)
    on_device = [i for i in host_masks if isinstance(masks[i], jax.Array)]
    placed = put_like([host_masks[i] for i in on_device], [masks[i] for i in on_device])
    new = [host_masks.get(i, m) for i, m in enumerate(masks)]
    for i, m in zip(on_device, placed):
        new[i] = m
    return new


def _host_score(score) -> np.ndarray:
    if isinstance(score, Lazy) and score.fn is jnp.abs:  # jp.magnitude(lazy=True): the scores take |w| anyway
        return np.asarray(score.args[0])
    return np.asarray(evaluated(score), np.float32)


def _round_kept(unit_scores, unit_alive, pruned, sizes, r):
    """Re-selects each set's units so that its kept count is a multiple of ``r`` (nearest, at most what is alive)."""
    kept = jnp.stack([jnp.sum(a & ~p, dtype=jnp.int32) for a, p in zip(unit_alive, pruned)])
    alive = jnp.stack([jnp.sum(a, dtype=jnp.int32) for a in unit_alive])
    k = (jnp.asarray(sizes, jnp.int32) - _rounded(kept, alive, r, jnp)).astype(jnp.uint32)
    return lowest_k(unit_scores, unit_alive, tuple(range(len(sizes))), k)


def _rounded(kept, alive, r: int, xp):
    """Each kept count rounded to the nearest multiple of ``r`` (halves up), never above what is alive."""
    return xp.minimum((kept + r // 2) // r * r, alive // r * r)


def kept_units(masks: PyTree, units: Sequence[Sequence[UnitAxis]]) -> list[np.ndarray]:
    """For each unit set, the indices of its units not entirely pruned in the masked leaves (host side, NumPy)."""
    check_sets(units)
    flat, _ = leaves_with_paths(masks)
    leaves = [m for _, m in flat]
    has_mask = {p for p, m in flat if m is not None}
    sets = []
    for s, entries in enumerate(units):
        masked = [e for e in entries if isinstance(e, UnitAxis) and e.path in has_mask]
        if not masked and all(isinstance(e, UnitAxis) for e in entries) and entries:
            raise ValueError(f"unit set {s} ({entries[0].path!r}, ...) has no leaf with a mask in `masks`.")
        sets.append(masked or entries)  # locate() reports a malformed set
    located = locate([p for p, _ in flat], [None if m is None else tuple(m.shape) for m in leaves], sets)
    out = []
    for entries, row in zip(sets, located):
        rows = [_unit_rows(np.asarray(leaves[i]), e, a, np).any(axis=1) for e, (i, a) in zip(entries, row)]
        out.append(np.nonzero(np.logical_or.reduce(rows))[0])
    return out


def unit_masks(params: PyTree, units: Sequence[Sequence[UnitAxis]], where=None) -> PyTree:
    """All-True masks on every floating-point leaf that a unit set touches (``None`` elsewhere).

    With every leaf of a set masked, a pruned unit reads and writes nothing,
    so the masked model computes what ``compact`` gives. ``where`` (as in
    ``init_masks``) narrows the choice further, e.g. to leave running
    statistics unmasked: they are carried along by ``compact``, not scored.
    """
    paths = set(touched_paths(units))
    if where is not None:  # narrowed first, so that the masks are built once
        flat, _ = leaves_with_paths(params)
        narrowed = {p for (p, _), f in zip(flat, where_flags(params, where)) if f}
        if not paths & narrowed:
            raise ValueError(f"`where`={where!r} leaves none of the leaves the unit sets touch.")
        paths &= narrowed
    return init_masks(params, where=lambda path, leaf: path in paths)
