"""``StraightThrough``: masks recomputed from the dense weights, trained through (jaxpruner's ``magnitude_ste``).

The weights stay dense. Every ``every`` steps the masks are computed afresh
from the current weights at the schedule's target, so a pruned weight that
grew back above the threshold returns: the masks are *not* monotone. The
forward pass uses ``apply_mask(params, masks, straight_through=True)``, whose
gradient reaches every weight as if unmasked (Bengio et al. 2013), and the
optimizer is a plain one, so pruned weights keep learning:

    method = jp.StraightThrough(schedule=jp.schedules.polynomial(0.9, begin=0, end=10_000, every=100))
    state = method.init(params)

    def train_step(params, opt_state, state, step, batch):
        state = method.update(state, params, step)
        loss = lambda p: loss_fn(jp.apply_mask(p, state.masks, straight_through=True), batch)
        updates, opt_state = optax.adam(1e-3).update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state

    params = jp.finalize(params, state.masks)        # at the end: zeros baked in
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxprune._checks import check_int
from jaxprune._tree import PyTree, check_masks_match
from jaxprune.distributions import Distribution
from jaxprune.masks import Where
from jaxprune.methods.decide import when_due
from jaxprune.methods.pruner import Pruner, ScoreFn
from jaxprune.methods.sparse_training import SparseState
from jaxprune.pruning import Scope
from jaxprune.schedules import Schedule, as_step
from jaxprune.structures import Structure


class StraightThrough:
    """Masks recomputed from the dense weights every ``every`` steps, at the scheduled target; weights stay dense.

    The masks of an update are what ``Pruner`` would compute from all-True
    masks at the schedule's value for that step, i.e.
    ``prune(score(params), init_masks(params), sparsity=schedule(step))``.

    Args:
      score: as in ``Pruner``.
      schedule: as in ``Pruner``.
      scope: as in ``Pruner``.
      structure: as in ``Pruner``.
      where: as in ``Pruner``.
      distribution: as in ``Pruner``.
      every: steps between mask updates; 1 (default, as jaxpruner) recomputes
        them on every step. The first update is at step 0.

    ``state.count`` counts the updates. Entries may come back: use
    ``apply_mask(..., straight_through=True)`` in the loss and a plain
    optimizer (not ``masked_optimizer``), and ``finalize`` at the end.
    """

    def __init__(
        self,
        score: str | ScoreFn = "magnitude",
        schedule: Schedule | float | Mapping[str, Schedule | float] = 0.0,
        scope: Scope = "global",
        structure: Structure | None = None,
        where: Where = None,
        distribution: str | Distribution | None = None,
        every: int = 1,
    ):
        self._pruner = Pruner(score, schedule, scope, structure, where, distribution)
        self.every = check_int("every", every, minimum=1)

    def init(self, params: PyTree, key: jax.Array | None = None) -> SparseState:
        """All-True masks for the prunable leaves (``key`` is unused: the method protocol's signature)."""
        return SparseState(self._pruner.init(params, key).masks, jnp.zeros((), jnp.int32))

    def update(
        self,
        state: SparseState,
        params: PyTree,
        step: int | jax.Array,
        grads: PyTree | None = None,
        key: jax.Array | None = None,
    ) -> SparseState:
        """On steps ``step % every == 0``: masks from scratch at the schedule's target; else ``state``.

        Jit-friendly: the decision is a ``lax.cond`` on the traced step.
        Outside ``jit`` it decides in Python (``methods.decide``).
        """
        check_masks_match(params, state.masks, masks_name="state.masks")
        step = as_step(step)
        due = (step % self.every == 0) & (step >= 0)

        def recompute(masks):
            fresh = self._pruner.init(params)  # all-True: the previous masks play no part
            return self._pruner.update(fresh, params, step, grads=grads, key=key).masks

        masks = when_due(due, recompute, state.masks)
        return SparseState(masks, state.count + due.astype(jnp.int32))
