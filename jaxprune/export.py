"""Leaving the library with something really smaller: sparse leaves and compacted dense layers.

* ``finalize`` (in ``masks``): dense params with the zeros baked in.
* ``to_sparse`` / ``to_dense``: each pruned leaf as a ``jax.experimental.sparse.BCOO``
  (ready for sparse matmuls), or as a ``Bitmap`` (packed keep bits plus the kept values in
  row-major order: the smallest form at high sparsity); exact round trips.
* ``size_report``: bytes of each form.
* ``compact`` (in ``structural``, re-exported here): after ``prune_units``, cut the pruned
  units out of every array that holds them, giving smaller dense layers that compute the same outputs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from jaxprune._bits import pack_bits, packed_size, unpack_bits
from jaxprune._tree import PyTree, check_masks_match, is_none, unflatten
from jaxprune.structural.compaction import compact  # noqa: F401  (its old import path)


class Bitmap(NamedTuple):
    """A pruned leaf as packed keep bits (``uint8``, row-major, big-endian bits) and the kept values."""

    bits: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]

    def todense(self) -> np.ndarray:
        bits, size = np.asarray(self.bits), packed_size(tuple(self.shape))
        if bits.dtype != np.uint8 or bits.shape != (size,):
            raise ValueError(
                f"Bitmap.bits must be uint8[{size}] for shape {self.shape}, got {bits.dtype}{list(bits.shape)}."
            )
        keep = unpack_bits(bits, tuple(self.shape))
        if int(keep.sum()) != len(self.values):
            raise ValueError(f"Bitmap has {int(keep.sum())} keep bits set but {len(self.values)} values.")
        out = np.zeros(self.shape, self.values.dtype)
        out[keep] = self.values
        return out


_FORMATS = ("bcoo", "bitmap")


def to_sparse(params: PyTree, masks: PyTree, *, format: str = "bcoo") -> PyTree:
    """Every leaf with a mask as a sparse leaf (``BCOO`` or ``Bitmap``); other leaves unchanged.

    The sparse form stores exactly the entries the mask keeps, in row-major
    order (a kept weight that happens to be 0 is stored too): a ``BCOO``'s
    ``indices`` are ``argwhere(mask)`` as int32, its ``data`` the kept values.
    Host-side (not under ``jit``): the number of kept entries sets the sizes,
    and the leaves are read back to the host (NumPy), so nothing is compiled.

    Raises:
      ValueError: ``format`` is not ``"bcoo"`` or ``"bitmap"``; a masked leaf
        spans devices of other processes (gather it first).
    """
    if format not in _FORMATS:
        raise ValueError(f"`format` must be one of {_FORMATS}, got {format!r}.")
    p_flat, m_leaves, treedef = check_masks_match(params, masks)
    for (path, p), m in zip(p_flat, m_leaves):
        if m is not None and not all(getattr(x, "is_fully_addressable", True) for x in (p, m)):
            raise ValueError(
                f"to_sparse reads each leaf to this host, but {path!r} spans other processes' devices; "
                "gather it first (jax.experimental.multihost_utils.process_allgather) or call it on one process."
            )
    out = []
    for (_, p), m in zip(p_flat, m_leaves):
        if m is None:
            out.append(p)
            continue
        keep, values = np.asarray(m), np.asarray(p)
        kept = values[keep]
        if format == "bcoo":
            indices = np.argwhere(keep).astype(np.int32)  # row-major, as BCOO.fromdense orders them
            out.append(
                sparse.BCOO(
                    (jax.device_put(kept), jax.device_put(indices)),  # jnp.asarray would compile a copy
                    shape=keep.shape,
                    indices_sorted=True,
                    unique_indices=True,
                )
            )
        else:
            out.append(Bitmap(pack_bits(keep), kept, tuple(m.shape)))
    return unflatten(treedef, out)


def _is_sparse(x: Any) -> bool:
    return isinstance(x, (sparse.BCOO, Bitmap))


def to_dense(sparse_params: PyTree) -> PyTree:
    """Inverse of ``to_sparse``: plain dense arrays everywhere."""
    return jax.tree.map(
        lambda x: jnp.asarray(x.todense()) if _is_sparse(x) else x,
        sparse_params,
        is_leaf=lambda x: _is_sparse(x) or is_none(x),
    )


def size_report(params: PyTree, masks: PyTree) -> dict[str, int]:
    """Bytes of: dense params, their packed masks, and the BCOO and bitmap sparse forms."""
    p_flat, m_leaves, _ = check_masks_match(params, masks)
    report = {"dense": 0, "packed_masks": 0, "bcoo": 0, "bitmap": 0}
    for (_, p), m in zip(p_flat, m_leaves):
        if p is None:
            continue
        nbytes = int(np.prod(np.shape(p))) * np.dtype(p.dtype).itemsize
        report["dense"] += nbytes
        if m is None:
            report["bcoo"] += nbytes
            report["bitmap"] += nbytes
            continue
        kept = int(jnp.sum(m))
        bits = (int(m.size) + 7) // 8
        report["packed_masks"] += bits
        report["bcoo"] += kept * (np.dtype(p.dtype).itemsize + 4 * max(m.ndim, 1))  # values + int32 indices
        report["bitmap"] += bits + kept * np.dtype(p.dtype).itemsize
    return report
