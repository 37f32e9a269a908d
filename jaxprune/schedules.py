"""Cumulative sparsity schedules: ``step -> target sparsity``, usable under ``jit``.

Every schedule returns the **cumulative** fraction of prunable weights that
should be pruned by ``step`` (a float32 scalar, piecewise constant between its
pruning steps), like an optax schedule returns a learning rate. A ``Pruner``
prunes whenever the value rises above the target it last applied.

Pruning rounds are at ``begin, begin + every, ..., begin + (rounds - 1) * every``;
before ``begin`` the value is 0.

  linear(final=0.9, rounds=10)        0.09, 0.18, ..., 0.90 (equal steps of the total)
  geometric(rate=0.1, rounds=10)      PyTorch's amount=0.1 ten times: 1 - 0.9**k, ends at 65.13%
  polynomial(final=0.9, begin=1_000, end=10_000, every=100)   Zhu & Gupta (2017)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxprune._checks import check_fraction, check_int


@dataclass(frozen=True)
class Schedule:
    """A cumulative sparsity schedule: call it with a step.

    ``final`` is the value reached after the last round, kept as a Python
    float so a ``Pruner`` can hit ``round(final * N)`` exactly even though the
    traced value is float32.
    """

    fn: Callable[[jax.Array], jax.Array]
    final: float
    description: str

    def __call__(self, step: int | jax.Array) -> jax.Array:
        return self.fn(as_step(step)).astype(jnp.float32)

    def __repr__(self) -> str:
        return self.description


def as_step(step: object) -> jax.Array:
    """A training step as int32: a Python/NumPy int or an integer scalar array (traced is fine)."""
    dtype = getattr(step, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and getattr(step, "ndim", 0) == 0:
        return jnp.asarray(step, jnp.int32)
    return jnp.asarray(check_int("step", step), jnp.int32)


def _rounds(rounds: object, every: object, begin: object) -> tuple[int, int, int]:
    return (
        check_int("rounds", rounds, minimum=1),
        check_int("every", every, minimum=1),
        check_int("begin", begin),
    )


def _round_index(step: jax.Array, begin: int, every: int, rounds: int) -> jax.Array:
    """How many rounds have happened by ``step`` (0 before ``begin``, at most ``rounds``)."""
    done = jnp.floor_divide(step - begin, every) + 1
    return jnp.where(step < begin, 0, jnp.clip(done, 0, rounds))


def one_shot(sparsity: float, at: int = 0) -> Schedule:
    """Prune once, to ``sparsity``, at step ``at``."""
    s, at = check_fraction("sparsity", sparsity), check_int("at", at)
    return Schedule(lambda step: jnp.where(step >= at, s, 0.0), s, f"one_shot(sparsity={s}, at={at})")


def constant(sparsity: float, begin: int = 0) -> Schedule:
    """``sparsity`` from ``begin`` on (the same as ``one_shot``; reads better for per-layer targets)."""
    s, begin = check_fraction("sparsity", sparsity), check_int("begin", begin)
    return Schedule(lambda step: jnp.where(step >= begin, s, 0.0), s, f"constant(sparsity={s}, begin={begin})")


def linear(final: float, rounds: int, every: int = 1, begin: int = 0) -> Schedule:
    """Equal steps of the cumulative target: ``final * k / rounds`` after round k."""
    final = check_fraction("final", final)
    rounds, every, begin = _rounds(rounds, every, begin)
    return Schedule(
        lambda step: final * _round_index(step, begin, every, rounds) / rounds,
        final,
        f"linear(final={final}, rounds={rounds}, every={every}, begin={begin})",
    )


def geometric(rate: float, rounds: int, every: int = 1, begin: int = 0) -> Schedule:
    """PyTorch's iterative meaning as a cumulative target: ``1 - (1 - rate)**k`` after round k.

    Ten rounds of ``rate=0.1`` end at 65.13%, not 90%.
    """
    rate = check_fraction("rate", rate)
    rounds, every, begin = _rounds(rounds, every, begin)
    return Schedule(
        lambda step: 1.0 - (1.0 - rate) ** _round_index(step, begin, every, rounds).astype(jnp.float32),
        1.0 - (1.0 - rate) ** rounds,
        f"geometric(rate={rate}, rounds={rounds}, every={every}, begin={begin})",
    )


def polynomial(final: float, begin: int, end: int, every: int, initial: float = 0.0, power: float = 3) -> Schedule:
    """Gradual pruning of Zhu & Gupta (2017), "To prune, or not to prune".

    ``s_t = final + (initial - final) * (1 - (t - begin) / (end - begin))**power``,
    updated every ``every`` steps from ``begin`` to ``end`` (t rounded down to
    the last update), ``final`` from ``end`` on, 0 before ``begin``.
    """
    final, initial = check_fraction("final", final), check_fraction("initial", initial)
    begin, end, every = (
        check_int("begin", begin),
        check_int("end", end, minimum=0),
        check_int("every", every, minimum=1),
    )
    if end < begin:
        raise ValueError(f"`end` must be >= `begin`, got begin={begin}, end={end}.")
    if initial > final:
        raise ValueError(f"`initial` must be <= `final` (sparsity only grows), got initial={initial}, final={final}.")
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or not math.isfinite(power) or power <= 0:
        raise ValueError(f"`power` must be a positive number, got {power!r}.")
    span = max(end - begin, 1)

    def fn(step):
        t = jnp.clip(begin + (step - begin) // every * every, begin, end)
        progress = jnp.where(step >= end, 1.0, (t - begin) / span)
        value = final + (initial - final) * (1.0 - progress) ** power
        return jnp.where(step < begin, 0.0, value)

    return Schedule(
        fn,
        final,
        f"polynomial(final={final}, begin={begin}, end={end}, every={every}, initial={initial}, power={power})",
    )
