"""The ``jaxprune`` command: inspect and export checkpoints written by ``jp.Checkpointer``.

  jaxprune inspect CHECKPOINT_DIR [--step N]
  jaxprune export CHECKPOINT_DIR OUT.npz [--format dense|sparse] [--prefix params] [--step N]

A checkpoint stores leaf paths, not tree types, so masks are matched to
weights by path: the mask at ``.../X`` (any ``bool`` leaf) applies to the
weight of the same shape under ``--prefix`` whose path ends in ``X``.

Checkpoints are opened read-only (no lock, nothing changed on disk), so both
commands work while a training run is writing to the directory. ``export``
writes ``OUT.npz`` through a temporary file in the same directory, renamed
when complete. Every error is one line ``jaxprune: error: ...`` on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from jaxprune._bits import pack_bits
from jaxprune.checkpoint import Checkpointer
from jaxprune.masks import summary


class _Error(Exception):
    pass


def _load(directory: str, step: int | None) -> tuple[dict, int]:
    path = Path(directory)
    if not path.is_dir():
        raise _Error(f"no such directory: {directory}")
    with Checkpointer(path, read_only=True) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise _Error(f"{directory} holds no checkpoint (no step directories written by jaxprune.Checkpointer)")
        if step is not None and step not in steps:
            raise _Error(f"no checkpoint for step {step} in {directory}; steps saved: {steps}")
        step = steps[-1] if step is None else step
        return ckpt.restore_flat(step), step


def _masks_for(flat: dict, prefix: str) -> dict[str, np.ndarray]:
    """Weight path (under ``prefix``) -> its mask, matched by the longest common path ending."""
    weights = {p: x for p, x in flat.items() if x.dtype != bool and (p == prefix or p.startswith(prefix + "/"))}
    out = {}
    for mpath, m in flat.items():
        if m.dtype != bool:
            continue
        parts = mpath.split("/")
        for cut in range(len(parts)):
            tail = "/".join(parts[cut:])
            hits = [p for p, w in weights.items() if (p == tail or p.endswith("/" + tail)) and w.shape == m.shape]
            if hits:
                out[min(hits, key=len)] = m
                break
    return out


def _inspect(args: argparse.Namespace) -> None:
    flat, step = _load(args.directory, args.step)
    masks = {p: m for p, m in flat.items() if m.dtype == bool}  # a dict is a pytree whose paths are its keys
    print(f"checkpoint {args.directory}, step {step}")
    print(summary(masks) if masks else "no masks in this checkpoint (no bool leaves)")


def _output(out: str) -> Path:
    """``OUT`` checked before any work: an ``.npz`` name, not a directory, under a creatable directory."""
    target = Path(out)
    if target.is_dir():
        raise _Error(f"OUT {out} is an existing directory; give a file name ending in .npz")
    if target.suffix != ".npz":
        raise _Error(f"OUT must be a file name ending in .npz, got {out!r}")
    existing = target.parent
    while not existing.exists():  # the nearest ancestor that exists must be a writable directory
        existing = existing.parent
    if not existing.is_dir():
        raise _Error(f"cannot create {target.parent}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _Error(f"cannot write to {existing}: permission denied")
    return target


def _save_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes a temporary file beside ``target`` and renames it, so a failure leaves nothing half-written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _Error(f"cannot create {target.parent}: {e.strerror}") from None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no second ".npz"
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _Error(f"cannot write {target}: {e.strerror or e}") from None
        raise


def _export(args: argparse.Namespace) -> None:
    target = _output(args.out)
    flat, step = _load(args.directory, args.step)
    prefix = args.prefix.strip("/")
    masks = _masks_for(flat, prefix)
    weights = {p: x for p, x in flat.items() if x.dtype != bool and (p == prefix or p.startswith(prefix + "/"))}
    if not weights:
        tops = sorted({p.split("/")[0] for p in flat})
        raise _Error(f"no leaves under --prefix {prefix!r}; top-level names in the checkpoint: {tops}")
    out = {}
    for path, w in weights.items():
        name = path[len(prefix) + 1 :] if path != prefix else path
        m = masks.get(path)
        if m is None:
            out[name] = w
        elif args.format == "dense":
            out[name] = np.where(m, w, np.zeros((), w.dtype))
        else:
            out[f"{name}/bits"] = pack_bits(m)
            out[f"{name}/values"] = w.reshape(-1)[m.reshape(-1)]
            out[f"{name}/shape"] = np.asarray(w.shape, np.int64)
    _save_npz(target, out)
    size = target.stat().st_size
    print(
        f"wrote {target} ({size:,} bytes): {len(weights)} arrays from step {step}, {len(masks)} masked, {args.format}"
    )


def _one_line(e: Exception) -> str:
    text = str(e)
    if isinstance(e, OSError) and e.strerror:  # without the "[Errno N]" prefix
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0, or 2 after printing one error line)."""
    parser = argparse.ArgumentParser(prog="jaxprune", description="Inspect and export jaxprune checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="per-layer sparsity table of a checkpoint")
    p_inspect.add_argument("directory")
    p_inspect.add_argument("--step", type=int, default=None, help="default: the latest")
    p_export = sub.add_parser("export", help="write the (masked) weights to an .npz file")
    p_export.add_argument("directory")
    p_export.add_argument("out", help="file to write, ending in .npz")
    p_export.add_argument("--format", choices=("dense", "sparse"), default="dense")
    p_export.add_argument("--prefix", default="params", help="which subtree holds the weights (default: params)")
    p_export.add_argument("--step", type=int, default=None, help="default: the latest")
    args = parser.parse_args(argv)
    try:
        (_inspect if args.command == "inspect" else _export)(args)
    # _Error: the command's own checks; the others: what Checkpointer raises for a missing step,
    # a damaged checkpoint or a file system problem.
    except (_Error, ValueError, OSError, RuntimeError) as e:
        print(f"jaxprune: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
