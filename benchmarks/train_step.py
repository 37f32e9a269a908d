"""Cost of masking in a jitted train step: an MLP and an LSTM, with and without masks, side by side.

Variants, each a jitted step (forward + backward + optimizer update) timed
after compilation on the same data, interleaved round by round so drift in
the machine's speed hits all alike (best round reported):
  dense             the plain step, no jaxprune at all
  masked            apply_mask(params, masks) in the loss (90% of the kernels pruned)
  optim only        no apply_mask in the loss: jp.masked_optimizer keeps the stored
                    pruned weights at exactly 0, which makes the forward identical
  masked + optim    both

Goal: masking costs at most 2% over dense. Prints a table and writes
benchmarks/results/train_step.json.

  python benchmarks/train_step.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, table, write

import jaxprune as jp


def mlp_model(sizes):
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = {
        f"dense_{i}": {"kernel": jax.random.normal(k, (a, b)) / a**0.5, "bias": jnp.zeros(b)}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }

    def apply(params, x):
        layers = list(params.values())
        for layer in layers[:-1]:
            x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
        return x @ layers[-1]["kernel"] + layers[-1]["bias"]

    return params, apply


def lstm_model(input_size, hidden, layers):
    """A plain lax.scan LSTM (PyTorch gate order i, f, g, o); the input projection is one matmul."""
    params = {}
    key = jax.random.key(1)
    for layer in range(layers):
        key, k1, k2 = jax.random.split(key, 3)
        n_in = input_size if layer == 0 else hidden
        bound = hidden**-0.5
        params[f"layer_{layer}"] = {
            "w_ih": jax.random.uniform(k1, (n_in, 4 * hidden), minval=-bound, maxval=bound),
            "w_hh": jax.random.uniform(k2, (hidden, 4 * hidden), minval=-bound, maxval=bound),
            "b": jnp.zeros(4 * hidden),
        }

    def apply(params, xs):  # xs: [time, batch, features]
        for p in params.values():
            gates_x = xs @ p["w_ih"] + p["b"]

            def cell(carry, gx, w_hh=p["w_hh"]):
                h, c = carry
                i, f, g, o = jnp.split(gx + h @ w_hh, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h

            zeros = jnp.zeros((xs.shape[1], hidden))
            _, xs = jax.lax.scan(cell, (zeros, zeros), gates_x)
        return xs[-1]

    return params, apply


def steps(apply, params, tx):
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.9)
    mtx = jp.masked_optimizer(tx)

    def loss(p, x, y):
        return jnp.mean((apply(p, x) - y) ** 2)

    @jax.jit
    def dense(params, opt_state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def masked(params, opt_state, masks, x, y):
        grads = jax.grad(lambda p: loss(jp.apply_mask(p, masks), x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def optim_only(params, opt_state, masks, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = mtx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def masked_optim(params, opt_state, masks, x, y):
        grads = jax.grad(lambda p: loss(jp.apply_mask(p, masks), x, y))(params)
        updates, opt_state = mtx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state

    return masks, mtx, {"dense": dense, "masked": masked, "optim only": optim_only, "masked + optim": masked_optim}


def measure(name, apply, params, tx, x, y, repeats, inner):
    masks, mtx, fns = steps(apply, params, tx)
    params = jp.apply_mask(params, masks)  # as after a pruning round
    runs = {}
    for variant, fn in fns.items():
        opt_state = (tx if variant in ("dense", "masked") else mtx).init(params)
        args = (masks,) if variant != "dense" else ()

        def run(fn=fn, opt_state=opt_state, args=args):
            p, s = params, opt_state
            for _ in range(inner):
                p, s = fn(p, s, *args, x, y)
            return p

        jax.block_until_ready(run())  # compile and warm up
        runs[variant] = run
    times = {v: float("inf") for v in runs}
    for _ in range(repeats):  # interleaved rounds
        for v, run in runs.items():
            times[v] = min(times[v], best_of(run, 1) / inner)
    return [[name, v, f"{t * 1e3:.2f}", f"{t / times['dense']:.3f}x"] for v, t in times.items()], times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    q = args.quick
    rows, results = [], {}

    sizes = [784, 256, 256, 10] if q else [784, 1024, 1024, 10]
    params, apply = mlp_model(sizes)
    batch = 64 if q else 256
    x = jax.random.normal(jax.random.key(2), (batch, sizes[0]))
    y = jax.random.normal(jax.random.key(3), (batch, sizes[-1]))
    r, results["mlp"] = measure(
        f"MLP {'-'.join(map(str, sizes))}, batch {batch}, adam", apply, params, optax.adam(1e-3), x, y, args.repeats, 10
    )
    rows += r

    inp, hidden, layers, seq, batch = (32, 64, 2, 16, 8) if q else (256, 512, 2, 64, 32)
    params, apply = lstm_model(inp, hidden, layers)
    x = jax.random.normal(jax.random.key(4), (seq, batch, inp))
    y = jax.random.normal(jax.random.key(5), (batch, hidden))
    r, results["lstm"] = measure(
        f"LSTM {layers}x{hidden}, in {inp}, seq {seq}, batch {batch}, sgd",
        apply,
        params,
        optax.sgd(0.1),
        x,
        y,
        args.repeats,
        3,
    )
    rows += r

    print(table(["model", "variant", "ms/step", "vs dense"], rows))
    for model, t in results.items():
        print(
            f"{model}: overhead over dense: apply_mask in the loss {100 * (t['masked'] / t['dense'] - 1):+.1f}%, "
            f"masked optimizer only {100 * (t['optim only'] / t['dense'] - 1):+.1f}% (goal <= +2%)"
        )
    path = write("train_step_quick" if q else "train_step", {"seconds_per_step": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
