"""What a layer saw on calibration data: per-input squared norms (Wanda) and ``X^T X`` (SparseGPT).

    stats = jp.oneshot.init_stats(n_in)                 # float32 zeros; hessian=False skips X^T X
    for x in batches:                                   # x: [..., n_in], the layer's inputs
        stats = jp.oneshot.accumulate(stats, x)         # jit-able, float32 sums
    jp.oneshot.wanda(kernel, jp.oneshot.input_norms(stats), sparsity=0.5)
    jp.oneshot.sparsegpt(kernel, stats.hessian, sparsity=0.5)

Sums, not means: both methods are indifferent to the scale, and sums of
batches of any size add up exactly as one big batch would.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._checks import check_float_array, check_int


class InputStats(NamedTuple):
    """Running sums over every calibration token (a pytree: jit, scan and checkpoint it)."""

    sq_norms: jax.Array  # float32 [in]: sum over tokens of x_j ** 2
    hessian: jax.Array | None  # float32 [in, in]: sum over tokens of x x^T, or None when not collected
    tokens: jax.Array  # int32: how many input vectors were added


def init_stats(n_in: int, *, hessian: bool = True) -> InputStats:
    """Zero sums for a layer with ``n_in`` inputs; ``hessian=False`` collects the norms only (Wanda)."""
    n_in = check_int("n_in", n_in, minimum=1)
    if not isinstance(hessian, bool):
        raise TypeError(f"`hessian` must be a bool, got {type(hessian).__name__}.")
    gram = jnp.zeros((n_in, n_in), jnp.float32) if hessian else None
    return InputStats(jnp.zeros(n_in, jnp.float32), gram, jnp.zeros((), jnp.int32))


def accumulate(stats: InputStats, x: jax.Array, where: jax.Array | None = None) -> InputStats:
    """Adds a batch of inputs ``x`` (``[..., n_in]``, every leading axis a token axis), in float32.

    ``where`` (bool, ``x.shape[:-1]``): only the tokens where it is True count
    (padding past a sequence's length, say); None counts every token.

    Raises:
      TypeError: ``x`` is not a floating array.
      ValueError: ``x``'s last axis is not the layer's input width, or
        ``where`` does not have ``x``'s token shape.
    """
    check_float_array("x", x)
    n_in = stats.sq_norms.shape[0]
    if not x.shape or x.shape[-1] != n_in:
        raise ValueError(f"`x` must have the layer's {n_in} inputs on its last axis, got shape {tuple(x.shape)}.")
    rows = x.reshape(-1, n_in).astype(jnp.float32)
    tokens: int | jax.Array = rows.shape[0]
    if where is not None:
        if tuple(where.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"`where` must have x's token shape {tuple(x.shape[:-1])}, got {tuple(where.shape)}.")
        keep = where.reshape(-1)
        rows = jnp.where(keep[:, None], rows, 0.0)  # where, not a product: a NaN in padding stays out
        tokens = jnp.sum(keep, dtype=jnp.int32)
    gram = None
    if stats.hessian is not None:
        gram = stats.hessian + jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST)
    return InputStats(stats.sq_norms + jnp.sum(rows * rows, axis=0), gram, stats.tokens + tokens)


def input_norms(stats: InputStats) -> jax.Array:
    """``||X_j||_2`` over every token seen: what ``wanda`` takes."""
    return jnp.sqrt(stats.sq_norms)
