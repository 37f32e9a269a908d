"""One-shot pruning of a trained model: magnitude vs Wanda vs SparseGPT, on a transformer and on an LSTM.

Data: the Python standard library's own source (as ``char_lstm.py``), byte
level, split 90/10. Two character-level language models are trained densely
for a few minutes on 2 CPU cores, then pruned once, with no retraining, from
64 calibration sequences of the training text, at 50% unstructured sparsity
and at 2:4, by three methods:

  magnitude  the lowest |W| of each kernel (layer-wise);
  Wanda      the lowest |W_ij| * ||X_j|| within each output (Sun et al. 2023);
  SparseGPT  OBS pruning block by block with the kept weights updated
             (Frantar & Alistarh 2023).

The transformer (Flax NNX: byte embedding, learned positions, pre-norm blocks
of causal self-attention and an MLP, all projections ``nnx.Linear``) is
pruned block by block with ``nnx_prune_blocks``; the LSTM (``jp.lstm``, 2
layers) layer by layer with ``jp.oneshot.prune_lstm``. Every kernel inside the
blocks / LSTM layers is pruned; embeddings and the output layer stay dense,
as in both papers. The table gives validation bits per character.

What it shows (default run, 5 minutes on 2 CPU cores: the transformer, width
128 with 3 blocks, 1000 steps to 2.31 bits/char; the LSTM, 2 x 192, 800
steps to 2.64):

                 transformer   LSTM
  dense                2.314  2.643
  magnitude 50%        2.971  2.659
  Wanda 50%            2.943  2.853
  SparseGPT 50%        2.555  2.647
  magnitude 2:4        3.404  2.860
  Wanda 2:4            3.367  2.823
  SparseGPT 2:4        2.691  2.667

SparseGPT is far ahead of magnitude pruning, as in both papers: on the
transformer it keeps 63% (50%) and 65% (2:4) of magnitude's loss away, and
on the LSTM it stays within 0.03 bits of the dense model. Wanda does not
match SparseGPT here: it is level with magnitude on the transformer and
worse on the LSTM at 50%. Its edge in the papers comes from the few input
features of very large magnitude that large language models grow (which
make |W| a poor guide); these small models have no such outliers, and their
LayerNorms even out the transformer's input features, so weighting by
||X_j|| changes little. Read it as a check of the machinery on real text, not
as a reproduction of the papers' LLM numbers.

  python examples/transformer_oneshot.py            # about 5 minutes
  python examples/transformer_oneshot.py --quick    # seconds: what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from char_lstm import init_model, load_text, logits_fn

import jaxprune as jp
from jaxprune.integrations.flax import nnx_prune_blocks

TARGETS = {"50%": {"sparsity": 0.5}, "2:4": {"nm": (2, 4)}}
METHODS = ("magnitude", "wanda", "sparsegpt")


class Block(nnx.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
        self.heads = heads
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.down = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in jnp.split(self.qkv(self.norm1(x)), 3, -1))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e9)
        y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
    def __init__(self, dim: int, heads: int, layers: int, seq: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(256, dim, rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(rngs.params(), (seq, dim)) * 0.02)
        self.blocks = nnx.List([Block(dim, heads, rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, 256, rngs=rngs)

    def embed_tokens(self, tokens):
        return self.embed(tokens) + self.pos[...][: tokens.shape[1]]

    def __call__(self, tokens):
        x = self.embed_tokens(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def windows(text: np.ndarray, starts: np.ndarray, length: int) -> jax.Array:
    return jnp.asarray(np.stack([text[s : s + length] for s in starts]).astype(np.int32))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models and data, a few seconds")
    ap.add_argument("--bytes", type=int, default=600_000, help="characters of source text to use")
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128, help="transformer width")
    ap.add_argument("--layers", type=int, default=3, help="transformer blocks")
    ap.add_argument("--steps", type=int, default=1000, help="transformer training steps")
    ap.add_argument("--hidden", type=int, default=192, help="LSTM hidden size (2 layers)")
    ap.add_argument("--lstm-steps", type=int, default=800, help="LSTM training steps")
    ap.add_argument("--calibration", type=int, default=64, help="calibration sequences (training text)")
    ap.add_argument("--targets", default="50%,2:4", help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--out", default="transformer_oneshot_out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.bytes, args.seq, args.batch, args.dim, args.layers = 40_000, 32, 8, 32, 2
        args.steps, args.hidden, args.lstm_steps, args.calibration = 40, 32, 40, 16
        args.targets = "2:4"  # one target: compiling each method for each kernel shape is most of the time
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        raise SystemExit(f"--targets: unknown {sorted(unknown)}; choose among {list(TARGETS)}.")
    targets = {t: TARGETS[t] for t in args.targets.split(",")}

    text = load_text(args.bytes)
    split = int(0.9 * len(text))
    train, valid = text[:split], text[split:]
    rng = np.random.default_rng(args.seed)
    n_valid = len(valid) // (args.seq + 1)
    valid_tokens = windows(valid, np.arange(n_valid) * (args.seq + 1), args.seq + 1)
    calibration = windows(train, rng.integers(0, len(train) - args.seq, args.calibration), args.seq)
    calibration = [calibration[i : i + 16] for i in range(0, args.calibration, 16)]  # batches of 16 sequences

    def batches():
        for _ in range(10**9):
            yield windows(train, rng.integers(0, len(train) - args.seq - 1, args.batch), args.seq + 1)

    def xent(logits, tokens):  # logits [batch, time, 256] for tokens[:, 1:]
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    # --- the transformer -------------------------------------------------------
    model = CharTransformer(args.dim, 4, args.layers, args.seq, nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(optax.cosine_decay_schedule(2e-3, args.steps), weight_decay=0.01)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: xent(nnx.merge(graphdef, p)(tokens[:, :-1]), tokens))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @nnx.jit
    def transformer_bpc(model):
        return xent(model(valid_tokens[:, :-1]), valid_tokens) / math.log(2)

    t0, data = time.perf_counter(), batches()
    for _, tokens in zip(range(args.steps), data):
        params, opt_state, loss = train_step(params, opt_state, tokens)
    model = nnx.merge(graphdef, params)
    print(f"transformer: {args.steps} steps in {time.perf_counter() - t0:.0f} s, training loss {float(loss):.3f}")

    results = {"dense": {"transformer": float(transformer_bpc(model))}}
    embedded = [model.embed_tokens(c) for c in calibration]  # what the first block sees
    for target, kw in targets.items():
        for method in METHODS:
            pruned = nnx.clone(model)
            masks = nnx_prune_blocks(pruned.blocks, embedded, method=method, **kw)
            sparsity = float(np.mean([float(jp.sparsity(m)) for m in masks]))
            results[f"{method} {target}"] = {"transformer": float(transformer_bpc(pruned)), "sparsity": sparsity}

    # --- the LSTM (char_lstm.py's model, trained densely, no dropout) -----------------------
    lstm_params = init_model(jax.random.key(args.seed), 64 if not args.quick else 16, args.hidden, 2)
    lstm_tx = optax.adam(optax.cosine_decay_schedule(3e-3, args.lstm_steps))
    lstm_opt = lstm_tx.init(lstm_params)

    def lstm_loss(p, tokens):
        return xent(jnp.swapaxes(logits_fn(p, tokens[:, :-1], None, None, True), 0, 1), tokens)

    @jax.jit
    def lstm_step(p, opt_state, tokens):
        loss, grads = jax.value_and_grad(lstm_loss)(p, tokens)
        updates, opt_state = lstm_tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    lstm_bpc = jax.jit(lambda p: lstm_loss(p, valid_tokens) / math.log(2))
    t0 = time.perf_counter()
    for _, tokens in zip(range(args.lstm_steps), data):
        lstm_params, lstm_opt, loss = lstm_step(lstm_params, lstm_opt, tokens)
    print(f"LSTM: {args.lstm_steps} steps in {time.perf_counter() - t0:.0f} s, training loss {float(loss):.3f}")
    results["dense"]["lstm"] = float(lstm_bpc(lstm_params))
    lstm_inputs = [lstm_params["embed"][c.T] for c in calibration]  # [time, batch, embed]: the LSTM's input
    for target, kw in targets.items():
        for method in METHODS:
            new, masks = jp.oneshot.prune_lstm(lstm_params["lstm"], lstm_inputs, method=method, **kw)
            results[f"{method} {target}"]["lstm"] = float(lstm_bpc({**lstm_params, "lstm": new}))
            results[f"{method} {target}"]["lstm_sparsity"] = float(jp.sparsity(masks))

    print("\nvalidation bits per character, pruned once from calibration data, no retraining")
    print(f"{'':<16} {'transformer':>11} {'LSTM':>7}")
    for name, r in results.items():
        print(f"{name:<16} {r['transformer']:>11.3f} {r['lstm']:>7.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    plot(results, list(targets), out / "transformer_oneshot.png")
    print(f"\nwrote {out / 'transformer_oneshot.png'} and {out / 'results.json'}")
    return results


def plot(results: dict, targets: list[str], path: Path) -> None:
    """Bits per character of each method and target, against the dense model's, for both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, model_name in zip(axes, ("transformer", "lstm")):
        dense = results["dense"][model_name]
        for i, target in enumerate(targets):
            values = [results[f"{m} {target}"][model_name] for m in METHODS]
            ax.bar(np.arange(3) + 4 * i, values, color=["tab:gray", "tab:orange", "tab:blue"])
        ax.axhline(dense, color="k", lw=1, ls="--", label=f"dense {dense:.2f}")
        ticks = [4 * i + j for i in range(len(targets)) for j in range(3)]
        ax.set_xticks(ticks, [f"{m}\n{t}" for t in targets for m in ("mag.", "Wanda", "SGPT")], fontsize=8)
        ax.set_ylim(bottom=0.9 * dense)  # the differences, not the bars' common base
        ax.set_title(f"char-level {'transformer (NNX)' if model_name == 'transformer' else 'LSTM (jp.lstm)'}")
        ax.set_ylabel("validation bits per character")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
