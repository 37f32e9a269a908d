"""Sparse training from scratch: the masks are set at initialisation, with a per-layer distribution.

``StaticSparse`` is the baseline of the sparse-training papers (Evci et al.
2020, "Rigging the Lottery"): the masks are drawn once, at ``init``, and never
change. Train with ``masked_optimizer`` (or ``apply_mask`` in the loss) so that
the pruned weights stay exactly zero.

    method = jp.StaticSparse(0.9, distribution="erk")
    state = method.init(params, key)                      # masks drawn here, once
    params = jp.apply_mask(params, state.masks)           # start from the sparse network
    ...
    state = method.update(state, params, step)            # a no-op: the protocol's every-step call
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import distributions
from jaxprune import scores as scores_lib
from jaxprune._checks import KEY_HELP, check_fraction, check_key
from jaxprune._tree import PyTree, check_masks_match
from jaxprune.distributions import Distribution
from jaxprune.masks import Where, init_masks
from jaxprune.pruning import prune

_SCORES = ("random", "magnitude")


class SparseState(NamedTuple):
    """The state of a sparse-training method (a pytree: jit, scan and checkpoint it)."""

    masks: PyTree
    count: jax.Array  # int32: how many updates changed the masks (always 0 for StaticSparse)


class StaticSparse:
    """Masks drawn once at ``init`` with a per-layer sparsity distribution, never changed.

    Args:
      sparsity: the model-wide fraction of prunable weights that are pruned, in [0, 1].
      distribution: how it is shared among the prunable leaves: ``"erk"``
        (default, Evci et al. 2020), ``"uniform"``, or a callable
        ``(masks, sparsity) -> per-leaf sparsities`` (see ``jp.distributions``).
        Each leaf gets exactly ``round(d_i * n_i)`` pruned weights.
      score: which weights of a leaf are kept: ``"random"`` (default; needs
        ``key`` in ``init``) or ``"magnitude"`` (the largest at initialisation).
      where: which leaves are prunable, as in ``init_masks``.
    """

    def __init__(
        self,
        sparsity: float,
        *,
        distribution: str | Distribution = "erk",
        score: str = "random",
        where: Where = None,
    ):
        self.distribution = distributions.get(distribution)
        if score not in _SCORES:
            raise ValueError(f"`score` must be one of {_SCORES}, got {score!r}.")
        self.sparsity = check_fraction("sparsity", sparsity)
        self.score, self.where = score, where

    def init(self, params: PyTree, key: jax.Array | None = None) -> SparseState:
        """Draws the masks: each prunable leaf keeps its share under the distribution.

        Raises:
          TypeError: ``score="random"`` and ``key`` is not one PRNG key.
        """
        masks = init_masks(params, self.where)
        if self.score == "random":
            if key is None:
                raise TypeError(f"StaticSparse(score='random') needs `key=` in init; {KEY_HELP}.")
            scores = scores_lib.random(check_key(key), params)
        else:
            scores = scores_lib.magnitude(params)
        masks = prune(scores, masks, sparsity=self.distribution(masks, self.sparsity), scope="layer")
        return SparseState(masks, jnp.zeros((), jnp.int32))

    def update(
        self,
        state: SparseState,
        params: PyTree,
        step: int | jax.Array,
        grads: PyTree | None = None,
        key: jax.Array | None = None,
    ) -> SparseState:
        """Returns ``state`` unchanged (static masks); checks that ``params`` still mirror the masks."""
        del step, grads, key
        check_masks_match(params, state.masks, masks_name="state.masks")
        return state
