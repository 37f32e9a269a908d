"""MC dropout uncertainty on handwritten digits: which predictions to trust.

Data: scikit-learn's digits (1,797 8x8 images, shipped with scikit-learn),
75/25 split. An MLP with dropout is trained, then ``jp.mc_predict`` runs
``--samples`` stochastic passes (vectorised over keys) for each test image.
Prints the accuracy of the MC mean, the predictive entropy of correct vs wrong
predictions, and writes a plot of accuracy as the most uncertain predictions
are set aside.

  python examples/mc_dropout.py [--quick] [--samples 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune as jp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.3, help="dropout rate")
    ap.add_argument("--out", default="mc_dropout_out")
    args = ap.parse_args(argv)
    steps = 300 if args.quick else 3000

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0)
    x_tr, x_te = jnp.asarray(x_tr, jnp.float32), jnp.asarray(x_te, jnp.float32)
    y_tr, y_te = jnp.asarray(y_tr), jnp.asarray(y_te)
    k = jax.random.split(jax.random.key(0), 2)
    params = {
        "w1": jax.random.normal(k[0], (64, 256)) / 8.0,
        "b1": jnp.zeros(256),
        "w2": jax.random.normal(k[1], (256, 10)) / 16.0,
        "b2": jnp.zeros(10),
    }

    def apply(params, key, x, deterministic=False):
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        h = jp.dropout(key, h, args.rate, deterministic=deterministic)
        return h @ params["w2"] + params["b2"]

    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, key):
        idx = jax.random.choice(key, x_tr.shape[0], (128,), replace=False)
        grads = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, key, x_tr[idx]), y_tr[idx]).mean()
        )(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for step in range(steps):
        params, opt_state = train_step(params, opt_state, jax.random.key(step + 1))

    mc = jp.mc_predict(lambda key, x: apply(params, key, x), jax.random.key(7), x_te, args.samples, classifier=True)
    pred = np.asarray(jnp.argmax(mc.mean, -1))
    correct = pred == np.asarray(y_te)
    entropy = np.asarray(mc.entropy)
    bald = np.asarray(mc.mutual_information)
    det_acc = float(jnp.mean(jnp.argmax(apply(params, None, x_te, deterministic=True), -1) == y_te))
    print(f"test accuracy: MC mean of {args.samples} passes {correct.mean():.2%}, dropout off {det_acc:.2%}")
    print(f"predictive entropy (nats): correct {entropy[correct].mean():.3f}, wrong {entropy[~correct].mean():.3f}")
    print(f"mutual information (BALD): correct {bald[correct].mean():.4f}, wrong {bald[~correct].mean():.4f}")

    order = np.argsort(entropy)  # most certain first
    kept = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(correct[order]) / kept
    fractions = kept / len(order)
    for f in (1.0, 0.9, 0.8):
        i = round(f * len(order)) - 1
        print(f"accuracy on the {f:.0%} most certain predictions: {accuracy[i]:.2%}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(100 * fractions, 100 * accuracy)
    ax.set_xlabel("predictions kept, most certain first (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"MC dropout ({args.samples} passes): set aside the uncertain ones", fontsize=10)
    ax.grid(alpha=0.3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / "mc_dropout.png", dpi=120)
    print(f"wrote {out / 'mc_dropout.png'}")
    return {
        "accuracy": float(correct.mean()),
        "entropy_correct": float(entropy[correct].mean()),
        "entropy_wrong": float(entropy[~correct].mean()) if (~correct).any() else float("nan"),
        "accuracy_most_certain_80": float(accuracy[round(0.8 * len(order)) - 1]),
    }


if __name__ == "__main__":
    main()
