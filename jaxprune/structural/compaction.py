"""Cutting pruned units out: every leaf axis that holds units loses the positions of the pruned ones, at once.

Several sets can share one leaf axis (the two parts of a concatenation that
feeds a convolution); each axis is cut once, by the union of what its sets
remove, so one set's cut never shifts another's positions. The kept
positions stay in their order, which is what every coupling the tracer
follows (slices, concatenations, flattens, head splits) needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._placement import put_like
from jaxprune._tree import PyTree, check_masks_match, leaves_with_paths, unflatten
from jaxprune.structural.unit_pruning import kept_units
from jaxprune.structural.unit_sets import UnitAxis, locate


def removed_positions(
    shapes: list, units: Sequence[Sequence[UnitAxis]], located: list, kept: Sequence
) -> dict[tuple[int, int], np.ndarray]:
    """``{(leaf index, axis): sorted positions to remove}`` from each set's kept unit indices."""
    cut: dict[tuple[int, int], list[np.ndarray]] = {}
    for entries, row, idx in zip(units, located, kept):
        for e, (i, a) in zip(entries, row):
            pos = e.positions(shapes[i][a])
            gone = np.ones(pos.shape[0], bool)
            gone[np.asarray(idx, np.int64)] = False
            cut.setdefault((i, a), []).append(pos[gone].reshape(-1))
    return {key: np.unique(np.concatenate(parts)) for key, parts in cut.items()}


def compact(params: PyTree, masks: PyTree, units: Sequence[Sequence[UnitAxis]]) -> tuple[PyTree, PyTree]:
    """Cuts the entirely pruned units out of every entry of each unit set; returns (params, masks), smaller.

    With units pruned by ``prune_units`` and every leaf of a set masked
    (``jp.unit_masks``), nothing reads from or writes to a pruned unit, so
    the compacted model computes the masked model's outputs, provided the
    model takes its sizes from its inputs' shapes (or, for Flax NNX, through
    ``nnx_compact``, which updates the modules' sizes). Outputs that are
    themselves pruned units (the last layer of an LSTM) are zero in the
    masked model and absent from the compacted one. Leaves without a mask in
    a set (running statistics) are cut too; a unit is pruned when all its
    masked entries are.

    Host side (not under ``jit``): the kept counts set the new shapes.
    """
    kept = kept_or_all(params, masks, units)
    return cut(params, units, kept), cut(masks, units, kept, missing_ok=True)


def kept_or_all(params: PyTree, masks: PyTree, units: Sequence[Sequence[UnitAxis]]) -> list[np.ndarray]:
    """``kept_units``, with every unit kept in a set that has no mask at all (it was not pruned)."""
    p_flat, m_leaves, _ = check_masks_match(params, masks)
    # None where a leaf is None; locate() checks that every leaf of a set has a shape.
    shapes: list[Any] = [None if x is None else tuple(np.shape(x)) for _, x in p_flat]
    located = locate([p for p, _ in p_flat], shapes, units)
    masked = [any(m_leaves[i] is not None for i, _ in row) for row in located]
    found = iter(kept_units(masks, [s for s, m in zip(units, masked) if m]))  # one pass over the masks tree
    return [
        next(found) if m else np.arange(entries[0].num_units(shapes[row[0][0]][row[0][1]]))
        for entries, row, m in zip(units, located, masked)
    ]


def cut(tree: PyTree, units: Sequence[Sequence[UnitAxis]], kept: Sequence, *, missing_ok: bool = False) -> PyTree:
    """``tree`` with only the ``kept`` units of each set (``kept_units``' indices); leaves may be abstract.

    Abstract leaves (``jax.ShapeDtypeStruct``, as ``nnx.eval_shape`` gives)
    come back abstract at their new shapes: that is how a restore builds the
    template of a compacted model from the original model's definition.
    """
    flat, treedef = leaves_with_paths(tree)
    shapes: list[Any] = [None if x is None else tuple(np.shape(x)) for _, x in flat]  # as in kept_or_all
    if len(kept) != len(units):
        raise ValueError(f"`kept` has {len(kept)} entries but there are {len(units)} unit sets.")
    if missing_ok:  # a masks tree: only the entries whose leaves have masks are there to cut
        has = {p for (p, x) in flat if x is not None}
        pairs = [([e for e in s if e.path in has], k) for s, k in zip(units, kept)]
        units, kept = [s for s, _ in pairs if s], [k for s, k in pairs if s]
    located = locate([p for p, _ in flat], shapes, units)
    leaves = [x for _, x in flat]
    takes: dict[int, list[tuple[int, np.ndarray]]] = {}
    for (i, a), gone in removed_positions(shapes, units, located, kept).items():
        if gone.size:
            keep = np.ones(shapes[i][a], bool)
            keep[gone] = False
            takes.setdefault(i, []).append((a, np.flatnonzero(keep)))
    placed = []  # one-device leaves, cut on the host (no compile per shape) and put back in one batch
    for i, axes in takes.items():
        x = leaves[i]
        if isinstance(x, jax.ShapeDtypeStruct):
            shape = list(x.shape)
            for a, take in axes:
                shape[a] = len(take)
            leaves[i] = jax.ShapeDtypeStruct(tuple(shape), x.dtype)
        elif isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            for a, take in axes:
                x = jnp.take(x, take, axis=a)
            leaves[i] = x
        else:
            y = np.asarray(x)
            for a, take in axes:
                y = np.take(y, take, axis=a)
            leaves[i] = y
            if isinstance(x, jax.Array):  # back where it was (NumPy leaves stay NumPy)
                placed.append((i, x))
    on_device = put_like([leaves[i] for i, _ in placed], [x for _, x in placed])
    for (i, _), moved in zip(placed, on_device):
        leaves[i] = moved
    return unflatten(treedef, leaves)
