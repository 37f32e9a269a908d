"""LSTM train step (forward + backward + SGD): jaxprune's lax.scan LSTM vs PyTorch's nn.LSTM, side by side.

Same shapes for all (2 layers, input 256, hidden 512, sequence 64, batch 32):
  * jaxprune lstm, no masks
  * jaxprune lstm, 90% of the weights masked (apply_mask once per step, outside the scan)
  * jaxprune lstm, variational dropout on (input, hidden and output locked masks)
  * PyTorch nn.LSTM pruned with torch.nn.utils.prune.global_unstructured (90%), same step

Goals: masks cost <= 2%, dropout <= 5%, jaxprune / PyTorch <= 1.0. Times are
per step, after compilation, best of interleaved rounds. Prints a table and
writes benchmarks/results/lstm.json.

  python benchmarks/lstm.py [--quick]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    inp, hidden, layers, seq, batch = (32, 64, 2, 16, 8) if args.quick else (256, 512, 2, 64, 32)
    lr = 0.01

    params = jp.init_lstm(jax.random.key(0), inp, hidden, num_layers=layers)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.9)
    x = jax.random.normal(jax.random.key(1), (seq, batch, inp))
    y = jax.random.normal(jax.random.key(2), (seq, batch, hidden))
    rates = jp.RNNDropout(input=0.25, hidden=0.25, output=0.25)

    def make_step(use_masks, use_dropout):
        def loss(p, m, key):
            out, _ = jp.lstm(p, x, masks=m if use_masks else None, dropout=rates if use_dropout else None, key=key)
            return jnp.mean((out - y) ** 2)

        @jax.jit
        def step(p, m, key):
            g = jax.grad(loss)(p, m, key)
            return jax.tree.map(lambda a, b: a - lr * b, p, g)

        return step

    variants = {
        "jaxprune lstm": make_step(False, False),
        "jaxprune lstm, 90% masked": make_step(True, False),
        "jaxprune lstm, variational dropout": make_step(False, True),
    }
    runners = {}
    for name, step in variants.items():

        def run(step=step):
            p = params
            for i in range(args.steps):
                p = step(p, masks, jax.random.key(i))
            return jax.block_until_ready(p)

        run()
        runners[name] = run

    if not args.no_torch:
        import torch
        from torch.nn.utils import prune as torch_prune

        torch.manual_seed(0)
        model = torch.nn.LSTM(inp, hidden, num_layers=layers)
        targets = [(model, n) for n, _ in model.named_parameters() if n.startswith("weight")]
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=0.9)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))

        def torch_run():
            for _ in range(args.steps):
                opt.zero_grad()
                out, _ = model(xt)
                torch.mean((out - yt) ** 2).backward()
                opt.step()

        torch_run()
        runners[f"PyTorch {torch.__version__} nn.LSTM, pruned 90%"] = torch_run

    times = {n: float("inf") for n in runners}
    for _ in range(args.rounds):
        for n, run in runners.items():
            start = time.perf_counter()
            run()
            times[n] = min(times[n], (time.perf_counter() - start) / args.steps)
    base = times["jaxprune lstm"]
    rows = [[n, f"{t * 1e3:.1f}", f"{t / base:.3f}x"] for n, t in times.items()]
    print(f"LSTM {layers} x {hidden}, input {inp}, sequence {seq}, batch {batch}: forward + backward + SGD step")
    print(table(["variant", "ms/step", "vs jaxprune lstm"], rows))
    result = {"ms_per_step": {n: t * 1e3 for n, t in times.items()}}
    torch_name = next((n for n in times if n.startswith("PyTorch")), None)
    if torch_name:
        result["jaxprune_masked_over_torch"] = times["jaxprune lstm, 90% masked"] / times[torch_name]
        print(f"jaxprune (masked) / PyTorch (pruned): {result['jaxprune_masked_over_torch']:.2f} (goal <= 1.0)")
    print(f"masks: {100 * (times['jaxprune lstm, 90% masked'] / base - 1):+.1f}% (goal <= 2%)")
    print(f"variational dropout: {100 * (times['jaxprune lstm, variational dropout'] / base - 1):+.1f}% (goal <= 5%)")
    path = write("lstm_quick" if args.quick else "lstm", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
