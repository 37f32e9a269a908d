"""Global magnitude pruning of 6 x 4096 x 4096 kernels (100.7M weights) to 90%, side by side.

Compares, on the same weights and in one run:
  * jaxprune: ``jp.prune(jp.magnitude(params), masks, sparsity=0.9)`` under jit
    (counting-based threshold search, no sort);
  * a sort-based JAX baseline: concatenate all |w|, sort, threshold at the k-th;
  * PyTorch: ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.9)``.

Times are after compilation (best of --repeats). Prints a table and writes
benchmarks/results/global_topk.json.

  python benchmarks/global_topk.py            # the full size
  python benchmarks/global_topk.py --quick    # 6 x 1024 x 1024, seconds
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
from _common import best_of, table, write

import jaxprune as jp


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="6 x 1024 x 1024, one PyTorch repeat")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-sort", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.size = 1024

    shape = (args.size, args.size)
    keys = jax.random.split(jax.random.key(0), args.layers)
    params = {f"layer_{i}": {"kernel": jax.random.normal(k, shape, jnp.float32)} for i, k in enumerate(keys)}
    jax.block_until_ready(params)
    n = args.layers * args.size * args.size
    k = round(args.sparsity * n)
    masks0 = jp.init_masks(params)

    # The target is a Python float, so the count is round(0.9 * N) exactly; a traced
    # float32 target (as from a schedule) would be rounded from float32(0.9).
    prune = jax.jit(lambda p, m: jp.prune(jp.magnitude(p), m, sparsity=args.sparsity))
    start = time.perf_counter()
    masks = jax.block_until_ready(prune(params, masks0))
    compile_s = time.perf_counter() - start
    jp_s = best_of(lambda: prune(params, masks0), args.repeats)
    jp_pruned = n - int(sum(int(jnp.sum(m)) for m in jax.tree.leaves(masks)))
    mask_bytes = sum(m.nbytes for m in jax.tree.leaves(masks))
    rows = [["jaxprune (count search, jit)", f"{jp_s:.3f}", "1.0x", f"{jp_pruned:,}", jp_pruned == k]]
    results = {
        "weights": n,
        "target_pruned": k,
        "jaxprune": {"seconds": jp_s, "compile_seconds": compile_s, "pruned": jp_pruned, "mask_bytes": mask_bytes},
    }

    if not args.no_sort:

        @jax.jit
        def sort_baseline(p):
            flat = jnp.concatenate([jnp.abs(x["kernel"]).ravel() for x in p.values()])
            thresh = jnp.sort(flat)[k - 1]
            return {name: {"kernel": jnp.abs(x["kernel"]) > thresh} for name, x in p.items()}

        jax.block_until_ready(sort_baseline(params))
        sort_s = best_of(lambda: sort_baseline(params), 1)
        sort_pruned = n - int(sum(int(jnp.sum(m)) for m in jax.tree.leaves(sort_baseline(params))))
        rows.append(
            ["JAX sort baseline (jit)", f"{sort_s:.3f}", f"{sort_s / jp_s:.1f}x", f"{sort_pruned:,}", sort_pruned == k]
        )
        results["sort_baseline"] = {"seconds": sort_s, "pruned": sort_pruned}

    if not args.no_torch:
        import torch
        from torch.nn.utils import prune as torch_prune

        def torch_once():
            modules = []
            for x in params.values():
                lin = torch.nn.Linear(args.size, args.size, bias=False)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(np.array(x["kernel"]).T))
                modules.append(lin)
            start = time.perf_counter()
            torch_prune.global_unstructured(
                [(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured, amount=args.sparsity
            )
            seconds = time.perf_counter() - start
            pruned = sum(int((m.weight_mask == 0).sum()) for m in modules)
            return seconds, pruned, modules

        torch_runs = [torch_once() for _ in range(1 if args.quick else max(1, min(args.repeats, 2)))]
        torch_s = min(r[0] for r in torch_runs)
        torch_pruned, modules = torch_runs[0][1], torch_runs[0][2]
        agree = float(
            np.mean(
                [
                    np.mean(np.asarray(masks[f"layer_{i}"]["kernel"]) == m.weight_mask.numpy().T.astype(bool))
                    for i, m in enumerate(modules)
                ]
            )
        )
        rows.append(
            [
                f"PyTorch {torch.__version__} global_unstructured",
                f"{torch_s:.3f}",
                f"{torch_s / jp_s:.1f}x",
                f"{torch_pruned:,}",
                torch_pruned == k,
            ]
        )
        results["torch"] = {
            "seconds": torch_s,
            "pruned": torch_pruned,
            "mask_agreement": agree,
            "version": torch.__version__,
        }
        results["speedup_vs_torch"] = torch_s / jp_s

    print(
        f"Global magnitude pruning of {args.layers} x {args.size} x {args.size} = {n:,} weights to {args.sparsity:.0%}"
    )
    print(table(["method", "seconds", "vs jaxprune", "pruned", "exact"], rows))
    print(f"jaxprune: compile {compile_s:.2f} s; masks {mask_bytes / n:.0f} byte/weight ({mask_bytes / 2**20:.0f} MiB)")
    if "torch" in results:
        print(f"masks identical to PyTorch's on {results['torch']['mask_agreement']:.6%} of weights (ties aside)")
    path = write("global_topk_quick" if args.quick else "global_topk", results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
