"""Masks as packed bits: 1 bit per weight, row-major, big-endian within a byte (private).

One layout everywhere a mask leaves memory: ``pack_masks``, checkpoints, the
bitmap sparse form and the command line's sparse export. NumPy arrays stay
NumPy (host-side tools), anything else goes through ``jax.numpy``.
"""

from __future__ import annotations

import math
from typing import Any

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
