"""The ``jaxprune`` command: inspect and export checkpoints written by ``jp.Checkpointer``, import PyTorch models.

  jaxprune inspect CHECKPOINT_DIR [--step N]
  jaxprune export CHECKPOINT_DIR OUT.npz [--format dense|sparse] [--prefix params] [--step N]
  jaxprune import-torch MODEL.pt OUTDIR [--layout PREFIX=KIND ...] [--key NAME]

``import-torch`` reads a saved ``state_dict`` (plain, or pruned by
``torch.nn.utils.prune``) with ``torch.load(weights_only=True)``, never
unpickling code, and writes ``{"params": ..., "masks": ...}`` as step 0 of a
new checkpoint in OUTDIR (see ``jaxprune.integrations.torch``).

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
import re
import sys
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np

from jaxprune._bits import pack_bits
from jaxprune._version import VERSION
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
            # cast: the stub matches **arrays against savez's own keywords (allow_pickle); keys are leaf paths.
            np.savez(f, **cast(dict[str, Any], arrays))
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


def _layout(items: list[str]) -> dict[str, str]:
    layout = {}
    for item in items:
        prefix, eq, kind = item.partition("=")
        if not eq:
            raise _Error(f"--layout wants PREFIX=KIND (e.g. fc=linear, =lstm for the root module), got {item!r}")
        layout[prefix] = kind
    return layout


def _torch_state_dict(path: str, key: str | None) -> dict:
    """The state_dict in ``path``, read without unpickling code; ``key`` picks it out of a dict holding more."""
    try:
        import pickle

        import torch
    except ImportError:
        raise _Error("import-torch needs PyTorch: pip install torch") from None
    if not Path(path).is_file():
        raise _Error(f"no such file: {path}")
    if Path(path).stat().st_size == 0:
        raise _Error(f"cannot read {path} as a PyTorch file: the file is empty")
    try:
        # torch.load warns on stderr about files it then refuses (a pickle of protocol > 2, say); the
        # error below says what matters, in the one line this command prints.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's message is a page long; what matters is whether a class was refused or the file is no pickle.
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused is None:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            raise _Error(
                f"cannot read {path} as a PyTorch file: {detail.group(1) if detail else e} "
                "(import-torch reads what torch.save(model.state_dict(), PATH) writes)"
            ) from None
        raise _Error(
            f"{path} holds a pickled {refused.group(1)} (a whole nn.Module?), which is not loaded "
            "(weights_only=True: unpickling can run code); save model.state_dict() instead"
        ) from None
    except Exception as e:  # not a valid file: the unpickler fails in many ways (a KeyError, say)
        reason = " ".join(str(e).split()) or "the file ends early or is damaged"
        if not isinstance(e, (RuntimeError, EOFError, ValueError)):
            reason = f"{type(e).__name__}: {reason}"
        raise _Error(f"cannot read {path} as a PyTorch file: {reason}") from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise _Error(f"--key {key!r} is not in {path}; it holds {keys}")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else type(obj).__name__
        hint = "; pass --key NAME for the entry that holds the state_dict" if isinstance(obj, dict) else ""
        raise _Error(f"{path} does not hold a state_dict (names -> tensors) but {what}{hint}")
    return obj


def _import_torch(args: argparse.Namespace) -> None:
    from jaxprune.integrations.torch import from_torch_state_dict

    out = Path(args.outdir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _Error(f"OUTDIR {args.outdir} exists and is not an empty directory; give a new one")
    layout = _layout(args.layout)
    state_dict = _torch_state_dict(args.model, args.key)
    try:
        params, masks = from_torch_state_dict(state_dict, layout=layout)
    except TypeError as e:  # a TypeError here is about the file's contents, reported like the others
        raise _Error(str(e)) from None
    with Checkpointer(out) as ckpt:
        ckpt.save(0, {"params": params, "masks": masks})
    n = sum(1 for _ in _leaves(params))
    masked = sum(1 for m in _leaves(masks) if m is not None)
    print(f"wrote {out} (step 0): {n} arrays from {args.model}, {masked} with masks")


def _leaves(tree: dict):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else (v,))


def _one_line(e: Exception) -> str:
    text = str(e)
    if isinstance(e, OSError) and e.strerror:  # without the "[Errno N]" prefix
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0, or 2 after printing one error line)."""
    parser = argparse.ArgumentParser(
        prog="jaxprune", description="Inspect and export jaxprune checkpoints; import PyTorch state_dicts."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
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
    p_import = sub.add_parser("import-torch", help="a PyTorch state_dict (pruned or not) as a jaxprune checkpoint")
    p_import.add_argument("model", help="file written by torch.save(model.state_dict(), ...)")
    p_import.add_argument("outdir", help="new directory for the checkpoint")
    p_import.add_argument(
        "--layout",
        action="append",
        default=[],
        metavar="PREFIX=KIND",
        help="module kind (lstm, gru, linear, conv2d, embedding, layernorm, torch); repeatable. "
        "LSTM/GRU are inferred, others keep PyTorch's names and layouts",
    )
    p_import.add_argument("--key", default=None, help="entry of a dict-shaped file that holds the state_dict")
    args = parser.parse_args(argv)
    commands = {"inspect": _inspect, "export": _export, "import-torch": _import_torch}
    try:
        commands[args.command](args)
    # _Error: the command's own checks; the others: what Checkpointer raises for a missing step,
    # a damaged checkpoint or a file system problem.
    except (_Error, ValueError, OSError, RuntimeError) as e:
        print(f"jaxprune: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
