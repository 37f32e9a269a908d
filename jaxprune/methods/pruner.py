"""``Pruner``: iterative pruning inside a jitted training loop, optax style.

    pruner = jp.Pruner(schedule=jp.schedules.linear(0.9, rounds=10, every=100))
    state = pruner.init(params)
    ...
    state = pruner.update(state, params, step)        # inside the jitted train step
    params_used = jp.apply_mask(params, state.masks)

``update`` recomputes masks (under ``lax.cond``) only when the schedule's
target rises above the one last applied, so the whole loop compiles once and
non-pruning steps cost a comparison.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import distributions
from jaxprune import scores as scores_lib
from jaxprune._checks import KEY_HELP, check_key, check_scope
from jaxprune._tree import (
    PyTree,
    check_masks_match,
    check_shapes_match,
    first_difference,
    leaves_with_paths,
    unflatten,
)
from jaxprune.distributions import Distribution
from jaxprune.masks import Where, apply_mask, compile_pattern, init_masks
from jaxprune.methods.decide import when_due
from jaxprune.pruning import Scope, check_structure, prune_to_targets
from jaxprune.schedules import Schedule, constant
from jaxprune.structural.unit_pruning import prune_units, unit_masks
from jaxprune.structural.unit_sets import UnitAxis, check_sets
from jaxprune.structures import NM, Structure

ScoreFn = Callable[[PyTree, PyTree | None, jax.Array | None], PyTree]


class PrunerState(NamedTuple):
    """What a ``Pruner`` carries between steps (a pytree: jit, scan and checkpoint it)."""

    masks: PyTree
    targets: jax.Array  # float32[num_groups]: the cumulative target last applied per schedule
    count: jax.Array  # type: ignore[assignment]  # int32: how many pruning rounds have run (shadows tuple.count)


def _magnitude_score(params, grads, key):
    return scores_lib.magnitude(params, lazy=True)  # |w| computed inside the selection's passes, never stored


def _random_score(params, grads, key):
    if key is None:
        raise TypeError(f"score='random' needs `key=` in Pruner.update; {KEY_HELP}.")
    check_key(key)
    return scores_lib.random(key, params)


def _saliency_score(params, grads, key):
    if grads is None:
        raise ValueError("score='saliency' needs `grads=` in Pruner.update.")
    return scores_lib.saliency(params, grads)


# The library's scores by name and as functions: Pruner(score=jp.magnitude) works like score="magnitude".
_SCORES = {"magnitude": _magnitude_score, "random": _random_score, "saliency": _saliency_score}
_SCORE_FUNCTIONS = {scores_lib.magnitude: "magnitude", scores_lib.random: "random", scores_lib.saliency: "saliency"}


def _score_fn(score: str | ScoreFn) -> ScoreFn:
    if isinstance(score, str) and score in _SCORES:
        return _SCORES[score]
    if callable(score):
        name = _SCORE_FUNCTIONS.get(score)
        return _SCORES[name] if name else score
    error = ValueError if isinstance(score, str) else TypeError
    raise error(
        f"`score` must be one of {tuple(_SCORES)}, jp.magnitude, jp.random, jp.saliency "
        f"or a callable (params, grads, key) -> scores, got {score!r}."
    )


def _distribution_fn(distribution: str | Distribution | None, schedule: object, scope: str) -> Distribution | None:
    if distribution is None:
        return None
    fn = distributions.get(distribution)
    if isinstance(schedule, Mapping):
        raise ValueError("`distribution` shares one schedule among the leaves; give one schedule, not a mapping.")
    if scope != "layer":
        raise ValueError(f"`distribution` gives each leaf its own target: pass scope='layer', got scope={scope!r}.")
    return fn


def _as_schedule(value: Schedule | float, name: str) -> Schedule:
    if isinstance(value, Schedule):
        return value
    try:
        return constant(value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None


class Pruner:
    """Iterative pruning on a schedule, with ``init``/``update`` like an optax transform.

    Args:
      score: ``"magnitude"`` (default), ``"random"`` (needs ``key``),
        ``"saliency"`` (|w * g|, needs ``grads``), the same as the functions
        ``jp.magnitude``, ``jp.random``, ``jp.saliency``, or any callable
        ``(params, grads, key) -> scores``.
      schedule: a ``Schedule`` (``jp.schedules.*``) or a float (constant
        target from step 0); or a mapping from path regex to either, for
        per-layer targets, e.g. ``{"out": geometric(0.1, 15), ".*": geometric(0.2, 15)}``.
        A leaf follows the first pattern that ``re.search``-es its path;
        prunable leaves matching none raise.
      scope: ``"global"`` (one ranking per schedule group) or ``"layer"``
        (each leaf on its own).
      structure: as in ``prune``.
      where: which leaves are prunable, as in ``init_masks``.
      distribution: how the schedule's target is shared among the leaves
        (with one schedule and ``scope="layer"``): ``"uniform"``, ``"erk"``
        (``jp.distributions``), or a callable ``(masks, sparsity) -> per-leaf
        sparsities``. The per-leaf targets at the schedule's final value are
        scaled by the schedule over time: leaf i's target at step t is
        ``d_i * schedule(t) / schedule.final``, so the model as a whole
        follows the schedule and each leaf ends exactly at ``round(d_i * n_i)``.
    """

    def __init__(
        self,
        score: str | ScoreFn = "magnitude",
        schedule: Schedule | float | Mapping[str, Schedule | float] = 0.0,
        scope: Scope = "global",
        structure: Structure | None = None,
        where: Where = None,
        distribution: str | Distribution | None = None,
        units: Sequence[Sequence[UnitAxis]] | None = None,
        ord: float = 2,
        round_to: int = 1,
    ):
        self.score = _score_fn(score)
        self.units, self.ord, self.round_to = units, ord, round_to
        if units is not None:
            check_sets(units)
            if isinstance(schedule, Mapping) or structure is not None or distribution is not None:
                raise ValueError(
                    "with `units`, give one schedule (not a mapping) and no `structure` or `distribution`: "
                    "the target is the fraction of units pruned."
                )
        self.distribution = _distribution_fn(distribution, schedule, scope)
        if isinstance(schedule, Mapping):
            if not schedule:
                raise ValueError("`schedule` as a mapping needs at least one pattern.")
            self.patterns = [
                (compile_pattern(p, f"schedule key {p!r}"), _as_schedule(s, f"schedule[{p!r}]"))
                for p, s in schedule.items()
            ]
        else:
            self.patterns = [(re.compile(""), _as_schedule(schedule, "schedule"))]
        self.scope, self.structure, self.where = check_scope(scope), check_structure(structure), where
        if isinstance(self.structure, NM):
            raise ValueError("NM structures fix their sparsity at 1 - n/m; use jp.prune(..., structure=NM(...)) once.")

    def _groups(self, masks: PyTree) -> list[int | None]:
        """The schedule index of each leaf (None where not prunable)."""
        out: list[int | None] = []
        for path, m in leaves_with_paths(masks)[0]:
            if m is None:
                out.append(None)
                continue
            g = next((i for i, (p, _) in enumerate(self.patterns) if p.search(path)), None)
            if g is None:
                patterns = [p.pattern for p, _ in self.patterns]
                raise ValueError(f"prunable leaf {path!r} matches no pattern of `schedule` ({patterns}).")
            out.append(g)
        return out

    def init(self, params: PyTree, key: jax.Array | None = None) -> PrunerState:
        """All-True masks for the prunable leaves (``key`` is unused: the method protocol's signature)."""
        del key
        if self.units is not None:
            masks = unit_masks(params, self.units, self.where)
            return PrunerState(masks, jnp.zeros(1, jnp.float32), jnp.zeros((), jnp.int32))
        masks = init_masks(params, self.where)
        self._groups(masks)  # fail early on an unmatched leaf
        return PrunerState(masks, jnp.zeros(len(self.patterns), jnp.float32), jnp.zeros((), jnp.int32))

    def targets(self, step: int | jax.Array) -> jax.Array:
        """The scheduled cumulative sparsity of each schedule group at ``step`` (float32[G])."""
        return jnp.stack([s(step) for _, s in self.patterns])

    def update(
        self,
        state: PrunerState,
        params: PyTree,
        step: int | jax.Array,
        grads: PyTree | None = None,
        key: jax.Array | None = None,
    ) -> PrunerState:
        """Prunes to the scheduled target if it rose since the last round; else returns ``state``.

        Jit-friendly: the decision is a ``lax.cond`` on traced values, so
        calling it every step compiles once. Called outside ``jit`` (between
        epochs, say), it decides in Python and prunes only when due.
        """
        check_masks_match(params, state.masks, params_name="params", masks_name="state.masks")
        if self.units is not None:
            return self._update_units(state, params, step, grads, key, self.units)
        groups = self._groups(state.masks)
        wanted = self.targets(step)
        due = wanted > state.targets
        group_targets: dict[int, tuple[jax.Array, float]]  # (target now, final target) per group
        if self.distribution is None:
            leaf_groups = groups
            group_targets = {g: (wanted[g], schedule.final) for g, (_, schedule) in enumerate(self.patterns)}
        else:  # one schedule, scaled per leaf; each leaf is its own group
            leaf_groups = [None if g is None else i for i, g in enumerate(groups)]
            group_targets = self._leaf_targets(state.masks, wanted[0], self.distribution)

        def do_prune(masks):
            scores = self._scores(params, grads, key)
            pruned = prune_to_targets(
                scores, masks, leaf_groups, group_targets, scope=self.scope, structure=self.structure
            )
            # Groups whose target did not rise keep their masks as they are.
            new, treedef = leaves_with_paths(pruned)
            old, _ = leaves_with_paths(masks)
            return unflatten(
                treedef, [None if g is None else jnp.where(due[g], n, o) for g, (_, n), (_, o) in zip(groups, new, old)]
            )

        masks = when_due(jnp.any(due), do_prune, state.masks)
        return PrunerState(
            masks,
            jnp.where(due, wanted, state.targets),
            state.count + jnp.any(due).astype(jnp.int32),
        )

    def _update_units(self, state, params, step, grads, key, units: Sequence[Sequence[UnitAxis]]) -> PrunerState:
        wanted = self.targets(step)
        due = wanted[0] > state.targets[0]

        def do_prune(masks):
            scores = self._scores(params, grads, key)
            return prune_units(
                scores, masks, units, sparsity=wanted[0], scope=self.scope, ord=self.ord, round_to=self.round_to
            )

        masks = when_due(due, do_prune, state.masks)
        return PrunerState(masks, jnp.where(due, wanted, state.targets), state.count + due.astype(jnp.int32))

    def _leaf_targets(
        self, masks: PyTree, wanted: jax.Array, distribution: Distribution
    ) -> dict[int, tuple[jax.Array, float]]:
        """(target now, final target) of every prunable leaf (by flat index) under the distribution."""
        final = self.patterns[0][1].final
        per_leaf = distribution(masks, final)  # from shapes only: Python floats at trace time
        flat, m_def = leaves_with_paths(masks)
        values, d_def = leaves_with_paths(per_leaf)
        if d_def != m_def:
            where = first_difference(masks, per_leaf, "the masks", "the distribution's result")
            raise ValueError(f"`distribution` must return a pytree of the masks' structure: {where}.")
        out: dict[int, tuple[jax.Array, float]] = {}
        for i, ((path, m), (_, d)) in enumerate(zip(flat, values)):
            if m is None:
                continue
            if d is None:
                raise ValueError(f"the distribution gave no sparsity for prunable leaf {path!r}.")
            d = float(d)
            out[i] = (wanted * (d / final) if final > 0 else jnp.zeros_like(wanted), d)
        return out

    def _scores(self, params: PyTree, grads: PyTree | None, key: jax.Array | None) -> PyTree:
        scores = self.score(params, grads, key)
        check_shapes_match(params, scores, params_name="params", tree_name="the scores that `score` returned")
        return scores


def rewind(params: PyTree, init_params: PyTree, masks: PyTree) -> PyTree:
    """Lottery-ticket rewinding (Frankle & Carbin 2019): surviving weights back to ``init_params``, pruned ones 0.

    ``init_params`` may be the initialisation or an early-training snapshot
    (Frankle et al. 2020, "late rewinding"). Leaves without a mask are taken
    from ``init_params`` too.
    """
    del params  # every surviving value is replaced; the argument mirrors the training-loop call
    check_masks_match(init_params, masks, params_name="init_params")
    return apply_mask(init_params, masks)
