"""Runs every benchmark script in one go and prints one table of jaxprune against its peers.

  python benchmarks/run.py            # full sizes (about 15 minutes on 2 CPU cores)
  python benchmarks/run.py --quick    # small sizes, about a minute

Writes benchmarks/results/latest.json (every script's results, with the
machine) and benchmarks/results/latest.md (the table, in Markdown).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, table

SCRIPTS = ("global_topk", "train_step", "lstm", "export", "sparse_training", "oneshot", "oneshot_memory")


def rows_from(results: dict) -> list[list[str]]:
    rows = []
    g = results.get("global_topk", {})
    if g:
        n = f"{g['weights'] / 1e6:.1f}M"
        rows.append(
            [f"global magnitude top-k to 90%, {n} weights", "jaxprune", f"{g['jaxprune']['seconds']:.3f} s", "1.00x"]
        )
        if "torch" in g:
            t = g["torch"]["seconds"]
            rows.append(
                ["", "PyTorch global_unstructured", f"{t:.3f} s", f"{t / g['jaxprune']['seconds']:.1f}x slower"]
            )
        if "sort_baseline" in g:
            t = g["sort_baseline"]["seconds"]
            rows.append(["", "JAX sort baseline", f"{t:.3f} s", f"{t / g['jaxprune']['seconds']:.1f}x slower"])
    s = results.get("train_step", {}).get("seconds_per_step", {})
    for model, times in s.items():
        base = times["dense"]
        for variant in ("masked", "optim only"):
            rows.append(
                [
                    f"{model.upper()} train step, 90% masked",
                    f"jaxprune {variant}",
                    f"{times[variant] * 1e3:.2f} ms",
                    f"{times[variant] / base:.3f}x of dense",
                ]
            )
    lstm = results.get("lstm", {}).get("ms_per_step", {})
    for cell in ("lstm", "gru"):
        names = [n for n in lstm if cell in n.lower()]
        if f"jaxprune {cell}" in names:
            base = lstm[f"jaxprune {cell}"]
            for name in names:
                ms = lstm[name]
                rows.append([f"{cell.upper()} train step", name, f"{ms:.1f} ms", f"{ms / base:.3f}x"])
    e = results.get("export", {})
    if e:
        rows.append(
            [
                "checkpoint, 90% pruned MLP",
                "params + packed masks",
                f"{e['dense_plus_packed_masks']:,} B",
                f"{e['dense_plus_packed_masks'] / e['dense']:.3f}x of dense",
            ]
        )
        rows.append(
            [
                "",
                "sparse export (bitmap)",
                f"{e['sparse_export']:,} B",
                f"{e['sparse_export'] / e['dense']:.3f}x of dense",
            ]
        )
        if "torch_pruned_state_dict" in e:
            r = e["torch_pruned_state_dict"] / e["torch_dense_state_dict"]
            rows.append(["", "PyTorch pruned state_dict", f"{e['torch_pruned_state_dict']:,} B", f"{r:.3f}x of dense"])
        rows.append(
            [
                "LSTM inference, 50% units pruned",
                "compacted vs masked",
                f"{e['lstm_compacted_ms']:.2f} ms",
                f"{e['lstm_speedup']:.2f}x faster",
            ]
        )
    t = results.get("sparse_training", {})
    if t:
        n = f"{t['weights'] / 1e6:.1f}M"
        for name, key in (("RigL", "rigl_update_s"), ("SET", "set_update_s")):
            rows.append(
                [
                    f"one {name} update, {n} weights at 90%",
                    name,
                    f"{t[key]:.3f} s",
                    f"{t[key] / t['prune_s']:.2f}x of prune",
                ]
            )
    o = results.get("oneshot", {})
    if o:
        shape = "x".join(str(d) for d in o["kernel_shape"])
        for name in ("sparsegpt 50%", "sparsegpt 2:4", "wanda 50%", "wanda 2:4"):
            r = o.get(name)
            if not r:
                continue
            method, pattern = name.split()
            label = f"{'SparseGPT' if method == 'sparsegpt' else 'Wanda'} {pattern}, one {shape} kernel"
            rows.append([label, "jaxprune", f"{r['jaxprune_s']:.3f} s", "1.00x"])
            if "torch_s" in r:
                t, ratio = r["torch_s"], r["torch_s"] / r["jaxprune_s"]
                speed = f"{ratio:.2f}x slower" if ratio >= 1 else f"{1 / ratio:.2f}x faster"
                rows.append(["", f"PyTorch, same mask on {r['mask_agreement']:.4%}", f"{t:.3f} s", speed])
    mem = results.get("oneshot_memory", {})
    if mem:
        base = mem["runs"]["baseline"]["peak_rss"]
        label = f"SparseGPT of a {mem['layers']}-block, width-{mem['dim']} transformer: peak memory"
        for mode in ("sequential", "all at once"):
            extra = (mem["runs"][mode]["peak_rss"] - base) / 2**20
            rows.append([label if mode == "sequential" else "", mode, f"+{extra:.0f} MiB", ""])
    return rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    results = {}
    for name in SCRIPTS:
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(name).main(["--quick"] if args.quick else [])
        path = RESULTS / f"{name}{'_quick' if args.quick else ''}.json"
        results[name] = {k: v for k, v in json.loads(path.read_text()).items() if k != "machine"}
    headers = ["benchmark", "variant", "time or size", "ratio"]
    rows = rows_from(results)
    m = machine()
    sizes = "quick sizes" if args.quick else "full sizes"
    print(f"\n=== summary ({sizes}; {m['cpu']}, {m['cores']} cores, {m['backend']}) ===")
    print(table(headers, rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"machine": m, "quick": args.quick, **results}, indent=2) + "\n")
    md = f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['backend']}, JAX {m['jax']}); {sizes}.\n\n"
    (RESULTS / "latest.md").write_text(md + markdown(headers, rows) + "\n")
    print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'}")
    return results


if __name__ == "__main__":
    main()
