"""``prune``: new masks from scores, with exact counts and monotone masks.

Two ways to say how much, exactly one per call:

* ``sparsity=s``, jaxprune's meaning: after the call, exactly
  ``round(s * N)`` of the N prunable units in scope are pruned, counting the
  ones pruned before (cumulative). If more than that are pruned already,
  nothing changes: masks only ever lose entries.
* ``amount=a``, PyTorch's meaning, for porting code: a float prunes
  ``round(a * R)`` more of the R units still unpruned; an int prunes that many
  more. Ten calls with ``amount=0.1`` leave ``1 - 0.9**10 = 65.1%`` pruned.

``round`` is Python's: half to even, as PyTorch does it.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._tree import PyTree, check_masks_match, unflatten
from jaxprune.select import count_true, lowest_k
from jaxprune.structures import NM, Block, Structure, Structured, Unstructured

Scope = Literal["global", "layer"]
_STRUCTURES = (Unstructured, Structured, Block, NM)


def prune(
    scores: PyTree,
    masks: PyTree,
    *,
    sparsity: float | jax.Array | None = None,
    amount: float | int | None = None,
    scope: Scope = "global",
    structure: Structure | None = None,
) -> PyTree:
    """Prunes the lowest-scoring units in scope; returns new masks.

    Args:
      scores: a pytree with the structure of the params (e.g. ``jp.magnitude(params)``);
        higher means more important. Read only where ``masks`` is not ``None``.
      masks: current masks (``jp.init_masks(params)`` at first). Entries already
        pruned stay pruned and count towards ``sparsity``.
      sparsity: cumulative target in [0, 1]: the fraction of all units in scope
        that are pruned after the call. May be a traced value under ``jit``; a
        new value then does not recompile.
      amount: PyTorch's relative amount: a float in [0, 1] (fraction of the
        still-unpruned units) or a non-negative int (a count).
      scope: ``"global"`` ranks all prunable leaves together (one threshold for
        the whole model); ``"layer"`` applies the target to each leaf on its own.
      structure: the unit of pruning: ``None``/``Unstructured()`` (single
        weights), ``Structured(axis, ord)``, ``Block(shape)`` or ``NM(n, m)``.
        With ``NM``, give neither ``sparsity`` nor ``amount``.

    Returns:
      Masks with the structure of ``masks``.

    Selection rule: units are ranked by score; pruned-before units rank lowest,
    then NaN scores, then -inf, ..., +inf. Among equal scores the unit earlier
    in flat order (leaves in ``jax.tree`` order, then row-major) is pruned
    first. Subnormal scores count as 0. The threshold is found by counting, not
    sorting (see ``jaxprune.select``), so it is linear in N and works on
    sharded params without gathering them.

    Under ``jit`` with a traced ``sparsity``, the target is taken as float32
    and ``round(float32(s) * N)`` is computed exactly in integers; out-of-range
    values are clipped to [0, 1] and NaN counts as 0, since a traced value
    cannot raise.

    Raises:
      ValueError: both or neither of ``sparsity``/``amount``; a value out of
        range; an unknown ``scope``; masks that do not mirror ``scores``
        (naming the first differing path); nothing prunable in scope; a leaf
        the structure cannot tile.
      TypeError: a non-number ``sparsity``/``amount``, an unknown structure, a
        non-bool mask.
    """
    structure, s_flat, m_leaves, treedef, live = _checked(scores, masks, scope, structure)
    new = list(m_leaves)
    if isinstance(structure, NM):
        if sparsity is not None or amount is not None:
            raise ValueError(
                f"NM({structure.n}, {structure.m}) fixes the sparsity at 1 - n/m; pass neither `sparsity` nor `amount`."
            )
        for i in live:
            new[i] = _nm_keep(s_flat[i][1], m_leaves[i], structure=structure)
        return unflatten(treedef, new)

    target = _target(sparsity, amount)
    groups = tuple(0 for _ in live) if scope == "global" else tuple(range(len(live)))
    return _select_into(
        s_flat, m_leaves, treedef, live, groups, structure, lambda n, a: _num_pruned(target, n, a, scope)
    )


def prune_to_targets(
    scores: PyTree,
    masks: PyTree,
    leaf_targets: list[tuple[jax.Array, float] | None],
    *,
    scope: Scope = "global",
    structure: Structure | None = None,
) -> PyTree:
    """``prune`` with a cumulative target per leaf, for ``Pruner`` (one selection pass for all).

    ``leaf_targets`` has one entry per leaf of ``masks`` (flattened with
    ``None`` as a leaf): ``None`` where the mask is ``None``, else
    ``(target, final)``: a traced float32 target and the Python float the
    schedule ends at. Leaves sharing a target object form one global ranking
    (``scope="global"``); a target within ``2**-20`` of ``final`` is taken as
    ``final`` exactly, so the last round prunes ``round(final * N)``.
    """
    structure, s_flat, m_leaves, treedef, live = _checked(scores, masks, scope, structure)
    if isinstance(structure, NM):
        raise ValueError("NM structures fix their sparsity; use prune(..., structure=NM(...)) instead of a schedule.")
    owners: list[int] = []
    group_targets: list[tuple[jax.Array, float]] = []
    for i in live:
        t = leaf_targets[i]
        if t is None:
            raise ValueError(f"leaf {s_flat[i][0]!r} is prunable but has no target.")
        same = [g for g, other in enumerate(group_targets) if other is t]
        if scope == "global" and same:
            owners.append(same[0])
        else:
            owners.append(len(group_targets))
            group_targets.append(t)

    def counts(sizes, alive):
        already = jnp.asarray(sizes, jnp.uint32) - jnp.asarray(alive, jnp.uint32)
        ks = []
        for (target, final), n in zip(group_targets, sizes):
            s = jnp.nan_to_num(jnp.clip(jnp.asarray(target, jnp.float32), 0.0, 1.0), nan=0.0)
            exact = jnp.uint32(round(final * n))
            ks.append(jnp.where(jnp.abs(s - final) <= 2.0**-20, exact, round_mul(s, n)))
        return jnp.maximum(jnp.stack(ks), already)

    return _select_into(s_flat, m_leaves, treedef, live, tuple(owners), structure, counts)


def _checked(scores, masks, scope, structure):
    """Validates the arguments common to every prune; returns what the selection needs."""
    structure = Unstructured() if structure is None else structure
    if not isinstance(structure, _STRUCTURES):
        raise TypeError(
            f"`structure` must be None, Unstructured(), Structured(...), Block(...) or NM(...), got {structure!r}."
        )
    if scope not in ("global", "layer"):
        raise ValueError(f"`scope` must be 'global' or 'layer', got {scope!r}.")
    s_flat, m_leaves, treedef = check_masks_match(scores, masks, params_name="scores")
    live = [i for i, m in enumerate(m_leaves) if m is not None]
    if not live:
        raise ValueError("nothing is prunable in scope: every leaf of `masks` is None.")
    for i in live:
        path, s = s_flat[i]
        if not jnp.issubdtype(jnp.result_type(s), jnp.number):
            raise TypeError(f"`scores` leaf {path!r} must be numeric, got {jnp.result_type(s)}.")
        structure.check(path, tuple(m_leaves[i].shape))
    return structure, s_flat, m_leaves, treedef, live


def _select_into(s_flat, m_leaves, treedef, live, groups, structure, counts):
    """Runs one selection over the live leaves with ``counts(sizes, alive) -> k`` and rebuilds the tree."""
    scores_l = [s_flat[i][1] for i in live]
    masks_l = [m_leaves[i] for i in live]
    sizes, alive = _unit_counts(masks_l, groups, structure)
    k = counts(sizes, alive)
    new = list(m_leaves)
    for i, m in zip(live, _select(scores_l, masks_l, k, groups=groups, structure=structure)):
        new[i] = m
    return unflatten(treedef, new)


@partial(jax.jit, static_argnames="structure")
def _nm_keep(score: jax.Array, mask: jax.Array, *, structure: NM) -> jax.Array:
    return structure.keep(score, mask)


@partial(jax.jit, static_argnames=("groups", "structure"))
def _select(scores, masks, k, *, groups, structure):
    units = [structure.to_units(s, m) for s, m in zip(scores, masks)]
    pruned = lowest_k([u for u, _ in units], [a for _, a in units], groups, k)
    return [m & structure.expand(a & ~p, m.shape) for m, (_, a), p in zip(masks, units, pruned)]


@partial(jax.jit, static_argnames=("groups", "structure"))
def _alive_units(masks, *, groups, structure):
    alive = [structure.to_units(jnp.zeros(m.shape, jnp.float32), m)[1] for m in masks]
    return alive_per_group(alive, groups)


def alive_per_group(alive: list[jax.Array], groups: tuple[int, ...]) -> jax.Array:
    """Unpruned units per group (uint32[G]) from each leaf's bool unit mask."""
    counts = [count_true([a])[0] for a in alive]
    return jnp.stack([sum(c for c, g2 in zip(counts, groups) if g2 == g) for g in range(max(groups) + 1)])


def _unit_counts(masks, groups, structure):
    """Units per group (Python ints) and unpruned units per group (array; concrete outside jit)."""
    sizes = [0] * (max(groups) + 1)
    for m, g in zip(masks, groups):
        sizes[g] += math.prod(jax.eval_shape(lambda x: structure.to_units(x, x)[1], m).shape)
    if max(sizes) >= 2**31:
        raise ValueError(f"a scope holds {max(sizes):,} units; jaxprune counts in int32, so at most 2**31 - 1.")
    return sizes, _alive_units(masks, groups=groups, structure=structure)


class _Target:
    def __init__(self, kind: str, value: Any):
        self.kind, self.value = kind, value


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _target(sparsity: Any, amount: Any) -> _Target:
    if (sparsity is None) == (amount is None):
        raise ValueError(
            "give exactly one of `sparsity` (cumulative fraction of all prunable weights, jaxprune's meaning) "
            f"and `amount` (PyTorch's: fraction or count of the still-unpruned weights); got sparsity={sparsity!r}, "
            f"amount={amount!r}."
        )
    if sparsity is not None:
        if _is_traced(sparsity):
            if jnp.ndim(sparsity) != 0 or not jnp.issubdtype(sparsity.dtype, jnp.floating):
                raise TypeError(
                    f"a traced `sparsity` must be a float scalar, got {sparsity.dtype}{list(sparsity.shape)}."
                )
            return _Target("sparsity", sparsity)
        if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, (numbers.Real, np.ndarray, jax.Array)):
            raise TypeError(f"`sparsity` must be a float in [0, 1], got {type(sparsity).__name__} {sparsity!r}.")
        if np.ndim(sparsity) != 0:
            raise TypeError(f"`sparsity` must be a scalar, got an array of shape {np.shape(sparsity)}.")
        value = float(sparsity)
        if not 0.0 <= value <= 1.0:  # also catches NaN
            raise ValueError(f"`sparsity` must be in [0, 1] (fraction of prunable weights pruned), got {value!r}.")
        return _Target("sparsity", value)
    # PyTorch's _validate_pruning_amount_init, with the same messages.
    if _is_traced(amount):
        if jnp.ndim(amount) != 0:
            raise TypeError(f"`amount` must be a scalar, got shape {amount.shape}.")
        return _Target("count" if jnp.issubdtype(amount.dtype, jnp.integer) else "fraction", amount)
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
        return _Target("count", int(amount))
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
    return _Target("fraction", float(amount))


def _num_pruned(target: _Target, sizes: list[int], alive: jax.Array, scope: str) -> jax.Array:
    """How many units of each group are pruned after the call (uint32[G])."""
    n = np.asarray(sizes, np.int64)
    concrete = not _is_traced(alive) and not _is_traced(target.value)
    if concrete:
        remaining = np.asarray(jax.device_get(alive), np.int64)
        already = n - remaining
        if target.kind == "sparsity":
            k = np.maximum([round(target.value * int(x)) for x in n], already)
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
    already = nj - alive
    if target.kind == "sparsity" and not _is_traced(target.value):
        # N is static, so a Python target is still rounded exactly in Python.
        return jnp.maximum(jnp.asarray([round(target.value * x) for x in sizes], jnp.uint32), already)
    if target.kind == "sparsity":
        s = jnp.nan_to_num(jnp.clip(jnp.asarray(target.value, jnp.float32), 0.0, 1.0), nan=0.0)
        return jnp.maximum(round_mul(s, nj), already)
    if target.kind == "fraction":
        s = jnp.nan_to_num(jnp.clip(jnp.asarray(target.value, jnp.float32), 0.0, 1.0), nan=0.0)
        return already + round_mul(s, alive)
    return already + jnp.clip(jnp.asarray(target.value), 0, None).astype(jnp.uint32).clip(None, alive)


def round_mul(s: jax.Array, n: jax.Array) -> jax.Array:
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
