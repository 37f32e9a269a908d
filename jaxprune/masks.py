"""Masks as data: a pytree of bool arrays beside the params (True = keep).

A mask tree has the structure of its params tree, with a bool array of the
leaf's shape where the leaf is prunable and ``None`` elsewhere. Nothing is
renamed or copied: ``apply_mask`` zeros the pruned entries wherever it is
called (inside ``jit``, ``grad``, ``vmap`` or ``lax.scan``), and ``finalize``
bakes the zeros into plain params with the same keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from jaxprune._bits import pack_bits, packed_size, unpack_bits
from jaxprune._placement import put_like
from jaxprune._tree import PyTree, first_difference, is_floating, is_none, leaves_with_paths, map_masked, unflatten

Where = Callable[[str, Any], bool] | str | PyTree | None


def _default_where(path: str, leaf: Any) -> bool:
    return getattr(leaf, "ndim", 0) >= 2


def compile_pattern(pattern: str, name: str) -> re.Pattern:
    """``re.compile``, with a ``ValueError`` that names the argument for a bad expression."""
    if not isinstance(pattern, str):
        raise TypeError(f"{name} must be a regular expression string, got {type(pattern).__name__} {pattern!r}.")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{name} is not a valid regular expression: {pattern!r} ({e}).") from None


def where_flags(params: PyTree, where: Where) -> list[bool]:
    """One flag per leaf of ``params`` (flattened with ``None`` as a leaf)."""
    flat, _ = leaves_with_paths(params)
    if where is None:
        return [_default_where(p, x) for p, x in flat]
    if isinstance(where, str):
        pattern = compile_pattern(where, "`where`")
        return [pattern.search(p) is not None for p, _ in flat]
    if callable(where):
        return [bool(where(p, x)) for p, x in flat]
    # A pytree prefix of bools: broadcast each flag over the subtree below it.
    try:
        flags = tree_util.tree_map(
            lambda flag, sub: tree_util.tree_map(lambda _: flag, sub, is_leaf=is_none),
            where,
            params,
            is_leaf=is_none,
        )
    except ValueError as e:
        raise ValueError(
            "`where` must be a callable (path, leaf) -> bool, a regular expression for the "
            f"'/'-joined path, or a pytree prefix of `params` with bool leaves; the tree given is "
            f"not a prefix of `params`: {e}"
        ) from None
    values = [f for _, f in leaves_with_paths(flags)[0]]
    for v in values:
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"`where` as a pytree prefix must have bool leaves, got {type(v).__name__}.")
    return values


def init_masks(params: PyTree, where: Where = None) -> PyTree:
    """All-True masks for the prunable leaves of ``params``, ``None`` for the rest.

    Only floating-point array leaves can be prunable (step counters and other
    integer leaves never are). Among those, ``where`` chooses:

    * ``None`` (default): every leaf with ``ndim >= 2`` (kernels, embeddings,
      convolutions); biases and norm scales are left out.
    * a string: a regular expression searched (``re.search``) in the leaf's
      ``/``-joined path, e.g. ``"encoder/.*/kernel"``.
    * a callable ``(path: str, leaf) -> bool``.
    * a pytree prefix of ``params`` with bool leaves, e.g. ``{"encoder": True, "head": False}``.

    Works on plain dicts, Flax Linen ``params`` and Flax NNX ``nnx.State``
    (the masks of an ``nnx.State`` are an ``nnx.State`` too).

    Args:
      params: the parameter pytree.
      where: which leaves to make prunable, as above.

    Returns:
      A pytree of the structure of ``params``: ``bool`` arrays of True (same
      shape and, for ``jax.Array`` leaves, same sharding) or ``None``.

    Raises:
      ValueError: ``where`` selects no floating-point leaf (the message lists the paths).
    """
    flat, treedef = leaves_with_paths(params)
    flags = where_flags(params, where)
    chosen = [bool(f) and x is not None and is_floating(x) for (_, x), f in zip(flat, flags)]
    if not any(chosen):
        paths = ", ".join(repr(p) for p, x in flat if x is not None) or "none"
        what = "the default rule (floating-point leaves with ndim >= 2)" if where is None else f"`where`={where!r}"
        raise ValueError(f"{what} selects no floating-point leaf of `params`; its leaf paths are: {paths}.")
    return unflatten(treedef, _all_true([x if c else None for (_, x), c in zip(flat, chosen)]))


def _all_true(leaves: list[Any]) -> list[jax.Array | None]:
    """True masks of the leaves' shapes and shardings (``None`` stays ``None``).

    A one-device leaf's mask is built on the host, where ``jnp.ones_like``
    would compile a program for every new shape (a model has dozens), and all
    of them are placed in one batched ``device_put`` (``put_like``).
    """
    out: list[Any] = [None] * len(leaves)
    host = []
    for i, x in enumerate(leaves):
        if x is None:
            continue
        if isinstance(x, jax.core.Tracer) or (isinstance(x, jax.Array) and len(x.sharding.device_set) > 1):
            out[i] = jnp.ones_like(x, dtype=bool)
        else:
            host.append(i)
    placed = put_like([np.ones(np.shape(leaves[i]), bool) for i in host], [leaves[i] for i in host])
    for i, m in zip(host, placed):
        out[i] = m
    return out


def _zero_pruned(p: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.where(m, p, jnp.zeros((), p.dtype))


@jax.custom_vjp
def _straight_through(p: jax.Array, m: jax.Array) -> jax.Array:
    return _zero_pruned(p, m)


def _straight_through_fwd(p, m):
    return _zero_pruned(p, m), m.shape


def _straight_through_bwd(shape, g):
    return g, np.zeros(shape, jax.dtypes.float0)  # every weight gets the gradient; a bool mask gets none


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def apply_mask(params: PyTree, masks: PyTree, *, straight_through: bool = False) -> PyTree:
    """Zeros the pruned entries of ``params``; leaves whose mask is ``None`` pass through.

    Use it inside the jitted loss: the gradient at pruned entries is then
    exactly zero. ``jnp.where`` rather than a multiply, so a NaN or inf in a
    pruned weight does not leak through as NaN.

    Args:
      params: the parameter pytree.
      masks: bool masks mirroring ``params`` (``None`` where not prunable).
      straight_through: the straight-through estimator (as jaxpruner's
        ``magnitude_ste``; Bengio et al. 2013): the forward pass is the same,
        but the gradient flows to every weight as if unmasked, i.e. a pruned
        weight gets the gradient of the loss at its (zeroed) position, so it
        keeps learning and can win its place back when masks are recomputed.

    Raises:
      ValueError, TypeError: ``masks`` does not mirror ``params`` (the message
        names the first differing path), or ``straight_through`` is not a bool.
    """
    if not isinstance(straight_through, bool):
        raise TypeError(f"`straight_through` must be a bool, got {type(straight_through).__name__}.")
    return map_masked(_straight_through if straight_through else _zero_pruned, params, masks)


def finalize(params: PyTree, masks: PyTree) -> PyTree:
    """Plain params with the zeros baked in: same tree, same keys, same dtypes.

    What you save, export or evaluate after pruning; a model that never heard
    of jaxprune loads it as it is. (``apply_mask`` under another name, for the
    end of training.)
    """
    return apply_mask(params, masks)


def _mask_leaves(masks: PyTree) -> list[tuple[str, jax.Array]]:
    leaves = [(p, m) for p, m in leaves_with_paths(masks)[0] if m is not None]
    if not leaves:
        raise ValueError("`masks` has no prunable leaf (every leaf is None); build it with jp.init_masks(params).")
    for p, m in leaves:
        if getattr(m, "dtype", None) != jnp.bool_:
            raise TypeError(f"`masks` leaf {p!r} must be a bool array, got {getattr(m, 'dtype', type(m).__name__)}.")
    return leaves


def sparsity(masks: PyTree) -> jax.Array:
    """Fraction of prunable weights that are pruned (a float32 scalar; works under ``jit``)."""
    leaves = _mask_leaves(masks)
    total = sum(int(m.size) for _, m in leaves)
    if total == 0:  # only empty leaves: nothing is pruned (as summary() says)
        return jnp.zeros((), jnp.float32)
    kept = sum((jnp.sum(m, dtype=jnp.int32) for _, m in leaves), start=jnp.int32(0))
    return 1.0 - kept.astype(jnp.float32) / jnp.float32(total)


class LayerStats(NamedTuple):
    """One prunable leaf in a ``Summary``."""

    path: str
    shape: tuple[int, ...]
    kept: int
    total: int
    sparsity: float


class Summary(NamedTuple):
    """Per-layer sparsity: ``rows`` as data, ``str(summary)`` as a table."""

    rows: tuple[LayerStats, ...]
    kept: int
    total: int
    sparsity: float

    def __str__(self) -> str:
        header = ("path", "shape", "kept", "total", "sparsity")
        lines = [
            (r.path, "x".join(map(str, r.shape)) or "scalar", f"{r.kept:,}", f"{r.total:,}", f"{r.sparsity:.2%}")
            for r in self.rows
        ]
        lines.append(("total", "", f"{self.kept:,}", f"{self.total:,}", f"{self.sparsity:.2%}"))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        right = (False, False, True, True, True)

        def fmt(row):
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def summary(masks: PyTree) -> Summary:
    """Per-layer table of kept/total weights: where the sparsity went.

    Not for use under ``jit`` (it reads the counts back to the host).

    Example:
      >>> print(jp.summary(masks))            # doctest: +SKIP
      path             shape     kept   total  sparsity
      ...
    """
    leaves = _mask_leaves(masks)
    kept = jax.device_get([jnp.sum(m, dtype=jnp.int32) for _, m in leaves])
    rows = tuple(
        LayerStats(p, tuple(m.shape), int(k), int(m.size), 1.0 - int(k) / m.size if m.size else 0.0)
        for (p, m), k in zip(leaves, kept)
    )
    total = sum(r.total for r in rows)
    k = sum(r.kept for r in rows)
    return Summary(rows, k, total, 1.0 - k / total if total else 0.0)


def pack_masks(masks: PyTree) -> PyTree:
    """Packs every mask leaf into ``uint8`` bits (1 bit per weight, row-major, big-endian bit order).

    ``None`` leaves stay ``None``. ``unpack_masks(pack_masks(m), m) == m`` exactly.
    """
    _mask_leaves(masks)
    return jax.tree.map(lambda m: None if m is None else pack_bits(m), masks, is_leaf=is_none)


def unpack_masks(packed: PyTree, like: PyTree) -> PyTree:
    """Inverse of ``pack_masks``; ``like`` gives the shapes (the params, the masks or ``ShapeDtypeStruct``s).

    Raises:
      ValueError: ``packed`` does not mirror ``like`` or holds the wrong number
        of bytes for a leaf (the message names the path).
    """
    p_flat, p_def = leaves_with_paths(packed)
    l_flat, l_def = leaves_with_paths(like)
    if p_def != l_def:
        raise ValueError(
            f"`packed` does not have the structure of `like`: {first_difference(packed, like, '`packed`', '`like`')}."
        )
    out: list[jax.Array | None] = []
    for (path, b), (_, ref) in zip(p_flat, l_flat):
        if b is None:
            out.append(None)
            continue
        shape = tuple(ref.shape)
        size = packed_size(shape)
        if getattr(b, "dtype", None) != jnp.uint8 or tuple(b.shape) != (size,):
            raise ValueError(
                f"`packed` leaf {path!r} must be uint8[{size}] for a mask of shape {shape}, "
                f"got {getattr(b, 'dtype', type(b).__name__)}{list(getattr(b, 'shape', ()))}."
            )
        out.append(unpack_bits(jnp.asarray(b), shape))
    return unflatten(p_def, out)
