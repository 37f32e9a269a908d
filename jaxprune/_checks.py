"""Argument checks shared by the public functions (private).

Each raises ``TypeError`` for a value of the wrong kind and ``ValueError`` for
a value out of range, with a message that names the argument, the value and
what is allowed, before any work is done.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import numpy as np

Scope = Literal["global", "layer"]
SCOPES = ("global", "layer")

KEY_HELP = "a PRNG key is one jax.random.key(seed) (or a legacy jax.random.PRNGKey(seed), uint32[2])"


def check_int(name: str, value: Any, *, minimum: int | None = 0) -> int:
    """An int (NumPy ints too, never ``bool``), at least ``minimum`` unless that is None; returns a Python int."""
    allowed = {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be {allowed}, got {type(value).__name__} {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
    return int(value)


def check_ord(ord: Any) -> float:
    """A norm's order: a positive number or ``float('inf')``."""
    if isinstance(ord, bool) or not isinstance(ord, (int, float)) or not ord > 0:
        raise ValueError(f"`ord` must be a positive number or float('inf'), got {ord!r}.")
    return ord


def check_scope(scope: Any) -> Scope:
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"`scope` must be 'global' or 'layer', got {scope!r}.")
    return cast(Scope, scope)


def check_float_array(name: str, value: Any) -> None:
    """An array (JAX or NumPy, tracers too) of a floating dtype; only dtype and shape are read."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not hasattr(value, "shape"):
        raise TypeError(f"`{name}` must be a floating-point array, got {type(value).__name__} {value!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {dtype}.")


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


def check_fraction(name: str, value: Any) -> float:
    """A real number in [0, 1] (a sparsity, a rate of what is pruned); returns it as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float in [0, 1], got {type(value).__name__} {value!r}.")
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also NaN
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}.")
    return v
