"""``Checkpointer``: saves and restores training states through Orbax, in the layout of ``layout``."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxprune._checks import check_int
from jaxprune._tree import PyTree
from jaxprune.checkpoint.checksums import mix64_checksums, xxh3_checksums
from jaxprune.checkpoint.layout import (
    FORMAT,
    UNVERIFIED_FORMATS,
    XXH3_FORMATS,
    abstract,
    decode,
    describe,
    flatten,
    to_disk,
)
from jaxprune.checkpoint.lock import take_writer_lock_once

_UNAWAITED_METADATA = r"coroutine 'Store\._get_array_metadatas' was never awaited"  # see _ignore_abandoned_reads


def _ignore_abandoned_reads() -> None:
    """Drops the reports of the reads that Orbax abandoned when a restore failed.

    Orbax runs each restore in a fresh event loop and closes it as soon as one
    read fails, while TensorStore is still finishing the others. The restore
    has raised already (a short ``ValueError`` with Orbax's error as its
    cause), so what the abandoned reads report later, at some unrelated-looking
    moment and often with kilobytes of TensorStore spec, says nothing new:

    * TensorStore's threads call ``call_soon_threadsafe`` on the closed loop,
      and the ``RuntimeError('Event loop is closed')`` goes to
      ``sys.unraisablehook`` ("Exception ignored in: None", a
      ``PytestUnraisableExceptionWarning`` under pytest);
    * the garbage collector closes an unfinished Orbax coroutine, which Orbax
      turns from ``GeneratorExit`` into an ``Exception``: also reported to
      ``sys.unraisablehook``;
    * futures and tasks that failed after the first are collected with their
      exceptions never retrieved, and asyncio logs each as an error ("Future
      exception was never retrieved", "Task ...", "_GatheringFuture ...").

    Before a restore reads, the hook is wrapped and the ``asyncio`` logger
    filtered (once each). They drop exactly those reports, where the object,
    coroutine or exception is Orbax's or TensorStore's, and pass every other.
    Restoring onto a given sharding, Orbax reads the arrays' metadata in a
    task beside the data; when the loop closes before that task starts, Python
    warns that the coroutine was never awaited: that warning is dropped too.
    """
    warnings.filterwarnings("ignore", _UNAWAITED_METADATA, RuntimeWarning)  # a no-op when already in place
    if not isinstance(sys.unraisablehook, _AbandonedReadsFilter):
        sys.unraisablehook = _AbandonedReadsFilter(sys.unraisablehook)
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedFuturesFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedFuturesFilter())


_ORBAX_FILE = re.compile(r"[\\/]orbax[\\/]checkpoint[\\/]")
_NEVER_RETRIEVED = re.compile(r"\w+ exception was never retrieved")


def _orbax_traceback(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised through Orbax's code."""
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        if _ORBAX_FILE.search(tb.tb_frame.f_code.co_filename):
            return True
        tb = tb.tb_next
    return False


class _AbandonedReadsFilter:
    """A ``sys.unraisablehook`` that drops the reports of abandoned reads and passes every other one on."""

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    def __call__(self, report: Any) -> None:
        exc, obj = report.exc_value, report.object
        loop_closed = obj is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
        code = getattr(obj, "cr_code", None)  # an Orbax coroutine closed by the garbage collector
        coroutine_closed = (
            code is not None
            and _ORBAX_FILE.search(code.co_filename) is not None
            and isinstance(getattr(exc, "__cause__", None), GeneratorExit)
        )
        if not (loop_closed or coroutine_closed):
            self.previous(report)


class _AbandonedFuturesFilter(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" for Orbax's and TensorStore's abandoned futures."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _NEVER_RETRIEVED.match(str(record.msg)):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        orbax_task = _ORBAX_FILE.search(record.getMessage()) is not None  # "coro=<...> defined at .../orbax/..."
        tensorstore = "tensorstore_spec" in str(exc)  # TensorStore's errors end with the spec they opened
        return not (orbax_task or tensorstore or _orbax_traceback(exc))


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
            lock = take_writer_lock_once(self.directory)  # before Orbax touches anything in the directory
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
        flat = flatten(state)[0]
        if not flat:
            raise ValueError(f"`state` has no array or number in it (got {state!r:.60}): nothing to save.")
        layout, stored = [], []
        for i, (path, leaf) in enumerate(flat):
            entry, x = to_disk(path, leaf)
            layout.append({**entry, "key": f"leaf_{i:06d}"})
            stored.append(x)
        for entry, checksum in zip(layout, mix64_checksums(stored)):
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
                    layout=ocp.args.JsonSave({"format": FORMAT, "leaves": layout}),
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
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *XXH3_FORMATS, *UNVERIFIED_FORMATS):
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
        flat, treedef = flatten(like)
        wanted = [{"path": p, **describe(x)} for p, x in flat]
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
        targets = {e["key"]: abstract(e, sharding) for e, sharding in zip(saved, shardings)}
        arrays = self._read(step, saved, targets)
        leaves = [decode(e, arrays[e["key"]], sharding) for e, sharding in zip(saved, shardings)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def restore_flat(self, step: int | None = None) -> dict[str, Any]:
        """Restores checkpoint ``step`` without a template: ``{path: array}``, masks unpacked to ``bool``.

        For tools that inspect a checkpoint (the ``jaxprune`` command): the
        tree structure itself is not stored, only its leaves' paths. PRNG keys
        are left out. Checksums are verified as in ``restore``. It reads every
        leaf whole into one process, whatever mesh saved it. It raises as
        ``restore`` does, but there is no template to mismatch.

        Raises:
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
        arrays = self._read(step, saved, {e["key"]: abstract(e) for e in saved})
        return {e["path"]: np.asarray(decode(e, arrays[e["key"]])) for e in saved if "impl" not in e}

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
        except Exception as exc:  # not `e`: the loops below name the saved entries so
            err = self._data_error(step, args, exc)
            raise self._damaged(step, err, saved) from err
        verified = [e for e in saved if "checksum" in e]  # none in format 1
        old = [e for e in verified if str(e["checksum"]).startswith("xxh3_64:")]  # format 2
        new = [e for e in verified if not str(e["checksum"]).startswith("xxh3_64:")]
        if any(not getattr(arrays[e["key"]], "is_fully_addressable", True) for e in old):
            raise ValueError(
                f"checkpoint step {step} in {self.directory} is in format 2, whose checksums need every leaf whole "
                "on one host: restore it in one process and save it again (format 3) to restore it across processes."
            )
        computed = xxh3_checksums([arrays[e["key"]] for e in old]) + mix64_checksums([arrays[e["key"]] for e in new])
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
