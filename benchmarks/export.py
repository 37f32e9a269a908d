"""Checkpoint and export sizes of a model pruned to 90%, and the speed of a compacted LSTM.

Sizes (bytes on disk, one run):
  * dense params alone, via jp.Checkpointer
  * dense params + masks (packed bits), via jp.Checkpointer        goal: <= 1.04x dense
  * PyTorch: state_dict of the same model pruned with torch.nn.utils.prune (weight_orig + float weight_mask)
  * sparse export (bitmap: packed keep bits + kept values), jaxprune export --format sparse   goal: <= 0.25x dense

Checksum cost: median save and restore times of params + masks through jp.Checkpointer, with the
checksum of every stored leaf (XXH3, 64 bits) and with the checksum swapped for a constant
(interleaved runs, alternating which goes first), and the checksum time alone.
Goal: <= 5% extra on save and on restore.

Speed: a 2-layer LSTM (input 256, hidden 512, seq 64, batch 32) with 50% of its hidden units
pruned by prune_units: masked full-size inference vs the compacted model (same outputs).
Goal: compacted >= 1.8x faster.

  python benchmarks/export.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, table, write

import jaxprune as jp
import jaxprune.checkpoint as jpc
import jaxprune.checkpoint.checkpointer as jpc_checkpointer
from jaxprune.cli import main as cli


def dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def checkpoint_speed(state, directory: Path, repeats: int) -> dict:
    """Median seconds of save and restore with checksums and without (swapped for 0), and of the checksums alone."""
    checksums, like = jpc._checksums, jax.eval_shape(lambda: state)
    times = {key: [] for key in ("save", "save_no_checksum", "restore", "restore_no_checksum")}
    with jp.Checkpointer(directory, max_to_keep=2) as ckpt:
        step = 0
        for i in range(repeats + 1):  # round 0 compiles packing and unpacking: not counted
            # Alternate which variant goes first: the second of a pair runs on warmer caches.
            for suffix in ("", "_no_checksum") if i % 2 else ("_no_checksum", ""):
                # Swapped where Checkpointer looks it up (jpc._checksums is only an alias of it).
                jpc_checkpointer.mix64_checksums = checksums if not suffix else (lambda arrays: [0] * len(arrays))
                try:
                    start = time.perf_counter()
                    ckpt.save(step, state)
                    saved = time.perf_counter()
                    jax.block_until_ready(ckpt.restore(like))
                    restored = time.perf_counter()
                finally:
                    jpc_checkpointer.mix64_checksums = checksums
                step += 1
                if i:
                    times["save" + suffix].append(saved - start)
                    times["restore" + suffix].append(restored - saved)
    stored = [jpc._stored(p, x)[1] for p, x in jpc._flatten(state)[0]]
    checksum_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        checksums(stored)
        checksum_times.append(time.perf_counter() - start)
    out = {f"checkpoint_{k}_s": statistics.median(v) for k, v in times.items()}
    out["checksum_s"] = statistics.median(checksum_times)
    out["checksum_bytes"] = sum(int(x.nbytes) for x in stored)
    out["repeats"] = repeats
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sizes = (256, 256, 256, 10) if args.quick else (784, 2048, 2048, 10)
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = {
        f"dense_{i}": {"kernel": jax.random.normal(k, (a, b)), "bias": jnp.zeros(b)}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.9)
    rows, result = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with jp.Checkpointer(tmp / "dense") as c:
            c.save(0, {"params": params})
        with jp.Checkpointer(tmp / "masked") as c:
            c.save(0, {"params": params, "masks": masks})
        dense, masked = dir_bytes(tmp / "dense"), dir_bytes(tmp / "masked")
        speed = checkpoint_speed({"params": params, "masks": masks}, tmp / "speed", 3 if args.quick else 21)
        cli(["export", str(tmp / "masked"), str(tmp / "sparse.npz"), "--format", "sparse"])
        sparse_bytes = (tmp / "sparse.npz").stat().st_size
        result.update(dense=dense, dense_plus_packed_masks=masked, sparse_export=sparse_bytes)
        try:
            import torch
            from torch.nn.utils import prune as torch_prune

            model = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in pairwise(sizes)])
            torch_prune.global_unstructured(
                [(m, "weight") for m in model], pruning_method=torch_prune.L1Unstructured, amount=0.9
            )
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            plain = io.BytesIO()
            torch.save(torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in pairwise(sizes)]).state_dict(), plain)
            result.update(torch_pruned_state_dict=len(buf.getvalue()), torch_dense_state_dict=len(plain.getvalue()))
        except ImportError:
            pass
    rows.append(["jaxprune checkpoint, dense params", f"{dense:,}", "1.000x"])
    rows.append(["jaxprune checkpoint, params + packed masks", f"{masked:,}", f"{masked / dense:.3f}x"])
    rows.append(["jaxprune export --format sparse (bitmap)", f"{sparse_bytes:,}", f"{sparse_bytes / dense:.3f}x"])
    if "torch_pruned_state_dict" in result:
        t = result["torch_pruned_state_dict"] / result["torch_dense_state_dict"]
        rows.append(
            ["PyTorch pruned state_dict (vs its dense one)", f"{result['torch_pruned_state_dict']:,}", f"{t:.3f}x"]
        )
    print(f"MLP {'-'.join(map(str, sizes))}, 90% of the kernels pruned")
    print(table(["what", "bytes", "vs dense"], rows))
    extra = {k: speed[f"checkpoint_{k}_s"] / speed[f"checkpoint_{k}_no_checksum_s"] - 1 for k in ("save", "restore")}
    print(f"\nCheckpoint speed, params + masks (median of {speed['repeats']} interleaved runs):")
    print(
        table(
            ["", "with checksums ms", "checksums swapped for 0 ms", "extra"],
            [
                [
                    k,
                    f"{speed[f'checkpoint_{k}_s'] * 1e3:.1f}",
                    f"{speed[f'checkpoint_{k}_no_checksum_s'] * 1e3:.1f}",
                    f"{extra[k]:+.1%}",
                ]
                for k in ("save", "restore")
            ],
        )
    )
    mb, seconds = speed["checksum_bytes"] / 1e6, speed["checksum_s"]
    print(f"checksums of every stored leaf ({mb:.1f} MB) alone: {seconds * 1e3:.1f} ms, {mb / seconds:,.0f} MB/s")
    result.update(speed, save_checksum_extra=extra["save"], restore_checksum_extra=extra["restore"])

    inp, hidden, seq, batch = (32, 64, 16, 8) if args.quick else (256, 512, 64, 32)
    lstm = jp.init_lstm(jax.random.key(1), inp, hidden, num_layers=2)
    lmasks = jp.init_masks(lstm, where=lambda p, x: True)
    units = jp.lstm_units(2)
    lmasks = jp.prune_units(jp.magnitude(lstm), lmasks, units, sparsity=0.5, scope="layer")
    small, _ = jp.compact(lstm, lmasks, units)
    x = jax.random.normal(jax.random.key(2), (seq, batch, inp))
    masked_fn = jax.jit(lambda p, m, x: jp.lstm(p, x, masks=m)[0])
    small_fn = jax.jit(lambda p, x: jp.lstm(p, x)[0])
    out_masked, out_small = masked_fn(lstm, lmasks, x), small_fn(small, x)
    kept = jp.kept_units(lmasks, units)[1]
    err = float(jnp.abs(out_masked[..., kept] - out_small).max())
    t_masked = t_small = float("inf")
    for _ in range(7):  # interleaved rounds
        t_masked = min(t_masked, best_of(lambda: masked_fn(lstm, lmasks, x), 1))
        t_small = min(t_small, best_of(lambda: small_fn(small, x), 1))
    print(f"\nLSTM 2 x {hidden} (input {inp}, seq {seq}, batch {batch}), 50% of hidden units pruned, inference:")
    print(
        table(
            ["model", "ms", "speed-up"],
            [
                ["masked, full size", f"{t_masked * 1e3:.2f}", "1.00x"],
                ["compacted", f"{t_small * 1e3:.2f}", f"{t_masked / t_small:.2f}x"],
            ],
        )
    )
    print(f"max |masked - compacted| on kept units: {err:.2e}")
    result.update(
        lstm_masked_ms=t_masked * 1e3,
        lstm_compacted_ms=t_small * 1e3,
        lstm_speedup=t_masked / t_small,
        max_abs_diff=err,
    )
    path = write("export_quick" if args.quick else "export", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
