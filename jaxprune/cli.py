"""The ``jaxprune`` command: inspect and export checkpoints written by ``jp.Checkpointer``.

  jaxprune inspect CHECKPOINT_DIR [--step N]
  jaxprune export CHECKPOINT_DIR OUT.npz [--format dense|sparse] [--prefix params] [--step N]

A checkpoint stores leaf paths, not tree types, so masks are matched to
weights by path: the mask at ``.../X`` (any ``bool`` leaf) applies to the
weight of the same shape under ``--prefix`` whose path ends in ``X``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxprune.checkpoint import Checkpointer
from jaxprune.masks import LayerStats, Summary


class _Error(Exception):
    pass


def _open(directory: str, step: int | None) -> tuple[Checkpointer, int]:
    path = Path(directory)
    if not path.is_dir():
        raise _Error(f"no such directory: {directory}")
    ckpt = Checkpointer(path)
    steps = ckpt.steps()
    problem = None
    if not steps:
        problem = f"{directory} holds no checkpoint (no step directories written by jaxprune.Checkpointer)"
    elif step is not None and step not in steps:
        problem = f"no checkpoint for step {step} in {directory}; steps saved: {steps}"
    if problem:
        ckpt.close()  # Orbax's background machinery complains at exit if left open
        raise _Error(problem)
    return ckpt, steps[-1] if step is None else step


def _load(directory: str, step: int | None) -> tuple[dict, int]:
    ckpt, step = _open(directory, step)
    try:
        return ckpt.restore_flat(step), step
    except (ValueError, FileNotFoundError) as e:
        raise _Error(str(e)) from None
    finally:
        ckpt.close()


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
    rows = tuple(
        LayerStats(p, tuple(m.shape), int(m.sum()), int(m.size), 1.0 - int(m.sum()) / m.size if m.size else 0.0)
        for p, m in flat.items()
        if m.dtype == bool
    )
    print(f"checkpoint {args.directory}, step {step}")
    if not rows:
        print("no masks in this checkpoint (no bool leaves)")
        return
    kept, total = sum(r.kept for r in rows), sum(r.total for r in rows)
    print(Summary(rows, kept, total, 1.0 - kept / total if total else 0.0))


def _export(args: argparse.Namespace) -> None:
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
            keep = m.reshape(-1)
            out[f"{name}/bits"] = np.packbits(keep)
            out[f"{name}/values"] = w.reshape(-1)[keep]
            out[f"{name}/shape"] = np.asarray(w.shape, np.int64)
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **out)
    size = target.stat().st_size
    print(
        f"wrote {target} ({size:,} bytes): {len(weights)} arrays from step {step}, {len(masks)} masked, {args.format}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxprune", description="Inspect and export jaxprune checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="per-layer sparsity table of a checkpoint")
    p_inspect.add_argument("directory")
    p_inspect.add_argument("--step", type=int, default=None, help="default: the latest")
    p_export = sub.add_parser("export", help="write the (masked) weights to an .npz file")
    p_export.add_argument("directory")
    p_export.add_argument("out")
    p_export.add_argument("--format", choices=("dense", "sparse"), default="dense")
    p_export.add_argument("--prefix", default="params", help="which subtree holds the weights (default: params)")
    p_export.add_argument("--step", type=int, default=None, help="default: the latest")
    args = parser.parse_args(argv)
    try:
        (_inspect if args.command == "inspect" else _export)(args)
    except _Error as e:
        print(f"jaxprune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
