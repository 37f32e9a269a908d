"""Global magnitude pruning of 6 x 4096 x 4096 kernels (100.7M weights) to 90%, side by side.

Compares, on the same weights and in one run:
  * jaxprune: ``jp.prune(jp.magnitude(params), masks, sparsity=0.9)`` under jit
    (counting-based threshold search, no sort), with |w| stored, and with
    ``jp.magnitude(params, lazy=True)`` (|w| computed inside each pass);
  * a sort-based JAX baseline: concatenate all |w|, sort, threshold at the k-th;
  * PyTorch: ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.9)``.

Also: the passes over the scores that jaxprune's search made; on small models
(at most 131,071 weights, which ``prune`` selects by sorting), the first call
(trace, compile, run) and later calls, counting vs sorting; each method's
peak host memory above its weights (in a child process each, after setting the
weights up); and with --sharded, 1.07B weights sharded over 8 simulated CPU
devices (a child process): time, and per-device memory from the compiled
program's memory analysis.

Times are after compilation (best of --repeats). Prints a table and writes
benchmarks/results/global_topk.json.

  python benchmarks/global_topk.py            # the full size, and the sharded 1B row
  python benchmarks/global_topk.py --quick    # 6 x 1024 x 1024, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, table, write

import jaxprune as jp
from jaxprune.select import Lazy, lowest_k


def make_params(layers: int, size: int) -> dict:
    keys = jax.random.split(jax.random.key(0), layers)
    params = {f"layer_{i}": {"kernel": jax.random.normal(k, (size, size), jnp.float32)} for i, k in enumerate(keys)}
    return jax.block_until_ready(params)


def jax_prune(sparsity: float, lazy: bool):
    # The target is a Python float, so the count is round(0.9 * N) exactly; a traced
    # float32 target (as from a schedule) would be rounded from float32(0.9).
    return jax.jit(lambda p, m: jp.prune(jp.magnitude(p, lazy=lazy), m, sparsity=sparsity))


def search_passes(params: dict, k: int) -> int:
    """Passes over the scores that the selection behind ``prune`` makes on these weights."""
    weights = [x["kernel"] for x in params.values()]
    select = jax.jit(
        lambda ws: lowest_k(
            [Lazy(jnp.abs, (w,)) for w in ws],
            [jnp.ones(w.shape, bool) for w in ws],
            (0,) * len(ws),
            jnp.asarray([k]),
            with_passes=True,
        )[1]
    )
    return int(select(weights))


SMALL_MODELS = {  # name -> kernel shapes; every model here has at most select._SORT_MAX weights
    "MLP 20-16-12-4 (the tests' model)": [(20, 16), (16, 12), (12, 4)],
    "2-layer LSTM, 32 in, 64 hidden": [(256, 32), (256, 64), (256, 64), (256, 64)],
    "MLP 256-256-128-10": [(256, 256), (256, 128), (128, 10)],
    "one 300 x 400 kernel": [(300, 400)],
}


def first_call_on_small_models(sparsity: float, repeats: int) -> dict:
    """Global selection on small models (|w| of each kernel) by counting and by sorting, in fresh jits.

    The first call traces, compiles and runs: what a new model's first ``prune`` pays. ``"auto"``
    (what ``prune`` uses) sorts every model here.
    """
    rng = np.random.default_rng(0)
    out = {}
    for name, shapes in SMALL_MODELS.items():
        weights = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
        alive = [jnp.ones(s, bool) for s in shapes]
        k = jnp.asarray([round(sparsity * sum(w.size for w in weights))])
        row, marks = {"weights": sum(w.size for w in weights)}, {}
        for method in ("count", "sort"):
            select = jax.jit(
                lambda ws, a, k, method=method: lowest_k([jnp.abs(w) for w in ws], a, (0,) * len(ws), k, method=method)
            )
            start = time.perf_counter()
            marks[method] = jax.block_until_ready(select(weights, alive, k))
            row[f"{method}_first_call_seconds"] = time.perf_counter() - start
            args = (weights, alive, k)
            row[f"{method}_seconds"] = best_of(lambda select=select, args=args: select(*args), repeats)
        row["same_masks"] = all(bool(jnp.array_equal(a, b)) for a, b in zip(marks["count"], marks["sort"]))
        out[name] = row
    return out


def torch_modules(params: dict, size: int):
    import torch

    modules = []
    for x in params.values():
        lin = torch.nn.Linear(size, size, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(x["kernel"]).T))
        modules.append(lin)
    return modules


def torch_prune(modules, sparsity: float) -> None:
    from torch.nn.utils import prune as torch_prune

    torch_prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured, amount=sparsity
    )


def _status(field: str) -> int:
    """A field of /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def memory_child(method: str, layers: int, size: int, sparsity: float) -> None:
    """Runs one method once, after its weights are set up; prints its peak RSS above that point (bytes)."""
    params = make_params(layers, size)
    if method == "torch":
        modules = torch_modules(params, size)
        del params
        run = lambda: torch_prune(modules, sparsity)  # noqa: E731
    else:
        masks = jax.block_until_ready(jp.init_masks(params))
        # Compiled, not run: a run's scratch is freed asynchronously after it and would count as weights.
        prune = jax_prune(sparsity, lazy=method == "lazy").lower(params, masks).compile()
        run = lambda: jax.block_until_ready(prune(params, masks))  # noqa: E731
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    run()
    print(json.dumps({"peak_above_weights": _status("VmHWM") - base}))


def in_child(args: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=1800, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sharded_child(layers: int, rows: int, cols: int, sparsity: float, repeats: int) -> None:
    """``prune`` on kernels whose rows are sharded over all 8 devices (FSDP); prints time and memory."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    assert jax.device_count() == 8, jax.devices()
    fsdp = NamedSharding(Mesh(np.array(jax.devices()), ("fsdp",)), PartitionSpec("fsdp", None))
    normal = jax.jit(lambda k: jax.random.normal(k, (rows, cols), jnp.float32), out_shardings=fsdp)
    params = {f"layer_{i}": normal(k) for i, k in enumerate(jax.random.split(jax.random.key(0), layers))}
    masks = jax.block_until_ready(jp.init_masks(params))
    prune = jax_prune(sparsity, lazy=True)
    compiled = prune.lower(params, masks).compile()
    memory = compiled.memory_analysis()  # of the per-device program
    out = jax.block_until_ready(prune(params, masks))
    n = layers * rows * cols
    pruned = n - int(sum(int(jnp.sum(m)) for m in jax.tree.leaves(out)))
    shard = rows * cols // 8
    print(
        json.dumps(
            {
                "weights": n,
                "pruned": pruned,
                "exact": pruned == round(sparsity * n),
                "seconds": best_of(lambda: prune(params, masks), repeats),
                "per_device_bytes": {
                    "params_and_masks": memory.argument_size_in_bytes,
                    "new_masks": memory.output_size_in_bytes,
                    "temp": memory.temp_size_in_bytes,
                },
                "one_leaf_per_device_bytes": shard * 4,
                "whole_leaf_bytes": rows * cols * 4,
                "masks_keep_sharding": all(m.sharding.is_equivalent_to(fsdp, 2) for m in jax.tree.leaves(out)),
            }
        )
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="6 x 1024 x 1024, one PyTorch repeat, no sharded row")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-sort", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--no-sharded", action="store_true", help="skip the 1.07B-weight sharded row")
    ap.add_argument("--no-small", action="store_true", help="skip the first-call table on small models")
    ap.add_argument("--child", choices=["stored", "lazy", "torch", "sharded"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.no_sharded = 1024, True
    if args.child == "sharded":
        return sharded_child(8, 8192, 16384, args.sparsity, 2)
    if args.child:
        return memory_child(args.child, args.layers, args.size, args.sparsity)

    params = make_params(args.layers, args.size)
    n = args.layers * args.size * args.size
    k = round(args.sparsity * n)
    masks0 = jp.init_masks(params)
    rows, results = [], {"weights": n, "target_pruned": k}
    for name, lazy in (("jaxprune", False), ("jaxprune_lazy", True)):
        prune = jax_prune(args.sparsity, lazy)
        start = time.perf_counter()
        masks = jax.block_until_ready(prune(params, masks0))
        compile_s = time.perf_counter() - start
        seconds = best_of(lambda prune=prune: prune(params, masks0), args.repeats)
        pruned = n - int(sum(int(jnp.sum(m)) for m in jax.tree.leaves(masks)))
        label = "jaxprune, magnitude(params, lazy=True)" if lazy else "jaxprune, magnitude(params)"
        rows.append([label, f"{seconds:.3f}", "", f"{pruned:,}", pruned == k])
        results[name] = {"seconds": seconds, "compile_seconds": compile_s, "pruned": pruned}
    base = results["jaxprune_lazy"]["seconds"]
    for row, name in zip(rows, ("jaxprune", "jaxprune_lazy")):
        row[2] = f"{results[name]['seconds'] / base:.2f}x"
    results["passes"] = search_passes(params, k)
    results["mask_bytes"] = sum(m.nbytes for m in jax.tree.leaves(masks))

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
            ["JAX sort baseline (jit)", f"{sort_s:.3f}", f"{sort_s / base:.1f}x", f"{sort_pruned:,}", sort_pruned == k]
        )
        results["sort_baseline"] = {"seconds": sort_s, "pruned": sort_pruned}

    if not args.no_torch:
        import torch

        def torch_once():
            modules = torch_modules(params, args.size)
            start = time.perf_counter()
            torch_prune(modules, args.sparsity)
            return time.perf_counter() - start, sum(int((m.weight_mask == 0).sum()) for m in modules), modules

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
        del modules, torch_runs
        name = f"PyTorch {torch.__version__} global_unstructured"
        rows.append([name, f"{torch_s:.3f}", f"{torch_s / base:.1f}x", f"{torch_pruned:,}", torch_pruned == k])
        results["torch"] = {
            "seconds": torch_s,
            "pruned": torch_pruned,
            "mask_agreement": agree,
            "version": torch.__version__,
        }
        results["speedup_vs_torch"] = {
            "lazy": torch_s / results["jaxprune_lazy"]["seconds"],
            "stored": torch_s / results["jaxprune"]["seconds"],
        }

    if not args.no_memory:
        sizes = ["--layers", str(args.layers), "--size", str(args.size), "--sparsity", str(args.sparsity)]
        methods = ["stored", "lazy"] + ([] if args.no_torch else ["torch"])
        results["peak_memory_above_weights"] = {
            m: in_child([*sizes, "--child", m])["peak_above_weights"] for m in methods
        }

    if not args.no_sharded:
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
        results["sharded_1b"] = in_child(["--sparsity", str(args.sparsity), "--child", "sharded"], env)

    print(
        f"Global magnitude pruning of {args.layers} x {args.size} x {args.size} = {n:,} weights to {args.sparsity:.0%}"
    )
    print(table(["method", "seconds", "vs jaxprune lazy", "pruned", "exact"], rows))
    print(f"jaxprune: {results['passes']} passes over the scores; masks {results['mask_bytes'] / n:.0f} byte/weight")
    if "torch" in results:
        print(
            f"speed-up over PyTorch: {results['speedup_vs_torch']['lazy']:.0f}x (lazy), "
            f"{results['speedup_vs_torch']['stored']:.0f}x (stored |w|)"
        )
        print(f"masks identical to PyTorch's on {results['torch']['mask_agreement']:.6%} of weights (ties aside)")
    if "peak_memory_above_weights" in results:
        print(
            "peak host memory above the weights: "
            + ", ".join(f"{m} {b / 2**20:,.0f} MiB" for m, b in results["peak_memory_above_weights"].items())
        )
    if "sharded_1b" in results:
        s = results["sharded_1b"]
        per = s["per_device_bytes"]
        print(
            f"sharded over 8 CPU devices: {s['weights']:,} weights in {s['seconds']:.2f} s (exact: {s['exact']}); "
            f"per device: params+masks {per['params_and_masks'] / 2**20:,.0f} MiB, new masks "
            f"{per['new_masks'] / 2**20:,.0f} MiB, scratch {per['temp'] / 2**20:,.1f} MiB "
            f"(one leaf: {s['whole_leaf_bytes'] / 2**20:,.0f} MiB whole, "
            f"{s['one_leaf_per_device_bytes'] / 2**20:,.0f} MiB per device)"
        )
    if not args.no_small:
        results["small_models"] = small = first_call_on_small_models(args.sparsity, max(args.repeats, 10))
        print("\nsmall models (select._SORT_MAX or fewer weights): global selection of |w| by counting and by sorting")
        print(
            table(
                ["model", "weights", "first call: count", "sort", "after: count", "sort", "same masks"],
                [
                    [
                        name,
                        f"{r['weights']:,}",
                        f"{r['count_first_call_seconds']:.2f} s",
                        f"{r['sort_first_call_seconds']:.2f} s",
                        f"{1e3 * r['count_seconds']:.2f} ms",
                        f"{1e3 * r['sort_seconds']:.2f} ms",
                        r["same_masks"],
                    ]
                    for name, r in small.items()
                ],
            )
        )
    path = write("global_topk_quick" if args.quick else "global_topk", results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
