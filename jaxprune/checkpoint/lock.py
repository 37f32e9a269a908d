"""The writer lock: one writing ``Checkpointer`` per directory, in any process, of any run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

_LOCK_FILE = ".jaxprune-writer.lock"


def take_writer_lock(directory: Path) -> int:
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


def take_writer_lock_once(directory: Path) -> int | None:
    """Takes the writer lock in process 0 only; every process of a multi-process run raises if it failed.

    The processes of one run write one checkpoint together, so one lock
    stands for all of them; another run's process 0 then fails on it. The
    others learn process 0's outcome from a broadcast, which also keeps them
    from touching the directory before process 0 holds the lock.
    """
    if jax.process_count() == 1:
        return take_writer_lock(directory)
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = take_writer_lock(directory)
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
