"""Importance scores: pytrees of arrays with the params' structure; higher = more important.

Any such pytree is a valid score for ``prune``; these are the common ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune._checks import check_key
from jaxprune._tree import PyTree, check_shapes_match, is_none, leaves_with_paths, unflatten


def _check_numeric(tree: PyTree, name: str) -> None:
    for path, x in leaves_with_paths(tree)[0]:
        if x is None:
            continue
        try:
            dtype = jnp.result_type(x)
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.number):
            what = dtype if dtype is not None else type(x).__name__
            raise TypeError(f"`{name}` leaf {path!r} must be a numeric array, got {what}.")


def magnitude(params: PyTree) -> PyTree:
    """``|w|``: magnitude pruning (Han et al. 2015), PyTorch's L1 unstructured criterion."""
    _check_numeric(params, "params")
    return jax.tree.map(lambda p: None if p is None else jnp.abs(p), params, is_leaf=is_none)


def random(key: jax.Array, params: PyTree) -> PyTree:
    """Uniform [0, 1) scores drawn from ``key``, one independent stream per leaf: random pruning."""
    check_key(key)
    flat, treedef = leaves_with_paths(params)
    keys = jax.random.split(key, max(len(flat), 1))
    return unflatten(
        treedef,
        [None if p is None else jax.random.uniform(k, jnp.shape(p)) for k, (_, p) in zip(keys, flat)],
    )


def saliency(params: PyTree, grads: PyTree) -> PyTree:
    """``|w * g|``: first-order saliency, as in SNIP (Lee et al. 2019) with ``grads`` of the loss.

    Raises:
      ValueError: ``grads`` does not have the structure and shapes of ``params`` (the first differing path is named).
    """
    check_shapes_match(params, grads, tree_name="grads")
    _check_numeric(params, "params")
    _check_numeric(grads, "grads")
    return jax.tree.map(lambda p, g: None if p is None else jnp.abs(p * g), params, grads, is_leaf=is_none)
