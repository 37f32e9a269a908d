"""Structural pruning of Flax NNX modules: unit sets traced from ``model(*args)``, and a smaller module cut out.

    units = nnx_units(model, x)                       # sets over the paths of nnx_unit_state(model)
    masks = nnx_unit_masks(model, units)              # params masked; batch statistics carried, not scored
    masks = jp.prune_units(jp.magnitude(nnx_unit_state(model)), masks, units, sparsity=0.5)
    small = nnx_compact(model, masks, units)          # a new module; `model` is untouched

``nnx_compact`` also updates the sizes the modules keep as attributes
(features, ``num_heads``, ``feature_group_count``), so the smaller module
runs as it is. A module type it does not know that owns a resized variable
gets a warning: its own attributes may still hold the old sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxprune._tree import leaves_with_paths
from jaxprune.structural.compaction import cut, kept_or_all
from jaxprune.structural.trace import trace_with_state
from jaxprune.structural.unit_pruning import unit_masks
from jaxprune.structural.unit_sets import UnitAxis, UnitSet

# What a unit set may hold in an NNX model: parameters, and the batch statistics carried beside them.
UNIT_STATE = nnx.Any(nnx.Param, nnx.BatchStat)


def nnx_unit_state(model: nnx.Module) -> Any:
    """``nnx.state(model)`` restricted to params and batch statistics: the tree ``nnx_units``' paths name."""
    return nnx.state(model, UNIT_STATE)


def nnx_units(
    model: nnx.Module, *args: Any, unknown: str = "error", heads: str = "whole", **kwargs: Any
) -> list[UnitSet]:
    """``jp.trace_units`` of ``model(*args, **kwargs)``, over the paths of ``nnx_unit_state(model)``.

    In training mode a BatchNorm's running statistics are updated; they are
    carried (coupled with the statistics they replace), not outputs, so
    their channels stay prunable.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
    # nnx.split's annotation returns a variadic tuple of states; two filters give exactly two.
    graphdef, state, rest = nnx.split(model, UNIT_STATE, ...)  # type: ignore[misc]

    def run(s, *a, **k):
        # A copy of the other state (RNG streams) made inside the trace: a dropout layer advances its
        # RNG count, which it may only do to variables of the trace it runs in.
        m = nnx.merge(graphdef, s, jax.tree.map(lambda x: x, rest))
        out = m(*a, **k)
        return out, nnx.state(m, UNIT_STATE)

    return trace_with_state(run, state, args, kwargs, unknown=unknown, heads=heads, state_out=True)


def nnx_unit_masks(model: nnx.Module, units: Sequence[Sequence[UnitAxis]]) -> Any:
    """Masks over ``nnx_unit_state(model)``: every ``nnx.Param`` a set touches; batch statistics ``None``."""
    state = nnx_unit_state(model)
    params = {p for p, _ in leaves_with_paths(nnx.filter_state(state, nnx.Param))[0]}
    return unit_masks(state, units, where=lambda path, leaf: path in params)


def nnx_compact(
    model: nnx.Module, masks: Any, units: Sequence[Sequence[UnitAxis]], *, kept: Sequence | None = None
) -> nnx.Module:
    """A new, smaller module without the pruned units; ``model`` is left untouched.

    Args:
      model: the module the sets were traced from (or ``nnx.eval_shape`` of it, to build a restore
        template: abstract leaves come back abstract at the compacted shapes).
      masks: masks over ``nnx_unit_state(model)`` after ``prune_units``; ``None`` with ``kept``.
      units: the unit sets.
      kept: instead of ``masks``, each set's kept unit indices (``jp.kept_units(masks, units)``),
        as stored beside a checkpoint of the compacted model.

    Returns:
      The compacted module, with its layers' size attributes updated.
    """
    # nnx.split's annotation returns a variadic tuple of states; two filters give exactly two.
    graphdef, state, rest = nnx.split(model, UNIT_STATE, ...)  # type: ignore[misc]
    if kept is None:
        if masks is None:
            raise ValueError("give `masks` (after prune_units) or `kept` (kept_units' indices per set).")
        kept = kept_or_all(state, masks, units)
    new_state = cut(state, units, kept)
    shapes = [dict((p, np.shape(x)) for p, x in leaves_with_paths(t)[0]) for t in (state, new_state)]
    resized = {
        "/".join(p.split("/")[:k]) for p in shapes[0] if shapes[0][p] != shapes[1][p] for k in range(p.count("/") + 1)
    }
    # The positions of each leaf axis' first unit: a GroupNorm's units are whole groups or positions in every group.
    first_unit = {(e.path, e.axis): e.positions(shapes[0][e.path][e.axis])[0] for s in units for e in s}
    small = nnx.merge(graphdef, new_state, rest)
    old_modules = dict(nnx.iter_modules(model))
    for path, module in nnx.iter_modules(small):
        name = "/".join(map(str, path))
        if name in resized:
            _resize(module, old_modules[path], name or "<root>", first_unit)
    return small


def _shape(v: nnx.Variable) -> tuple[int, ...]:
    return tuple(np.shape(v.get_value()))


def _shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    return {k: _shape(v) for k, v in vars(module).items() if isinstance(v, nnx.Variable)}


def _resize(m: nnx.Module, old: nnx.Module, path: str, first_unit: dict[tuple[str, int], np.ndarray]) -> None:
    """Updates the size attributes of one resized module from its new variables."""
    # `old` is the module before the cut, of m's type.
    if isinstance(m, nnx.Conv) and isinstance(old, nnx.Conv):
        k = _shape(m.kernel)
        groups = old.feature_group_count
        if groups > 1 and groups == old.in_features and k[-2] == 1:  # depthwise: each group was a unit
            groups = k[-1] // (old.out_features // old.feature_group_count)
        m.feature_group_count, m.in_features, m.out_features, m.kernel_shape = groups, k[-2] * groups, k[-1], k
    elif isinstance(m, nnx.Linear):
        m.in_features, m.out_features = _shape(m.kernel)
    elif isinstance(m, nnx.LinearGeneral):
        k = _shape(m.kernel)
        start = len(m.batch_axis)
        end = start + len(m.in_features)
        m.in_features, m.out_features = k[start:end], k[end:]
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm)):
        m.num_features = next(iter(_shapes(m).values()))[-1]
    elif isinstance(m, nnx.GroupNorm) and isinstance(old, nnx.GroupNorm):
        # Units that are whole groups (the tracer's default) leave fewer groups of the same size; units that are
        # positions within every group (heads="dims") leave as many groups, each smaller.
        name, n = next((k, shape[-1]) for k, shape in _shapes(m).items())
        key = (f"{path}/{name}" if path != "<root>" else name, len(_shape(getattr(old, name))) - 1)
        if np.array_equal(first_unit.get(key, ()), np.arange(old.group_size)):
            m.num_groups, m.group_size = n // old.group_size, old.group_size
        else:
            m.num_groups, m.group_size = old.num_groups, n // old.num_groups
    elif isinstance(m, nnx.Embed):
        m.num_embeddings, m.features = _shape(m.embedding)
    elif isinstance(m, nnx.MultiHeadAttention):
        q, k, o = _shape(m.query.kernel), _shape(m.key.kernel), _shape(m.out.kernel)
        m.in_features, m.num_heads, m.head_dim = q
        m.in_kv_features, m.num_kv_heads = k[0], k[1]
        m.qkv_features, m.out_features = q[1] * q[2], o[-1]
    elif _shapes(m) != _shapes(old):
        warnings.warn(
            f"nnx_compact: module {path!r} ({type(m).__name__}) has resized variables, but jaxprune does not "
            "know its size attributes; check that it takes its sizes from its variables' shapes.",
            stacklevel=3,
        )
