"""The shortest complete Flax NNX train step with jaxprune: split, apply_mask, merge, Pruner, masked optimizer.

Data: scikit-learn's digits (shipped with scikit-learn). Prunes to 90% in ten
cumulative rounds while training; the loop compiles once.

  python examples/flax_nnx.py [--quick]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from sklearn.datasets import load_digits

import jaxprune as jp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    steps = 300 if args.quick else 2000

    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
    model = nnx.Sequential(nnx.Linear(64, 256, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(256, 10, rngs=nnx.Rngs(1)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pruner = jp.Pruner(schedule=jp.schedules.linear(final=0.9, rounds=10, every=steps // 30, begin=steps // 3))
    tx = jp.masked_optimizer(optax.adam(3e-3))  # pruned weights stay exactly 0.0
    pstate, opt_state = pruner.init(params), tx.init(params)

    @jax.jit
    def train_step(params, opt_state, pstate, step, xb, yb):
        def loss_fn(p):
            logits = nnx.merge(graphdef, jp.apply_mask(p, pstate.masks), rest)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=pstate.masks)
        params = optax.apply_updates(params, updates)
        return params, opt_state, pruner.update(pstate, params, step), loss

    for step in range(steps):
        idx = jax.random.choice(jax.random.key(step), x.shape[0], (128,), replace=False)
        params, opt_state, pstate, loss = train_step(params, opt_state, pstate, step, x[idx], y[idx])

    model = nnx.merge(graphdef, jp.finalize(params, pstate.masks), rest)  # a plain NNX model again
    accuracy = float(jnp.mean(jnp.argmax(model(x), -1) == y))
    print(jp.summary(pstate.masks))
    sparsity = float(jp.sparsity(pstate.masks))
    print(f"loss {float(loss):.3f}, training-set accuracy {accuracy:.2%} at {sparsity:.0%} sparsity")
    return accuracy, sparsity


if __name__ == "__main__":
    main()
