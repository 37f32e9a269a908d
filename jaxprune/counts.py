"""How many units a call prunes: targets (``sparsity``/``amount``) to exact counts.

``sparsity=s`` is cumulative: exactly ``round(s * N)`` of the N units in
scope are pruned after the call (never fewer than are pruned already).
``amount=a`` is PyTorch's relative meaning: a float prunes ``round(a * R)``
more of the R still unpruned, an int that many more. ``round`` is Python's,
half to even, as PyTorch does it.

Counts are exact under ``jit`` too: a traced float32 target is multiplied by
N in emulated 64-bit integer arithmetic (``round_mul``), since a float32
product is off by up to ``N * 2**-24`` (6 weights at 100M).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune.select import count_true

# A scheduled float32 target this close to the schedule's final value is that
# value: the last round then prunes exactly round(final * N).
SNAP_TO_FINAL = 2.0**-20


class Target(NamedTuple):
    """A validated target: ``kind`` is 'sparsity', 'fraction' or 'count'; ``value`` may be traced.

    A per-group sparsity (``scope="layer"`` with a distribution) is a tuple of
    Python floats, or a float32 array [G] when traced.
    """

    kind: str
    value: Any


def is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def parse_target(sparsity: Any, amount: Any) -> Target:
    """Validates ``sparsity``/``amount`` (exactly one given) into a ``Target``."""
    if (sparsity is None) == (amount is None):
        raise ValueError(
            "give exactly one of `sparsity` (cumulative fraction of all prunable weights, jaxprune's meaning) "
            f"and `amount` (PyTorch's: fraction or count of the still-unpruned weights); got sparsity={sparsity!r}, "
            f"amount={amount!r}."
        )
    if sparsity is not None:
        if is_traced(sparsity):
            if jnp.ndim(sparsity) != 0 or not jnp.issubdtype(sparsity.dtype, jnp.floating):
                raise TypeError(
                    f"a traced `sparsity` must be a float scalar, got {sparsity.dtype}{list(sparsity.shape)}."
                )
            return Target("sparsity", sparsity)
        if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, (numbers.Real, np.ndarray, jax.Array)):
            raise TypeError(f"`sparsity` must be a float in [0, 1], got {type(sparsity).__name__} {sparsity!r}.")
        if getattr(sparsity, "ndim", 0) != 0:  # a numbers.Real (no ndim) is a scalar
            raise TypeError(f"`sparsity` must be a scalar, got an array of shape {getattr(sparsity, 'shape', ())}.")
        value = float(sparsity)
        if not 0.0 <= value <= 1.0:  # also catches NaN
            raise ValueError(f"`sparsity` must be in [0, 1] (fraction of prunable weights pruned), got {value!r}.")
        return Target("sparsity", value)
    # PyTorch's _validate_pruning_amount_init, with the same messages.
    if is_traced(amount):
        if jnp.ndim(amount) != 0:
            raise TypeError(f"`amount` must be a scalar, got shape {amount.shape}.")
        return Target("count" if jnp.issubdtype(amount.dtype, jnp.integer) else "fraction", amount)
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
        return Target("count", int(amount))
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
    return Target("fraction", float(amount))


def num_pruned(target: Target, sizes: list[int], alive: ArrayLike, scope: str) -> jax.Array:
    """How many units of each group are pruned after the call (uint32[G])."""
    n = np.asarray(sizes, np.int64)
    concrete = not is_traced(alive) and not is_traced(target.value)
    if concrete:
        remaining = np.asarray(jax.device_get(alive), np.int64)
        already = n - remaining
        if target.kind == "sparsity":
            k = np.maximum([round(v * int(x)) for v, x in zip(_per_group(target.value, len(n)), n)], already)
        elif target.kind == "fraction":
            k = already + np.asarray([round(target.value * int(r)) for r in remaining])
        else:
            too_many = remaining < target.value
            if too_many.any():
                where = "in scope" if scope == "global" else f"in leaf {int(np.argmax(too_many))} of the scope"
                raise ValueError(
                    f"amount={target.value} should be smaller than the number of parameters to prune="
                    f"{int(remaining[too_many][0])} ({where})"
                )
            k = already + target.value
        return jnp.asarray(k, jnp.uint32)
    nj = jnp.asarray(sizes, jnp.uint32)
    alive = jnp.asarray(alive, jnp.uint32)
    already_j = nj - alive
    if target.kind == "sparsity" and not is_traced(target.value):
        # N is static, so a Python target is still rounded exactly in Python.
        wanted = [round(v * x) for v, x in zip(_per_group(target.value, len(sizes)), sizes)]
        return jnp.maximum(jnp.asarray(wanted, jnp.uint32), already_j)
    if target.kind == "sparsity":
        s = jnp.nan_to_num(jnp.clip(jnp.asarray(target.value, jnp.float32), 0.0, 1.0), nan=0.0)
        return jnp.maximum(round_mul(s, nj), already_j)
    if target.kind == "fraction":
        s = jnp.nan_to_num(jnp.clip(jnp.asarray(target.value, jnp.float32), 0.0, 1.0), nan=0.0)
        return already_j + round_mul(s, alive)
    return already_j + jnp.clip(jnp.asarray(target.value), 0, None).astype(jnp.uint32).clip(None, alive)


def _per_group(value: Any, num_groups: int) -> list:
    """One sparsity per group: a tuple or array as it is, a scalar repeated."""
    if isinstance(value, tuple) or np.ndim(value) == 1:
        return list(value)
    return [value] * num_groups


def round_mul(s: ArrayLike, n: ArrayLike) -> jax.Array:
    """``round(s * n)`` (half to even), exact, for float32 ``s`` in [0, 1] and integer ``n < 2**31``.

    A float32 product would be off by up to ``n * 2**-24`` (6 weights at 100M);
    here the 24-bit mantissa times ``n`` is formed exactly as a 64-bit integer
    in two uint32 words and shifted with round-half-even.
    """
    u32 = jnp.uint32
    s = jnp.asarray(s, jnp.float32)
    n = jnp.asarray(n, u32)
    s, n = jnp.broadcast_arrays(s, n)
    bits = jax.lax.bitcast_convert_type(s, u32)
    exp = (bits >> 23) & u32(0xFF)
    mant = jnp.where(exp == 0, bits & u32(0x7FFFFF), (bits & u32(0x7FFFFF)) | u32(0x800000))
    shift = (u32(150) - jnp.maximum(exp, u32(1))).astype(jnp.int32)  # s = mant * 2**-shift; s <= 1 gives shift >= 23
    # 64-bit product mant * n = hi * 2**32 + lo, from 16-bit halves.
    a1, a0 = mant >> 16, mant & u32(0xFFFF)
    b1, b0 = n >> 16, n & u32(0xFFFF)
    mid = a1 * b0
    mid2 = a0 * b1
    mid_sum = mid + mid2
    mid_carry = (mid_sum < mid).astype(u32)
    lo0 = a0 * b0
    lo = lo0 + (mid_sum << 16)
    lo_carry = (lo < lo0).astype(u32)
    hi = a1 * b1 + (mid_sum >> 16) + (mid_carry << 16) + lo_carry

    def bits_from(pos):  # (hi:lo) >> pos, for pos in [0, 63], low 32 bits
        p = jnp.clip(pos, 0, 63)
        small = jnp.clip(p, 0, 31).astype(u32)
        low_part = jnp.where(p == 0, lo, (lo >> small) | (hi << (u32(32) - small)))
        return jnp.where(p >= 32, hi >> jnp.clip(p - 32, 0, 31).astype(u32), low_part)

    def any_below(pos):  # any bit of (hi:lo) under position pos, pos in [0, 64]
        p = jnp.clip(pos, 0, 64)
        lo_mask = jnp.where(p >= 32, u32(0xFFFFFFFF), (u32(1) << jnp.clip(p, 0, 31).astype(u32)) - u32(1))
        hi_mask = jnp.where(p <= 32, u32(0), (u32(1) << jnp.clip(p - 32, 0, 31).astype(u32)) - u32(1))
        hi_mask = jnp.where(p >= 64, u32(0xFFFFFFFF), hi_mask)
        return ((lo & lo_mask) | (hi & hi_mask)) != 0

    q = bits_from(shift)
    half = (bits_from(shift - 1) & u32(1)) == 1
    sticky = any_below(shift - 1)
    round_up = half & (sticky | ((q & u32(1)) == 1))
    return jnp.where(shift >= 64, u32(0), q + round_up.astype(u32))


def alive_per_group(alive: list[jax.Array], groups: tuple[int, ...]) -> jax.Array:
    """Unpruned units per group (uint32[G]) from each leaf's bool unit mask."""
    counts = [count_true([a])[0] for a in alive]
    return jnp.stack([sum(c for c, g2 in zip(counts, groups) if g2 == g) for g in range(max(groups) + 1)])


def scheduled_count(target: jax.Array, final: float, n: int) -> jax.Array:
    """``round(target * n)`` for a traced schedule value, exactly ``round(final * n)`` at the schedule's end."""
    s = jnp.nan_to_num(jnp.clip(jnp.asarray(target, jnp.float32), 0.0, 1.0), nan=0.0)
    return jnp.where(jnp.abs(s - final) <= SNAP_TO_FINAL, jnp.uint32(round(final * n)), round_mul(s, n))
