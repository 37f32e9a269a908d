"""Pruning a trained model once, layer by layer, from calibration data (as the Wanda and SparseGPT papers do).

    params, masks = jp.oneshot.prune_lstm(params, calibration_batches, method="sparsegpt", sparsity=0.5)

Sequential: layer ``l`` is pruned from statistics of its inputs as the layers
before it, *already pruned*, produce them; then its pruned version produces
the next layer's inputs. Within a layer every kernel is pruned from the dense
layer's inputs (SparseGPT prunes a transformer block's sublayers the same
way). Memory holds one layer's statistics at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._checks import check_fraction
from jaxprune._tree import PyTree
from jaxprune.masks import init_masks
from jaxprune.nn.recurrent import lstm
from jaxprune.nn.rnn_checks import check_lengths
from jaxprune.oneshot.kernels import sparsegpt, wanda
from jaxprune.oneshot.stats import InputStats, accumulate, init_stats, input_norms
from jaxprune.pruning import prune
from jaxprune.structures import NM

METHODS = ("magnitude", "wanda", "sparsegpt")


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    return method


def prune_kernel(
    kernel: jax.Array,
    stats: InputStats | None,
    *,
    method: str,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    in_axis: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """One kernel pruned by ``method``; returns ``(kernel, mask)`` with the pruned entries exactly 0.

    ``"magnitude"``: the lowest ``|W|`` of the whole kernel (layer-wise, the
    papers' baseline; ``stats`` unused, may be None), or N:M along the inputs.
    ``"wanda"``: ``wanda`` with ``input_norms(stats)``. ``"sparsegpt"``:
    ``sparsegpt`` with ``stats.hessian`` (the kept weights are updated).

    Raises:
      ValueError: an unknown ``method``, or ``stats`` without what it needs
        (``None``, or no Hessian for SparseGPT); and whatever the method raises.
    """
    method = _check_method(method)
    if method == "magnitude":
        full = jnp.ones(jnp.shape(kernel), bool)
        if nm is not None:
            mask = prune(jnp.abs(kernel), full, structure=NM(nm[0], nm[1], axis=in_axis))
        else:
            mask = _magnitude_mask(kernel, check_fraction("sparsity", sparsity))
        return jnp.where(mask, kernel, 0).astype(kernel.dtype), mask
    if stats is None:
        raise ValueError(f"method={method!r} needs the layer's input statistics (`stats`), got None.")
    if method == "wanda":
        mask = wanda(kernel, input_norms(stats), sparsity=sparsity, nm=nm, in_axis=in_axis)
        return jnp.where(mask, kernel, 0).astype(kernel.dtype), mask
    if stats.hessian is None:
        raise ValueError("method='sparsegpt' needs `stats` collected with hessian=True (X^T X).")
    return sparsegpt(
        kernel, stats.hessian, sparsity=sparsity, nm=nm, blocksize=blocksize, percdamp=percdamp, in_axis=in_axis
    )


def prune_in_model(
    source: str, kernel: jax.Array, stats: InputStats | None, **target: Any
) -> tuple[jax.Array, jax.Array]:
    """``prune_kernel`` on one kernel of a model pruned layer by layer; a ``ValueError`` names the kernel.

    ``source`` says which kernel and which argument its statistics came from
    (e.g. "the calibration `batches` gave layer_1/w_hh"). The target was
    checked before (``check_target``), so what raises here is the statistics:
    non-finite calibration inputs, or a Hessian SparseGPT cannot factor.
    """
    try:
        return prune_kernel(kernel, stats, **target)
    except ValueError as e:
        raise ValueError(f"{source} statistics it cannot be pruned from: {e}") from e


def check_target(shapes: Iterable[tuple[int, int]], **target: Any) -> None:
    """Runs ``prune_kernel``'s checks of ``target`` for kernels of these ``[in, out]`` shapes, tracing only.

    So a bad method, range or N:M width raises before any calibration work.
    """
    method = _check_method(target.get("method"))
    for n_in, n_out in set(shapes):
        kernel = jax.ShapeDtypeStruct((n_in, n_out), jnp.float32)
        stats = jax.eval_shape(lambda n=n_in: init_stats(n, hessian=method == "sparsegpt"))
        jax.eval_shape(lambda k, s: prune_kernel(k, s, **target), kernel, stats)


def _as_list(x: Any) -> list[Any]:
    """One array, or a sequence of them, as a list."""
    return [x] if hasattr(x, "shape") else list(x)


def prune_lstm(
    params: PyTree,
    batches: jax.Array | Sequence[jax.Array],
    *,
    method: str = "sparsegpt",
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    batch_first: bool = False,
    lengths: jax.Array | Sequence[jax.Array] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[PyTree, PyTree]:
    """Prunes every ``w_ih`` and ``w_hh`` of a ``jp.lstm`` model once, layer by layer, from calibration sequences.

    For layer ``l`` (both directions when bidirectional): ``w_ih`` is pruned
    from the layer's input sequence, as the pruned layers below produce it;
    ``w_hh`` of each direction from the hidden states ``h_{t-1}`` that the
    dense layer's scan feeds it (the zero initial state adds nothing). Then
    the pruned layer runs on the calibration data to give the next layer's
    inputs. Counts are per kernel as the method defines them (per output for
    Wanda, per block for SparseGPT, per kernel for magnitude), each exact.

    Args:
      params: ``init_lstm`` params (``layer_i``, ``layer_i_reverse``).
      batches: calibration inputs: one ``[time, batch, input]`` array or a
        sequence of them (``[batch, time, input]`` with ``batch_first``).
      method: ``"sparsegpt"`` (default), ``"wanda"`` or ``"magnitude"``.
      sparsity: the target, exactly one of ``sparsity`` and ``nm`` (as in ``wanda``/``sparsegpt``).
      nm: the N:M target ``(n, m)``, instead of ``sparsity``.
      batch_first: the layout of ``batches``.
      lengths: padded calibration sequences: one int ``[batch]`` array per
        batch (as ``lstm(lengths=)``), or None when every step is real. Steps
        past a sequence's length add nothing to any statistic.
      blocksize: SparseGPT's, as in ``sparsegpt``.
      percdamp: SparseGPT's, as in ``sparsegpt``.

    Returns:
      ``(params, masks)``: params with the pruned weights exactly 0 (and the
      kept ones updated, for SparseGPT), masks as ``init_masks(params)``
      shapes them (biases ``None``), ready for ``finalize``, ``summary``,
      ``Checkpointer`` or fine-tuning with ``masked_optimizer``.

    Raises:
      ValueError, TypeError: a bad ``method`` or target, ``batches`` empty
        or not fitting the params (``lstm``'s checks name what is wrong).
      ValueError: statistics a kernel cannot be pruned from, naming the
        kernel (``layer_1/w_hh``): NaN or inf in what it saw (Wanda's norms,
        SparseGPT's Hessian), or a Hessian not positive definite after
        damping (raise ``percdamp``).
    """
    method = _check_method(method)
    batches = _as_list(batches)
    if not batches:
        raise ValueError("`batches` must hold at least one calibration batch, got none.")
    lengths = _as_list([None] * len(batches) if lengths is None else lengths)
    if len(lengths) != len(batches):
        raise ValueError(f"`lengths` must hold one array per batch: {len(batches)} batches, {len(lengths)} lengths.")
    for b, n in zip(batches, lengths):  # lstm's checks, on shapes (and the lengths' values) only: nothing runs
        jax.eval_shape(lambda p, x, n: lstm(p, x, batch_first=batch_first, lengths=n), params, b, n)
        check_lengths(n, b, batch_first)  # under eval_shape the lengths were tracers: their range, here
    if batch_first:
        batches = [jnp.swapaxes(b, 0, 1) for b in batches]
    suffixes = [""] + (["_reverse"] if "layer_0_reverse" in params else [])
    num_layers = sum(1 for k in params if k.startswith("layer_") and not k.endswith("_reverse"))
    hessian = method == "sparsegpt"
    target = {"method": method, "sparsity": sparsity, "nm": nm, "blocksize": blocksize, "percdamp": percdamp}
    shapes = {params[f"layer_{i}"][w].shape[::-1] for i in range(num_layers) for w in ("w_ih", "w_hh")}
    check_target(shapes, **target)
    new_params = dict(params)
    new_masks = dict(init_masks(params))
    inputs = batches
    for layer in range(num_layers):
        names = [f"layer_{layer}{s}" for s in suffixes]
        single = {f"layer_0{s}": params[n] for s, n in zip(suffixes, names)}
        hidden = single["layer_0"]["w_hh"].shape[1]
        ih, hh = _layer_stats(single, inputs, lengths, hidden, len(suffixes), hessian)
        for d, name in enumerate(names):
            source = f"the calibration `batches` gave {name}/"
            w_ih, m_ih = prune_in_model(source + "w_ih", params[name]["w_ih"], ih, in_axis=1, **target)
            w_hh, m_hh = prune_in_model(source + "w_hh", params[name]["w_hh"], hh[d], in_axis=1, **target)
            new_params[name] = {**params[name], "w_ih": w_ih, "w_hh": w_hh}
            new_masks[name] = {**new_masks[name], "w_ih": m_ih, "w_hh": m_hh}
        pruned = {f"layer_0{s}": new_params[n] for s, n in zip(suffixes, names)}
        inputs = [_run_layer(pruned, x, n) for x, n in zip(inputs, lengths)]
    return new_params, new_masks


@jax.jit
def _magnitude_mask(kernel: jax.Array, sparsity: jax.Array) -> jax.Array:
    return prune(jnp.abs(kernel), jnp.ones(kernel.shape, bool), sparsity=sparsity)


@jax.jit
def _run_layer(single: PyTree, xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
    return lstm(single, xs, lengths=lengths)[0]


def _layer_stats(
    single: PyTree, inputs: list[jax.Array], lengths: list, hidden: int, directions: int, hessian: bool
) -> tuple[InputStats, list[InputStats]]:
    """Statistics of one layer's ``w_ih`` inputs and of each direction's ``w_hh`` inputs, over every batch."""
    ih = init_stats(inputs[0].shape[-1], hessian=hessian)
    hh = [init_stats(hidden, hessian=hessian) for _ in range(directions)]
    for xs, n in zip(inputs, lengths):
        ih, hh = _add_layer_inputs(single, ih, hh, xs, n, hidden, directions)
    return ih, hh


@functools.partial(jax.jit, static_argnums=(5, 6))
def _add_layer_inputs(single, ih, hh, xs, lengths, hidden, directions):
    outputs = lstm(single, xs, lengths=lengths)[0]  # [T, B, directions * hidden]: h_t of each direction
    steps = jnp.arange(xs.shape[0])[:, None]
    valid = jnp.ones(xs.shape[:2], bool) if lengths is None else steps < lengths[None, :]
    hh = list(hh)
    # Step t of the forward direction reads h_{t-1}, of the reverse one h_{t+1}: both are real where step t
    # is real and t >= 1 (forward) or t + 1 is real (reverse), i.e. rows 1.. of `valid` against each side.
    hh[0] = accumulate(hh[0], outputs[:-1, :, :hidden], valid[1:])
    if directions == 2:
        hh[1] = accumulate(hh[1], outputs[1:, :, hidden:], valid[1:])
    return accumulate(ih, xs, valid), hh
