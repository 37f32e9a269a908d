"""One-shot pruning of one 4096 x 4096 kernel: jaxprune's SparseGPT and Wanda against PyTorch, side by side.

The kernel is a PyTorch-layout weight ``W`` ``[out, in]`` (jaxprune gets it
with ``in_axis=1``, so both sides see the same matrix), and its calibration
inputs ``X`` ``[tokens, in]`` (2048 tokens) are random but correlated and of
unequal scale (``X = Z @ A``, ``Z`` Gaussian, ``A`` a random mixing matrix
with a low-rank shared part and log-normal column scales), so that they look
more like real activations than white noise and ``H = X^T X`` is well
conditioned after damping. At 50% unstructured and at 2:4:

  * SparseGPT (Frantar & Alistarh 2023): ``jp.oneshot.sparsegpt(W, H, ...)``
    under jit (timed after compilation; the compile time is reported apart)
    against a PyTorch implementation of the same algorithm written below from
    the paper's Algorithm 1 and its reference code (dead inputs, damping,
    Cholesky inverse, blocks of 128 columns, column loop with error
    propagation, trailing update);
  * Wanda (Sun et al. 2023): ``jp.oneshot.wanda(W, norms, ...)`` against a
    PyTorch Wanda (score ``|W| * ||X_j||``, per-row sort; 2:4 by topk per
    group of 4).

For each pair it prints the seconds (best of --repeats interleaved rounds),
PyTorch's time over jaxprune's, and how far the two agree: the fraction of
identical mask entries, the largest difference of the returned weights
relative to ``max |W|`` (for Wanda, of the masked weights), and each side's
output error on the calibration data, ``||(W - W') X^T||^2 / ||W X^T||^2``.
PyTorch runs in float32 without grad, on ``os.cpu_count()`` threads.

Goal: jaxprune no slower than PyTorch on the same CPU.

The peak memory of pruning a whole model block by block against all layers
at once is measured by ``benchmarks/oneshot_memory.py``.

PyTorch is optional: without it, only jaxprune is measured. Prints a table and
writes benchmarks/results/oneshot.json.

  python benchmarks/oneshot.py            # the full size
  python benchmarks/oneshot.py --quick    # 1024 x 1024, 512 tokens
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved_best, table, write

import jaxprune as jp

METHODS = ("sparsegpt 50%", "sparsegpt 2:4", "wanda 50%", "wanda 2:4")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="the kernel is size x size")
    ap.add_argument("--tokens", type=int, default=2048, help="calibration tokens")
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--quick", action="store_true", help="1024 x 1024, 512 tokens, 2 rounds")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.tokens, args.repeats = 1024, 512, 2
    n_out = n_in = args.size

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: measuring jaxprune only.")
    if torch is not None:
        torch.set_num_threads(os.cpu_count())

    w_np, x_np = make_data(n_out, n_in, args.tokens)
    h_np = x_np.T @ x_np
    norms_np = np.sqrt(np.sum(np.square(x_np), axis=0))
    w, h, norms = jnp.asarray(w_np), jnp.asarray(h_np), jnp.asarray(norms_np)
    target = {"50%": {"sparsity": 0.5}, "2:4": {"nm": (2, 4)}}
    opts = {"blocksize": args.blocksize, "percdamp": args.percdamp}

    # jaxprune: compiled ahead of time, so compiling is timed apart from running.
    jp_calls, compile_s = {}, {}
    for name in METHODS:
        kind, pattern = name.split()
        if kind == "sparsegpt":
            fn = jax.jit(lambda w, h, t=target[pattern]: jp.oneshot.sparsegpt(w, h, in_axis=1, **t, **opts))
            a = (w, h)
        else:
            fn = jax.jit(lambda w, n, t=target[pattern]: jp.oneshot.wanda(w, n, in_axis=1, **t))
            a = (w, norms)
        start = time.perf_counter()
        compiled = fn.lower(*a).compile()
        compile_s[name] = time.perf_counter() - start
        jp_calls[name] = lambda c=compiled, a=a: c(*a)

    calls = {("jaxprune", name): call for name, call in jp_calls.items()}
    if torch is not None:
        tw, th, tn = torch.from_numpy(w_np), torch.from_numpy(h_np), torch.from_numpy(norms_np)
        for name in METHODS:
            kind, pattern = name.split()
            if kind == "sparsegpt":
                calls["torch", name] = lambda t=target[pattern]: torch_sparsegpt(torch, tw, th, **t, **opts)
            else:
                calls["torch", name] = lambda t=target[pattern]: torch_wanda(torch, tw, tn, **t)

    outputs = {key: call() for key, call in calls.items()}  # warm-up, and the results compared below
    seconds = interleaved_best(calls, args.repeats)

    w_max = float(np.max(np.abs(w_np)))
    y_ref = float(np.sum(np.square((w_np @ x_np.T).astype(np.float64))))

    def as_numpy(name, out):
        """(new kernel, keep mask) as numpy [out, in]; Wanda's new kernel is the masked W."""
        if name.startswith("sparsegpt"):
            new, keep = out
        else:
            keep = out
            new = None
        keep = np.asarray(keep.numpy() if torch is not None and isinstance(keep, torch.Tensor) else keep)
        if new is None:
            new = np.where(keep, w_np, 0.0)
        new = np.asarray(new.numpy() if torch is not None and isinstance(new, torch.Tensor) else new)
        return new.astype(np.float32), keep.astype(bool)

    def output_error(new):
        return float(np.sum(np.square(((w_np - new) @ x_np.T).astype(np.float64))) / y_ref)

    result = {
        "kernel_shape": [n_out, n_in],
        "calibration_shape": [args.tokens, n_in],
        "hessian_shape": [n_in, n_in],
        "blocksize": args.blocksize,
        "percdamp": args.percdamp,
        "repeats": args.repeats,
        "torch_version": None if torch is None else torch.__version__,
        "torch_threads": None if torch is None else torch.get_num_threads(),
    }
    rows = []
    for name in METHODS:
        jp_new, jp_keep = as_numpy(name, outputs["jaxprune", name])
        entry = {
            "jaxprune_s": seconds["jaxprune", name],
            "compile_s": compile_s[name],
            "jaxprune_pruned": float(1.0 - np.mean(jp_keep)),
            "jaxprune_output_error": output_error(jp_new),
        }
        row = [name, f"{entry['jaxprune_s']:.3f}"]
        if torch is not None:
            t_new, t_keep = as_numpy(name, outputs["torch", name])
            entry |= {
                "torch_s": seconds["torch", name],
                "torch_over_jaxprune": seconds["torch", name] / seconds["jaxprune", name],
                "torch_pruned": float(1.0 - np.mean(t_keep)),
                "torch_output_error": output_error(t_new),
                "mask_agreement": float(np.mean(jp_keep == t_keep)),
                "weight_max_diff": float(np.max(np.abs(jp_new - t_new)) / w_max),
            }
            row += [
                f"{entry['torch_s']:.3f}",
                f"{entry['torch_over_jaxprune']:.2f}x",
                f"{entry['mask_agreement']:.6f}",
                f"{entry['weight_max_diff']:.1e}",
                f"{entry['jaxprune_output_error']:.5f}",
                f"{entry['torch_output_error']:.5f}",
            ]
        else:
            row += [f"{entry['jaxprune_output_error']:.5f}"]
        row.append(f"{entry['compile_s']:.2f}")
        result[name] = entry
        rows.append(row)

    print(
        f"One-shot pruning of one {n_out} x {n_in} kernel ([out, in]; jaxprune with in_axis=1), "
        f"H = X^T X from {args.tokens} correlated tokens; best of {args.repeats} interleaved rounds"
    )
    if torch is not None:
        headers = ["method", "jaxprune s", "PyTorch s", "torch/jp", "same mask", "max|dW|/max|W|"]
        headers += ["err jp", "err torch"]
    else:
        headers = ["method", "jaxprune s", "err jp"]
    print(table([*headers, "jp compile s"], rows))
    print("err = ||(W - W') X^T||^2 / ||W X^T||^2 on the calibration inputs; Wanda's W' is the masked W")
    if torch is not None:
        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, float32, no grad")
    path = write("oneshot_quick" if args.quick else "oneshot", result)
    print(f"wrote {path}")
    return result


def make_data(n_out: int, n_in: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 kernel [out, in] and correlated calibration inputs X [tokens, in] of unequal scale."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    rank = 32
    mixing = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    mixing += rng.standard_normal((n_in, rank)) @ rng.standard_normal((rank, n_in)) / np.sqrt(rank * n_in)
    mixing *= rng.lognormal(0.0, 1.0, n_in)[None, :]  # unequal input scales
    z = rng.standard_normal((tokens, n_in))
    return w, (z @ mixing).astype(np.float32)


def torch_sparsegpt(torch, weight, hessian, *, sparsity=None, nm=None, blocksize=128, percdamp=0.01):
    """SparseGPT in PyTorch, after the paper's reference code (``SparseGPT.fasterprune``): returns (W', keep mask).

    ``weight`` is ``[out, in]``. Two departures from the reference, both to
    make the masks comparable with jaxprune's: the unstructured mask of a
    block prunes exactly ``round(sparsity * numel)`` entries, by a stable sort
    over the block in input-major order (so among equal scores the earlier
    input, then the earlier output, goes first, as in jaxprune), where the
    reference prunes every score ``<=`` the one at index ``int(numel * s)`` of
    the sorted scores, i.e. ``int(numel * s) + 1`` entries (more with ties);
    and the per-column losses are not accumulated.
    """
    with torch.no_grad():
        W = weight.clone().float()
        H = hessian.clone().float()
        columns = W.shape[1]
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
        prunen, prunem = (nm[1] - nm[0], nm[1]) if nm is not None else (0, 0)
        pruned = torch.zeros(W.shape, dtype=torch.bool)

        for i1 in range(0, columns, blocksize):
            i2 = min(i1 + blocksize, columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d1 = torch.diag(Hinv1)

            if prunen == 0:
                tmp = W1**2 / d1.reshape((1, -1)) ** 2
                k = round(sparsity * tmp.numel())
                order = torch.sort(tmp.t().reshape(-1), stable=True)[1][:k]
                flat = torch.zeros(tmp.numel(), dtype=torch.bool)
                flat[order] = True
                mask1 = flat.reshape(count, -1).t()
            else:
                mask1 = torch.zeros(W1.shape, dtype=torch.bool)

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i : i + prunem] ** 2 / d1[i : i + prunem].reshape((1, -1)) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            pruned[:, i1:i2] = mask1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        return W, ~pruned


def torch_wanda(torch, weight, norms, *, sparsity=None, nm=None):
    """Wanda in PyTorch, after the paper's reference code (``prune_wanda``): returns the keep mask.

    Prunes ``round(sparsity * n_in)`` per row (the reference: ``int(...)``;
    the same at 50% of an even width) by a stable sort; N:M by ``topk`` per
    group of m, vectorised over the groups (the reference loops over them).
    """
    with torch.no_grad():
        score = weight.abs() * norms.reshape((1, -1))
        if nm is not None:
            n, m = nm
            groups = score.reshape(score.shape[0], -1, m)
            idx = torch.topk(groups, m - n, dim=-1, largest=False)[1]
            pruned = torch.zeros(groups.shape, dtype=torch.bool).scatter_(-1, idx, True).reshape(score.shape)
        else:
            k = round(sparsity * score.shape[1])
            idx = torch.sort(score, dim=-1, stable=True)[1][:, :k]
            pruned = torch.zeros(score.shape, dtype=torch.bool).scatter_(1, idx, True)
        return ~pruned


if __name__ == "__main__":
    main()
