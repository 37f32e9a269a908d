"""optax transforms that keep pruned weights exactly zero, whatever the optimizer.

Masking only the forward pass (``apply_mask`` in the loss) zeros the gradient
at pruned entries, but momentum, Adam's moments and decoupled weight decay
still move the stored weights there. These transforms take the current masks
as an extra argument (optax's ``GradientTransformationExtraArgs``):

    tx = jp.masked_optimizer(optax.adamw(1e-3, weight_decay=1e-4))
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
    params = optax.apply_updates(params, updates)     # pruned entries are exactly 0.0
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune._tree import PyTree, check_masks_match, check_shapes_match, is_none


def _full_masks(masks: PyTree, like: PyTree) -> PyTree:
    """Masks with a scalar True where the mask is None, so the tree matches ``like`` leaf for leaf."""
    return jax.tree.map(lambda m, _: jnp.ones((), bool) if m is None else m, masks, like, is_leaf=is_none)


def _check_update_args(name: str, updates: PyTree, params: PyTree, masks: PyTree) -> None:
    """The masks and updates must mirror the params exactly: a broadcastable or float mask would zero nothing."""
    if params is None:
        raise ValueError(f"{name} needs `params` in update(updates, state, params, masks=...).")
    if masks is None:
        raise TypeError(f"{name} needs `masks=`: the current masks (a tree of bool arrays mirroring `params`).")
    check_masks_match(params, masks)
    check_shapes_match(params, updates, tree_name="updates")


def _zeroing_updates(updates: PyTree, params: PyTree, masks: PyTree) -> PyTree:
    # p + (-p) is exactly 0.0 in IEEE arithmetic, so the pruned weight lands on zero.
    return jax.tree.map(
        lambda u, p, m: u if m is None else jnp.where(m, u, -p).astype(u.dtype),
        updates,
        params,
        masks,
        is_leaf=is_none,
    )


class ZeroPrunedState(NamedTuple):
    """``zero_pruned`` is stateless."""


def zero_pruned() -> optax.GradientTransformationExtraArgs:
    """Last link of a chain: sets the update at pruned entries to ``-param``.

    After ``optax.apply_updates`` every pruned weight is exactly 0.0,
    including any weight that was non-zero before the mask changed.

    ``update(updates, state, params, *, masks)``; ``params`` and ``masks`` are
    required and checked as in ``masked_optimizer``.
    """

    def init(params):
        del params
        return ZeroPrunedState()

    def update(updates, state, params=None, *, masks=None, **extra):
        del extra
        _check_update_args("zero_pruned", updates, params, masks)
        return _zeroing_updates(updates, params, masks), state

    return optax.GradientTransformationExtraArgs(init, update)


def masked_optimizer(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps any optax optimizer so pruned weights stay exactly zero and leave no trace.

    On every update, at pruned entries:
      1. the gradient is set to 0 (so no statistic learns from it);
      2. the optimizer's per-parameter state (momentum, Adam's moments, ...)
         is set to 0, so nothing accumulated before a mask change leaks back;
      3. the update is ``-param``, so the weight is exactly 0.0 after
         ``optax.apply_updates`` (weight decay included).

    ``update(grads, state, params, *, masks)``; masks may change between steps.

    Raises:
      ValueError: ``params`` missing; ``masks`` or ``grads`` do not mirror
        ``params`` (structure or shape; the first differing path is named).
      TypeError: ``masks`` missing, or a mask leaf that is not bool.
    """

    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(f"`inner` must be an optax GradientTransformation (e.g. optax.adam(1e-3)), got {inner!r}.")

    def init(params):
        return inner.init(params)

    def update(grads, state, params=None, *, masks=None, **extra):
        _check_update_args("masked_optimizer", grads, params, masks)
        full = _full_masks(masks, params)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros((), g.dtype)), grads, full)
        state = optax.tree_utils.tree_map_params(
            inner, lambda s, m: jnp.where(m, s, jnp.zeros((), s.dtype)), state, full
        )
        updates, state = inner.update(grads, state, params, **extra)
        return _zeroing_updates(updates, params, masks), state

    return optax.GradientTransformationExtraArgs(init, update)
