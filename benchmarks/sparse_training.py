"""The cost of one RigL and one SET update against one global prune, on 6 x 4096 x 4096 weights (100.7M).

All three run jitted on the same weights at 90% sparsity, after compilation
(best of --repeats):
  * ``jp.prune(jp.magnitude(params), masks, sparsity=0.9)``: one global top-k;
  * ``RigL.update`` on a step where connections move (drop the smallest
    active weights, regrow by the largest dense gradient, per layer);
  * ``SET.update`` the same, regrowing at random (draws the random scores too).
Goal: an update costs at most 2x one global prune. Prints a table and writes
benchmarks/results/sparse_training.json.

  python benchmarks/sparse_training.py            # the full size
  python benchmarks/sparse_training.py --quick    # 6 x 1024 x 1024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, table, write

import jaxprune as jp


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="6 x 1024 x 1024")
    args = ap.parse_args(argv)
    if args.quick:
        args.size = 1024
    shape = (args.size, args.size)
    keys = jax.random.split(jax.random.key(0), 2 * args.layers)
    params = {f"layer_{i}": {"kernel": jax.random.normal(keys[i], shape)} for i in range(args.layers)}
    grads = {f"layer_{i}": {"kernel": jax.random.normal(keys[args.layers + i], shape)} for i in range(args.layers)}
    rigl = jp.RigL(0.9, every=1, end=1_000)
    set_ = jp.SET(0.9, every=1, end=1_000)
    state = jax.block_until_ready(rigl.init(params, jax.random.key(1)))
    full = jp.init_masks(params)

    prune = jax.jit(lambda p, m: jp.prune(jp.magnitude(p), m, sparsity=0.9))
    rigl_update = jax.jit(lambda s, p, g: rigl.update(s, p, 1, grads=g))
    set_update = jax.jit(lambda s, p, k: set_.update(s, p, 1, key=k))
    calls = {
        "global prune to 90% (jp.prune)": lambda: prune(params, full),
        "RigL update (drop + regrow by |grad|)": lambda: rigl_update(state, params, grads),
        "SET update (drop + regrow at random)": lambda: set_update(state, params, jax.random.key(2)),
    }
    times = {}
    for name, fn in calls.items():
        jax.block_until_ready(fn())  # compile
        times[name] = best_of(fn, args.repeats)
    base = times["global prune to 90% (jp.prune)"]
    n = args.layers * args.size * args.size
    moved = jax.block_until_ready(rigl_update(state, params, grads))
    changed = sum(int(jnp.sum(a != b)) for a, b in zip(jax.tree.leaves(moved.masks), jax.tree.leaves(state.masks)))
    print(f"{args.layers} x {args.size} x {args.size} = {n:,} weights at 90% sparsity; RigL moved {changed // 2:,}")
    print(table(["what", "seconds", "vs prune"], [[k, f"{v:.3f}", f"{v / base:.2f}x"] for k, v in times.items()]))
    result = {
        "weights": n,
        "prune_s": base,
        "rigl_update_s": times["RigL update (drop + regrow by |grad|)"],
        "set_update_s": times["SET update (drop + regrow at random)"],
        "rigl_connections_moved": changed // 2,
    }
    path = write("sparse_training_quick" if args.quick else "sparse_training", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
