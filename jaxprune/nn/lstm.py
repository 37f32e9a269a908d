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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune.masks import apply_mask
from jaxprune.nn.dropout import check_rate, locked_dropout, weight_drop, zoneout

Params = dict[str, dict[str, jax.Array]]


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
        for name in ("input", "hidden", "output", "weight"):
            check_rate(getattr(self, name), f"dropout.{name}")
        check_rate(self.zoneout, "dropout.zoneout", allow_one=True)


def _layer_names(num_layers: int, bidirectional: bool) -> list[list[str]]:
    return [[f"layer_{i}"] + ([f"layer_{i}_reverse"] if bidirectional else []) for i in range(num_layers)]


def init_lstm(
    key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False
) -> Params:
    """PyTorch-initialised LSTM params: ``{"layer_0": {"w_ih", "w_hh", "b_ih", "b_hh"}, "layer_0_reverse": ...}``."""
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
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


def _shape(params: Params) -> tuple[int, int, bool]:
    names = [n for n in params if n.startswith("layer_")]
    bidirectional = any(n.endswith("_reverse") for n in names)
    num_layers = len(names) // (2 if bidirectional else 1)
    if set(names) != {n for layer in _layer_names(num_layers, bidirectional) for n in layer}:
        raise ValueError(f"LSTM params must hold layer_0 ... layer_{{L-1}} (and *_reverse); got {sorted(params)}.")
    return num_layers, params["layer_0"]["w_hh"].shape[1], bidirectional


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
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Runs the LSTM over a sequence.

    Args:
      params: from ``init_lstm`` (or converted from PyTorch).
      xs: ``[time, batch, input]`` (``[batch, time, input]`` with ``batch_first``).
      masks: pruning masks for ``params`` (``init_masks``/``prune``), or None.
      dropout: ``RNNDropout`` rates, or None for no dropout.
      key: PRNG key, needed when any dropout rate is non-zero and not deterministic.
      deterministic: turn dropout off (zoneout uses its expectation).
      initial_state: ``(h0, c0)``, each ``[layers * directions, batch, hidden]``; zeros if None.
      batch_first: as in PyTorch.

    Returns:
      ``outputs`` (``[time, batch, directions * hidden]``, or batch first) and
      ``(h_n, c_n)``, each ``[layers * directions, batch, hidden]``, as PyTorch.
    """
    num_layers, hidden, bidirectional = _shape(params)
    if masks is not None:
        params = apply_mask(params, masks)  # once, outside the scan
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    rates = dropout or RNNDropout()
    rates.check()
    stochastic = not deterministic and any(float(r) > 0 for r in rates if not isinstance(r, jax.core.Tracer))
    if stochastic and key is None:
        raise ValueError("`key` is required when a dropout rate is non-zero and `deterministic` is False.")
    keys = iter(jax.random.split(key, 4 * num_layers * 2 + 1)) if key is not None else None

    def next_key():
        return next(keys) if keys is not None else None

    batch = xs.shape[1]
    directions = 2 if bidirectional else 1
    if initial_state is None:
        zeros = jnp.zeros((num_layers * directions, batch, hidden), xs.dtype)
        initial_state = (zeros, zeros)
    h0, c0 = initial_state
    h_n, c_n = [], []
    for i, names in enumerate(_layer_names(num_layers, bidirectional)):
        if rates.input:
            xs = locked_dropout(next_key(), xs, rates.input, deterministic=deterministic)
        outs = []
        for d, name in enumerate(names):
            p = params[name]
            w_hh = p["w_hh"]
            if rates.weight:
                w_hh = weight_drop(next_key(), w_hh, rates.weight, deterministic=deterministic)
            h_mask = None
            if rates.hidden and not deterministic:
                h_mask = locked_dropout(next_key(), jnp.ones((1, batch, hidden), xs.dtype), rates.hidden)[0]
            z_key = next_key() if rates.zoneout else None
            seq = xs[::-1] if d == 1 else xs
            out, (h, c) = _scan_layer(
                seq, p["w_ih"], w_hh, p["b_ih"] + p["b_hh"], h0[i * directions + d], c0[i * directions + d],
                h_mask, rates.zoneout, z_key, deterministic,
            )  # fmt: skip
            outs.append(out[::-1] if d == 1 else out)
            h_n.append(h)
            c_n.append(c)
        xs = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
    if rates.output:
        xs = locked_dropout(next_key(), xs, rates.output, deterministic=deterministic)
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    return xs, (jnp.stack(h_n), jnp.stack(c_n))


def _scan_layer(xs, w_ih, w_hh, bias, h0, c0, h_mask, zoneout_rate, z_key, deterministic):
    """One direction of one layer: the input projection as one matmul, then the recurrence."""
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih) + bias
    w_hh_t = w_hh.T  # [hidden, 4 * hidden], transposed once outside the loop
    if not zoneout_rate:
        mask = jnp.ones_like(h0) if h_mask is None else jnp.broadcast_to(h_mask, h0.shape).astype(h0.dtype)
        out, h, c = _recurrence(gates_x, w_hh_t, h0, c0, mask)
        return out, (h, c)
    steps = jnp.arange(xs.shape[0])

    def cell(carry, inputs):
        h, c = carry
        gx, t = inputs
        h_in = h if h_mask is None else h * h_mask
        i, f, g, o = jnp.split(gx + h_in @ w_hh_t, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        k = None if z_key is None else jax.random.fold_in(z_key, t)
        kh, kc = (None, None) if k is None else jax.random.split(k)
        h_new = zoneout(kh, h, h_new, zoneout_rate, deterministic=deterministic)
        c_new = zoneout(kc, c, c_new, zoneout_rate, deterministic=deterministic)
        return (h_new, c_new), h_new

    (h, c), out = lax.scan(cell, (h0, c0), (gates_x, steps))
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


def _recurrence_forward(gates_x, w_hh_t, h0, c0, mask):
    def step(carry, gx):
        h, c = carry
        a = _activations(gx + (h * mask) @ w_hh_t)
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c, a)

    (h, c), (hs, cs, acts) = lax.scan(step, (h0, c0), gates_x)
    return (hs, h, c), (w_hh_t, h0, c0, mask, hs, cs, acts)


@jax.custom_vjp
def _recurrence(gates_x, w_hh_t, h0, c0, mask):
    """The LSTM recurrence given the input part of the gates: ``(outputs, h_T, c_T)``.

    A custom VJP, because JAX's derivative of the scan accumulates the
    recurrent weight's gradient step by step (a [hidden, 4 * hidden] update
    and a thin matmul per timestep). Here the backward scan only carries
    (dh, dc) and emits each step's gate gradients; the weight gradient is
    then one matmul over all timesteps at once, as cuDNN and PyTorch do it.
    """

    def step(carry, gx):
        h, c = carry
        i, f, g, o = jnp.split(_activations(gx + (h * mask) @ w_hh_t), 4, axis=-1)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    (h, c), hs = lax.scan(step, (h0, c0), gates_x)  # inference keeps no residuals
    return hs, h, c


def _recurrence_bwd(residuals, cotangents):
    w_hh_t, h0, c0, mask, hs, cs, acts = residuals
    d_out, d_h, d_c = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    w_t = w_hh_t.T  # [4 * hidden, hidden], once outside the loop

    def step(carry, inputs):
        dh, dc = carry
        d_out_t, a, c, c_before = inputs
        i, f, g, o = jnp.split(a, 4, axis=-1)
        tanh_c = jnp.tanh(c)
        dh = dh + d_out_t
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_before * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )
        return ((dz @ w_t) * mask, dc * f), dz

    (dh0, dc0), dzs = lax.scan(step, (d_h, d_c), (d_out, acts, cs, c_prev), reverse=True)
    h_prev = jnp.concatenate([h0[None], hs[:-1]]) * mask
    d_w = jnp.einsum("tbh,tbg->hg", h_prev, dzs)
    return dzs, d_w, dh0, dc0, jnp.zeros_like(mask)


_recurrence.defvjp(_recurrence_forward, _recurrence_bwd)
