"""The cost of one RigL and one SET update against one global prune, on 6 x 4096 x 4096 weights (100.7M).

All three run jitted on the same weights at 90% sparsity, after compilation
(best of --repeats interleaved rounds):
  * ``jp.prune(jp.magnitude(params), masks, sparsity=0.9)``: one global top-k;
  * ``RigL.update`` on a step where connections move (drop the smallest
    active weights, regrow by the largest dense gradient, per layer);
  * ``SET.update`` the same, regrowing at random (draws the random scores too).
Goal: an update costs at most 2x one global prune.

Then the cost of sparse training in a train step, on the model of
``examples/sparse_training.py`` (MLP 64-300-100-10, batch 128, Adam, synthetic
data of the digits' shape): a dense step (plain Adam, no masks) against
``StaticSparse`` (``masked_optimizer`` only), RigL as the example runs it (an
update every 100 steps, amortised) and RigL updating on every step. Each runs
``--steps`` steps in one jitted ``lax.scan``; best of --train-repeats
interleaved rounds, per step.

Prints the tables and writes benchmarks/results/sparse_training.json.

  python benchmarks/sparse_training.py            # the full size
  python benchmarks/sparse_training.py --quick    # 6 x 1024 x 1024
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved_best, table, write

import jaxprune as jp


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the update timings")
    ap.add_argument("--steps", type=int, default=2000, help="train steps per timed call")
    ap.add_argument("--train-repeats", type=int, default=7, help="interleaved rounds of the train-step timings")
    ap.add_argument("--quick", action="store_true", help="6 x 1024 x 1024, 500 train steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.steps = 1024, 500
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
    for fn in calls.values():
        jax.block_until_ready(fn())  # compile
    times = interleaved_best(calls, args.repeats)
    base = times["global prune to 90% (jp.prune)"]
    n = args.layers * args.size * args.size
    moved = jax.block_until_ready(rigl_update(state, params, grads))
    changed = sum(int(jnp.sum(a != b)) for a, b in zip(jax.tree.leaves(moved.masks), jax.tree.leaves(state.masks)))
    print(f"{args.layers} x {args.size} x {args.size} = {n:,} weights at 90% sparsity; RigL moved {changed // 2:,}")
    print(table(["what", "seconds", "vs prune"], [[k, f"{v:.3f}", f"{v / base:.2f}x"] for k, v in times.items()]))
    step_ms = train_step_costs(args.steps, args.train_repeats)
    dense = step_ms["dense (plain Adam)"]
    print(f"\ntrain step of examples/sparse_training.py's MLP, 90% sparse, {args.steps} steps per call")
    rows = [[k, f"{v:.4f}", f"{v / dense:.2f}x"] for k, v in step_ms.items()]
    print(table(["what", "ms per step", "vs dense"], rows))
    result = {
        "weights": n,
        "prune_s": base,
        "rigl_update_s": times["RigL update (drop + regrow by |grad|)"],
        "set_update_s": times["SET update (drop + regrow at random)"],
        "rigl_connections_moved": changed // 2,
        "train_step_ms": step_ms,
    }
    path = write("sparse_training_quick" if args.quick else "sparse_training", result)
    print(f"wrote {path}")
    return result


def train_step_costs(steps: int, repeats: int) -> dict[str, float]:
    """Milliseconds per train step of the example's MLP: dense, and three ways of training it 90% sparse."""
    sizes = (64, 300, 100, 10)
    keys = jax.random.split(jax.random.key(0), len(sizes))
    params = {
        f"dense_{i}": {"kernel": jax.random.normal(k, (a, b)) * (2.0 / a) ** 0.5, "bias": jnp.zeros(b)}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }
    x = jax.random.normal(keys[-1], (steps, 128, 64))
    y = jax.random.randint(keys[-1], (steps, 128), 0, 10)

    def loss(params, xb, yb):
        layers = list(params.values())
        for layer in layers[:-1]:
            xb = jax.nn.relu(xb @ layer["kernel"] + layer["bias"])
        logits = xb @ layers[-1]["kernel"] + layers[-1]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def dense_run(params):
        tx = optax.adam(1e-3)

        def step(carry, batch):
            p, o = carry
            updates, o = tx.update(jax.grad(loss)(p, *batch), o, p)
            return (optax.apply_updates(p, updates), o), None

        return jax.lax.scan(step, (params, tx.init(params)), (x, y))[0]

    def sparse_run(method):
        tx = jp.masked_optimizer(optax.adam(1e-3))

        def run(params):
            state = method.init(params, jax.random.key(1))
            params = jp.apply_mask(params, state.masks)

            def step(carry, batch):
                p, o, s, t = carry
                grads = jax.grad(loss)(p, *batch)  # dense: pruned weights are stored as exact zeros
                s = method.update(s, p, t, grads=grads, key=jax.random.fold_in(jax.random.key(2), t))
                updates, o = tx.update(grads, o, p, masks=s.masks)
                return (optax.apply_updates(p, updates), o, s, t + 1), None

            return jax.lax.scan(step, (params, tx.init(params), state, jnp.ones((), jnp.int32)), (x, y))[0]

        return run

    runs = {
        "dense (plain Adam)": dense_run,
        "StaticSparse (masked_optimizer)": sparse_run(jp.StaticSparse(0.9)),
        "RigL, update every 100 steps": sparse_run(jp.RigL(0.9, every=100, end=10 * steps)),
        "RigL, update every step": sparse_run(jp.RigL(0.9, every=1, end=10 * steps)),
    }
    calls = {name: functools.partial(jax.jit(run), params) for name, run in runs.items()}
    for call in calls.values():
        jax.block_until_ready(call())  # compile
    return {name: t / steps * 1e3 for name, t in interleaved_best(calls, repeats).items()}


if __name__ == "__main__":
    main()
