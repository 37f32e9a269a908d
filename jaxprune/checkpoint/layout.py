"""The on-disk layout of a checkpoint's leaves: one JSON entry per leaf, and the array stored for it.

A step holds two Orbax items: ``arrays``, one stored array per leaf under the
key ``leaf_000000``, ``leaf_000001``, ..., and ``layout``, the JSON
``{"format": FORMAT, "leaves": [entry, ...]}``. An entry records the leaf's
path, shape and dtype, how it is stored (``"packed"``: a mask as bits, along
its last axis from format 3 on; ``"impl"``: a PRNG key's data; ``"numpy"``:
saved from the host, restored to the host) and its checksum
(``jaxprune.checkpoint.checksums``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._bits import (
    pack_last_axis,
    packed_last_axis_shape,
    packed_layout,
    packed_size,
    same_layout,
    unpack_bits,
    unpack_last_axis,
)
from jaxprune._tree import PyTree, path_str

# Format 3 packs masks along their last axis and checksums with "mix64" (see checksums.py), both of
# which work on sharded arrays without gathering them. Format 2 (flat packed masks, XXH3 of the
# host bytes) is still restored and verified; format 1, written before checksums, unverified.
FORMAT = "jaxprune-checkpoint-3"
XXH3_FORMATS = ("jaxprune-checkpoint-2",)
UNVERIFIED_FORMATS = ("jaxprune-checkpoint-1",)
_LAST_AXIS = "last_axis"  # a layout entry's "packing" in format 3; formats 1 and 2 pack flat


def flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p) or "<root>", leaf) for p, leaf in flat], treedef


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def describe(leaf: Any) -> dict:
    dtype = jnp.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return {"shape": list(leaf.shape), "dtype": str(dtype)}  # e.g. "key<fry>"
    return {"shape": list(np.shape(leaf)), "dtype": str(np.dtype(dtype))}


def to_disk(path: str, leaf: Any) -> tuple[dict, Any]:
    """The layout entry of one leaf of a saved state and the array that goes to disk for it."""
    if _is_key(leaf):
        entry = {"path": path, **describe(leaf), "packed": False, "numpy": False}
        entry["impl"] = str(jax.random.key_impl(leaf))
        return entry, jax.random.key_data(leaf)
    if isinstance(leaf, (bool, int, float, complex)):
        leaf = np.asarray(leaf, jnp.result_type(leaf))  # what restore gives back: int -> int32 unless x64
    elif isinstance(leaf, np.generic):
        leaf = np.asarray(leaf)
    dtype = getattr(leaf, "dtype", None)
    if not isinstance(leaf, (jax.Array, np.ndarray)) or not (
        dtype == np.bool_ or jax.dtypes.issubdtype(dtype, np.number)
    ):
        what = f"{type(leaf).__name__} of dtype {dtype}" if dtype is not None else f"{type(leaf).__name__} {leaf!r:.60}"
        raise TypeError(f"`state` leaf {path!r} must be an array or a number (bool, int, float, complex), got {what}.")
    # "numpy": saved from the host, restored to the host (Orbax gives NumPy back), e.g. float64 without x64.
    entry = {"path": path, **describe(leaf), "packed": dtype == np.bool_, "numpy": isinstance(leaf, np.ndarray)}
    if entry["packed"]:  # masks: 1 bit per weight on disk, sharded as the mask is
        return {**entry, "packing": _LAST_AXIS}, pack_last_axis(leaf)
    return entry, leaf


def _target(entry: dict, sharding: Any) -> Any:
    """Where the stored array of ``entry`` is restored to, for a ``like`` leaf laid out as ``sharding``.

    In a one-process run, a leaf with no sharding of its own goes to this
    process's first device: Orbax would otherwise use the sharding saved with
    the checkpoint, whose devices need not exist here (saved on 8, restored on 1).
    """
    if "numpy" not in entry:  # formats 1 and 2, restored as before: derived arrays wherever Orbax puts them
        return None if entry["packed"] or "impl" in entry else sharding
    if entry["numpy"]:
        return None  # saved from the host: Orbax gives NumPy back
    if entry["packed"] or "impl" in entry:
        sharding = same_layout(sharding)
    if sharding is None and jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return sharding


def abstract(entry: dict, sharding: Any = None) -> jax.ShapeDtypeStruct:
    """The stored array of a layout entry (packed bits, key data, or the array itself), laid out like ``sharding``."""
    shape, target = tuple(entry["shape"]), _target(entry, sharding)
    if entry["packed"]:
        if entry.get("packing") == _LAST_AXIS:
            return jax.ShapeDtypeStruct(packed_last_axis_shape(shape), np.uint8, sharding=packed_layout(target, shape))
        return jax.ShapeDtypeStruct((packed_size(shape),), np.uint8)
    if "impl" in entry:
        data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=entry["impl"])))
        return jax.ShapeDtypeStruct((*shape, *data.shape), data.dtype, sharding=target)
    return jax.ShapeDtypeStruct(shape, np.dtype(entry["dtype"]), sharding=target)


def decode(entry: dict, x: Any, sharding: Any = None) -> Any:
    if entry["packed"]:
        if entry.get("packing") == _LAST_AXIS:  # a mask comes back as a jax.Array, even one saved from NumPy
            x = jnp.asarray(x) if isinstance(x, np.ndarray) else x
            return unpack_last_axis(x, tuple(entry["shape"]), same_layout(sharding))
        return unpack_bits(jnp.asarray(x), tuple(entry["shape"]))
    if "impl" in entry:
        return jax.random.wrap_key_data(x, impl=entry["impl"])
    return x
