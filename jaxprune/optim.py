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

from jaxprune._tree import PyTree, is_none


def _full_masks(masks: PyTree, like: PyTree) -> PyTree:
    """Masks with a scalar True where the mask is None, so the tree matches ``like`` leaf for leaf."""
    return jax.tree.map(lambda m, _: jnp.ones((), bool) if m is None else m, masks, like, is_leaf=is_none)


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

    ``update(updates, state, params, *, masks)``; ``params`` is required.
    """

    def init(params):
        del params
        return ZeroPrunedState()

    def update(updates, state, params=None, *, masks, **extra):
        del extra
        if params is None:
            raise ValueError("zero_pruned needs `params` in update(updates, state, params, masks=...).")
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
    """

    def init(params):
        return inner.init(params)

    def update(grads, state, params=None, *, masks, **extra):
        if params is None:
            raise ValueError("masked_optimizer needs `params` in update(grads, state, params, masks=...).")
        full = _full_masks(masks, params)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros((), g.dtype)), grads, full)
        state = optax.tree_utils.tree_map_params(
            inner, lambda s, m: jnp.where(m, s, jnp.zeros((), s.dtype)), state, full
        )
        updates, state = inner.update(grads, state, params, **extra)
        return _zeroing_updates(updates, params, masks), state

    return optax.GradientTransformationExtraArgs(init, update)
