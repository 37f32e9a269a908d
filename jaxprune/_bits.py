"""Masks as packed bits: 1 bit per weight, row-major, big-endian within a byte (private).

One layout everywhere a mask leaves memory as one flat byte string:
``pack_masks``, the bitmap sparse form and the command line's sparse export.
NumPy arrays stay NumPy (host-side tools), anything else goes through
``jax.numpy``.

Checkpoints (format 3 on) pack along the last axis instead
(``pack_last_axis``): the packed array keeps the mask's other axes, so it can
keep the mask's sharding and each device packs, writes and reads only its own
rows and columns.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def packed_size(shape: tuple[int, ...]) -> int:
    """Bytes that the packed bits of a mask of ``shape`` take."""
    return (math.prod(shape) + 7) // 8


def pack_bits(mask: Any) -> Any:
    """``uint8[packed_size(mask.shape)]`` from a bool array."""
    xp = np if isinstance(mask, np.ndarray) else jnp
    return xp.packbits(xp.reshape(mask, -1))


def unpack_bits(bits: Any, shape: tuple[int, ...]) -> Any:
    """The bool array of ``shape`` that ``pack_bits`` packed into ``bits``."""
    xp = np if isinstance(bits, np.ndarray) else jnp
    return xp.unpackbits(bits, count=math.prod(shape)).astype(bool).reshape(shape)


def packed_last_axis_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``pack_last_axis`` of a mask of ``shape``: the last axis in bytes (a scalar counts as ``[1]``)."""
    shape = tuple(shape) or (1,)
    return (*shape[:-1], (shape[-1] + 7) // 8)


def _pack_last_axis(mask: jax.Array) -> jax.Array:
    mask = mask.reshape(mask.shape or (1,))
    pad = -mask.shape[-1] % 8
    if pad:
        mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)])
    bytes_ = mask.reshape(*mask.shape[:-1], mask.shape[-1] // 8, 8).astype(jnp.uint8)
    weights = jnp.asarray([128, 64, 32, 16, 8, 4, 2, 1], jnp.uint8)  # big-endian, as np.packbits
    return jnp.sum(bytes_ * weights, axis=-1, dtype=jnp.uint8)


def _unpack_last_axis(bits: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    shifts = jnp.arange(7, -1, -1, dtype=jnp.uint8)
    mask = ((bits[..., None] >> shifts) & 1).astype(bool).reshape(*bits.shape[:-1], bits.shape[-1] * 8)
    return mask[..., : (tuple(shape) or (1,))[-1]].reshape(shape)


def same_layout(sharding: Any) -> Any:
    """``sharding`` where it also fits an array derived from the sharded one (packed bits, PRNG key data), else None.

    A ``NamedSharding``'s spec names mesh axes per array axis, so it fits the
    packed array too (only the last axis shrinks) and key data (one more
    trailing axis); a single device is a single device whatever the shape.
    None lets jit choose.
    """
    if isinstance(sharding, (jax.sharding.NamedSharding, jax.sharding.SingleDeviceSharding)):
        return sharding
    return None


def packed_layout(sharding: Any, shape: tuple[int, ...]) -> Any:
    """``same_layout(sharding)`` for the packed bits of a mask of ``shape``: if the mesh axes that split the
    mask's last axis do not divide its packed width (a [32, 8] mask split 4 ways packs to 1 byte per row),
    that axis of the bits is replicated instead; each device still packs only its own rows."""
    sharding = same_layout(sharding)
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding
    width = packed_last_axis_shape(shape)[-1]
    spec = list(sharding.spec) + [None] * (max(len(shape), 1) - len(sharding.spec))
    names = spec[-1]
    if names is None:
        return sharding
    split = math.prod(sharding.mesh.shape[n] for n in (names if isinstance(names, tuple) else (names,)))
    if width % split == 0:
        return sharding
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[:-1], None))


@functools.cache
def _jitted(fn: Any, out_shardings: Any, static_argnums: tuple[int, ...] | int = ()) -> Any:
    """``jax.jit(fn)`` with these output shardings, made once: each new ``jax.jit`` object would retrace."""
    return jax.jit(fn, out_shardings=out_shardings, static_argnums=static_argnums)


def pack_last_axis(mask: Any) -> Any:
    """``uint8[packed_last_axis_shape(mask.shape)]``: the bits of each row of a bool array, big-endian.

    A NumPy array stays on the host; a ``jax.Array`` is packed where it lives
    and the result keeps its sharding (``packed_layout``), so no device sees
    more than its own shard (the last axis's shards should hold a multiple of
    8 entries, else XLA moves the few boundary bits between neighbours).
    """
    if isinstance(mask, np.ndarray):
        return np.packbits(mask.reshape(mask.shape or (1,)), axis=-1)
    return _jitted(_pack_last_axis, packed_layout(getattr(mask, "sharding", None), mask.shape))(mask)


def unpack_last_axis(bits: Any, shape: tuple[int, ...], sharding: Any = None) -> Any:
    """The bool array of ``shape`` that ``pack_last_axis`` packed into ``bits``, laid out as ``sharding``.

    With ``sharding=None`` the mask is laid out as ``bits`` is.
    """
    shape = tuple(shape)
    if isinstance(bits, np.ndarray):
        return np.unpackbits(bits, axis=-1, count=(shape or (1,))[-1]).astype(bool).reshape(shape)
    out = sharding if sharding is not None else same_layout(getattr(bits, "sharding", None))
    return _jitted(_unpack_last_axis, out, static_argnums=1)(bits, shape)
