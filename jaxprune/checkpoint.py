"""Orbax checkpoints of a whole training state, with masks stored as packed bits.

    with jp.Checkpointer("/tmp/run", max_to_keep=3) as ckpt:
        ckpt.save(step, {"params": params, "opt_state": opt_state, "pruner": pruner_state})
        state = ckpt.restore(like={"params": params, "opt_state": opt_state, "pruner": pruner_state})

Any pytree of arrays and numbers can be saved. Every ``bool`` array in it
(masks, wherever they sit: a ``PrunerState``, a ``PrunedTrainState``, a dict)
is stored as packed bits, 1 bit per weight, and comes back as ``bool``;
``None`` leaves stay ``None``; PRNG keys are stored as their key data.
Restoring needs a template ``like`` with the same structure (arrays or
``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape`` or
``nnx.eval_shape``); a saved tree that does not match it raises before
anything is read, naming the first differing path.

Checkpoints never lose data silently:

* A save lands whole or raises. Orbax writes a step to a temporary directory
  and renames it when complete, so a process killed during a save leaves the
  earlier checkpoints intact. A save that fails raises ``OSError`` and leaves
  the earlier checkpoints restorable; the process still exits normally.
* A step is only ever added after every step already saved: saving a step
  that exists, or one below a saved step (after rolling back to an earlier
  checkpoint), raises ``FileExistsError`` unless ``overwrite=True`` says to
  drop the abandoned steps.
* Every stored leaf has a 64-bit checksum in the checkpoint's layout,
  checked on every restore: changed bytes raise ``ValueError`` naming the
  leaf. It is computed where the data lives (see ``_checksums``), so sharded
  leaves are never gathered, and it does not depend on how they are sharded.
* One writer per directory: a writing ``Checkpointer`` holds an exclusive lock
  (``flock`` on ``.jaxprune-writer.lock`` in the directory, which the OS
  releases if the process dies), so a second writer fails at once instead of
  interleaving its steps. Readers (``read_only=True``, the ``jaxprune``
  command) take no lock and change nothing on disk.

Across processes (``jax.distributed``), every process makes the same calls
with the same global arrays: each writes and reads only the shards it holds
(masks too: they are packed along their last axis and keep their sharding),
process 0 alone holds the writer lock, and a restore lays every leaf out as
its ``like`` leaf is sharded, on any mesh.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import sys
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import xxhash
from jax import lax
from jax.experimental import multihost_utils

from jaxprune._bits import (
    pack_last_axis,
    packed_last_axis_shape,
    packed_size,
    same_layout,
    unpack_bits,
    unpack_last_axis,
)
from jaxprune._checks import check_int
from jaxprune._tree import PyTree, path_str

# Format 3 packs masks along their last axis and checksums with "mix64" (see _checksums), both of
# which work on sharded arrays without gathering them. Format 2 (flat packed masks, XXH3 of the
# host bytes) is still restored and verified; format 1, written before checksums, unverified.
_FORMAT = "jaxprune-checkpoint-3"
_XXH3_FORMATS = ("jaxprune-checkpoint-2",)
_UNVERIFIED_FORMATS = ("jaxprune-checkpoint-1",)
_LAST_AXIS = "last_axis"  # a layout entry's "packing" in format 3; formats 1 and 2 pack flat
_HOST_WORDS = 1 << 14  # arrays up to this many words are checksummed with NumPy: no compile, and as fast there
_LOCK_FILE = ".jaxprune-writer.lock"
_UNAWAITED_METADATA = r"coroutine 'Store\._get_array_metadatas' was never awaited"  # see _ignore_abandoned_reads


def _flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p) or "<root>", leaf) for p, leaf in flat], treedef


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _describe(leaf: Any) -> dict:
    dtype = jnp.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return {"shape": list(leaf.shape), "dtype": str(dtype)}  # e.g. "key<fry>"
    return {"shape": list(np.shape(leaf)), "dtype": str(np.dtype(dtype))}


def _stored(path: str, leaf: Any) -> tuple[dict, Any]:
    """The layout entry of one leaf of a saved state and the array that goes to disk for it."""
    if _is_key(leaf):
        entry = {"path": path, **_describe(leaf), "packed": False, "numpy": False}
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
    entry = {"path": path, **_describe(leaf), "packed": dtype == np.bool_, "numpy": isinstance(leaf, np.ndarray)}
    if entry["packed"]:  # masks: 1 bit per weight on disk, sharded as the mask is
        return {**entry, "packing": _LAST_AXIS}, pack_last_axis(leaf)
    return entry, leaf


def _fmix32(h: Any, u32: Any) -> Any:
    """MurmurHash3's finaliser: a bijection of uint32 in which every input bit flips each output bit ~1/2 the time."""
    h = h ^ (h >> 16)
    h = h * u32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * u32(0xC2B2AE35)
    return h ^ (h >> 16)


def _mix_lanes(words: Any, index: Any, u32: Any) -> tuple[Any, Any]:
    """Two independently keyed hashes of each word and its flat position; each is a bijection of the word."""
    a = _fmix32(words ^ (index * u32(0x9E3779B1) + u32(0x3C6EF372)), u32)
    b = _fmix32(words * u32(0x27D4EB2F) + (index * u32(0x85EBCA77) + u32(0x165667B1)), u32)
    return a, b


def _host_words(x: np.ndarray) -> np.ndarray:
    """The array's bytes as uint32 words, one per element of 1 or 2 bytes, several per wider one, row-major."""
    x = np.ascontiguousarray(x)
    size = x.dtype.itemsize
    if size < 4:
        return x.view(f"uint{8 * size}").astype(np.uint32)
    return x.view(np.uint32)  # little-endian words, as on every platform JAX runs on


def _device_words(x: jax.Array) -> jax.Array:
    """``_host_words`` under jit: the same words (the wider types split on a new last axis), wherever x lives."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([x.real, x.imag], axis=-1)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size < 4:
        return lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
    return lax.bitcast_convert_type(x, jnp.uint32)


def _host_mix64(x: np.ndarray) -> tuple[int, int]:
    words = _host_words(x).reshape(-1)
    a, b = _mix_lanes(words, np.arange(words.size, dtype=np.uint32), np.uint32)
    return int(np.sum(a, dtype=np.uint32)), int(np.sum(b, dtype=np.uint32))


@jax.jit
def _device_mix64(x: jax.Array) -> jax.Array:
    words = _device_words(x)
    index = jnp.zeros(words.shape, jnp.uint32)  # row-major flat position, modulo 2**32
    stride = 1
    for d in reversed(range(words.ndim)):
        index = index + lax.broadcasted_iota(jnp.uint32, words.shape, d) * jnp.uint32(stride % 2**32)
        stride *= words.shape[d]
    a, b = _mix_lanes(words, index, jnp.uint32)
    # One reduction with two outputs: XLA fuses it into one pass (two jnp.sum calls take ~10x longer on CPU).
    zero = jnp.uint32(0)
    sums = lax.reduce((a, b), (zero, zero), lambda x, y: (x[0] + y[0], x[1] + y[1]), tuple(range(words.ndim)))
    return jnp.stack(sums)


def _checksums(arrays: list[Any]) -> list[str]:
    """The checksum of each array: ``"mix64:<16 hex digits>"``, the same however the array is sharded.

    Each 32-bit word of the array's row-major bytes is hashed together with
    its flat position by two differently keyed murmur3 finalisers (``_fmix32``),
    and each lane is summed with wrap-around over the whole array. A sum does
    not care about order, so every device hashes its own shard and only each
    device's two partial sums cross devices: nothing is gathered, and any
    sharding, any mesh and the host give the same 64 bits. Each lane is a
    bijection of the word at a given position, so any single changed word is
    always caught; other damage is missed with a chance of about 2**-64. It
    guards against damage, not against tampering. Small fully-addressable
    arrays are hashed on the host (NumPy; no compile), the rest under jit
    (~10 GB/s on one CPU core: ~1.5 ms for a 16 MB leaf).
    """
    sums: list[Any] = []
    for x in arrays:
        if isinstance(x, (np.ndarray, np.generic)) or (x.is_fully_addressable and x.size <= _HOST_WORDS):
            x = np.asarray(x)
            sums.append(_host_mix64(x) if x.size <= _HOST_WORDS else _device_mix64(_host_words(x)))
        else:
            sums.append(_device_mix64(x))  # dispatched now and read below, so the arrays are hashed in parallel
    # A device result is replicated on every device, so each process reads it from its own.
    return [f"mix64:{int(a):08x}{int(b):08x}" for a, b in map(np.asarray, sums)]


def _xxh3_checksums(arrays: list[Any]) -> list[str]:
    """Format 2's checksums: XXH3 (64-bit) of each array's bytes on the host, ``"xxh3_64:<16 hex digits>"``.

    Needs every array whole on this host; ``_read`` raises before a
    multi-process restore would get here.
    """
    raw = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in arrays]  # also empty and bf16 arrays
    return [f"xxh3_64:{xxhash.xxh3_64_hexdigest(b)}" for b in raw]


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


def _abstract(entry: dict, sharding: Any = None) -> jax.ShapeDtypeStruct:
    """The stored array of a layout entry (packed bits, key data, or the array itself), laid out like ``sharding``."""
    shape, target = tuple(entry["shape"]), _target(entry, sharding)
    if entry["packed"]:
        if entry.get("packing") == _LAST_AXIS:
            return jax.ShapeDtypeStruct(packed_last_axis_shape(shape), np.uint8, sharding=target)
        return jax.ShapeDtypeStruct((packed_size(shape),), np.uint8)
    if "impl" in entry:
        data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=entry["impl"])))
        return jax.ShapeDtypeStruct((*shape, *data.shape), data.dtype, sharding=target)
    return jax.ShapeDtypeStruct(shape, np.dtype(entry["dtype"]), sharding=target)


def _decode(entry: dict, x: Any, sharding: Any = None) -> Any:
    if entry["packed"]:
        if entry.get("packing") == _LAST_AXIS:  # a mask comes back as a jax.Array, even one saved from NumPy
            x = jnp.asarray(x) if isinstance(x, np.ndarray) else x
            return unpack_last_axis(x, tuple(entry["shape"]), same_layout(sharding))
        return unpack_bits(jnp.asarray(x), tuple(entry["shape"]))
    if "impl" in entry:
        return jax.random.wrap_key_data(x, impl=entry["impl"])
    return x


def _lock(directory: Path) -> int:
    """Takes the directory's writer lock without waiting; returns the descriptor that holds it.

    ``flock`` locks belong to the open file, so the OS drops the lock when the
    descriptor is closed or the process dies; a stale lock file is harmless.
    """
    path = directory / _LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OSError(e.errno, f"cannot open the writer lock {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        me = " (this process)" if holder == str(os.getpid()) else ""
        raise RuntimeError(
            f"{directory} is already open for writing by another Checkpointer, pid {holder}{me}: one writer "
            "at a time. Close that one first, or open this one with read_only=True to restore only."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for the error message of the next would-be writer
    return fd


def _lock_once(directory: Path) -> int | None:
    """Takes the writer lock in process 0 only; every process of a multi-process run raises if it failed.

    The processes of one run write one checkpoint together, so one lock
    stands for all of them; another run's process 0 then fails on it. The
    others learn process 0's outcome from a broadcast, which also keeps them
    from touching the directory before process 0 holds the lock.
    """
    if jax.process_count() == 1:
        return _lock(directory)
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = _lock(directory)
        except (RuntimeError, OSError) as e:
            error = e
    got_it = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if error is not None:
        raise error
    if not got_it:
        raise RuntimeError(
            f"{directory} is already open for writing by another Checkpointer: process 0 of this run could not "
            "take the writer lock (its error names the holder). One writer at a time; open with read_only=True "
            "to restore only."
        )
    return lock


def _ignore_abandoned_reads() -> None:
    """Drops the reports of the reads that Orbax abandoned when a restore failed.

    Orbax runs each restore in a fresh event loop and closes it as soon as one
    read fails, while TensorStore is still finishing the others; when they
    finish, TensorStore's threads call ``call_soon_threadsafe`` on the closed
    loop, and the ``RuntimeError('Event loop is closed')`` goes to
    ``sys.unraisablehook`` ("Exception ignored in: None", a
    ``PytestUnraisableExceptionWarning`` under pytest), at some later moment.
    The restore has raised already, so the reports say nothing new. Wrapped
    around the current hook before a restore reads (once per hook); every other
    report goes to that hook.

    Restoring onto a given sharding, Orbax reads the arrays' metadata in a task
    beside the data; when the loop closes before that task starts, Python warns
    that the coroutine was never awaited: that warning is dropped too.
    """
    warnings.filterwarnings("ignore", _UNAWAITED_METADATA, RuntimeWarning)  # a no-op when already in place
    previous = sys.unraisablehook
    if getattr(previous, "_drops_abandoned_reads", False):
        return

    def hook(report: Any) -> None:
        exc = report.exc_value
        if not (report.object is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(report)

    hook._drops_abandoned_reads = True
    sys.unraisablehook = hook


def _release(manager: ocp.CheckpointManager, lock: int | None) -> None:
    try:
        manager.close()
    finally:
        if lock is not None:
            os.close(lock)


class Checkpointer:
    """Saves and restores training states under ``directory``, keeping the last ``max_to_keep``.

    Use it as a context manager or call ``close()``: that waits for a save
    started with ``wait=False``, shuts Orbax's background machinery down and
    releases the writer lock. A ``Checkpointer`` that is garbage-collected
    closes itself.

    Args:
      directory: where the step directories go (created if missing unless
        ``read_only``).
      max_to_keep: how many checkpoints to keep, an int >= 1 (None keeps all).
        Ignored when ``read_only``.
      read_only: open for restoring only: no lock is taken, nothing on disk is
        created, cleaned or deleted, and ``save`` raises. Readers can work
        while a writer holds the directory.

    Raises:
      TypeError: ``directory`` is not a str or ``os.PathLike``; ``max_to_keep``
        is not an int or None; ``read_only`` is not a bool.
      ValueError: ``max_to_keep < 1``.
      RuntimeError: another ``Checkpointer`` (in any process) has the directory
        open for writing; the message names its pid.
      OSError: the directory cannot be created (a file in the way, a path
        under a file, no permission); ``FileNotFoundError`` when ``read_only``
        and it does not exist.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, read_only: bool = False):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"`directory` must be a str or os.PathLike, got {type(directory).__name__} {directory!r}.")
        if max_to_keep is not None:
            max_to_keep = check_int("max_to_keep", max_to_keep, minimum=1)
        if not isinstance(read_only, bool):
            raise TypeError(f"`read_only` must be a bool, got {type(read_only).__name__} {read_only!r}.")
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self._pending: int | None = None  # a step saved with wait=False, not yet known to have landed
        lock = None
        if read_only:
            if not self.directory.is_dir():
                raise FileNotFoundError(errno.ENOENT, f"no checkpoint directory {self.directory}")
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            if self.directory.exists() and not self.directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"checkpoint directory {self.directory} is not a directory")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OSError(e.errno, f"cannot create the checkpoint directory {self.directory}: {e.strerror}") from e
            lock = _lock_once(self.directory)  # before Orbax touches anything in the directory
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                # Orbax's default creates the step directory in a background thread; when that fails,
                # the threads waiting for it hold the process at exit for 5 minutes. Created here, a
                # failure raises in save() and no thread is left waiting.
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            )
        absl = logging.getLogger("absl")
        level = absl.level
        if read_only:
            absl.setLevel(logging.ERROR)  # Orbax warns that the directory is read only: we asked for it
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        finally:
            absl.setLevel(level)
        # Closes Orbax's manager and drops the lock on close(), on garbage collection or at exit,
        # whichever comes first, and only once.
        self._closer = weakref.finalize(self, _release, self._manager, lock)

    def save(self, step: int, state: PyTree, *, wait: bool = True, overwrite: bool = False) -> None:
        """Saves ``state`` as checkpoint ``step``.

        Steps only go forward: ``step`` must be above every step already
        saved. After rolling back (restoring an earlier step and training on),
        pass ``overwrite=True`` to delete ``step`` and every later step, the
        abandoned branch, before saving; without it such a save raises rather
        than keep the old data under the new step number.

        Args:
          step: a non-negative int (NumPy ints too, not ``bool``).
          state: any pytree of arrays and numbers (Python or NumPy); ``None``
            leaves are kept as ``None``.
          wait: wait until the checkpoint is complete on disk. With
            ``wait=False`` the write goes on in the background; the next
            ``save`` or ``close()`` waits for it and raises if it failed.
          overwrite: delete ``step`` and every later saved step first.

        Raises:
          TypeError: ``step`` is not an int, or a leaf of ``state`` is not an
            array or a number (the message names its path).
          ValueError: ``step`` is negative, or ``state`` holds no leaf.
          FileExistsError: ``step`` or a later step is already saved and
            ``overwrite`` is False (the message names the saved steps).
          RuntimeError: the ``Checkpointer`` is ``read_only`` or closed, or
            Orbax declined to save.
          OSError: the checkpoint could not be written (the directory is gone,
            not writable, a name is too long, the disk is full, ...); the cause
            is chained. The checkpoints before ``step`` are left intact (steps
            that ``overwrite=True`` deleted stay deleted).
        """
        step = check_int("step", step)
        self._check_open("save")
        if self.read_only:
            raise RuntimeError(f"cannot save: {self.directory} was opened with read_only=True.")
        self._finish()
        steps = self.steps()
        later = [s for s in steps if s >= step]
        if later and not overwrite:
            raise FileExistsError(
                errno.EEXIST,
                f"cannot save checkpoint step {step} in {self.directory}: steps saved: {steps}, and a new step must "
                f"come after all of them. To save under {step}, pass overwrite=True, which deletes steps {later} "
                f"(e.g. the abandoned run after a roll-back); or save under a step > {steps[-1]}",
            )
        flat = _flatten(state)[0]
        if not flat:
            raise ValueError(f"`state` has no array or number in it (got {state!r:.60}): nothing to save.")
        layout, stored = [], []
        for i, (path, leaf) in enumerate(flat):
            entry, x = _stored(path, leaf)
            layout.append({**entry, "key": f"leaf_{i:06d}"})
            stored.append(x)
        for entry, checksum in zip(layout, _checksums(stored)):
            entry["checksum"] = checksum
        arrays = {entry["key"]: x for entry, x in zip(layout, stored)}
        self._check_directory(step)
        try:
            for s in later:
                self._manager.delete(s)
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    arrays=ocp.args.StandardSave(arrays),
                    layout=ocp.args.JsonSave({"format": _FORMAT, "leaves": layout}),
                ),
            )
        except Exception as e:
            raise self._save_error(step, e) from e
        if not saved:
            raise RuntimeError(
                f"Orbax declined to save checkpoint step {step} in {self.directory} (CheckpointManager.save "
                f"returned False); steps saved: {self.steps()}."
            )
        self._pending = step
        if wait:
            self._finish()

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first (re-read from disk when ``read_only``)."""
        if self.read_only:
            self._manager.reload()  # a writer elsewhere may have added or deleted steps
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The last step saved, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def layout(self, step: int | None = None) -> list[dict]:
        """What checkpoint ``step`` (default: latest) holds: path, shape, dtype and checksum of every leaf.

        Raises:
          FileNotFoundError: no checkpoint at all, or no checkpoint ``step``.
          ValueError: the layout cannot be read or is not a jaxprune layout.
        """
        step = self._resolve(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(layout=ocp.args.JsonRestore()))["layout"]
        except Exception as e:
            raise self._damaged(step, e) from e
        if not isinstance(meta, dict) or meta.get("format") not in (_FORMAT, *_XXH3_FORMATS, *_UNVERIFIED_FORMATS):
            raise ValueError(f"{self.directory / str(step)} is not a jaxprune checkpoint.")
        return meta["leaves"]

    def restore(self, like: PyTree, step: int | None = None) -> PyTree:
        """Restores checkpoint ``step`` (default: latest) into the structure of ``like``.

        Every leaf is checked against the checksum stored when it was saved.
        Checkpoints written before checksums existed (format
        ``jaxprune-checkpoint-1``) are restored without this check.

        Each leaf (masks and PRNG keys too) is laid out as its ``like`` leaf
        is sharded, whatever mesh saved it; a ``like`` leaf without a
        sharding (e.g. from ``jax.eval_shape``) goes to the first local
        device in a one-process run. Leaves saved from NumPy come back as
        NumPy arrays, masks as ``bool`` ``jax.Array``s.

        Raises:
          TypeError: ``step`` is not an int or None.
          FileNotFoundError: no checkpoint at all, or no checkpoint ``step``.
          RuntimeError: the ``Checkpointer`` is closed.
          ValueError: the saved tree does not match ``like`` (first differing
            path, shape or dtype named); a leaf does not match its checksum;
            or the files are damaged or incomplete (step, directory and, when
            known, leaf and file named; Orbax's error is the ``__cause__``).
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
        shardings = [getattr(ref, "sharding", None) for _, ref in flat]
        targets = {e["key"]: _abstract(e, sharding) for e, sharding in zip(saved, shardings)}
        arrays = self._read(step, saved, targets)
        leaves = [_decode(e, arrays[e["key"]], sharding) for e, sharding in zip(saved, shardings)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def restore_flat(self, step: int | None = None) -> dict[str, Any]:
        """Restores checkpoint ``step`` without a template: ``{path: array}``, masks unpacked to ``bool``.

        For tools that inspect a checkpoint (the ``jaxprune`` command): the
        tree structure itself is not stored, only its leaves' paths. PRNG keys
        are left out. Checksums are verified as in ``restore``. It reads every
        leaf whole into one process, whatever mesh saved it.

        Raises:
          As ``restore``, but there is no template to mismatch.
          RuntimeError: called in a multi-process run (``jax.distributed``),
            where leaves span hosts: use ``restore(like=...)`` there.
        """
        if jax.process_count() > 1:
            raise RuntimeError(
                "restore_flat reads every leaf whole into one process; in a multi-process run "
                f"({jax.process_count()} processes) use restore(like=...), which gives each process its shards."
            )
        step = self._resolve(step)
        saved = self.layout(step)
        arrays = self._read(step, saved, {e["key"]: _abstract(e) for e in saved})
        return {e["path"]: np.asarray(_decode(e, arrays[e["key"]])) for e in saved if "impl" not in e}

    def close(self) -> None:
        """Waits for a save started with ``wait=False``, closes Orbax's manager, releases the lock.

        Calling it again does nothing.

        Raises:
          OSError: the pending ``wait=False`` save failed (the lock is released
            all the same).
        """
        try:
            if self._closer.alive:
                self._finish()
        finally:
            self._closer()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, step: int, saved: list[dict], targets: dict) -> dict:
        _ignore_abandoned_reads()  # before reading: the reports can come as soon as a read fails
        try:
            args = ocp.args.Composite(arrays=ocp.args.StandardRestore(targets))
            arrays = self._manager.restore(step, args=args)["arrays"]
        except Exception as e:
            e = self._data_error(step, args, e)
            raise self._damaged(step, e, saved) from e
        verified = [e for e in saved if "checksum" in e]  # none in format 1
        old = [e for e in verified if str(e["checksum"]).startswith("xxh3_64:")]  # format 2
        new = [e for e in verified if not str(e["checksum"]).startswith("xxh3_64:")]
        if any(not getattr(arrays[e["key"]], "is_fully_addressable", True) for e in old):
            raise ValueError(
                f"checkpoint step {step} in {self.directory} is in format 2, whose checksums need every leaf whole "
                "on one host: restore it in one process and save it again (format 3) to restore it across processes."
            )
        computed = _xxh3_checksums([arrays[e["key"]] for e in old]) + _checksums([arrays[e["key"]] for e in new])
        for e, checksum in zip(old + new, computed):
            if checksum != e["checksum"]:
                raise ValueError(
                    f"checkpoint step {step} in {self.directory}: leaf {e['path']!r} does not match its "
                    "checksum: its stored bytes changed after the save."
                )
        return arrays

    def _resolve(self, step: int | None) -> int:
        if step is not None:
            step = check_int("step", step)
        self._check_open("restore")
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; steps saved: {steps}.")
        return step

    def _check_open(self, what: str) -> None:
        if not self._closer.alive:
            raise RuntimeError(f"cannot {what}: the Checkpointer for {self.directory} is closed.")

    def _check_directory(self, step: int) -> None:
        """What can be checked before Orbax starts writing (as root, os.access is always True)."""
        where = f"cannot save checkpoint step {step}"
        if not self.directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"{where}: {self.directory} is gone or not a directory")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{where}: {self.directory} is not writable")

    def _finish(self) -> None:
        """Waits for the save in flight, if any; its failure raises OSError naming its step."""
        step, self._pending = self._pending, None
        if step is not None:
            try:
                self._manager.wait_until_finished()
            except Exception as e:
                raise self._save_error(step, e) from e

    def _save_error(self, step: int, e: Exception) -> OSError:
        if isinstance(e, OSError) and e.strerror:
            cause = e.strerror + (f": {e.filename}" if e.filename else "")
        else:
            cause = f"{type(e).__name__}: {str(e).split('[tensorstore_spec', 1)[0].strip()}"
        message = f"could not save checkpoint step {step} in {self.directory} ({cause}); the earlier steps are intact"
        # OSError(errno, ...) builds the matching subclass (NotADirectoryError, ...).
        return OSError(e.errno, message) if isinstance(e, OSError) and e.errno else OSError(message)

    def _data_error(self, step: int, args: Any, e: Exception) -> Exception:
        """The data's own error, when a restore failed first on the arrays' metadata file.

        Orbax reads that JSON file beside the data; when both are damaged,
        either read can fail first. The data's error names the leaf and the
        file, so a failed JSON read earns one more try (on this error path only).
        """
        if not isinstance(e, json.JSONDecodeError):
            return e
        try:
            self._manager.restore(step, args=args)
        except Exception as again:
            return e if isinstance(again, json.JSONDecodeError) else again
        return e

    def _unreadable_json(self, step: int) -> list[str]:
        """The array metadata files of ``step`` that are not valid JSON (Orbax reads them alongside the data)."""
        bad = []
        for path in sorted((self.directory / str(step) / "arrays" / "array_metadatas").glob("*")):
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                bad.append(str(path.relative_to(self.directory)))
        return bad

    def _damaged(self, step: int, e: Exception, saved: Sequence[dict] = ()) -> ValueError:
        """A short message instead of Orbax's (which quotes ~1 KB of TensorStore spec)."""
        text = str(e).split("[tensorstore_spec", 1)[0]
        where = []
        key = re.search(r"leaf_\d{6}", text)
        path = next((x["path"] for x in saved if key and x["key"] == key.group()), None)
        if path is not None:
            where.append(f"leaf {path!r}")
        files = re.findall(re.escape(str(self.directory)) + r"/([^\"'\s\\]+)", text)
        if not files and isinstance(e, json.JSONDecodeError):  # Python's JSON errors name no file
            files = self._unreadable_json(step)
        if files:
            where.append(f"file {files[-1]}")
        return ValueError(
            f"checkpoint step {step} in {self.directory} is damaged or incomplete "
            f"({', '.join(where) or type(e).__name__}); Orbax's error is chained as __cause__."
        )
