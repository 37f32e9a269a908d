"""Recurrent train step (forward + backward + SGD): jaxprune's LSTM and GRU vs PyTorch's nn.LSTM and nn.GRU.

Same shapes for all (2 layers, input 256, hidden 512, sequence 64, batch 32), for each cell:
  * jaxprune, no masks
  * jaxprune, 90% of the weights masked (apply_mask once per step, outside the scan)
  * jaxprune, variational dropout on (input, hidden and output locked masks)
  * on a GPU: jaxprune's LSTM through cuDNN (backend="cudnn"), masked
  * PyTorch's module pruned with torch.nn.utils.prune.global_unstructured (90%), same step
    (on the GPU when there is one: cuDNN)

Goals: masks cost <= 2%, dropout <= 5%, jaxprune (masked) / PyTorch (pruned) <= 1.0.
Times are per step, after compilation, best of interleaved rounds. Prints a
table and writes benchmarks/results/lstm.json.

  python benchmarks/lstm.py [--quick] [--cells lstm,gru]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import table, write

import jaxprune as jp

CELLS = {"lstm": (jp.init_lstm, jp.lstm, "LSTM"), "gru": (jp.init_gru, jp.gru, "GRU")}


def jax_runners(cell, shapes, steps, lr, on_gpu):
    init, run, _ = CELLS[cell]
    inp, hidden, layers, seq, batch = shapes
    params = init(jax.random.key(0), inp, hidden, num_layers=layers)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.9)
    x = jax.random.normal(jax.random.key(1), (seq, batch, inp))
    y = jax.random.normal(jax.random.key(2), (seq, batch, hidden))
    rates = jp.RNNDropout(input=0.25, hidden=0.25, output=0.25)

    def make_step(use_masks, use_dropout, **kwargs):
        def loss(p, m, key):
            m = m if use_masks else None
            out, _ = run(p, x, masks=m, dropout=rates if use_dropout else None, key=key, **kwargs)
            return jnp.mean((out - y) ** 2)

        @jax.jit
        def step(p, m, key):
            g = jax.grad(loss)(p, m, key)
            return jax.tree.map(lambda a, b: a - lr * b, p, g)

        return step

    scan = {"backend": "scan"} if cell == "lstm" else {}
    variants = {
        f"jaxprune {cell}": make_step(False, False, **scan),
        f"jaxprune {cell}, 90% masked": make_step(True, False, **scan),
        f"jaxprune {cell}, variational dropout": make_step(False, True, **scan),
    }
    if cell == "lstm" and on_gpu:
        variants["jaxprune lstm, 90% masked, cuDNN"] = make_step(True, False, backend="cudnn")
    runners = {}
    for name, step in variants.items():

        def go(step=step):
            p = params
            for i in range(steps):
                p = step(p, masks, jax.random.key(i))
            return jax.block_until_ready(p)

        go()  # compile
        runners[name] = go
    return runners


def torch_runner(cell, shapes, steps, lr):
    import torch
    from torch.nn.utils import prune as torch_prune

    inp, hidden, layers, seq, batch = shapes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = getattr(torch.nn, CELLS[cell][2])(inp, hidden, num_layers=layers).to(device)
    targets = [(model, n) for n, _ in model.named_parameters() if n.startswith("weight")]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    xt = torch.from_numpy(rng.standard_normal((seq, batch, inp), np.float32)).to(device)
    yt = torch.from_numpy(rng.standard_normal((seq, batch, hidden), np.float32)).to(device)

    def go():
        for _ in range(steps):
            opt.zero_grad()
            out, _ = model(xt)
            torch.mean((out - yt) ** 2).backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    go()
    name = f"PyTorch {torch.__version__} nn.{CELLS[cell][2]}, pruned 90%" + (", cuDNN" if device == "cuda" else "")
    return {name: go}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm, gru")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    cells = args.cells.split(",")
    if not set(cells) <= set(CELLS):
        ap.error(f"--cells must name some of {sorted(CELLS)}, got {args.cells!r}")
    shapes = (32, 64, 2, 16, 8) if args.quick else (256, 512, 2, 64, 32)
    lr, on_gpu = 0.01, jax.default_backend() == "gpu"

    runners, groups = {}, {}
    for cell in cells:
        group = jax_runners(cell, shapes, args.steps, lr, on_gpu)
        if not args.no_torch:
            group |= torch_runner(cell, shapes, args.steps, lr)
        groups[cell] = list(group)
        runners |= group

    times = dict.fromkeys(runners, float("inf"))
    for _ in range(args.rounds):
        for name, go in runners.items():
            start = time.perf_counter()
            go()
            times[name] = min(times[name], (time.perf_counter() - start) / args.steps)

    inp, hidden, layers, seq, batch = shapes
    device = jax.devices()[0].device_kind
    print(f"{layers} layers x {hidden}, input {inp}, sequence {seq}, batch {batch}: forward + backward + SGD, {device}")
    result = {"shapes": dict(zip(("input", "hidden", "layers", "sequence", "batch"), shapes)), "device": device}
    result["ms_per_step"] = {n: t * 1e3 for n, t in times.items()}
    for cell in cells:
        base = times[f"jaxprune {cell}"]
        rows = [[n, f"{times[n] * 1e3:.1f}", f"{times[n] / base:.3f}x"] for n in groups[cell]]
        print(table(["variant", "ms/step", f"vs jaxprune {cell}"], rows))
        masked = times[f"jaxprune {cell}, 90% masked"]
        summary = {
            "masks": masked / base - 1,
            "variational_dropout": times[f"jaxprune {cell}, variational dropout"] / base - 1,
        }
        torch_name = next((n for n in groups[cell] if n.startswith("PyTorch")), None)
        if torch_name:
            summary["masked_over_torch"] = masked / times[torch_name]
            print(f"jaxprune {cell} (masked) / PyTorch (pruned): {summary['masked_over_torch']:.3f} (goal <= 1.0)")
        print(f"masks: {100 * summary['masks']:+.1f}% (goal <= 2%)")
        print(f"variational dropout: {100 * summary['variational_dropout']:+.1f}% (goal <= 5%)\n")
        result[cell] = summary
    path = write("lstm_quick" if args.quick else "lstm", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
