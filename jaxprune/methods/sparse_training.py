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

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import distributions
from jaxprune import scores as scores_lib
from jaxprune._checks import KEY_HELP, check_fraction, check_int, check_key
from jaxprune._tree import PyTree, check_masks_match, check_shapes_match, leaves_with_paths, unflatten
from jaxprune.counts import round_mul
from jaxprune.distributions import Distribution
from jaxprune.masks import Where, init_masks
from jaxprune.methods.decide import when_due
from jaxprune.pruning import prune
from jaxprune.schedules import as_step
from jaxprune.select import Lazy, count_true, lowest_k

_SCORES = ("random", "magnitude")


class SparseState(NamedTuple):
    """The state of a sparse-training method (a pytree: jit, scan and checkpoint it)."""

    masks: PyTree
    # int32: how many updates changed the masks (always 0 for StaticSparse). The field shadows tuple.count on
    # purpose (a public name, saved in checkpoints), which mypy reports as an override of the method.
    count: jax.Array  # type: ignore[assignment]


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


def cosine_drop_fraction(drop_fraction: float, end: int) -> Callable[[jax.Array], jax.Array]:
    """``f(step) = drop_fraction / 2 * (1 + cos(pi * step / end))``: RigL's decay of the fraction moved."""

    def f(step: jax.Array) -> jax.Array:
        return drop_fraction / 2.0 * (1.0 + jnp.cos(jnp.pi * step.astype(jnp.float32) / end))

    return f


class _DropAndGrow:
    """SET and RigL: every ``every`` steps each layer drops its weakest active weights and regrows as many.

    The drop step takes, in each prunable leaf, the ``round(f(step) * A)``
    active weights (A: the leaf's active count) with the smallest magnitude;
    the grow step activates as many among the connections not kept by the
    drop step (the just-dropped ones included), chosen by ``_grow_scores``.
    So every leaf keeps exactly A active weights. Ties follow the library's
    rule (``jp.prune``): the earlier flat position goes first, in the drop
    step and in the grow step alike.
    """

    def __init__(
        self,
        sparsity: float,
        *,
        distribution: str | Distribution = "erk",
        drop_fraction: float = 0.3,
        every: int = 100,
        end: int,
        where: Where = None,
    ):
        self._init = StaticSparse(sparsity, distribution=distribution, where=where)
        self.drop_fraction = check_fraction("drop_fraction", drop_fraction)
        self.every = check_int("every", every, minimum=1)
        self.end = check_int("end", end, minimum=1)
        self.fraction = cosine_drop_fraction(self.drop_fraction, self.end)

    def init(self, params: PyTree, key: jax.Array | None = None) -> SparseState:
        """Random masks with the distribution's share per leaf, as ``StaticSparse(score="random")``."""
        return self._init.init(params, key)

    def _grow_scores(self, params: PyTree, grads: PyTree | None, key: jax.Array | None) -> list[Lazy | None]:
        """Regrowth scores, one per leaf of ``params`` in flatten order (higher grows first).

        ``Lazy`` scores are computed inside each pass of the selection rather
        than stored: on 100M weights a stored score costs as much as several passes.
        """
        raise NotImplementedError

    def update(
        self,
        state: SparseState,
        params: PyTree,
        step: int | jax.Array,
        grads: PyTree | None = None,
        key: jax.Array | None = None,
    ) -> SparseState:
        """Moves connections when ``step % every == 0`` and ``0 < step < end``; else returns ``state``.

        Jit-friendly: the decision is a ``lax.cond`` on the traced step, so
        calling it every step compiles once.
        Outside ``jit`` it decides in Python (``methods.decide``).
        """
        p_flat, m_leaves, treedef = check_masks_match(params, state.masks, masks_name="state.masks")
        live = [i for i, m in enumerate(m_leaves) if m is not None and m.size]
        step = as_step(step)
        due = (step % self.every == 0) & (step > 0) & (step < self.end)

        def move(masks):  # traced with the call (bad grads or key raise then), run only when due
            grow = self._grow_scores(params, grads, key)
            weights = [p_flat[i][1] for i in live]
            old = [masks[i] for i in live]
            groups = tuple(range(len(live)))
            active = jnp.stack([count_true([m])[0] for m in old])
            sizes = jnp.asarray([m.size for m in old], jnp.uint32)
            n_move = round_mul(self.fraction(step), active)
            # Drop: the n_move smallest |w| among the active (inactive entries rank below every score).
            marked = lowest_k(
                [Lazy(jnp.abs, (w,)) for w in weights], old, groups, sizes - active + n_move, num_alive=active
            )
            kept = [m & ~d for m, d in zip(old, marked)]
            # Grow: the n_move best-scoring among the rest (kept entries rank first, as "masked out");
            # active - n_move entries are kept, so sizes - active + n_move are candidates.
            grown = lowest_k(
                [_negated(grow[i]) for i in live], [~k for k in kept], groups, active, num_alive=sizes - active + n_move
            )
            new = list(masks)
            for i, k, g in zip(live, kept, grown):
                new[i] = k | g
            return new

        masks = when_due(due, move, list(m_leaves))
        return SparseState(unflatten(treedef, masks), state.count + due.astype(jnp.int32))


def _negated(score: Lazy | None) -> Lazy:
    assert score is not None  # asked for leaves with a mask only, whose weights always have a score
    return Lazy(lambda *args: -score.fn(*args), score.args)


class SET(_DropAndGrow):
    """Sparse Evolutionary Training (Mocanu et al. 2018): drop the smallest, regrow uniformly at random.

    Every ``every`` steps (``0 < step < end``), each prunable leaf drops the
    fraction ``f(step) = drop_fraction / 2 * (1 + cos(pi * step / end))`` of
    its active weights with the smallest magnitude and regrows as many,
    uniformly at random among the connections not kept by the drop step.
    Connections *move*: masks regrow entries (this is not monotone pruning).
    ``update`` needs ``key`` (fold the step in for a fresh draw each time).

    Train with ``masked_optimizer`` and call ``update`` before the optimizer
    in each step, so that dropped weights are set to exactly 0 by the same
    step's update and regrown ones start from 0 with zero optimizer state.

    Args:
      sparsity: the model-wide fraction of prunable weights that are inactive.
      distribution: per-leaf shares, as in ``StaticSparse`` (default ``"erk"``).
      drop_fraction: the fraction moved at step 0 of the cosine decay, in [0, 1].
      every: steps between updates.
      end: the step at which connections stop moving.
      where: which leaves are prunable, as in ``init_masks``.
    """

    def _grow_scores(self, params, grads, key):
        if key is None:
            raise TypeError(f"SET.update needs `key=` to regrow at random; {KEY_HELP}.")
        # The draws of ``jp.random(key, params, generator="hash")``, computed inside the selection's passes:
        # a fresh uniform score for every weight at every update would cost about 3 global prunes with threefry.
        flat, _ = leaves_with_paths(params)
        seeds = scores_lib.hash_seeds(key, params)
        return [
            None if p is None else Lazy(functools.partial(scores_lib.hash_uniform, shape=jnp.shape(p)), (seed,))
            for seed, (_, p) in zip(seeds, flat)
        ]


class RigL(_DropAndGrow):
    """Rigging the Lottery (Evci et al. 2020): drop the smallest, regrow the largest dense gradients.

    As ``SET``, but the regrown connections are those with the largest
    ``|gradient|`` among the connections not kept by the drop step. The
    gradient must be the **dense** one: of the loss with respect to the
    effective weights at every position, pruned ones included. With
    ``apply_mask`` inside the loss that gradient is 0 at pruned entries, so
    compute it without: keep the pruned weights stored as exact zeros with
    ``masked_optimizer`` (the forward then needs no mask) and pass
    ``jax.grad(loss)(params)`` as ``grads``. It costs nothing extra: it is the
    gradient the optimizer gets anyway.

    Args: as ``SET``.
    """

    def _grow_scores(self, params, grads, key):
        if grads is None:
            raise ValueError("RigL.update needs `grads=`: the dense gradient of the loss (see the class docstring).")
        check_shapes_match(params, grads, tree_name="grads")
        return [None if g is None else Lazy(jnp.abs, (g,)) for _, g in leaves_with_paths(grads)[0]]
