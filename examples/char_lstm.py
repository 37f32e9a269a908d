"""Character-level LSTM language model on the Python standard library's own source, pruned to 90%.

The data is on every machine that has Python: the standard library's ``*.py``
files, taken in sorted order (byte level, 256 symbols), split 90/10 into
training and validation text. The model (embedding, a 2-layer jaxprune LSTM
with variational dropout, an output layer) trains densely first, then a
``Pruner`` raises global magnitude sparsity in equal cumulative steps to 90%,
with fine-tuning between rounds. Fine-tuning is more training, so a dense copy
forked when pruning starts trains alongside for the same steps (same batches,
dropout and optimizer, never pruned): the honest baseline for each round.
After each round the script prints the per-layer sparsity table and validation
bits per character of both models, saves an Orbax checkpoint of the pruned one,
and at the end plots both against training steps.

  python examples/char_lstm.py            # a few minutes on 2 CPU cores
  python examples/char_lstm.py --quick    # seconds: what the test suite runs
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import jaxprune as jp


def load_text(max_bytes: int) -> np.ndarray:
    """The standard library's .py files in sorted order, as bytes, up to ``max_bytes``."""
    stdlib = Path(os.__file__).parent
    chunks, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], np.uint8)


def init_model(key, embed: int, hidden: int, layers: int):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "embed": jax.random.normal(k1, (256, embed)) * 0.1,
        "lstm": jp.init_lstm(k2, embed, hidden, num_layers=layers),
        "out": {"kernel": jax.random.normal(k3, (hidden, 256)) / math.sqrt(hidden), "bias": jnp.zeros(256)},
    }


def logits_fn(params, tokens, key, dropout, deterministic):
    xs = params["embed"][tokens.T]  # [time, batch, embed]
    hs, _ = jp.lstm(params["lstm"], xs, dropout=dropout, key=key, deterministic=deterministic)
    return hs @ params["out"]["kernel"] + params["out"]["bias"]  # [time, batch, 256]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model and data, a few seconds")
    ap.add_argument("--bytes", type=int, default=600_000, help="characters of source text to use")
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dense-steps", type=int, default=600, help="training steps before the first pruning round")
    ap.add_argument("--rounds", type=int, default=6, help="pruning rounds to reach --sparsity")
    ap.add_argument("--round-steps", type=int, default=150, help="fine-tuning steps after each round")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--out", default="char_lstm_out", help="directory for checkpoints and the plot")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.bytes, args.hidden, args.layers, args.seq, args.batch = 40_000, 32, 2, 32, 8
        args.dense_steps, args.rounds, args.round_steps = 30, 3, 10

    text = load_text(args.bytes)
    split = int(0.9 * len(text))
    train, valid = text[:split], text[split:]
    print(
        f"data: {len(text):,} bytes of the standard library's source ({len(train):,} train, {len(valid):,} validation)"
    )

    params = init_model(jax.random.key(args.seed), 64 if not args.quick else 16, args.hidden, args.layers)
    dropout = jp.RNNDropout(input=0.1, hidden=0.1, output=0.1)  # variational: one mask per sequence
    schedule = jp.schedules.linear(
        final=args.sparsity, rounds=args.rounds, every=args.round_steps, begin=args.dense_steps
    )
    pruner = jp.Pruner(schedule=schedule)  # global magnitude over every kernel, embedding included
    tx = jp.masked_optimizer(optax.adam(3e-3))
    pstate, opt_state = pruner.init(params), tx.init(params)

    dense_masks = pstate.masks  # all ones: what the dense baseline trains with

    def loss_fn(p, masks, tokens, key, deterministic):
        logits = logits_fn(jp.apply_mask(p, masks), tokens[:, :-1], key, dropout, deterministic)
        targets = tokens[:, 1:].T
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def fit(params, opt_state, masks, tokens, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, masks, tokens, key, False)
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def train_step(params, opt_state, pstate, tokens, key, step):
        params, opt_state, loss = fit(params, opt_state, pstate.masks, tokens, key)
        pstate = pruner.update(pstate, params, step)
        return jp.apply_mask(params, pstate.masks), opt_state, pstate, loss

    dense_step = jax.jit(fit)  # the baseline: the same step, never pruned

    @jax.jit
    def eval_loss(params, masks, tokens):
        return loss_fn(params, masks, tokens, None, True)

    windows = len(valid) // (args.seq + 1)
    valid_batch = jnp.asarray(valid[: windows * (args.seq + 1)].reshape(windows, args.seq + 1).astype(np.int32))

    def bits_per_char(params, masks):
        return float(eval_loss(params, masks, valid_batch)) / math.log(2)

    rng = np.random.default_rng(args.seed)
    ckpt = jp.Checkpointer(Path(args.out) / "checkpoints", max_to_keep=2)
    history = []  # (steps trained, sparsity, pruned bits/char, dense bits/char) after each round
    total_steps = args.dense_steps + args.rounds * args.round_steps
    round_ends = {args.dense_steps + r * args.round_steps - 1: r for r in range(args.rounds + 1)}
    key = jax.random.key(args.seed + 1)
    with tqdm(total=total_steps, desc="training", unit="step", file=sys.stdout, disable=args.quick) as bar:
        for step in range(total_steps):
            starts = rng.integers(0, len(train) - args.seq - 1, args.batch)
            tokens = jnp.asarray(np.stack([train[s : s + args.seq + 1] for s in starts]).astype(np.int32))
            step_key = jax.random.fold_in(key, step)
            params, opt_state, pstate, loss = train_step(params, opt_state, pstate, tokens, step_key, step)
            if step < args.dense_steps:  # one model until pruning starts, then a dense copy trains alongside
                dense_params, dense_opt = params, opt_state
            else:
                dense_params, dense_opt, _ = dense_step(dense_params, dense_opt, dense_masks, tokens, step_key)
            bar.update()
            bar.set_postfix(loss=f"{float(loss):.3f}", sparsity=f"{float(jp.sparsity(pstate.masks)):.0%}")
            if step in round_ends:  # the end of the dense phase or of a round's fine-tuning
                bpc = bits_per_char(params, pstate.masks)
                dense_bpc = bits_per_char(dense_params, dense_masks)
                s = float(jp.sparsity(pstate.masks))
                history.append((step + 1, s, bpc, dense_bpc))
                # A new run replaces the checkpoints an earlier run left in --out (without overwrite=True,
                # saving a step at or below one already saved raises instead of skipping the save).
                ckpt.save(step, {"params": params, "opt_state": opt_state, "pruner": pstate}, overwrite=True)
                tqdm.write(
                    f"\nround {round_ends[step]} ({step + 1} steps): sparsity {s:.1%}, validation {bpc:.3f} bits/char"
                    f" (dense after the same steps: {dense_bpc:.3f})"
                )
                tqdm.write(str(jp.summary(pstate.masks)))
    ckpt.close()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, sparsities, pruned, dense = zip(*history)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, dense, "s--", color="tab:gray", label="dense, never pruned")
    ax.plot(steps, pruned, "o-", color="tab:blue", label="pruned (sparsity at each point)")
    for x, s, b in zip(steps[1:], sparsities[1:], pruned[1:]):
        ax.annotate(f"{s:.0%}", (x, b), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.axvline(args.dense_steps, color="k", lw=0.8, ls=":")
    ax.text(args.dense_steps, 0.97, " pruning starts", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation bits per character")
    ax.set_title(
        f"char-level LSTM on the Python stdlib: {sparsities[-1]:.0%} global magnitude pruning\n"
        "vs. the same model trained densely for the same steps",
        fontsize=10,
    )
    ax.margins(y=0.12)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    plot = Path(args.out) / "char_lstm.png"
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    print(f"\nwrote {plot} and checkpoints in {Path(args.out) / 'checkpoints'}")
    print(
        f"final, after {steps[-1]} steps: dense {dense[-1]:.3f} bits/char, pruned to {sparsities[-1]:.1%}"
        f" {pruned[-1]:.3f} bits/char ({pruned[-1] - dense[-1]:+.3f}; dense at the start of pruning: {dense[0]:.3f})"
    )
    return history


if __name__ == "__main__":
    main()
