"""The shortest complete Flax Linen train step with jaxprune: PrunedTrainState carries the masks and the Pruner.

Data: scikit-learn's digits (shipped with scikit-learn). ``apply_gradients``
keeps pruned weights at exactly 0.0 and prunes on the schedule.

  python examples/flax_linen.py [--quick]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits

import jaxprune as jp
from jaxprune.integrations.flax import PrunedTrainState


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    steps = 300 if args.quick else 2000

    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
    model = nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(10)])
    state = PrunedTrainState.create(
        apply_fn=model.apply,
        params=model.init(jax.random.key(0), x[:1])["params"],
        tx=optax.adam(3e-3),
        pruner=jp.Pruner(schedule=jp.schedules.linear(final=0.9, rounds=10, every=steps // 30, begin=steps // 3)),
    )

    @jax.jit
    def train_step(state, xb, yb):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, xb)  # pruned weights are exactly 0 in params
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    for step in range(steps):
        idx = jax.random.choice(jax.random.key(step), x.shape[0], (128,), replace=False)
        state, loss = train_step(state, x[idx], y[idx])

    accuracy = float(jnp.mean(jnp.argmax(model.apply({"params": state.params}, x), -1) == y))
    print(jp.summary(state.masks))
    sparsity = float(jp.sparsity(state.masks))
    print(f"loss {float(loss):.3f}, training-set accuracy {accuracy:.2%} at {sparsity:.0%} sparsity")
    return accuracy, sparsity


if __name__ == "__main__":
    main()
