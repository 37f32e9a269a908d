"""Per-layer sparsity distributions: how a model-wide target is shared among the prunable leaves.

Each function takes the masks (for the shapes of the prunable leaves) and a
model-wide ``sparsity``, and returns a pytree of the masks' structure with one
Python float per prunable leaf (``None`` elsewhere): that leaf's sparsity.
Give it to ``prune(..., sparsity=<pytree>, scope="layer")`` or to
``Pruner(distribution=...)``.

* ``uniform``: every leaf at ``sparsity``.
* ``erk``: Erdős–Rényi-Kernel (Evci et al. 2020, "Rigging the Lottery"):
  small and thin layers keep more of their weights, wide ones fewer.

Both keep the model-wide fraction: the per-leaf sparsities times the leaf sizes
add up to ``sparsity * N`` within one weight per leaf, so ``prune`` with them
removes ``round(sparsity * N)`` weights, give or take one per leaf. Leaves
without entries get 0.0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from jaxprune._checks import check_fraction
from jaxprune._tree import PyTree, leaves_with_paths, unflatten


def _shapes(masks: PyTree) -> tuple[list[tuple[int, ...] | None], Any]:
    """The shape of every prunable leaf (None where the mask is None), and the masks' treedef."""
    flat, treedef = leaves_with_paths(masks)
    shapes: list[tuple[int, ...] | None] = []
    for path, m in flat:
        if m is None:
            shapes.append(None)
        elif getattr(m, "dtype", None) != jnp.bool_:
            raise TypeError(
                f"`masks` leaf {path!r} must be a bool array or None, got {getattr(m, 'dtype', type(m).__name__)}; "
                "build masks with jp.init_masks(params)."
            )
        else:
            shapes.append(tuple(m.shape))
    if all(s is None for s in shapes):
        raise ValueError("`masks` has no prunable leaf (every leaf is None); build it with jp.init_masks(params).")
    return shapes, treedef


def uniform(masks: PyTree, sparsity: float) -> PyTree:
    """The same sparsity for every prunable leaf.

    Args:
      masks: masks (``jp.init_masks(params)``); only their shapes are read.
      sparsity: the model-wide fraction of prunable weights to prune, in [0, 1].

    Returns:
      A pytree of the masks' structure: ``sparsity`` at every prunable leaf, ``None`` elsewhere.
    """
    s = check_fraction("sparsity", sparsity)
    shapes, treedef = _shapes(masks)
    return unflatten(treedef, [None if shape is None else (s if math.prod(shape) else 0.0) for shape in shapes])


def erk(masks: PyTree, sparsity: float, *, power: float = 1.0) -> PyTree:
    """Erdős–Rényi-Kernel sparsities (Evci et al. 2020).

    A leaf's density (1 - sparsity) is proportional to
    ``(sum of its dims / product of its dims) ** power``, scaled so that the
    model as a whole keeps ``(1 - sparsity) * N`` weights. A leaf whose density
    would exceed 1 is made dense and the others are scaled up to make good its
    share, repeatedly, until none exceeds 1 (the largest raw densities go
    dense first). ``power=0`` gives ``uniform``; ``power > 1`` spreads the
    densities further apart. As in the reference code (RigL's
    ``sparse_utils`` and jaxpruner), the weights to keep are counted as
    ``sum(n - floor(n * sparsity))`` over the leaves, so the model keeps at
    least ``(1 - sparsity) * N`` and at most one more weight per leaf; the
    values equal those of jaxpruner's published tests.

    Args:
      masks: masks (``jp.init_masks(params)``); only their shapes are read. All
        dims count, kernel taps of a convolution included (the "K" in ERK).
      sparsity: the model-wide fraction of prunable weights to prune, in [0, 1].
      power: the exponent of the raw density, a finite number >= 0.

    Returns:
      A pytree of the masks' structure with each prunable leaf's sparsity (a
      Python float) and ``None`` elsewhere.

    Raises:
      TypeError, ValueError: ``sparsity`` or ``power`` out of range, or masks
        that are not masks.

    Example (the shapes of jaxpruner's and RigL's tests):
      >>> masks = {"a": jnp.ones((2, 4), bool), "b": jnp.ones((3, 6), bool), "c": jnp.ones((2, 4, 6), bool)}
      >>> jp.distributions.erk(masks, 0.5)          # doctest: +SKIP
      {'a': 0.0, 'b': 0.3095..., 'c': 0.6547...}                 # jaxpruner's test: 0.0, 0.31, 0.655
    """
    s = check_fraction("sparsity", sparsity)
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or not math.isfinite(power) or power < 0:
        raise ValueError(f"`power` must be a finite number >= 0, got {power!r}.")
    shapes, treedef = _shapes(masks)
    sizes = {i: math.prod(shape) for i, shape in enumerate(shapes) if shape is not None and math.prod(shape)}
    raw = {i: (sum(shapes[i]) / n) ** power for i, n in sizes.items()}
    # As RigL's and jaxpruner's code count it: a leaf at the model-wide sparsity keeps n - floor(n * s).
    kept_total = sum(n - math.floor(n * s) for n in sizes.values())
    dense: set[int] = set()
    while True:
        sparse = [i for i in sizes if i not in dense]
        if not sparse:  # only at sparsity 0: everything is dense
            scale = 0.0
            break
        # Weights the sparse leaves must keep, once the dense leaves keep all of theirs.
        scale = (kept_total - sum(sizes[i] for i in dense)) / sum(raw[i] * sizes[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if top * scale <= 1.0:
            break
        dense |= {i for i in sparse if raw[i] == top}
    out = []
    for i, shape in enumerate(shapes):
        if shape is None:
            out.append(None)
        elif i not in sizes or i in dense:
            out.append(0.0)
        else:
            out.append(min(1.0, max(0.0, 1.0 - scale * raw[i])))
    return unflatten(treedef, out)


Distribution = Callable[[PyTree, float], PyTree]
NAMED = {"uniform": uniform, "erk": erk}


def get(distribution: str | Distribution) -> Distribution:
    """A distribution by name (``"uniform"``, ``"erk"``), or a callable ``(masks, sparsity) -> per-leaf`` as it is."""
    if isinstance(distribution, str) and distribution in NAMED:
        return NAMED[distribution]
    if callable(distribution):
        return distribution
    raise ValueError(
        f"`distribution` must be one of {tuple(NAMED)} or a callable (masks, sparsity) -> per-leaf sparsities, "
        f"got {distribution!r}."
    )
