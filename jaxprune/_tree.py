"""Path-keyed pytree helpers shared by the public modules (private).

A *path string* joins the keys of a leaf's key path with ``/``, e.g.
``"params/Dense_0/kernel"`` for a Linen params dict or ``"layers/0/kernel"``
for an ``nnx.State``. NNX wraps each array in a ``Variable`` whose child is
reached through ``.value``; that attribute is dropped from the path so the
same model gives the same path strings in Linen and NNX style.

Masks hold ``None`` where a leaf is not prunable. JAX treats ``None`` as an
empty subtree, so every walk here flattens with ``is_leaf=is_none``: a mask
tree then has exactly the leaf positions of its params tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import tree_util

PyTree = Any


def is_none(x: Any) -> bool:
    return x is None


def _key_str(key: Any) -> str:
    if isinstance(key, tree_util.DictKey):
        return str(key.key)
    if isinstance(key, tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, tree_util.GetAttrKey):
        return key.name
    if isinstance(key, tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(key_path: Sequence[Any]) -> str:
    """Joins a JAX key path into ``"a/b/c"``, dropping NNX's trailing ``value``."""
    keys = list(key_path)
    if keys and isinstance(keys[-1], tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


def leaves_with_paths(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` (``None`` counts as a leaf) into ``[(path, leaf)]`` and its treedef."""
    flat, treedef = tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    return [(path_str(p), leaf) for p, leaf in flat], treedef


def unflatten(treedef: Any, leaves: Sequence[Any]) -> PyTree:
    return tree_util.tree_unflatten(treedef, list(leaves))


def first_difference(a: PyTree, b: PyTree, a_name: str = "the first tree", b_name: str = "the second tree") -> str:
    """Describes the first leaf path at which two trees differ in structure."""
    pa = [p for p, _ in leaves_with_paths(a)[0]]
    pb = [p for p, _ in leaves_with_paths(b)[0]]
    for x, y in zip(pa, pb):
        if x != y:
            return f"path {x!r} in {a_name} meets {y!r} in {b_name}"
    if len(pa) != len(pb):
        longer, extra = (a_name, pa[len(pb)]) if len(pa) > len(pb) else (b_name, pb[len(pa)])
        return f"{longer} has an extra leaf at {extra!r}"
    return "the trees have the same paths but different node types"


def check_shapes_match(
    params: PyTree, tree: PyTree, *, params_name: str = "params", tree_name: str = "masks", hint: str = ""
) -> tuple[list[tuple[str, Any]], list[Any], Any]:
    """Checks that ``tree`` has the structure of ``params`` and, where not ``None``, the same leaf shapes.

    Returns (param paths+leaves, the leaves of ``tree``, its treedef).

    Raises:
      ValueError: structure or a shape differs; the message names the first path.
    """
    p_flat, p_def = leaves_with_paths(params)
    t_flat, t_def = leaves_with_paths(tree)
    if p_def != t_def:
        raise ValueError(
            f"`{tree_name}` does not have the structure of `{params_name}`: "
            f"{first_difference(params, tree, f'`{params_name}`', f'`{tree_name}`')}.{hint}"
        )
    for (path, p), (_, t) in zip(p_flat, t_flat):
        if t is None:
            continue
        t_shape = tuple(getattr(t, "shape", ()))
        if p is None or t_shape != tuple(getattr(p, "shape", ())):
            raise ValueError(
                f"`{tree_name}` leaf {path!r} has shape {t_shape} but `{params_name}` "
                f"has {None if p is None else tuple(getattr(p, 'shape', ()))} there."
            )
    return p_flat, [t for _, t in t_flat], t_def


def check_masks_match(
    params: PyTree, masks: PyTree, *, params_name: str = "params", masks_name: str = "masks"
) -> tuple[list[tuple[str, Any]], list[Any], Any]:
    """Checks that ``masks`` mirrors ``params``; returns (param paths+leaves, mask leaves, treedef).

    Raises:
      ValueError: structure or a shape differs; the message names the first path.
      TypeError: a mask leaf is neither ``None`` nor a bool array.
    """
    p_flat, m_leaves, m_def = check_shapes_match(
        params,
        masks,
        params_name=params_name,
        tree_name=masks_name,
        hint=" Build masks with jp.init_masks(params).",
    )
    for (path, _), m in zip(p_flat, m_leaves):
        if m is not None and getattr(m, "dtype", None) != jax.numpy.bool_:
            raise TypeError(
                f"`{masks_name}` leaf {path!r} must be a bool array or None, "
                f"got {getattr(m, 'dtype', type(m).__name__)}."
            )
    return p_flat, m_leaves, m_def


def map_masked(fn: Callable[[Any, Any], Any], params: PyTree, masks: PyTree, **names: str) -> PyTree:
    """``fn(param, mask)`` on every leaf with a mask; other leaves pass through unchanged."""
    p_flat, m_leaves, treedef = check_masks_match(params, masks, **names)
    out = [p if m is None else fn(p, m) for (_, p), m in zip(p_flat, m_leaves)]
    return unflatten(treedef, out)


def is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.numpy.issubdtype(dtype, jax.numpy.floating)
