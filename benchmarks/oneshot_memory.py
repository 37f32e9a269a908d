"""Peak memory of one-shot pruning a transformer block by block (sequential) against all layers at once.

The model is ``examples/transformer_oneshot.py``'s ``CharTransformer`` (random
weights: memory does not depend on training) at ``--dim`` width and
``--layers`` blocks; calibration is ``--sequences`` random byte sequences.
SparseGPT at 50%, three ways, each in a fresh process (peak RSS is per
process):

  * baseline: build the model, embed the calibration data, run it once (the
    process's memory before any statistics);
  * sequential: ``nnx_prune_blocks``: one block's ``X^T X`` in memory at a
    time, each block calibrated on the pruned blocks' outputs (as the papers);
  * all at once: ``nnx_input_stats`` over the whole model first (every
    layer's ``X^T X`` in memory together), then every kernel pruned.

Prints the peak resident memory of each (``ru_maxrss``), its excess over the
baseline, the seconds, and the bytes of statistics each keeps at most; writes
benchmarks/results/oneshot_memory.json.

  python benchmarks/oneshot_memory.py            # dim 1024, 4 blocks
  python benchmarks/oneshot_memory.py --quick    # dim 256, 2 blocks
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
from _common import table, write

MODES = ("baseline", "sequential", "all at once")


def measure(mode: str, dim: int, layers: int, sequences: int, seq: int) -> dict:
    """Runs one mode in this process; returns its peak RSS, seconds and the statistics' bytes."""
    from flax import nnx
    from transformer_oneshot import CharTransformer

    import jaxprune as jp
    from jaxprune.integrations.flax import nnx_input_stats, nnx_prune_blocks

    model = CharTransformer(dim, 8, layers, seq, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (sequences, seq), 0, 256)
    batches = [tokens[i : i + 8] for i in range(0, sequences, 8)]
    embedded = [model.embed_tokens(b) for b in batches]
    jax.block_until_ready(nnx.jit(lambda m, t: m(t))(model, batches[0]))
    per_block = 4 * (3 * dim * dim + (4 * dim) ** 2)  # X^T X of qkv, proj, up (dim inputs each) and down (4 dim)
    start = time.perf_counter()
    if mode == "sequential":
        masks = nnx_prune_blocks(model.blocks, embedded, method="sparsegpt", sparsity=0.5)
        jax.block_until_ready([jax.tree.leaves(m) for m in masks])
        stats_bytes = per_block
    elif mode == "all at once":
        stats = nnx_input_stats(model, lambda m, t: m(t), batches)
        stats_bytes = sum(s.hessian.nbytes + s.sq_norms.nbytes for s in stats.values())
        for path, node in nnx.iter_graph(model):
            name = "/".join(map(str, path))
            if isinstance(node, nnx.Linear) and name.startswith("blocks/"):
                kernel, _ = jp.oneshot.prune_kernel(node.kernel[...], stats[name], method="sparsegpt", sparsity=0.5)
                node.kernel[...] = jax.block_until_ready(kernel)
    else:
        stats_bytes = 0
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"peak_rss": peak, "seconds": seconds, "stats_bytes": stats_bytes}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="dim 256, 2 blocks")
    ap.add_argument("--mode", choices=MODES, help="(internal) run one mode in this process and print JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.dim, args.layers = 256, 2
    if args.mode:
        print(json.dumps(measure(args.mode, args.dim, args.layers, args.sequences, args.seq)))
        return {}
    sizes = ["--dim", str(args.dim), "--layers", str(args.layers), "--sequences", str(args.sequences)]
    runs = {}
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--seq", str(args.seq), *sizes],
            check=True,
            capture_output=True,
            text=True,
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    base = runs["baseline"]["peak_rss"]
    mb = 2**20
    print(
        f"SparseGPT 50% of CharTransformer(dim={args.dim}, blocks={args.layers}), "
        f"{args.sequences} x {args.seq} calibration tokens; peak RSS per fresh process"
    )
    rows = []
    for mode, r in runs.items():
        seconds = f"{r['seconds']:.1f}" if mode != "baseline" else "-"
        over = f"{(r['peak_rss'] - base) / mb:+.0f}"
        rows.append([mode, f"{r['peak_rss'] / mb:.0f}", over, f"{r['stats_bytes'] / mb:.0f}", seconds])
    print(table(["mode", "peak MiB", "over baseline", "stats MiB held", "seconds"], rows))
    result = {"dim": args.dim, "layers": args.layers, "sequences": args.sequences, "seq": args.seq, "runs": runs}
    path = write("oneshot_memory_quick" if args.quick else "oneshot_memory", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
