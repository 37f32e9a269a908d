"""Orbax checkpoints of a whole training state, with masks stored as packed bits.

    ckpt = jp.Checkpointer("/tmp/run", max_to_keep=3)
    ckpt.save(step, {"params": params, "opt_state": opt_state, "pruner": pruner_state})
    state = ckpt.restore(like={"params": params, "opt_state": opt_state, "pruner": pruner_state})

Any pytree can be saved. Every ``bool`` array in it (masks, wherever they
sit: a ``PrunerState``, a ``PrunedTrainState``, a dict) is stored as packed
bits, 1 bit per weight, and comes back as ``bool``; ``None`` leaves stay
``None``; PRNG keys are stored as their key data. Restoring needs a template
``like`` with the same structure (arrays or ``jax.ShapeDtypeStruct``s, e.g.
from ``jax.eval_shape`` or ``nnx.eval_shape``); a saved tree that does not
match it raises before anything is read, naming the first differing path.

Saves go through ``orbax.checkpoint.CheckpointManager``: a checkpoint is
written to a temporary directory and renamed when complete, so a process
killed during a save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxprune._tree import PyTree, path_str

_FORMAT = "jaxprune-checkpoint-1"


def _flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p) or "<root>", leaf) for p, leaf in flat], treedef


def _describe(leaf: Any) -> dict:
    dtype = jnp.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return {"shape": list(leaf.shape), "dtype": str(dtype)}  # e.g. "key<fry>"
    return {"shape": list(np.shape(leaf)), "dtype": str(np.dtype(dtype))}


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _abstract(entry: dict, sharding: Any = None) -> jax.ShapeDtypeStruct:
    """The stored array of a layout entry: packed bits, key data, or the array itself."""
    if entry["packed"]:
        return jax.ShapeDtypeStruct(((math.prod(entry["shape"]) + 7) // 8,), np.uint8)
    if "impl" in entry:
        data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=entry["impl"])))
        return jax.ShapeDtypeStruct((*entry["shape"], *data.shape), data.dtype)
    return jax.ShapeDtypeStruct(tuple(entry["shape"]), np.dtype(entry["dtype"]), sharding=sharding)


def _decode(entry: dict, x: Any) -> Any:
    if entry["packed"]:
        return jnp.unpackbits(x, count=math.prod(entry["shape"])).astype(bool).reshape(entry["shape"])
    if "impl" in entry:
        return jax.random.wrap_key_data(x, impl=entry["impl"])
    return x


class Checkpointer:
    """Saves and restores training states under ``directory``, keeping the last ``max_to_keep``.

    Args:
      directory: where the step directories go (created if missing).
      max_to_keep: how many checkpoints to keep (None keeps all).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int | None = 3):
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(f"`max_to_keep` must be a positive int or None, got {max_to_keep!r}.")
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def save(self, step: int, state: PyTree, *, wait: bool = True) -> None:
        """Saves ``state`` as checkpoint ``step`` (waits for the write to finish unless ``wait=False``)."""
        flat, _ = _flatten(state)
        arrays, layout = {}, []
        for i, (path, leaf) in enumerate(flat):
            entry = {"path": path, **_describe(leaf), "key": f"leaf_{i:06d}"}
            entry["packed"] = entry["dtype"] == "bool"
            if _is_key(leaf):
                entry["impl"] = str(jax.random.key_impl(leaf))
                leaf = jax.random.key_data(leaf)
            elif entry["packed"]:
                leaf = jnp.packbits(jnp.asarray(leaf).reshape(-1))  # 1 bit per weight on disk
            arrays[entry["key"]] = leaf
            layout.append(entry)
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays),
                layout=ocp.args.JsonSave({"format": _FORMAT, "leaves": layout}),
            ),
        )
        if wait:
            self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def layout(self, step: int | None = None) -> list[dict]:
        """What checkpoint ``step`` (default: latest) holds: path, shape, dtype of every leaf."""
        step = self._resolve(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(layout=ocp.args.JsonRestore()))["layout"]
        except Exception as e:
            raise ValueError(f"checkpoint step {step} in {self.directory} is damaged or incomplete: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{self.directory / str(step)} is not a jaxprune checkpoint.")
        return meta["leaves"]

    def restore(self, like: PyTree, step: int | None = None) -> PyTree:
        """Restores checkpoint ``step`` (default: latest) into the structure of ``like``.

        Raises:
          FileNotFoundError: no checkpoint at all, or no checkpoint ``step``.
          ValueError: the saved tree does not match ``like`` (first differing
            path, shape or dtype named), or the files are damaged or incomplete.
        """
        step = self._resolve(step)
        saved = self.layout(step)
        flat, treedef = _flatten(like)
        wanted = [{"path": p, **_describe(x)} for p, x in flat]
        for i, (a, b) in enumerate(zip(saved, wanted)):
            if a["path"] != b["path"]:
                raise ValueError(
                    f"checkpoint step {step} holds {a['path']!r} where `like` has {b['path']!r} (leaf {i})."
                )
            if a["shape"] != b["shape"] or a["dtype"] != b["dtype"]:
                raise ValueError(
                    f"checkpoint step {step}: leaf {a['path']!r} is {a['dtype']}{a['shape']} "
                    f"but `like` wants {b['dtype']}{b['shape']}."
                )
        if len(saved) != len(wanted):
            extra = saved[len(wanted)]["path"] if len(saved) > len(wanted) else wanted[len(saved)]["path"]
            raise ValueError(
                f"checkpoint step {step} has {len(saved)} leaves but `like` has {len(wanted)}; "
                f"first unmatched: {extra!r}."
            )
        targets = {
            e["key"]: _abstract(e, getattr(ref, "sharding", None) if not (e["packed"] or "impl" in e) else None)
            for e, (_, ref) in zip(saved, flat)
        }
        arrays = self._read(step, targets)
        leaves = [_decode(e, arrays[e["key"]]) for e in saved]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def restore_flat(self, step: int | None = None) -> dict[str, Any]:
        """Restores checkpoint ``step`` without a template: ``{path: array}``, masks unpacked to ``bool``.

        For tools that inspect a checkpoint (the ``jaxprune`` command): the
        tree structure itself is not stored, only its leaves' paths. PRNG keys
        are left out.
        """
        step = self._resolve(step)
        saved = self.layout(step)
        arrays = self._read(step, {e["key"]: _abstract(e) for e in saved})
        return {e["path"]: np.asarray(_decode(e, arrays[e["key"]])) for e in saved if "impl" not in e}

    def _read(self, step: int, targets: dict) -> dict:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(targets)))[
                "arrays"
            ]
        except Exception as e:
            raise ValueError(f"checkpoint step {step} in {self.directory} is damaged or incomplete: {e}") from e

    def _resolve(self, step: int | None) -> int:
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; steps saved: {steps}.")
        return step

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
