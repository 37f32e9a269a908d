"""One-shot pruning of a trained model from calibration data, layer by layer.

A one-shot method looks at what each layer saw on a few calibration batches
and prunes it once, without training:

* ``wanda(kernel, input_norms, ...)``: Wanda (Sun et al. 2023): per output,
  prune the weights with the lowest ``|W_ij| * ||X_j||_2``; returns a mask.
* ``sparsegpt(kernel, hessian, ...)``: SparseGPT (Frantar & Alistarh 2023):
  prune block by block by ``W_ij^2 / [H^-1]_jj`` (through a Cholesky factor)
  and update the kept weights to compensate (Optimal Brain Surgeon); returns
  ``(new_kernel, mask)``.

Around them:

* ``init_stats``, ``accumulate``, ``input_norms``: what a layer saw on
  calibration data (``InputStats``: per-input squared norms, ``X^T X``).
* ``prune_kernel(kernel, stats, method=...)``: one kernel by ``"magnitude"``,
  ``"wanda"`` or ``"sparsegpt"``.
* ``prune_lstm(params, batches, method=...)``: a ``jp.lstm`` model, layer by
  layer, each from the inputs the pruned layers below give it.

The kernel functions work on one 2-D kernel, in Flax's ``[in, out]`` layout (``in_axis=0``)
or PyTorch's ``[out, in]`` (``in_axis=1``), unstructured (``sparsity=``) or
N:M (``nm=(2, 4)``), with exact counts and jaxprune's tie rule (the earlier
input is pruned first), and run under ``jax.jit`` with the targets static.
"""

from jaxprune.oneshot.kernels import sparsegpt, wanda
from jaxprune.oneshot.sequential import METHODS, prune_kernel, prune_lstm
from jaxprune.oneshot.stats import InputStats, accumulate, init_stats, input_norms

__all__ = [
    "METHODS",
    "InputStats",
    "accumulate",
    "init_stats",
    "input_norms",
    "prune_kernel",
    "prune_lstm",
    "sparsegpt",
    "wanda",
]
