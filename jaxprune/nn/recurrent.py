"""Recurrent layers: ``lstm`` and ``gru`` on ``lax.scan`` (the LSTM also on cuDNN), masks and dropout outside the scan.

Parameters follow PyTorch's ``nn.LSTM`` and ``nn.GRU`` (names, ``[gates *
hidden, in]`` layout, gate order, initialisation U(-1/sqrt(hidden),
1/sqrt(hidden))), so weights and results compare with PyTorch one to one,
and ``Structured(axis=0, groups=4)`` (3 for the GRU) prunes whole hidden
units across the gates.

This module stacks layers and directions, checks the inputs, and applies
masks (pruning or weight drop) to the weights once per call, before the
scan; locked dropout masks are drawn once per sequence. Each cell's own math
(the scanned step and its custom VJP) lives in ``lstm_cell`` and ``gru_cell``.
Layers may have different widths (as ``compact`` leaves a unit-pruned
stack); the final states are then a tuple of per-layer arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._checks import KEY_HELP, check_int, check_key
from jaxprune.masks import apply_mask
from jaxprune.nn import cudnn, gru_cell, lstm_cell
from jaxprune.nn.dropouts import check_rate, locked_dropout, weight_drop
from jaxprune.nn.rnn_checks import (
    GRU_CELL,
    LSTM_CELL,
    Cell,
    Dims,
    check_lengths,
    check_params,
    check_xs,
    layer_names,
    split_state,
)

# Each cell's scanned layer: (xs, w_ih, w_hh, b_ih, b_hh, state0, h_mask, zoneout, z_key, deterministic, valid).
_SCAN_LAYER = {LSTM_CELL.name: lstm_cell.scan_layer, GRU_CELL.name: gru_cell.scan_layer}

Params = dict[str, dict[str, jax.Array]]
State = jax.Array | tuple[jax.Array, ...]


class RNNDropout(NamedTuple):
    """Dropout rates for ``lstm`` and ``gru``; each is a float in [0, 1) (zoneout in [0, 1]).

    Attributes:
      input: locked dropout on each layer's input sequence (one mask per sequence).
      hidden: locked dropout on the recurrent state ``h`` fed back into the cell
        (Gal & Ghahramani's variational RNN dropout).
      output: locked dropout on the last layer's output sequence.
      weight: DropConnect on the recurrent weights ``w_hh`` (AWD-LSTM), one mask per call.
      zoneout: probability that a unit of ``h`` (and the LSTM's ``c``) keeps its previous value
        (a fresh mask per step; the expectation when deterministic).
    """

    input: float = 0.0
    hidden: float = 0.0
    output: float = 0.0
    weight: float = 0.0
    zoneout: float = 0.0

    def check(self) -> None:
        """Raises ``TypeError``/``ValueError`` for a rate that is not a float in range (traced rates pass)."""
        for name in ("input", "hidden", "output", "weight"):
            check_rate(getattr(self, name), f"dropout.{name}")
        check_rate(self.zoneout, "dropout.zoneout", allow_one=True)


def _init(cell: Cell, key, input_size, hidden_size, num_layers, bidirectional) -> Params:
    check_key(key)
    input_size = check_int("input_size", input_size, minimum=1)
    hidden_size = check_int("hidden_size", hidden_size, minimum=1)
    num_layers = check_int("num_layers", num_layers, minimum=1)
    if not isinstance(bidirectional, bool):
        raise TypeError(f"`bidirectional` must be a bool, got {type(bidirectional).__name__} {bidirectional!r}.")
    bound, rows = hidden_size**-0.5, cell.gates * hidden_size
    params = {}
    for i, names in enumerate(layer_names(num_layers, bidirectional)):
        n_in = input_size if i == 0 else hidden_size * len(names)
        for name in names:
            key, *k = jax.random.split(key, 5)
            shapes = {"w_ih": (rows, n_in), "w_hh": (rows, hidden_size), "b_ih": (rows,), "b_hh": (rows,)}
            params[name] = {
                n: jax.random.uniform(kk, s, minval=-bound, maxval=bound) for kk, (n, s) in zip(k, shapes.items())
            }
    return params


def init_lstm(
    key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False
) -> Params:
    """PyTorch-initialised LSTM params: ``{"layer_0": {"w_ih", "w_hh", "b_ih", "b_hh"}, "layer_0_reverse": ...}``.

    Args:
      key: one PRNG key.
      input_size: features per timestep of the input, >= 1.
      hidden_size: units per layer and direction, >= 1.
      num_layers: stacked layers, >= 1.
      bidirectional: add a ``layer_i_reverse`` beside each layer.

    Returns:
      float32 params (``w_ih [4H, in]``, ``w_hh [4H, H]``, ``b_ih [4H]``,
      ``b_hh [4H]``, gates i, f, g, o), each drawn from
      U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as PyTorch does.

    Raises:
      TypeError: ``key`` is not one PRNG key, a size is not an int, or ``bidirectional`` is not a bool.
      ValueError: a size is < 1.
    """
    return _init(LSTM_CELL, key, input_size, hidden_size, num_layers, bidirectional)


def init_gru(
    key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False
) -> Params:
    """PyTorch-initialised GRU params: ``init_lstm``'s layout with 3 gate blocks (r, z, n) instead of 4.

    The arguments, their checks and the initialisation are ``init_lstm``'s;
    the params are ``w_ih [3H, in]``, ``w_hh [3H, H]``, ``b_ih [3H]`` and
    ``b_hh [3H]`` per layer and direction, as PyTorch's ``nn.GRU`` holds them.
    """
    return _init(GRU_CELL, key, input_size, hidden_size, num_layers, bidirectional)


def _active(rate: float | jax.Array) -> bool:
    """Whether a checked rate may be non-zero (a traced one may be)."""
    return isinstance(rate, jax.core.Tracer) or float(rate) != 0.0


BACKENDS = ("auto", "scan", "cudnn")


def _use_cudnn(backend: Any, dims: Dims, rates: RNNDropout, deterministic: bool) -> bool:
    """Whether to run the LSTM through cuDNN; raises where ``backend="cudnn"`` was asked for and cannot be."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    if backend == "scan":
        return False
    why_not = None
    if not cudnn.available():
        why_not = f"cuDNN needs a GPU, but jax.default_backend() is {jax.default_backend()!r}"
    elif (_active(rates.hidden) and not deterministic) or _active(rates.zoneout):
        why_not = "cuDNN runs no per-step dropout, so dropout.hidden and dropout.zoneout must be 0"
    elif any(len(set(w)) > 1 for w in dims.widths):
        why_not = f"cuDNN runs both directions of a layer at one width, but the widths are {dims.widths}"
    elif jnp.dtype(dims.dtype) != jnp.float32:
        why_not = f"JAX's cuDNN LSTM takes float32 only, but the params are {dims.dtype}"
    if why_not is not None and backend == "cudnn":
        raise ValueError(f"`backend='cudnn'` cannot run this call: {why_not}; use backend='auto' or 'scan'.")
    return why_not is None


def _run(cell, params, xs, masks, dropout, key, deterministic, initial_state, batch_first, lengths, backend="scan"):
    """Checks everything, then runs the stack: ``(outputs, final states, one per part of the state)``."""
    dims = check_params(params, cell)
    check_xs(dims, xs, batch_first, cell)
    batch = xs.shape[0 if batch_first else 1]
    states0 = split_state(dims, cell, initial_state, batch)
    check_lengths(lengths, xs, batch_first)
    if dropout is not None and not isinstance(dropout, RNNDropout):
        raise TypeError(f"`dropout` must be a jp.RNNDropout(...) or None, got {type(dropout).__name__} {dropout!r}.")
    rates = dropout or RNNDropout()
    rates.check()
    if not deterministic and any(_active(r) for r in rates) and key is None:
        raise TypeError(f"`key` is required when a dropout rate is non-zero and `deterministic` is False; {KEY_HELP}.")
    if key is not None:
        check_key(key)
    use_cudnn = _use_cudnn(backend, dims, rates, deterministic)
    if masks is not None:
        params = apply_mask(params, masks)  # once, outside the scan; checks that masks mirror params
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    directions, widths = dims.directions, dims.flat_widths
    keys = iter(jax.random.split(key, 4 * dims.num_layers * 2 + 1)) if key is not None else None

    def next_key():
        return next(keys) if keys is not None else None

    if states0 is None:
        states0 = [[jnp.zeros((batch, w), xs.dtype) for w in widths] for _ in cell.states]
    zoneout_rate = rates.zoneout if _active(rates.zoneout) else None
    valid = None if lengths is None else (jnp.arange(xs.shape[0])[:, None] < lengths[None, :])[..., None]

    def dropped_input(xs):
        if not _active(rates.input):
            return xs
        return locked_dropout(next_key(), xs, rates.input, deterministic=deterministic)

    def layer_weights(name):
        p = dict(params[name])
        if _active(rates.weight):
            p["w_hh"] = weight_drop(next_key(), p["w_hh"], rates.weight, deterministic=deterministic)
        return p

    layers = layer_names(dims.num_layers, directions == 2)
    # cuDNN runs the whole stack in one call unless something happens between layers.
    groups = [layers] if use_cudnn and dims.uniform and not _active(rates.input) else [[names] for names in layers]
    final: list[list[jax.Array]] = [[] for _ in cell.states]
    for group in groups:
        first = len(final[0])  # the pseudo-layer index of the group's first layer and direction
        if use_cudnn:
            weights = []
            for names in group:
                xs = dropped_input(xs)  # (only where the group is one layer)
                weights += [layer_weights(name) for name in names]
            h0, c0 = (part[first : first + len(weights)] for part in states0)
            xs, h_n, c_n = cudnn.run_layers(weights, xs, h0, c0, lengths, directions)
            final[0] += h_n
            final[1] += c_n
            continue
        ((names,), outs) = group, []
        xs = dropped_input(xs)
        for d, name in enumerate(names):
            p, k = layer_weights(name), first + d
            h_mask = None
            if _active(rates.hidden) and not deterministic:
                h_mask = locked_dropout(next_key(), jnp.ones((1, batch, widths[k]), xs.dtype), rates.hidden)[0]
            z_key = next_key() if zoneout_rate is not None else None
            seq = _reversed(xs, lengths) if d == 1 else xs
            state0 = tuple(part[k] for part in states0)
            out, state = _SCAN_LAYER[cell.name](
                seq, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], state0, h_mask, zoneout_rate, z_key, deterministic,
                valid,
            )  # fmt: skip
            outs.append(_reversed(out, lengths) if d == 1 else out)
            for part, s in zip(final, state):
                part.append(s)
        xs = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
    if _active(rates.output):
        xs = locked_dropout(next_key(), xs, rates.output, deterministic=deterministic)
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    return xs, tuple(jnp.stack(part) if dims.uniform else tuple(part) for part in final)


_ARGS_DOC = """
    Args:
      params: from ``{init}`` (or converted from PyTorch): ``layer_i`` (and
        ``layer_i_reverse``) each with ``w_ih [{g}H, in]``, ``w_hh [{g}H, H]``,
        ``b_ih [{g}H]``, ``b_hh [{g}H]``, all of one floating dtype. Layers
        may have different widths ``H`` (as ``compact`` leaves them).
      xs: ``[time, batch, input]`` (``[batch, time, input]`` with ``batch_first``),
        of the params' dtype.
      masks: pruning masks for ``params`` (``init_masks``/``prune``), or None.
      dropout: ``RNNDropout`` rates, or None for no dropout.
      key: one PRNG key, needed when any dropout rate is non-zero and not deterministic.
      deterministic: turn dropout off (zoneout uses its expectation).
      initial_state: {state_doc}; zeros if None. Each is
        ``[layers * directions, batch, hidden]`` of the params' dtype, or a
        list of ``[batch, width]`` arrays (layer 0 forward, layer 0 reverse,
        layer 1, ...), which layers of different widths need.
      batch_first: as in PyTorch (``initial_state`` and the final states stay batch second, as there).
      lengths: int ``[batch]``, each sequence's number of valid steps (0 to
        time), or None for all. Past its length a sequence's outputs are 0
        and its state stops changing, so the final states are those at its
        last valid step, and the reverse direction starts at that step: what
        PyTorch gives with ``pack_padded_sequence`` (sorted or not), ``nn.{name}``
        and ``pad_packed_sequence``.
"""

_RAISES_DOC = """
    Raises:
      TypeError: a value of the wrong kind: ``xs``, ``initial_state`` or a
        param not a floating array, their dtypes differ, ``dropout`` not an
        ``RNNDropout``, ``key`` not one PRNG key (or missing when needed), or
        a mask leaf not bool.
      ValueError: a shape that does not fit: params missing a layer or
        weight or with a wrong shape, ``xs`` not 3-D or of another input size,
        ``initial_state`` of another shape, masks not mirroring params,
        ``lengths`` out of range, a dropout rate out of range, or (LSTM) an
        unknown ``backend`` or ``backend="cudnn"`` where cuDNN cannot run.
"""


def lstm(
    params: Params,
    xs: jax.Array,
    *,
    masks: Any = None,
    dropout: RNNDropout | None = None,
    key: jax.Array | None = None,
    deterministic: bool = False,
    initial_state: tuple[State, State] | None = None,
    batch_first: bool = False,
    lengths: jax.Array | None = None,
    backend: str = "auto",
) -> tuple[jax.Array, tuple[State, State]]:
    """Runs the LSTM over a sequence; ``nn.LSTM``'s results for PyTorch's weights.
    {args}      backend: ``"scan"`` (``lax.scan``, anywhere), ``"cudnn"`` (one
        cuDNN call per stack, or per layer where input dropout acts between
        layers; GPU only, float32, no hidden dropout or zoneout), or
        ``"auto"``: cuDNN where it can run, the scan otherwise. Both give
        ``nn.LSTM``'s results; gradients reach ``params`` either way.

    Returns:
      ``outputs`` (``[time, batch, sum of the last layer's widths]``, or batch
      first) and ``(h_n, c_n)``, each ``[layers * directions, batch, hidden]``
      as in PyTorch; when the layers' widths differ, each is a tuple of
      ``[batch, width]`` arrays in that order instead.
    {raises}"""
    out, (h, c) = _run(
        LSTM_CELL, params, xs, masks, dropout, key, deterministic, initial_state, batch_first, lengths, backend
    )
    return out, (h, c)


def gru(
    params: Params,
    xs: jax.Array,
    *,
    masks: Any = None,
    dropout: RNNDropout | None = None,
    key: jax.Array | None = None,
    deterministic: bool = False,
    initial_state: State | None = None,
    batch_first: bool = False,
    lengths: jax.Array | None = None,
) -> tuple[jax.Array, State]:
    """Runs the GRU over a sequence; ``nn.GRU``'s results for PyTorch's weights.

    Everything but the state is as in ``lstm``: the state is ``h`` alone,
    zoneout acts on it, and recurrent dropout acts on the ``h`` entering the
    matmul ``W_hh h`` (the ``z * h`` carry is not dropped).
    {args}
    Returns:
      ``outputs`` (``[time, batch, sum of the last layer's widths]``, or
      batch first) and ``h_n`` ``[layers * directions, batch, hidden]`` as in
      PyTorch; when the layers' widths differ, a tuple of ``[batch, width]``
      arrays in that order instead.
    {raises}"""
    out, (h,) = _run(GRU_CELL, params, xs, masks, dropout, key, deterministic, initial_state, batch_first, lengths)
    return out, h


if lstm.__doc__ is not None and gru.__doc__ is not None:  # None under python -OO
    lstm.__doc__ = lstm.__doc__.format(
        args=_ARGS_DOC.format(init="init_lstm", g=4, name="LSTM", state_doc="``(h0, c0)``"), raises=_RAISES_DOC
    )
    gru.__doc__ = gru.__doc__.format(
        args=_ARGS_DOC.format(init="init_gru", g=3, name="GRU", state_doc="``h0``"), raises=_RAISES_DOC
    )


def _reversed(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Each sequence's valid steps in reverse order (steps past its length stay where they are).

    Its own inverse: the reverse direction reads ``_reversed(xs)`` and its
    outputs are put back in time order by ``_reversed`` again.
    """
    if lengths is None:
        return xs[::-1]
    t = jnp.arange(xs.shape[0])[:, None]
    index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [time, batch]
    return jnp.take_along_axis(xs, index[..., None], axis=0)
