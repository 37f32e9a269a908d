"""Structural pruning on real data: a small ResNet with BatchNorm and a small ViT lose half their channels and heads.

Data: scikit-learn's digits (shipped with scikit-learn: 1,797 real handwritten
digits, 8x8, one channel), 75/25 split. Two Flax NNX models, NHWC:

  ResNet  stem conv3x3 16 + BN + relu, a basic block at 16 channels, one at
          32 channels with stride 2 and a 1x1 conv + BN shortcut, global
          average pool, Linear 10. The tracer finds 4 unit sets: the two
          blocks' inner channels and the two residual streams (each stream
          couples the convs, BatchNorms and shortcut that write or read it).
  ViT     2x2 patches -> 16 tokens of dim 64, learned positions, 2 pre-LN
          blocks of nnx.MultiHeadAttention (4 heads) + MLP (128 hidden),
          mean pool, LayerNorm, head. Pruned: each block's head set and MLP
          hidden set; the residual stream is normalized by the LayerNorms
          (``UnitSet.normalized``) and stays whole.

Each model trains dense, then ``jp.Pruner(units=..., scope="layer")`` removes
50% of the units of every pruned set on Zhu & Gupta's cubic schedule, inside
the jitted train step, while training goes on; fine-tuning continues after
the schedule ends (learning rate constant until then, cosine-decayed to 0
over the fine-tuning). ``jp.masked_optimizer`` keeps pruned weights at
exactly 0.0; the masks cover parameters only (BatchNorm running statistics
are carried along, neither scored nor masked). A dense baseline forks from
the model when pruning begins and trains as long on the same batches.
Finally ``nnx_compact`` cuts the pruned units out into a new, smaller module,
whose outputs equal the masked model's. MACs are counted from the forward's
jaxpr (conv_general_dilated and dot_general, sub-jaxprs included).

What it shows (default run: 3000 steps of batch 128 per model, pruning from
step 1000 to 2000, AdamW 2e-3 with weight decay 0.05, random 1-pixel shifts;
seed 0; 450 test images, so one image is 0.22 points; latency: jit, median
of 100 interleaved calls of batch 256 on 2 shared CPU cores):

  ResNet     params  MACs/image   latency  test accuracy
  dense      19,706     533,824   4.14 ms         99.33%
  masked     19,706     533,824   3.97 ms         99.11%   (5,122 params nonzero)
  compacted   5,122     135,840   2.64 ms         99.11%   max |masked - compacted| 5.7e-06

  ViT        params  MACs/image   latency  test accuracy
  dense      69,066   1,118,848   8.09 ms         96.89%
  masked     69,066   1,118,848   8.00 ms         96.22%   (35,978 params nonzero)
  compacted  35,978     561,792   5.02 ms         96.22%   max |masked - compacted| 0.0e+00

Masks alone save nothing at run time. Compacted, the ResNet keeps 26.0% of
its parameters and 25.4% of its MACs (both sides of every conv halve) and
runs in 64% of the time; the ViT keeps 52.1% and 50.2% (its patch
embedding, positions, LayerNorms and head stay whole) and runs in 62%.
Latency falls less than MACs: at these sizes the fixed cost per op is a
large share. Over seeds 0, 1, 2 the test accuracy was, dense -> pruned,
ResNet 99.33/99.56/99.78 -> 99.11/98.44/99.33 (mean 99.56 -> 98.96) and ViT
96.89/99.11/98.00 -> 96.22/98.67/98.67 (mean 98.00 -> 97.85): the pruned
ViT is within seed noise of the dense one, the ResNet, down to 8 and 16
channels, about half a point below. The default run takes about 3 minutes,
``--quick`` (120 steps, 3 timed calls of batch 64) about half a minute.

Writes ``<out>/structural_pruning.png``: test accuracy while training, pruned
and dense, with the pruning window shaded; params, MACs and latency of the
compacted models as a percentage of the dense ones.

  python examples/structural_pruning.py [--quick] [--steps 3000] [--out structural_pruning_out]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxprune as jp
from jaxprune.integrations.flax import nnx_compact, nnx_unit_masks, nnx_units

SPARSITY = 0.5  # fraction of the units of every pruned set that goes

# ------------------------------------------------------------------------------------------------- models


def batch_norm(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, momentum=0.9, rngs=rngs)


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bn1 = batch_norm(cout, rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = batch_norm(cout, rngs)
        if stride != 1 or cin != cout:  # a 1x1 conv + BN shortcut
            self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.shortcut_bn = batch_norm(cout, rngs)
        else:
            self.shortcut = None

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))))


class ResNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 16, (3, 3), use_bias=False, rngs=rngs)
        self.bn = batch_norm(16, rngs)
        self.block1 = BasicBlock(16, 16, 1, rngs=rngs)
        self.block2 = BasicBlock(16, 32, 2, rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.head(x.mean((1, 2)))


class Encoder(nnx.Module):
    def __init__(self, dim: int, heads: int, mlp: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, keep_rngs=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp, rngs=rngs)
        self.fc2 = nnx.Linear(mlp, dim, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class ViT(nnx.Module):
    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, mlp: int = 128, *, rngs: nnx.Rngs):
        self.patch = nnx.Conv(1, dim, (2, 2), strides=2, padding="VALID", rngs=rngs)  # 8x8 -> 4x4 = 16 tokens
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 16, dim)))
        self.blocks = nnx.List([Encoder(dim, heads, mlp, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, 10, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x.mean(1)))


def resnet_sets(units):
    """Every set not coupled through a normalisation over its channels (here: all four)."""
    return [s for s in units if not s.normalized]


def vit_sets(units):
    """The attention-head sets and the MLP hidden sets, one of each per block.

    The residual stream is ``normalized`` (LayerNorm); the tracer also reports a
    one-unit set for ``pos``'s size-1 batch axis, which is no unit to remove.
    """

    def holds(s, suffix, axis):
        return any(e.path.endswith(suffix) and e.axis == axis for e in s)

    return [s for s in units if not s.normalized and (holds(s, "attn/query/kernel", 1) or holds(s, "fc1/kernel", 1))]


# ------------------------------------------------------------------------------------------------ measuring


def num_params(model: nnx.Module) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _subjaxprs(params: dict):
    for v in params.values():
        for item in v if isinstance(v, tuple | list) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def jaxpr_macs(jaxpr) -> int:
    """Multiply-accumulates of conv_general_dilated and dot_general in ``jaxpr``, sub-jaxprs (pjit, ...) included."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature per group, *spatial)
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        subs = [jaxpr_macs(j) for j in _subjaxprs(eqn.params)]
        if subs:
            total += max(subs) if name == "cond" else sum(subs) * eqn.params.get("length", 1)
    return total


def macs_per_image(model: nnx.Module, x: jax.Array) -> int:
    graphdef, state = nnx.split(model)
    closed = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    return jaxpr_macs(closed.jaxpr) // x.shape[0]


def forward(model: nnx.Module):
    """``model`` as a jitted function of its input, its state an argument (not folded in as constants)."""
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda x: f(state, x)


def latencies(calls: dict, x: jax.Array, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function on ``x``, over ``repeats`` rounds that interleave them."""
    for call in calls.values():
        for _ in range(warmup):
            call(x).block_until_ready()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call(x).block_until_ready()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------------------- training


def shift(key: jax.Array, x: jax.Array, by: int) -> jax.Array:
    """Each image translated by up to ``by`` pixels in each direction (zero-filled): fresh variants of each digit."""
    padded = jnp.pad(x, ((0, 0), (by, by), (by, by), (0, 0)))
    offsets = jax.random.randint(key, (x.shape[0], 2), 0, 2 * by + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), x.shape[1:])  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def train_and_prune(model: nnx.Module, select, data, args):
    """Trains ``model`` dense, prunes the selected unit sets gradually while training on, then compacts.

    A dense baseline forks from the model when pruning begins and trains on for as many steps, on the same
    batches. Returns the models (dense, masked, compacted), all in eval mode, and what happened on the way
    (accuracy curves, final losses, units kept per pruned set).
    """
    x_tr, y_tr, x_te, y_te = data
    sets = select(nnx_units(model, x_tr[:2]))  # traced from model(x); paths over nnx_unit_state(model)
    begin, end = args.prune_begin, args.prune_end
    every = max((end - begin) // 10, 1)  # ten pruning rounds after begin, the last one at end
    pruner = jp.Pruner(schedule=jp.schedules.polynomial(SPARSITY, begin, end, every), units=sets, scope="layer")
    # Masks on the parameters the sets touch; running statistics get None (carried, not scored).
    pstate = jp.PrunerState(nnx_unit_masks(model, sets), jnp.zeros(1), jnp.zeros((), jnp.int32))
    sizes = [len(k) for k in jp.kept_units(pstate.masks, sets)]

    model.train()  # BatchNorm normalises with the batch's statistics and updates its running ones
    train_def, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    eval_def = nnx.graphdef(model)
    # Constant learning rate until the masks are final, then a cosine decay to 0 over the fine-tuning.
    lr = optax.join_schedules(
        [optax.constant_schedule(args.lr), optax.cosine_decay_schedule(args.lr, args.steps - end)], [end]
    )
    tx = jp.masked_optimizer(optax.adamw(lr, weight_decay=args.weight_decay))  # pruned weights stay exactly 0.0
    batch_key, shift_key = jax.random.split(jax.random.key(args.seed))

    @jax.jit  # one step per call: XLA on CPU runs convolutions inside a lax.scan loop ~20x slower
    def train_step(carry, t):
        params, stats, opt_state, pstate = carry
        pmasks = nnx.filter_state(pstate.masks, nnx.Param)
        idx = jax.random.choice(jax.random.fold_in(batch_key, t), x_tr.shape[0], (args.batch,), replace=False)
        xb, yb = x_tr[idx], y_tr[idx]
        if args.shift:
            xb = shift(jax.random.fold_in(shift_key, t), xb, args.shift)

        def loss_fn(p):
            # Fresh Variables for the statistics, made in this trace: BatchNorm writes its running ones into them.
            m = nnx.merge(train_def, jp.apply_mask(p, pmasks), jax.tree.map(jnp.asarray, stats), rest)
            loss = optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=pmasks)
        params = optax.apply_updates(params, updates)
        pstate = pruner.update(pstate, nnx.merge_state(params, stats), t)  # prunes on schedule, else a no-op
        return (params, stats, opt_state, pstate), loss

    def masked_model(params, stats, pstate):
        return nnx.merge(eval_def, jp.apply_mask(nnx.merge_state(params, stats), pstate.masks), rest)

    @jax.jit
    def accuracy(params, stats, pstate):
        return jnp.mean(jnp.argmax(masked_model(params, stats, pstate)(x_te), -1) == y_te)

    device = jax.devices()[0]  # arguments committed to it like train_step's outputs: no second compilation
    runs = {"pruned": jax.device_put((params, stats, tx.init(params), pstate), device)}
    curves, losses = {"pruned": [], "dense": []}, {}
    for t in range(args.steps):
        if t == begin:  # the dense baseline forks here: a target already met, so its pruner never prunes
            params, stats, opt_state, pstate = runs["pruned"]
            runs["dense"] = (params, stats, opt_state, pstate._replace(targets=jax.device_put(jnp.ones(1), device)))
        for run, carry in runs.items():  # the same batches for both
            runs[run], losses[run] = train_step(carry, t)
        if (t + 1) % args.eval_every == 0 or t + 1 == args.steps:
            for run, (params, stats, _, pstate) in runs.items():
                curves[run].append((t + 1, float(accuracy(params, stats, pstate))))
    params, stats, _, pstate = runs["pruned"]
    masked = masked_model(params, stats, pstate)
    small = nnx_compact(masked, pstate.masks, sets)  # a new, smaller module; `masked` is untouched
    kept = [f"{len(k)}/{n}" for k, n in zip(jp.kept_units(pstate.masks, sets), sizes)]
    models = {"dense": masked_model(*runs["dense"][:2], runs["dense"][3]), "masked": masked, "compacted": small}
    info = {"curve": curves["pruned"], "dense_curve": curves["dense"], "kept": kept}
    return models, info | {"loss": float(losses["pruned"]), "dense_loss": float(losses["dense"])}


def evaluate(name: str, models: dict[str, nnx.Module], data, args) -> dict:
    """Params, MACs per image, CPU latency and test accuracy of each model; checks compacted == masked."""
    x_te, y_te = data[2], data[3]
    calls = {kind: forward(m) for kind, m in models.items()}
    # The test set in batches of the timed size (wrapped around to fill the last one): each model compiles once.
    b = args.latency_batch
    x_pad = x_te[np.arange(math.ceil(len(x_te) / b) * b) % len(x_te)]
    outputs = {
        kind: jnp.concatenate([call(x_pad[i : i + b]) for i in range(0, len(x_pad), b)])[: len(x_te)]
        for kind, call in calls.items()
    }
    max_diff = float(jnp.max(jnp.abs(outputs["masked"] - outputs["compacted"])))
    assert max_diff < 1e-4, f"{name}: the compacted model differs from the masked one by {max_diff}"
    seconds = latencies(calls, x_pad[:b], args.repeats)
    rows = {}
    for kind, model in models.items():
        rows[kind] = {
            "params": num_params(model),
            "macs": macs_per_image(model, x_te[:1]),
            "latency_ms": 1e3 * seconds[kind],
            "accuracy": float(jnp.mean(jnp.argmax(outputs[kind], -1) == y_te)),
        }
    params = jax.tree.leaves(nnx.state(models["masked"], nnx.Param))
    rows["masked"]["nonzero_params"] = sum(int(np.count_nonzero(np.asarray(v))) for v in params)
    return rows | {"max_diff": max_diff}


def report(name: str, r: dict) -> None:
    print(f"\n{name}: kept units per pruned set: {', '.join(r['kept'])}")
    print(f"{'':<10} {'params':>8} {'MACs/image':>11} {'latency':>9} {'test accuracy':>14}")
    for kind in ("dense", "masked", "compacted"):
        row = r[kind]
        ms = f"{row['latency_ms']:.2f} ms"
        line = f"{kind:<10} {row['params']:>8,} {row['macs']:>11,} {ms:>9} {row['accuracy']:>14.2%}"
        if kind == "masked":
            line += f"   ({row['nonzero_params']:,} params nonzero)"
        if kind == "compacted":
            line += f"   max |masked - compacted| {r['max_diff']:.1e}"
        print(line)
    d, c = r["dense"], r["compacted"]
    print(
        f"compacted / dense: params {c['params'] / d['params']:.1%}, MACs {c['macs'] / d['macs']:.1%}, "
        f"latency {c['latency_ms'] / d['latency_ms']:.1%}"
    )


def plot(results: dict, args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (name, r) in zip(axes[:2], results.items()):
        fork = [p for p in r["curve"] if p[0] <= args.prune_begin][-1:]  # where the dense baseline leaves
        for label, points, style in (
            (f"pruned, masked ({r['masked']['accuracy']:.1%})", r["curve"], "o-"),
            (f"dense ({r['dense']['accuracy']:.1%})", fork + r["dense_curve"], "k--"),
        ):
            steps, acc = zip(*points)
            ax.plot(steps, [100 * a for a in acc], style, markersize=3, lw=1.2, label=label)
        ax.axvspan(args.prune_begin, args.prune_end, color="tab:orange", alpha=0.15, label="pruning window")
        low = min(a for _, a in r["curve"][len(r["curve"]) // 4 :])  # the first quarter is the climb
        ax.set_ylim(max(0, 100 * low - 3), 100.5)
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name}: {SPARSITY:.0%} of the units of each pruned set removed", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[2]
    metrics = [("params", "params"), ("macs", "MACs"), ("latency_ms", "CPU latency")]
    width = 0.38
    for i, (name, r) in enumerate(results.items()):
        ratios = [100 * r["compacted"][k] / r["dense"][k] for k, _ in metrics]
        bars = ax.bar(np.arange(len(metrics)) + (i - 0.5) * width, ratios, width, label=name)
        ax.bar_label(bars, fmt="%.0f%%", fontsize=8)
    ax.axhline(100, color="k", lw=0.8)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylabel("compacted, % of dense")
    ax.set_ylim(0, 110)
    ax.set_title(f"after compaction (latency: batch {args.latency_batch})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "structural_pruning.png", dpi=120)
    plt.close(fig)
    return out / "structural_pruning.png"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="120 steps per model, 3 timed calls: under half a minute")
    ap.add_argument("--steps", type=int, default=3000, help="training steps per model")
    ap.add_argument("--prune-begin", type=int, default=None, help="first pruning step (default: steps // 3)")
    ap.add_argument("--prune-end", type=int, default=None, help="last pruning step (default: 2 * steps // 3)")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: steps // 30)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    ap.add_argument("--shift", type=int, default=1, help="augmentation: random translations by up to this many pixels")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--latency-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=100, help="timed calls per model (the median is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="structural_pruning_out")
    args = ap.parse_args(argv)
    if args.quick:  # every step of the default run, briefly: what the test suite runs
        args.steps, args.repeats, args.latency_batch = 120, 3, 64
        args.eval_every = args.eval_every or 20
    args.prune_begin = args.steps // 3 if args.prune_begin is None else args.prune_begin
    args.prune_end = 2 * args.steps // 3 if args.prune_end is None else args.prune_end
    args.eval_every = args.eval_every or max(args.steps // 30, 1)
    if not 0 <= args.prune_begin <= args.prune_end < args.steps:
        raise SystemExit("need 0 <= --prune-begin <= --prune-end < --steps (fine-tuning goes on after the schedule).")

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0)
    data = (
        jnp.asarray(x_tr.reshape(-1, 8, 8, 1), jnp.float32),
        jnp.asarray(y_tr),
        jnp.asarray(x_te.reshape(-1, 8, 8, 1), jnp.float32),
        jnp.asarray(y_te),
    )
    print(
        f"{args.steps} steps of batch {args.batch} per model; {SPARSITY:.0%} of the units of each pruned set "
        f"removed between steps {args.prune_begin} and {args.prune_end}, then fine-tuning"
    )
    results = {}
    for name, make, select in (
        ("ResNet", lambda: ResNet(rngs=nnx.Rngs(args.seed)), resnet_sets),
        ("ViT", lambda: ViT(rngs=nnx.Rngs(args.seed)), vit_sets),
    ):
        t0 = time.perf_counter()
        models, info = train_and_prune(make(), select, data, args)
        results[name] = evaluate(name, models, data, args) | info | {"seconds": time.perf_counter() - t0}
        report(name, results[name])
        seconds = results[name]["seconds"]
        print(f"final training loss: pruned {info['loss']:.3f}, dense {info['dense_loss']:.3f}; {seconds:.0f}s")
    path = plot(results, args)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
