"""Lottery tickets (Frankle & Carbin 2019) on handwritten digits: prune, rewind, retrain.

Data: scikit-learn's digits (shipped with scikit-learn), 75/25 split. A
64-300-100-10 MLP is trained; each round prunes 20% of the remaining weights
of the hidden layers and 10% of the output layer (the paper's per-layer
protocol, as cumulative ``geometric`` schedules), rewinds the survivors to
their initial values and retrains. The control retrains the same masks from a
fresh random initialisation. Writes a plot of test accuracy against the
fraction of weights remaining.

  python examples/lottery_ticket.py [--quick] [--rounds 12]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune as jp


def init(key, sizes=(64, 300, 100, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"dense_{i}": {"kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "bias": jnp.zeros(b)}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def forward(params, x):
    layers = list(params.values())
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=600, help="training steps per round")
    ap.add_argument("--out", default="lottery_ticket_out")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 3, 100

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0)
    x_tr, x_te = jnp.asarray(x_tr, jnp.float32), jnp.asarray(x_te, jnp.float32)
    y_tr, y_te = jnp.asarray(y_tr), jnp.asarray(y_te)
    tx = jp.masked_optimizer(optax.adam(1e-3))

    @jax.jit
    def train(params, masks):
        def step(carry, key):
            params, opt_state = carry
            idx = jax.random.choice(key, x_tr.shape[0], (64,), replace=False)
            grads = jax.grad(
                lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x_tr[idx]), y_tr[idx]).mean()
            )(params)
            updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
            return (optax.apply_updates(params, updates), opt_state), None

        params = jp.apply_mask(params, masks)
        keys = jax.random.split(jax.random.key(0), args.steps)
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
        return params

    def accuracy(params):
        return float(jnp.mean(jnp.argmax(forward(params, x_te), -1) == y_te))

    init_params = init(jax.random.key(1))
    pruner = jp.Pruner(
        schedule={
            "dense_2": jp.schedules.geometric(0.1, args.rounds),
            "dense_[01]": jp.schedules.geometric(0.2, args.rounds),
        },
        scope="layer",
    )
    pstate = pruner.init(init_params)
    rows = []
    for r in range(args.rounds + 1):
        remaining = 1.0 - float(jp.sparsity(pstate.masks))
        trained = train(jp.rewind(None, init_params, pstate.masks), pstate.masks)
        ticket = accuracy(trained)
        control = accuracy(train(jp.rewind(None, init(jax.random.key(100 + r)), pstate.masks), pstate.masks))
        rows.append((remaining, ticket, control))
        print(
            f"round {r}: {remaining:6.1%} of weights remain, test accuracy: rewound {ticket:.2%}, re-init {control:.2%}"
        )
        if r < args.rounds:
            pstate = pruner.update(pstate, trained, r)  # prune from the trained weights' magnitudes

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * r[0] for r in rows], [100 * r[1] for r in rows], "o-", label="winning ticket (rewound to init)")
    ax.plot([100 * r[0] for r in rows], [100 * r[2] for r in rows], "s--", label="same masks, random re-init")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("iterative magnitude pruning with rewinding, digits", fontsize=10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / "lottery_ticket.png", dpi=120)
    print(f"wrote {out / 'lottery_ticket.png'}")
    return rows


if __name__ == "__main__":
    main()
