"""Quick start: train an MLP on handwritten digits, prune it to 90% in three rounds, fine-tune.

Data: scikit-learn's digits set (1,797 8x8 images, shipped with scikit-learn,
no download). Shows the whole jaxprune story: init_masks, global magnitude
prune with a cumulative target, apply_mask inside the jitted train step,
summary, finalize. Runs in well under a minute on 2 CPU cores.

  python examples/quickstart.py [--rounds 0.5,0.75,0.9] [--steps 300]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune as jp


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"dense_{i}": {
            "kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a),
            "bias": jnp.zeros(b),
        }
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def mlp(params, x):
    layers = list(params.values())
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", default="0.5,0.75,0.9", help="cumulative sparsity after each round")
    ap.add_argument("--steps", type=int, default=300, help="training steps before pruning and after each round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=args.seed)
    x_train, x_test = jnp.asarray(x_train, jnp.float32), jnp.asarray(x_test, jnp.float32)
    y_train, y_test = jnp.asarray(y_train), jnp.asarray(y_test)

    params = init_mlp(jax.random.key(args.seed), [64, 256, 128, 10])
    masks = jp.init_masks(params)  # kernels prunable; biases -> None
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state, masks, xb, yb):
        def loss_fn(p):
            logits = mlp(jp.apply_mask(p, masks), xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, masks):
        return jnp.mean(jnp.argmax(mlp(jp.apply_mask(params, masks), x_test), -1) == y_test)

    def train(params, opt_state, masks, steps, key):
        for step in range(steps):
            idx = jax.random.choice(jax.random.fold_in(key, step), x_train.shape[0], (128,), replace=False)
            params, opt_state, loss = train_step(params, opt_state, masks, x_train[idx], y_train[idx])
        return params, opt_state, float(loss)

    key = jax.random.key(args.seed + 1)
    params, opt_state, loss = train(params, opt_state, masks, args.steps, key)
    print(f"dense:        loss {loss:.3f}  test accuracy {float(accuracy(params, masks)):.2%}")
    for r, target in enumerate(float(s) for s in args.rounds.split(",")):
        masks = jp.prune(jp.magnitude(params), masks, sparsity=target)  # cumulative: of all prunable weights
        pruned_acc = float(accuracy(params, masks))
        params, opt_state, loss = train(params, opt_state, masks, args.steps, jax.random.fold_in(key, r + 1))
        print(
            f"sparsity {float(jp.sparsity(masks)):.0%}: accuracy right after pruning {pruned_acc:.2%}, "
            f"after fine-tuning {float(accuracy(params, masks)):.2%}"
        )
    print()
    print(jp.summary(masks))
    final = jp.finalize(params, masks)  # plain params, same keys, zeros baked in
    zeros = sum(int((final[k]["kernel"] == 0).sum()) for k in final)
    print(f"\nfinalized params: same keys as before ({', '.join(final)}), {zeros:,} kernel weights exactly zero")


if __name__ == "__main__":
    main()
