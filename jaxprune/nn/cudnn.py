"""The LSTM through cuDNN: jaxprune's params packed into the one flat weight buffer ``jax.experimental.rnn`` takes.

``jax.experimental.rnn.lstm`` runs a whole (stacked, optionally
bidirectional) LSTM as one cuDNN call, forward and backward, but takes its
weights as a single 1-D buffer. ``pack_lstm_weights`` builds that buffer from
params in PyTorch's ``nn.LSTM`` layout (as ``init_lstm`` returns them), with
the pruning masks applied once, and ``run_layers`` runs consecutive layers
through it for ``jp.lstm(..., backend="cudnn")``, which checks the arguments
and applies dropout around it.

The buffer's layout (the one ``jax.experimental.rnn.unpack_lstm_weights``
reads, and JAX checks against cuDNN in its own tests). The pseudo-layers are
``layer_0, layer_0_reverse, layer_1, layer_1_reverse, ...`` (without the
``_reverse`` ones when unidirectional); first every pseudo-layer's two
matrices, then every pseudo-layer's two biases, each flattened row-major::

    w_ih⁰ w_hh⁰ w_ih¹ w_hh¹ ... b_ih⁰ b_hh⁰ b_ih¹ b_hh¹ ...

The matrices keep PyTorch's ``[4 * hidden, in]`` shape and both biases stay
separate (cuDNN's double-bias mode), and cuDNN's LSTM gate order is
PyTorch's, i, f, g, o, so nothing is transposed, summed or permuted. (MIOpen,
on ROCm, orders the gates i, f, o, g; ``run_layers`` swaps g and o there, as
``jax.experimental.rnn.swap_lstm_gates`` does in JAX's tests.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import rnn

from jaxprune.masks import apply_mask
from jaxprune.nn.rnn_checks import LSTM_CELL, check_params, layer_names

Params = dict[str, dict[str, jax.Array]]

_CUDNN_GATES = (0, 1, 2, 3)  # i, f, g, o: PyTorch's order, and cuDNN's
_MIOPEN_GATES = (0, 1, 3, 2)  # i, f, o, g


def available() -> bool:
    """Whether cuDNN can run here: JAX's default backend is a GPU."""
    return jax.default_backend() == "gpu"


def _pack(layers: Sequence[Mapping[str, jax.Array]], gates: tuple[int, ...]) -> jax.Array:
    """The flat buffer of (already masked) pseudo-layers, in order, with the four gate blocks in ``gates`` order."""
    h = layers[0]["w_hh"].shape[1]

    def flat(w: jax.Array) -> jax.Array:
        if gates != _CUDNN_GATES:
            w = jnp.concatenate([w[g * h : (g + 1) * h] for g in gates])
        return w.reshape(-1)

    pieces = [p[k] for p in layers for k in ("w_ih", "w_hh")] + [p[k] for p in layers for k in ("b_ih", "b_hh")]
    return jnp.concatenate([flat(w) for w in pieces])


def pack_lstm_weights(params: Params, masks: Any = None) -> jax.Array:
    """Packs (masked) LSTM params into the flat weight buffer of ``jax.experimental.rnn.lstm``.

    Pure ``jnp`` (mask, reshape, concatenate), so it works under ``jit`` and
    the gradient with respect to the buffer flows back to ``params`` (and is
    exactly zero at pruned weights). The buffer is in cuDNN's gate order,
    which is PyTorch's: ``jax.experimental.rnn.unpack_lstm_weights`` gives
    back each layer's ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` unchanged.

    Example::

        w = pack_lstm_weights(params, masks)
        w_ih, w_hh, b_ih, b_hh = jax.experimental.rnn.unpack_lstm_weights(w, input_size, hidden, layers, bidir)
        # w_ih[1] is params["layer_0_reverse"]["w_ih"] masked (pseudo-layer 2 * i + d)

    Args:
      params: from ``jp.init_lstm`` (or converted from PyTorch): ``layer_i``
        (and ``layer_i_reverse``) each with ``w_ih [4H, in]``, ``w_hh [4H, H]``,
        ``b_ih [4H]``, ``b_hh [4H]``, one hidden size ``H`` and one floating dtype.
      masks: pruning masks mirroring ``params`` (``jp.init_masks``/``jp.prune``), or None.

    Returns:
      A 1-D array of the params' dtype, of length
      ``jax.experimental.rnn.get_num_params_in_lstm(input_size, H, num_layers, bidirectional)``.

    Raises:
      TypeError: ``params`` is not a dict of layers, a weight is not a floating
        array, the weights' dtypes differ, or a mask leaf is not bool.
      ValueError: a layer or weight is missing or has the wrong shape, the
        layers have different widths (cuDNN takes one), or ``masks`` does not
        mirror ``params`` (the message names the first path).
    """
    dims = check_params(params, LSTM_CELL)
    if not dims.uniform:
        raise ValueError(
            f"`params` has layers of different widths {[list(w) for w in dims.widths]}; one cuDNN buffer holds "
            "one hidden size (jp.lstm runs such a stack with backend='scan', or one cuDNN call per layer)."
        )
    if masks is not None:
        params = apply_mask(params, masks)  # checks that masks mirror params
    return _pack(
        [params[n] for names in layer_names(dims.num_layers, dims.directions == 2) for n in names], _CUDNN_GATES
    )


def _device_weights(layers: list[Mapping[str, jax.Array]]) -> jax.Array:
    """The buffer in the gate order of the GPU library the computation is lowered for (cuDNN or MIOpen)."""
    return lax.platform_dependent(
        layers, rocm=lambda p: _pack(p, _MIOPEN_GATES), default=lambda p: _pack(p, _CUDNN_GATES)
    )


def run_layers(
    layers: list[Mapping[str, jax.Array]],
    xs: jax.Array,
    h0: list[jax.Array],
    c0: list[jax.Array],
    lengths: jax.Array | None,
    directions: int,
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Runs consecutive LSTM layers as one cuDNN call (``jax.experimental.rnn.lstm``), forward and backward.

    The arguments are checked by the caller (``jp.lstm``): ``layers`` are the
    pseudo-layers' masked weights in order (``layer_i``, ``layer_i_reverse``,
    ...), of one width and float32; ``xs`` is ``[time, batch, input]``;
    ``h0`` and ``c0`` hold one ``[batch, hidden]`` array per pseudo-layer.
    Returns ``jp.lstm``'s outputs (``[time, batch, directions * hidden]``, 0
    past each length) and the final states, one per pseudo-layer.
    """
    time, batch = xs.shape[:2]
    input_size, hidden = layers[0]["w_ih"].shape[1], layers[0]["w_hh"].shape[1]
    h_init, c_init = jnp.stack(h0), jnp.stack(c0)
    if lengths is None:
        seq_lengths = jnp.full((batch,), time, jnp.int32)
    else:
        # A sequence of length 0 runs one step here and is put back to its initial state below,
        # so the result never depends on how cuDNN treats empty sequences.
        seq_lengths = jnp.maximum(lengths, 1).astype(jnp.int32)
    num_layers, bidirectional = len(layers) // directions, directions == 2
    x = jnp.swapaxes(xs, 0, 1)  # the kernel reads and writes [batch, time, features]
    weights = _device_weights(layers)
    y, h_n, c_n = rnn.lstm(x, h_init, c_init, weights, seq_lengths, input_size, hidden, num_layers, 0.0, bidirectional)
    y = jnp.swapaxes(y, 0, 1)
    if lengths is not None:
        y = jnp.where(jnp.arange(time)[:, None, None] < lengths[None, :, None], y, jnp.zeros((), y.dtype))
        empty = (lengths == 0)[None, :, None]
        h_n, c_n = jnp.where(empty, h_init, h_n), jnp.where(empty, c_init, c_n)
    return y, list(h_n), list(c_n)
