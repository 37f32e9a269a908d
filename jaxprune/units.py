"""Whole hidden units pruned across every leaf that touches them.

A hidden unit lives in several leaves at once: Dense unit j is column j of
its kernel, entry j of its bias and row j of the next kernel; LSTM unit j is
row j of each of the four gate blocks of ``w_ih``, ``w_hh`` and the biases,
column j of ``w_hh`` and column j of the next layer's ``w_ih``. A *unit set*
lists those places as ``UnitAxis(path, axis, groups)`` entries; ``prune_units``
scores each unit by the L_ord norm of all its entries together and prunes the
unit everywhere at once, so nothing reads from or writes to a pruned unit and
``export.compact`` can cut it out of the arrays exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import jax
import jax.numpy as jnp

from jaxprune._checks import check_int, check_scope
from jaxprune._lazy import evaluated
from jaxprune._tree import PyTree, check_masks_match, leaves_with_paths, unflatten
from jaxprune.counts import alive_per_group, num_pruned, parse_target
from jaxprune.select import lowest_k
from jaxprune.structures import Structured


@dataclass(frozen=True)
class UnitAxis:
    """Where a set of units sits in one leaf: entry j of ``axis`` (of each of ``groups`` blocks) is unit j."""

    path: str
    axis: int
    groups: int = 1


UnitSet = Sequence[UnitAxis]


def mlp_units(layers: Sequence[str], kernel: str = "kernel", bias: str | None = "bias") -> list[list[UnitAxis]]:
    """Unit sets of the hidden layers of a Flax-style MLP (``[in, out]`` kernels), given its layer paths in order."""
    if isinstance(layers, str) or not all(isinstance(x, str) for x in layers):
        raise TypeError(f"`layers` must be a list of layer paths (str), e.g. ['dense_0', 'dense_1'], got {layers!r}.")
    if len(layers) < 2:
        raise ValueError(f"an MLP needs at least 2 layers to have hidden units, got {list(layers)}.")
    sets = []
    for here, after in pairwise(layers):
        entries = [UnitAxis(f"{here}/{kernel}", -1)]
        if bias is not None:
            entries.append(UnitAxis(f"{here}/{bias}", 0))
        entries.append(UnitAxis(f"{after}/{kernel}", 0))
        sets.append(entries)
    return sets


def lstm_units(num_layers: int, prefix: str = "") -> list[list[UnitAxis]]:
    """Unit sets of a unidirectional ``jp.lstm`` stack, one per layer.

    Each holds the unit's rows in all four gate blocks of ``w_ih``, ``w_hh``
    and both biases, its column of ``w_hh`` and its column of the next layer's ``w_ih``.
    """
    return _recurrent_units(num_layers, prefix, gates=4)


def gru_units(num_layers: int, prefix: str = "") -> list[list[UnitAxis]]:
    """Unit sets of a unidirectional ``jp.gru`` stack, one per layer: ``lstm_units`` with three gate blocks."""
    return _recurrent_units(num_layers, prefix, gates=3)


def _recurrent_units(num_layers: int, prefix: str, gates: int) -> list[list[UnitAxis]]:
    check_int("num_layers", num_layers, minimum=1)
    sets = []
    for i in range(num_layers):
        p = f"{prefix}layer_{i}"
        entries = [UnitAxis(f"{p}/{k}", 0, gates) for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
        entries.append(UnitAxis(f"{p}/w_hh", 1))
        if i + 1 < num_layers:
            entries.append(UnitAxis(f"{prefix}layer_{i + 1}/w_ih", 1))
        sets.append(entries)
    return sets


def locate(flat_paths: list[str], masks: list, units: Sequence[UnitSet]) -> list[list[tuple[int, UnitAxis]]]:
    """Each unit set as ``[(leaf index, UnitAxis)]``, checked: paths exist, have masks, agree on the unit count."""
    index = {p: i for i, p in enumerate(flat_paths)}
    located = []
    if isinstance(units, UnitAxis) or any(isinstance(e, UnitAxis) for e in units):
        raise TypeError("`units` must be a list of unit sets, each a list of UnitAxis: e.g. [[UnitAxis(...), ...]].")
    for s, entries in enumerate(units):
        if not entries:
            raise ValueError(f"unit set {s} is empty.")
        row = []
        for e in entries:
            if e.path not in index:
                raise ValueError(f"unit set {s}: no leaf at path {e.path!r}.")
            i = index[e.path]
            if masks[i] is None:
                raise ValueError(
                    f"unit set {s}: leaf {e.path!r} has no mask; "
                    "make it prunable with jp.init_masks(params, where=...)."
                )
            Structured(axis=e.axis, groups=e.groups).check(e.path, tuple(masks[i].shape))
            row.append((i, e))
        sizes = {masks[i].shape[e.axis % masks[i].ndim] // e.groups for i, e in row}
        if len(sizes) != 1:
            raise ValueError(f"unit set {s}: its entries disagree on the number of units: {sorted(sizes)}.")
        located.append(row)
    return located


def prune_units(
    scores: PyTree,
    masks: PyTree,
    units: Sequence[UnitSet],
    *,
    sparsity: float | None = None,
    amount: float | int | None = None,
    scope: str = "global",
    ord: float = 2,
) -> PyTree:
    """Prunes whole units across all their entries; ``sparsity``/``amount`` count units, as in ``prune``.

    A unit's score is the L_ord norm of the (unpruned) scores of all its
    entries; a unit is already pruned when all its entries are. ``scope``:
    ``"global"`` ranks the units of all sets together, ``"layer"`` each set on its own.
    """
    check_scope(scope)
    target = parse_target(sparsity, amount)
    s_flat, m_leaves, treedef = check_masks_match(scores, masks, params_name="scores")
    located = locate([p for p, _ in s_flat], m_leaves, units)
    unit_scores, unit_alive = [], []
    for row in located:
        total, alive = 0.0, False
        for i, e in row:
            norm, a = Structured(axis=e.axis, ord=ord, groups=e.groups).to_units(evaluated(s_flat[i][1]), m_leaves[i])
            total = total + norm**ord if ord != float("inf") else jnp.maximum(total, norm)
            alive = alive | a
        unit_scores.append(total if ord == float("inf") else total ** (1.0 / ord))
        unit_alive.append(alive)
    groups = tuple(0 for _ in located) if scope == "global" else tuple(range(len(located)))
    sizes = [0] * (max(groups) + 1)
    for a, g in zip(unit_alive, groups):
        sizes[g] += int(a.shape[0])
    k = num_pruned(target, sizes, alive_per_group(unit_alive, groups), scope)
    pruned = lowest_k(unit_scores, unit_alive, groups, k)
    new = list(m_leaves)
    for row, alive, p in zip(located, unit_alive, pruned):
        keep = alive & ~p
        for i, e in row:
            new[i] = new[i] & Structured(axis=e.axis, groups=e.groups).expand(keep, new[i].shape)
    return unflatten(treedef, new)


def kept_units(masks: PyTree, units: Sequence[UnitSet]) -> list[jax.Array]:
    """For each unit set, the indices of the units that are not entirely pruned (concrete, host side)."""
    flat, _ = leaves_with_paths(masks)
    paths = [p for p, _ in flat]
    leaves = [m for _, m in flat]
    out = []
    for row in locate(paths, leaves, units):
        alive = None
        for i, e in row:
            a = Structured(axis=e.axis, groups=e.groups).to_units(jnp.zeros(leaves[i].shape), leaves[i])[1]
            alive = a if alive is None else alive | a
        out.append(jnp.nonzero(alive)[0])
    return out
