"""Granularities of pruning: which entries are pruned together.

``Unstructured`` prunes single weights. ``Structured`` and ``Block`` group the
entries of a leaf into *units* (slices along an axis, or tiles), score each
unit by the norm of its entries' scores, and prune whole units; ``prune``
selects among units exactly as it selects among weights. ``NM`` keeps the N
best of every M consecutive weights and needs no global selection at all.

A unit counts as already pruned when every entry in it is pruned; pruned
entries contribute zero to their unit's norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxprune._checks import check_int, check_ord
from jaxprune.select import order_keys


def _norm(x: jax.Array, ord: float, axes: tuple[int, ...]) -> jax.Array:
    x = jnp.abs(x.astype(jnp.float32))
    if ord == math.inf:
        return jnp.max(x, axis=axes)
    if ord == 1:
        return jnp.sum(x, axis=axes)
    if ord == 2:
        return jnp.sqrt(jnp.sum(x * x, axis=axes))
    return jnp.sum(x**ord, axis=axes) ** (1.0 / ord)


def _axis(axis: int, ndim: int, path: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"`axis`={axis} is out of range for leaf {path!r} with {ndim} dims.")
    return axis % ndim


@dataclass(frozen=True)
class Unstructured:
    """Each weight on its own (the default)."""

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        pass

    def to_units(self, score: jax.Array, alive: jax.Array) -> tuple[jax.Array, jax.Array]:
        return score, alive

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return keep


@dataclass(frozen=True)
class Structured:
    """Whole slices along ``axis``: rows, columns, channels, hidden units.

    Unit ``i`` is every entry whose index along ``axis`` is ``i`` (with
    ``groups > 1``, the axis is read as ``groups`` blocks of equal size and unit
    ``i`` is entry ``i`` of every block: the four gates of an LSTM hidden unit
    in a ``[4 * hidden, ...]`` PyTorch-layout weight). Its score is the L_ord
    norm of its entries' scores, as in PyTorch's ``ln_structured(n=ord, dim=axis)``.
    Flax ``Dense`` kernels are ``[in, out]``: ``axis=-1`` prunes output units.

    Args:
      axis: the axis whose entries are the units.
      ord: the norm (1, 2, any p > 0, or ``float('inf')``).
      groups: how many blocks the axis holds (4 for LSTM gates).
    """

    axis: int = -1
    ord: float = 2
    groups: int = 1

    def __post_init__(self):
        check_ord(self.ord)
        check_int("axis", self.axis, minimum=None)
        check_int("groups", self.groups, minimum=1)

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        if not shape:
            raise ValueError(f"Structured pruning needs an axis, but leaf {path!r} is a scalar.")
        a = _axis(self.axis, len(shape), path)
        if shape[a] % self.groups:
            raise ValueError(
                f"leaf {path!r} has {shape[a]} entries along axis {self.axis}, not divisible by `groups`={self.groups}."
            )

    def _split(self, x: jax.Array) -> jax.Array:
        a = self.axis % x.ndim
        x = jnp.moveaxis(x, a, 0)
        return x.reshape(self.groups, x.shape[0] // self.groups, math.prod(x.shape[1:]))  # no -1: x may be empty

    def to_units(self, score: jax.Array, alive: jax.Array) -> tuple[jax.Array, jax.Array]:
        s, a = self._split(jnp.where(alive, score, 0)), self._split(alive)
        return _norm(s, self.ord, (0, 2)), jnp.any(a, axis=(0, 2))

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        a = self.axis % len(shape)
        line = jnp.tile(keep, self.groups)
        return jnp.broadcast_to(line.reshape([-1 if d == a else 1 for d in range(len(shape))]), shape)


@dataclass(frozen=True)
class Block:
    """Tiles of ``shape`` over a leaf's last ``len(shape)`` axes, scored by the L_ord norm.

    A ``[1024, 1024]`` kernel with ``Block((16, 16))`` has 4096 units; leading
    axes (a convolution's spatial taps, say) get tiles of their own.
    """

    shape: tuple[int, ...] = (4, 4)
    ord: float = 1

    def __post_init__(self):
        check_ord(self.ord)
        shape = self.shape
        if not isinstance(shape, (tuple, list)) or not shape:
            raise TypeError(f"`shape` must be a non-empty tuple of positive ints, e.g. (4, 4), got {shape!r}.")
        for i, b in enumerate(shape):
            check_int(f"shape[{i}]", b, minimum=1)
        object.__setattr__(self, "shape", tuple(int(b) for b in shape))

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        k = len(self.shape)
        if len(shape) < k or any(n % b for n, b in zip(shape[-k:], self.shape)):
            raise ValueError(f"leaf {path!r} of shape {shape} cannot be tiled by blocks of {self.shape}.")

    def _tiled(self, x: jax.Array) -> jax.Array:
        k = len(self.shape)
        lead, tail = x.shape[:-k], x.shape[-k:]
        return x.reshape(*lead, *[v for n, b in zip(tail, self.shape) for v in (n // b, b)])

    def to_units(self, score: jax.Array, alive: jax.Array) -> tuple[jax.Array, jax.Array]:
        lead = score.ndim - len(self.shape)
        inner = tuple(lead + 2 * i + 1 for i in range(len(self.shape)))
        s, a = self._tiled(jnp.where(alive, score, 0)), self._tiled(alive)
        return _norm(s, self.ord, inner), jnp.any(a, axis=inner)

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        k = len(self.shape)
        lead = keep.ndim - k
        wide = keep.reshape(*keep.shape[:lead], *[v for n in keep.shape[lead:] for v in (n, 1)])
        tiled = jnp.broadcast_to(
            wide, (*keep.shape[:lead], *[v for n, b in zip(keep.shape[lead:], self.shape) for v in (n, b)])
        )
        return tiled.reshape(shape)


@dataclass(frozen=True)
class NM:
    """N:M sparsity: in every M consecutive weights along ``axis``, keep the N best.

    2:4 along the input axis is what sparse tensor cores accelerate. The
    sparsity is fixed at 1 - N/M, so ``prune`` takes neither ``sparsity`` nor
    ``amount`` with it. Already-pruned weights stay pruned (a group can end
    sparser than 1 - N/M, never denser); among equal scores the earlier
    position is pruned, as everywhere in jaxprune.
    """

    n: int = 2
    m: int = 4
    axis: int = -1

    def __post_init__(self):
        check_int("n", self.n, minimum=0)
        check_int("m", self.m, minimum=1)
        check_int("axis", self.axis, minimum=None)
        if not 0 <= self.n <= self.m or self.m == 0:
            raise ValueError(f"N:M needs 0 <= n <= m and m >= 1, got n={self.n}, m={self.m}.")

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        if not shape:
            raise ValueError(f"N:M pruning needs an axis, but leaf {path!r} is a scalar.")
        a = _axis(self.axis, len(shape), path)
        if shape[a] % self.m:
            raise ValueError(
                f"leaf {path!r} has {shape[a]} entries along axis {self.axis}, not divisible by m={self.m}."
            )

    def keep(self, score: jax.Array, alive: jax.Array) -> jax.Array:
        """The new mask of one leaf: its N best alive entries of every M."""
        a = self.axis % score.ndim
        key = jnp.moveaxis(order_keys(score, alive), a, -1)
        groups = key.reshape(*key.shape[:-1], -1, self.m)
        pos = jnp.arange(self.m)
        # rank = how many entries of the group come before this one in pruning order
        earlier = (groups[..., None, :] < groups[..., :, None]) | (
            (groups[..., None, :] == groups[..., :, None]) & (pos[None, :] < pos[:, None])
        )
        rank = jnp.sum(earlier, axis=-1)
        kept = (rank >= self.m - self.n).reshape(key.shape)
        return jnp.moveaxis(kept, -1, a) & alive


Structure = Unstructured | Structured | Block | NM
