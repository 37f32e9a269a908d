"""Character-level LSTM language model on the Python standard library's own source, pruned to 90%.

The data is on every machine that has Python: the standard library's ``*.py``
files, taken in sorted order (byte level, 256 symbols), split 90/10 into
training and validation text. The model (embedding, a 2-layer jaxprune LSTM
with variational dropout, an output layer) trains densely first, then a
``Pruner`` raises global magnitude sparsity in equal cumulative rounds to 90%,
training between rounds. The schedule ends two thirds of the way through (as
in Zhu & Gupta 2017): the last third fine-tunes at the final sparsity with the
masks fixed, so the result measures what 90% costs after recovery, not right
after the last cut. Fine-tuning is more training, so a dense copy forked when
pruning starts trains alongside for the same steps (same batches, dropout and
optimizer, never pruned): the honest baseline. At each evaluation the script
prints validation bits per character of both models (and, after each round,
the per-layer sparsity table), saves an Orbax checkpoint of the pruned one,
and at the end plots both against training steps and writes ``results.json``.

  python examples/char_lstm.py            # a few minutes on 2 CPU cores
  python examples/char_lstm.py --seed 1   # another initialisation, batch order and dropout
  python examples/char_lstm.py --quick    # seconds: what the test suite runs

Default schedule (1,500 steps): 500 dense, six rounds every 100 steps
(15%, 30%, ..., 90%; the last one at step 1,000), 500 steps at 90%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
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
    ap.add_argument("--dense-steps", type=int, default=500, help="training steps before the first pruning round")
    ap.add_argument("--rounds", type=int, default=6, help="pruning rounds to reach --sparsity")
    ap.add_argument("--round-steps", type=int, default=100, help="training steps from one round to the next")
    ap.add_argument(
        "--finetune-steps",
        type=int,
        default=500,
        help="training steps from the last round to the end, at --sparsity with the masks fixed",
    )
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--out", default="char_lstm_out", help="directory for checkpoints, the plot and results.json")
    ap.add_argument("--seed", type=int, default=0, help="initialisation, batch order and dropout")
    args = ap.parse_args(argv)
    if args.quick:
        args.bytes, args.hidden, args.layers, args.seq, args.batch = 40_000, 32, 2, 32, 8
        args.dense_steps, args.rounds, args.round_steps, args.finetune_steps = 30, 3, 10, 20
    if min(args.dense_steps, args.round_steps, args.finetune_steps, args.rounds) < 1:
        ap.error("--dense-steps, --rounds, --round-steps and --finetune-steps must be at least 1")
    started = time.perf_counter()

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
        pstate = pruner.update(pstate, params, step)  # after the schedule's last round, it never prunes again
        return jp.apply_mask(params, pstate.masks), opt_state, pstate, loss

    dense_step = jax.jit(fit)  # the baseline: the same step, never pruned

    @jax.jit
    def eval_loss(params, masks, tokens):
        return loss_fn(params, masks, tokens, None, True)

    windows = len(valid) // (args.seq + 1)
    valid_batch = jnp.asarray(valid[: windows * (args.seq + 1)].reshape(windows, args.seq + 1).astype(np.int32))

    def bits_per_char(params, masks):
        return float(eval_loss(params, masks, valid_batch)) / math.log(2)

    # Step t prunes (after its update) when the schedule rises at t: the rounds are at
    # dense_steps + k * round_steps, k = 0..rounds-1; the last one is followed by finetune_steps - 1 more steps.
    last_round = args.dense_steps + (args.rounds - 1) * args.round_steps
    total_steps = last_round + args.finetune_steps
    # Evaluate when pruning starts, at the end of each round's training, and every round_steps while fine-tuning.
    evals = {args.dense_steps + r * args.round_steps - 1: f"round {r}" for r in range(args.rounds)}
    evals |= {t - 1: "fine-tuning" for t in range(last_round + args.round_steps, total_steps, args.round_steps)}
    evals[total_steps - 1] = "end"

    rng = np.random.default_rng(args.seed)
    ckpt = jp.Checkpointer(Path(args.out) / "checkpoints", max_to_keep=2)
    history = []  # (steps trained, sparsity, pruned bits/char, dense bits/char) at each evaluation
    prune_steps = []  # the steps at which the pruner actually pruned
    key = jax.random.key(args.seed + 1)
    with tqdm(total=total_steps, desc="training", unit="step", file=sys.stdout, disable=args.quick) as bar:
        for step in range(total_steps):
            starts = rng.integers(0, len(train) - args.seq - 1, args.batch)
            tokens = jnp.asarray(np.stack([train[s : s + args.seq + 1] for s in starts]).astype(np.int32))
            step_key = jax.random.fold_in(key, step)
            count = pstate.count
            params, opt_state, pstate, loss = train_step(params, opt_state, pstate, tokens, step_key, step)
            if int(pstate.count) > int(count):
                prune_steps.append(step)
            if step < args.dense_steps:  # one model until pruning starts, then a dense copy trains alongside
                dense_params, dense_opt = params, opt_state
            else:
                dense_params, dense_opt, _ = dense_step(dense_params, dense_opt, dense_masks, tokens, step_key)
            bar.update()
            bar.set_postfix(loss=f"{float(loss):.3f}", sparsity=f"{float(jp.sparsity(pstate.masks)):.0%}")
            if step in evals:
                bpc = bits_per_char(params, pstate.masks)
                dense_bpc = bits_per_char(dense_params, dense_masks)
                s = float(jp.sparsity(pstate.masks))
                history.append((step + 1, s, bpc, dense_bpc))
                # A new run replaces the checkpoints an earlier run left in --out (without overwrite=True,
                # saving a step at or below one already saved raises instead of skipping the save).
                ckpt.save(step, {"params": params, "opt_state": opt_state, "pruner": pstate}, overwrite=True)
                tqdm.write(
                    f"\n{evals[step]} ({step + 1} steps): sparsity {s:.1%}, validation {bpc:.3f} bits/char"
                    f" (dense after the same steps: {dense_bpc:.3f})"
                )
                if evals[step] != "fine-tuning":  # the masks only change in the rounds
                    tqdm.write(str(jp.summary(pstate.masks)))
    ckpt.close()
    wall = time.perf_counter() - started

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, sparsities, pruned, dense = zip(*history)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, dense, "s--", color="tab:gray", label="dense, never pruned")
    ax.plot(steps, pruned, "o-", color="tab:blue", label="pruned (sparsity where it rose)")
    for i in range(1, len(steps)):
        if sparsities[i] > sparsities[i - 1]:
            label = f"{sparsities[i]:.0%}"
            ax.annotate(
                label, (steps[i], pruned[i]), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8
            )
    for x, label in ((args.dense_steps, " pruning starts"), (last_round + 1, f" last round: {args.sparsity:.0%}")):
        ax.axvline(x, color="k", lw=0.8, ls=":")
        ax.text(x, 0.97, label, transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation bits per character")
    ax.set_title(
        f"char-level LSTM on the Python stdlib: {sparsities[-1]:.0%} global magnitude pruning,\n"
        f"then {total_steps - last_round - 1} steps of fine-tuning; vs. the same model trained densely",
        fontsize=10,
    )
    ax.margins(y=0.12)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    plot = Path(args.out) / "char_lstm.png"
    fig.tight_layout()
    fig.savefig(plot, dpi=120)

    kept = jax.tree.leaves(pstate.masks)  # the prunable leaves' masks (None is not a leaf)
    prunable = sum(int(m.size) for m in kept)
    zeros = prunable - sum(int(np.count_nonzero(np.asarray(m))) for m in kept)
    results = {
        "seed": args.seed,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "total_steps": total_steps,
        "prune_steps": prune_steps,
        "prunable_weights": prunable,
        "pruned_weights": zeros,
        "sparsity": zeros / prunable,
        "dense_bpc": dense[-1],
        "pruned_bpc": pruned[-1],
        "cost_bpc": pruned[-1] - dense[-1],
        "fork_bpc": dense[0],
        "history": [dict(zip(("steps", "sparsity", "pruned_bpc", "dense_bpc"), h)) for h in history],
        "wall_s": round(wall, 1),
        "jax": jax.__version__,
        "device": f"{jax.devices()[0].platform}, {os.cpu_count()} cores",
    }
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {plot}, {Path(args.out) / 'results.json'} and checkpoints in {Path(args.out) / 'checkpoints'}")
    print(
        f"pruning rounds at steps {', '.join(map(str, prune_steps))}, then {total_steps - 1 - prune_steps[-1]}"
        f" steps at {zeros / prunable:.1%} ({zeros:,} of {prunable:,} prunable weights); {wall:.0f} s"
    )
    print(
        f"final, after {steps[-1]} steps: dense {dense[-1]:.3f} bits/char, pruned to {sparsities[-1]:.1%}"
        f" {pruned[-1]:.3f} bits/char ({pruned[-1] - dense[-1]:+.3f}; dense at the start of pruning: {dense[0]:.3f})"
    )
    return results


if __name__ == "__main__":
    main()
