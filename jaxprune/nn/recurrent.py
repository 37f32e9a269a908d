"""A functional LSTM on ``lax.scan``, with pruning masks and dropout applied outside the scan.

Parameters follow PyTorch's ``nn.LSTM`` (names, ``[4 * hidden, in]`` layout,
gate order i, f, g, o, initialisation U(-1/sqrt(hidden), 1/sqrt(hidden))), so
weights and results compare with it one to one, and
``Structured(axis=0, groups=4)`` prunes whole hidden units across the gates.

Masks (pruning or weight drop) are applied to the weights once per call,
before the scan; locked dropout masks are drawn once per sequence. The input
projection of all timesteps is one matmul before the scan, so the scanned
step is a single ``[batch, hidden] x [hidden, 4 * hidden]`` matmul and the
cell's elementwise math.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._checks import KEY_HELP, check_float_array, check_int, check_key
from jaxprune.masks import apply_mask
from jaxprune.nn.dropouts import check_rate, locked_dropout, weight_drop, zoneout

Params = dict[str, dict[str, jax.Array]]

WEIGHTS = ("w_ih", "w_hh", "b_ih", "b_hh")


class RNNDropout(NamedTuple):
    """Dropout rates for ``lstm``; each is a float in [0, 1) (zoneout in [0, 1]).

    Attributes:
      input: locked dropout on each layer's input sequence (one mask per sequence).
      hidden: locked dropout on the recurrent state ``h`` fed back into the cell
        (Gal & Ghahramani's variational RNN dropout).
      output: locked dropout on the last layer's output sequence.
      weight: DropConnect on the recurrent weights ``w_hh`` (AWD-LSTM), one mask per call.
      zoneout: probability that a unit of ``h`` and ``c`` keeps its previous value
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


def _layer_names(num_layers: int, bidirectional: bool) -> list[list[str]]:
    return [[f"layer_{i}"] + ([f"layer_{i}_reverse"] if bidirectional else []) for i in range(num_layers)]


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
      float32 params, each drawn from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as PyTorch does.

    Raises:
      TypeError: ``key`` is not one PRNG key, a size is not an int, or ``bidirectional`` is not a bool.
      ValueError: a size is < 1.
    """
    check_key(key)
    input_size = check_int("input_size", input_size, minimum=1)
    hidden_size = check_int("hidden_size", hidden_size, minimum=1)
    num_layers = check_int("num_layers", num_layers, minimum=1)
    if not isinstance(bidirectional, bool):
        raise TypeError(f"`bidirectional` must be a bool, got {type(bidirectional).__name__} {bidirectional!r}.")
    bound = hidden_size**-0.5
    params = {}
    for i, names in enumerate(_layer_names(num_layers, bidirectional)):
        n_in = input_size if i == 0 else hidden_size * len(names)
        for name in names:
            key, *k = jax.random.split(key, 5)
            shapes = {"w_ih": (4 * hidden_size, n_in), "w_hh": (4 * hidden_size, hidden_size)}
            shapes |= {"b_ih": (4 * hidden_size,), "b_hh": (4 * hidden_size,)}
            params[name] = {
                n: jax.random.uniform(kk, s, minval=-bound, maxval=bound) for kk, (n, s) in zip(k, shapes.items())
            }
    return params


class _Dims(NamedTuple):
    """What checked params say about the LSTM."""

    num_layers: int
    directions: int
    hidden: int
    input_size: int
    dtype: Any


def _check_params(params: Any) -> _Dims:
    """Checks the layer names, and every weight's shape and dtype against layer_0's ``w_hh`` and ``w_ih``.

    Every layer is checked, so params converted from PyTorch with a slip (a
    transposed weight, a missing bias, one layer of another size) fail here
    by name rather than inside the einsum or the scan.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"`params` must be a dict of layers (as init_lstm returns), got {type(params).__name__}.")
    names = [n for n in params if isinstance(n, str) and n.startswith("layer_")]
    bidirectional = any(n.endswith("_reverse") for n in names)
    num_layers = len(names) // (2 if bidirectional else 1)
    layers = _layer_names(num_layers, bidirectional)
    if num_layers < 1 or set(names) != {n for layer in layers for n in layer}:
        raise ValueError(
            f"`params` must hold layer_0 ... layer_{{L-1}} (and their *_reverse); got {sorted(map(str, params))}."
        )
    for name in names:
        layer = params[name]
        keys = set(layer) if isinstance(layer, Mapping) else None
        if keys != set(WEIGHTS):
            got = sorted(map(str, keys)) if keys is not None else type(layer).__name__
            raise ValueError(f"`params[{name!r}]` must hold exactly {list(WEIGHTS)} (as init_lstm); got {got}.")
        for k in WEIGHTS:
            check_float_array(f"params[{name!r}][{k!r}]", layer[k])
    w_ih, w_hh = params["layer_0"]["w_ih"], params["layer_0"]["w_hh"]
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"`params['layer_0']['w_hh']` must be [4 * hidden, hidden], got shape {tuple(w_hh.shape)}.")
    if w_ih.ndim != 2:
        raise ValueError(f"`params['layer_0']['w_ih']` must be [4 * hidden, input], got shape {tuple(w_ih.shape)}.")
    hidden, dtype, directions = w_hh.shape[1], w_hh.dtype, 2 if bidirectional else 1
    for i, layer_names in enumerate(layers):
        n_in = w_ih.shape[1] if i == 0 else directions * hidden  # deeper layers take the directions concatenated
        expected = {"w_ih": (4 * hidden, n_in), "w_hh": (4 * hidden, hidden)}
        expected |= {"b_ih": (4 * hidden,), "b_hh": (4 * hidden,)}
        for name in layer_names:
            for k, shape in expected.items():
                w = params[name][k]
                if tuple(w.shape) != shape:
                    raise ValueError(
                        f"`params[{name!r}][{k!r}]` has shape {tuple(w.shape)}, expected {shape}: hidden size "
                        f"{hidden} (layer_0's w_hh is [4 * hidden, hidden]) and {n_in} inputs to layer {i}."
                    )
                if w.dtype != dtype:
                    raise TypeError(
                        f"`params[{name!r}][{k!r}]` is {w.dtype} but `params['layer_0']['w_hh']` is {dtype}; "
                        "all LSTM params must share one dtype."
                    )
    return _Dims(num_layers, directions, hidden, w_ih.shape[1], dtype)


def _check_dtype(name: str, x: jax.Array, dims: _Dims) -> None:
    if x.dtype != dims.dtype:
        raise TypeError(
            f"`{name}` is {x.dtype} but the LSTM params are {dims.dtype}; cast one to the other, e.g. "
            f"`.astype(jnp.{dims.dtype})` (as in PyTorch, input, state and weights must share a dtype)."
        )


def _check_inputs(dims: _Dims, xs: Any, initial_state: Any, batch_first: bool) -> None:
    """Checks ``xs`` and ``initial_state`` against the params: shapes and dtypes only, so it works under jit."""
    check_float_array("xs", xs)
    layout = "[batch, time, input]" if batch_first else "[time, batch, input]"
    if xs.ndim != 3:
        raise ValueError(f"`xs` must be 3-D {layout}, got shape {tuple(xs.shape)}.")
    if xs.shape[-1] != dims.input_size:
        raise ValueError(
            f"`xs` has input size {xs.shape[-1]} (shape {tuple(xs.shape)}, {layout}), but "
            f"`params['layer_0']['w_ih']` ([4 * hidden, input]) takes {dims.input_size}."
        )
    if xs.shape[1 if batch_first else 0] == 0:  # nn.LSTM refuses it too; the custom VJP needs a step
        raise ValueError(f"`xs` has no timesteps (shape {tuple(xs.shape)}, {layout}); give at least one.")
    _check_dtype("xs", xs, dims)
    if initial_state is None:
        return
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise TypeError(f"`initial_state` must be a pair (h0, c0), got {type(initial_state).__name__}.")
    batch = xs.shape[0 if batch_first else 1]
    shape = (dims.num_layers * dims.directions, batch, dims.hidden)
    for i, state in enumerate(initial_state):
        name = f"initial_state[{i}]"
        check_float_array(name, state)
        if tuple(state.shape) != shape:
            raise ValueError(
                f"`{name}` ({('h0', 'c0')[i]}) has shape {tuple(state.shape)}, expected {shape}: "
                f"[num_layers * directions, batch, hidden] for {dims.num_layers} layer(s), "
                f"{dims.directions} direction(s), batch {batch} and hidden size {dims.hidden}."
            )
        _check_dtype(name, state, dims)


def check_lengths(lengths: Any, xs: jax.Array, batch_first: bool) -> None:
    """``lengths``: None, or ints ``[batch]`` in [0, time] (the range is checked where the values are concrete)."""
    if lengths is None:
        return
    time, batch = (xs.shape[1], xs.shape[0]) if batch_first else (xs.shape[0], xs.shape[1])
    dtype = getattr(lengths, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        what = f"dtype {dtype}" if dtype is not None else f"{type(lengths).__name__}"
        raise TypeError(f"`lengths` must be an int array [batch], got {what}.")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"`lengths` must have shape ({batch},) (one length per sequence), got {tuple(lengths.shape)}.")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        bad = (values < 0) | (values > time)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"`lengths` must be in [0, {time}] (the timesteps), got lengths[{i}] = {values[i]}.")


def _active(rate: float | jax.Array) -> bool:
    """Whether a checked rate may be non-zero (a traced one may be)."""
    return isinstance(rate, jax.core.Tracer) or float(rate) != 0.0


def lstm(
    params: Params,
    xs: jax.Array,
    *,
    masks: Any = None,
    dropout: RNNDropout | None = None,
    key: jax.Array | None = None,
    deterministic: bool = False,
    initial_state: tuple[jax.Array, jax.Array] | None = None,
    batch_first: bool = False,
    lengths: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Runs the LSTM over a sequence.

    Args:
      params: from ``init_lstm`` (or converted from PyTorch): ``layer_i`` (and
        ``layer_i_reverse``) each with ``w_ih [4H, in]``, ``w_hh [4H, H]``,
        ``b_ih [4H]``, ``b_hh [4H]``, all of one floating dtype.
      xs: ``[time, batch, input]`` (``[batch, time, input]`` with ``batch_first``),
        of the params' dtype.
      masks: pruning masks for ``params`` (``init_masks``/``prune``), or None.
      dropout: ``RNNDropout`` rates, or None for no dropout.
      key: one PRNG key, needed when any dropout rate is non-zero and not deterministic.
      deterministic: turn dropout off (zoneout uses its expectation).
      initial_state: ``(h0, c0)``, each ``[layers * directions, batch, hidden]``
        of the params' dtype; zeros if None.
      batch_first: as in PyTorch (``initial_state`` and ``(h_n, c_n)`` stay batch second, as there).
      lengths: int ``[batch]``, each sequence's number of valid steps (0 to
        time), or None for all. Past its length a sequence's outputs are 0
        and its state stops changing, so ``(h_n, c_n)`` are the states at its
        last valid step, and the reverse direction starts at that step: what
        PyTorch gives with ``pack_padded_sequence`` (sorted or not), ``nn.LSTM``
        and ``pad_packed_sequence``.

    Returns:
      ``outputs`` (``[time, batch, directions * hidden]``, or batch first) and
      ``(h_n, c_n)``, each ``[layers * directions, batch, hidden]``, as PyTorch.

    Raises:
      TypeError: a value of the wrong kind: ``xs``, ``initial_state`` or a
        param not a floating array, their dtypes differ, ``dropout`` not an
        ``RNNDropout``, ``key`` not one PRNG key (or missing when needed), or
        a mask leaf not bool.
      ValueError: a shape that does not fit: params missing a layer or
        weight or with a wrong shape, ``xs`` not 3-D or of another input size,
        ``initial_state`` not ``[layers * directions, batch, hidden]``, masks
        not mirroring params, or a dropout rate out of range.
    """
    dims = _check_params(params)
    _check_inputs(dims, xs, initial_state, batch_first)
    check_lengths(lengths, xs, batch_first)
    if dropout is not None and not isinstance(dropout, RNNDropout):
        raise TypeError(f"`dropout` must be a jp.RNNDropout(...) or None, got {type(dropout).__name__} {dropout!r}.")
    rates = dropout or RNNDropout()
    rates.check()
    if not deterministic and any(_active(r) for r in rates) and key is None:
        raise TypeError(f"`key` is required when a dropout rate is non-zero and `deterministic` is False; {KEY_HELP}.")
    if key is not None:
        check_key(key)
    if masks is not None:
        params = apply_mask(params, masks)  # once, outside the scan; checks that masks mirror params
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    num_layers, directions, hidden = dims.num_layers, dims.directions, dims.hidden
    keys = iter(jax.random.split(key, 4 * num_layers * 2 + 1)) if key is not None else None

    def next_key():
        return next(keys) if keys is not None else None

    batch = xs.shape[1]
    if initial_state is None:
        zeros = jnp.zeros((num_layers * directions, batch, hidden), xs.dtype)
        initial_state = (zeros, zeros)
    h0, c0 = initial_state
    valid = None if lengths is None else (jnp.arange(xs.shape[0])[:, None] < lengths[None, :])[..., None]
    h_n, c_n = [], []
    for i, names in enumerate(_layer_names(num_layers, directions == 2)):
        if _active(rates.input):
            xs = locked_dropout(next_key(), xs, rates.input, deterministic=deterministic)
        outs = []
        for d, name in enumerate(names):
            p = params[name]
            w_hh = p["w_hh"]
            if _active(rates.weight):
                w_hh = weight_drop(next_key(), w_hh, rates.weight, deterministic=deterministic)
            h_mask = None
            if _active(rates.hidden) and not deterministic:
                h_mask = locked_dropout(next_key(), jnp.ones((1, batch, hidden), xs.dtype), rates.hidden)[0]
            z_key = next_key() if _active(rates.zoneout) else None
            seq = _reversed(xs, lengths) if d == 1 else xs
            out, (h, c) = _scan_layer(
                seq, p["w_ih"], w_hh, p["b_ih"] + p["b_hh"], h0[i * directions + d], c0[i * directions + d],
                h_mask, rates.zoneout, z_key, deterministic, valid,
            )  # fmt: skip
            outs.append(_reversed(out, lengths) if d == 1 else out)
            h_n.append(h)
            c_n.append(c)
        xs = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
    if _active(rates.output):
        xs = locked_dropout(next_key(), xs, rates.output, deterministic=deterministic)
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    return xs, (jnp.stack(h_n), jnp.stack(c_n))


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


def _scan_layer(xs, w_ih, w_hh, bias, h0, c0, h_mask, zoneout_rate, z_key, deterministic, valid=None):
    """One direction of one layer: the input projection as one matmul, then the recurrence.

    ``valid`` (bool ``[time, batch, 1]``, or None for every step): past a
    sequence's length its state is held and its outputs are 0.
    """
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih) + bias
    w_hh_t = w_hh.T  # [hidden, 4 * hidden], transposed once outside the loop
    if not _active(zoneout_rate):
        mask = jnp.ones_like(h0) if h_mask is None else jnp.broadcast_to(h_mask, h0.shape).astype(h0.dtype)
        out, h, c = _recurrence(gates_x, w_hh_t, h0, c0, mask, valid)
        return out, (h, c)
    steps = jnp.arange(xs.shape[0])
    every = jnp.ones((xs.shape[0], 1, 1), bool) if valid is None else valid

    def step(carry, inputs):
        h, c = carry
        gx, t, v = inputs
        h_new, c_new, _ = _cell(gx, h, c, w_hh_t, h_mask)
        k = None if z_key is None else jax.random.fold_in(z_key, t)
        kh, kc = (None, None) if k is None else jax.random.split(k)
        h_new = jnp.where(v, zoneout(kh, h, h_new, zoneout_rate, deterministic=deterministic), h)
        c_new = jnp.where(v, zoneout(kc, c, c_new, zoneout_rate, deterministic=deterministic), c)
        return (h_new, c_new), jnp.where(v, h_new, 0.0).astype(h_new.dtype)

    (h, c), out = lax.scan(step, (h0, c0), (gates_x, steps, every))
    return out, (h, c)


def _activations(z: jax.Array) -> jax.Array:
    """``[sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]`` over the fused ``[..., 4 * hidden]`` gates.

    One tanh over the whole array (sigmoid(x) = tanh(x / 2) / 2 + 1/2) with
    per-column scale and shift, so XLA emits a single elementwise loop
    instead of four activations and a concatenation.
    """
    hidden = z.shape[-1] // 4
    is_g = (jnp.arange(4 * hidden) // hidden) == 2
    scale = jnp.where(is_g, 1.0, 0.5).astype(z.dtype)
    return jnp.tanh(z * scale) * scale + (1.0 - scale)


def _cell(gx, h, c, w_hh_t, mask):
    """One LSTM step given the input part of the gates ``gx``: ``(h, c, activations)``.

    The one copy of the cell's math, shared by the zoneout scan and both
    passes of ``_recurrence``. ``mask`` (recurrent dropout on ``h``) may be
    None. The activations are returned as the residuals ``_recurrence_bwd``
    needs; ``h`` and ``c`` are computed from them anyway, so this costs nothing.
    """
    a = _activations(gx + (h if mask is None else h * mask) @ w_hh_t)
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c, a


def _held_step(gx, h, c, w_hh_t, mask, v):
    """One step that only advances where ``v`` (None: everywhere): ``(h, c, activations, output)``."""
    h_new, c_new, a = _cell(gx, h, c, w_hh_t, mask)
    if v is None:
        return h_new, c_new, a, h_new
    return jnp.where(v, h_new, h), jnp.where(v, c_new, c), a, jnp.where(v, h_new, 0.0).astype(h_new.dtype)


def _recurrence_forward(gates_x, w_hh_t, h0, c0, mask, valid):
    def step(carry, inputs):
        gx, v = inputs
        h, c, a, out = _held_step(gx, *carry, w_hh_t, mask, v)
        return (h, c), (out, h, c, a)

    (h, c), (outs, hs, cs, acts) = lax.scan(step, (h0, c0), (gates_x, valid))
    return (outs, h, c), (w_hh_t, h0, c0, mask, valid, hs, cs, acts)


@jax.custom_vjp
def _recurrence(gates_x, w_hh_t, h0, c0, mask, valid):
    """The LSTM recurrence given the input part of the gates: ``(outputs, h_T, c_T)``.

    A custom VJP, because JAX's derivative of the scan accumulates the
    recurrent weight's gradient step by step (a [hidden, 4 * hidden] update
    and a thin matmul per timestep). Here the backward scan only carries
    (dh, dc) and emits each step's gate gradients; the weight gradient is
    then one matmul over all timesteps at once, as cuDNN and PyTorch do it.
    ``valid`` (``[time, batch, 1]`` bool, or None): where False the state is
    held and the output is 0, so there the backward passes (dh, dc) through
    and the gate gradients are 0.
    """

    def step(carry, inputs):
        gx, v = inputs
        h, c, _, out = _held_step(gx, *carry, w_hh_t, mask, v)
        return (h, c), out

    (h, c), outs = lax.scan(step, (h0, c0), (gates_x, valid))  # inference keeps no residuals
    return outs, h, c


def _recurrence_bwd(residuals, cotangents):
    w_hh_t, h0, c0, mask, valid, hs, cs, acts = residuals
    d_out, d_h, d_c = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    w_t = w_hh_t.T  # [4 * hidden, hidden], once outside the loop

    def step(carry, inputs):
        dh_next, dc_next = carry
        d_out_t, a, c, c_before, v = inputs
        i, f, g, o = jnp.split(a, 4, axis=-1)
        tanh_c = jnp.tanh(c)
        dh = dh_next + d_out_t
        dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_before * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )
        dh_prev, dc_prev = (dz @ w_t) * mask, dc * f
        if v is not None:  # a held step: the state's gradient passes through, the gates get none
            dz = jnp.where(v, dz, 0.0).astype(dz.dtype)
            dh_prev = jnp.where(v, dh_prev, dh_next)
            dc_prev = jnp.where(v, dc_prev, dc_next)
        return (dh_prev, dc_prev), dz

    (dh0, dc0), dzs = lax.scan(step, (d_h, d_c), (d_out, acts, cs, c_prev, valid), reverse=True)
    h_prev = jnp.concatenate([h0[None], hs[:-1]]) * mask
    d_w = jnp.einsum("tbh,tbg->hg", h_prev, dzs)
    d_valid = None if valid is None else np.zeros(valid.shape, jax.dtypes.float0)  # bool: no gradient
    return dzs, d_w, dh0, dc0, jnp.zeros_like(mask), d_valid


_recurrence.defvjp(_recurrence_forward, _recurrence_bwd)
