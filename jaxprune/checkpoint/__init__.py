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
  leaf. It is computed where the data lives (see ``checksums``), so sharded
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

Four modules, one idea each:

* ``layout``: what a step holds on disk, leaf by leaf (paths, shapes,
  dtypes, masks packed as bits, PRNG keys as key data) and the format version;
* ``checksums``: the 64-bit checksum of every stored leaf;
* ``lock``: the writer lock;
* ``checkpointer``: ``Checkpointer``, which saves and restores through Orbax
  with the three above.
"""

from jaxprune.checkpoint import checksums, layout, lock
from jaxprune.checkpoint.checkpointer import Checkpointer

__all__ = ["Checkpointer"]

# The private names of the single module this package replaced, which tests and benchmarks reach for.
_checksums = checksums.mix64_checksums
_device_mix64 = checksums.device_mix64
_host_mix64 = checksums.host_mix64
_HOST_WORDS = checksums.HOST_WORDS
_flatten = layout.flatten
_stored = layout.to_disk
_lock = lock.take_writer_lock
