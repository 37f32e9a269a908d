"""Argument checks shared by the public functions (private).

Each raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for
a value out of range, with a message that names the argument, the value and
what is allowed, before any work is done.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SCOPES = ("global", "layer")

KEY_HELP = "a PRNG key is one jax.random.key(seed) (or a legacy jax.random.PRNGKey(seed), uint32[2])"


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """An int (NumPy ints too, never ``bool``) that is at least ``minimum``; returns it as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_scope(scope: Any) -> str:
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"`scope` must be 'global' or 'layer', got {scope!r}.")
    return scope


def check_key(key: Any, name: str = "key") -> jax.Array:
    """One PRNG key: a scalar typed key, or a legacy raw ``uint32[2]`` key.

    Works on tracers too (only dtype and shape are read). ``None``, ints,
    batches of keys and other raw arrays raise ``TypeError``.
    """
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key
        raise TypeError(f"`{name}` must be one PRNG key, got a batch of keys of shape {shape}; {KEY_HELP}.")
    if dtype is not None and jnp.dtype(dtype) == jnp.uint32 and shape == (2,):
        return key
    what = f"{jnp.dtype(dtype)}{list(shape)}" if dtype is not None else f"{type(key).__name__} {key!r}"
    raise TypeError(f"`{name}` must be a PRNG key, got {what}; {KEY_HELP}.")
