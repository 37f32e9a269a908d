"""The GRU cell's math: one layer and direction over a sequence, with a custom VJP.

PyTorch's ``nn.GRU`` layout and gate order (r, z, n)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

``b_hn`` sits inside ``r * (...)``, so it cannot be folded into the input
projection as ``b_hr`` and ``b_hz`` are. As for the LSTM, the input
projection of all timesteps is one matmul before the scan and the scanned
step is one ``[batch, hidden] x [hidden, 3 * hidden]`` matmul.
``jaxprune.nn.recurrent`` stacks layers and directions around ``scan_layer``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune.nn.dropouts import zoneout


def scan_layer(xs, w_ih, w_hh, b_ih, b_hh, state0, h_mask, zoneout_rate, z_key, deterministic, valid=None):
    """One direction of one layer: ``(outputs [time, batch, hidden], (h_T,))``.

    The arguments are those of ``lstm_cell.scan_layer``, with ``state0 = (h0,)``.
    """
    (h0,) = state0
    if zoneout_rate is None:
        mask = None if h_mask is None else jnp.broadcast_to(h_mask, h0.shape).astype(h0.dtype)
        out, h = _layer(xs, w_ih, w_hh, b_ih, b_hh, h0, mask, valid)
        return out, (h,)
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih) + _folded_bias(b_ih, b_hh)
    w_hh_t, b_hn = w_hh.T, b_hh[2 * h0.shape[-1] :]
    steps = jnp.arange(xs.shape[0])
    every = jnp.ones((xs.shape[0], 1, 1), bool) if valid is None else valid

    def step(h, inputs):
        gx, t, v = inputs
        h_new, _ = _cell(gx, h, w_hh_t, b_hn, h_mask)
        k = None if z_key is None else jax.random.fold_in(z_key, t)
        h_new = jnp.where(v, zoneout(k, h, h_new, zoneout_rate, deterministic=deterministic), h)
        return h_new, jnp.where(v, h_new, 0.0).astype(h_new.dtype)

    h, out = lax.scan(step, h0, (gates_x, steps, every))
    return out, (h,)


def _folded_bias(b_ih, b_hh):
    """``b_ih + [b_hr, b_hz, 0]``: the biases that add to the input part of the gates (``b_hn`` cannot)."""
    hidden = b_hh.shape[0] // 3
    return b_ih + jnp.concatenate([b_hh[: 2 * hidden], jnp.zeros_like(b_hh[2 * hidden :])])


def _cell(gx, h, w_hh_t, b_hn, mask):
    """One GRU step given the input part of the gates ``gx``: ``(h, residuals)``.

    The one copy of the cell's math, shared by the zoneout scan and both
    passes of ``_layer``. ``mask`` (recurrent dropout on the ``h`` that
    enters the matmul; the ``z * h`` carry is not dropped) may be None. The
    residuals ``[r, z, n, W_hn h + b_hn]`` are what ``_layer_bwd`` needs.
    """
    hidden = h.shape[-1]
    gh = (h if mask is None else h * mask) @ w_hh_t
    rz = jax.nn.sigmoid(gx[..., : 2 * hidden] + gh[..., : 2 * hidden])
    r, z = rz[..., :hidden], rz[..., hidden:]
    hn = gh[..., 2 * hidden :] + b_hn
    n = jnp.tanh(gx[..., 2 * hidden :] + r * hn)
    return n + z * (h - n), jnp.concatenate([rz, n, hn], axis=-1)


def _layer_scan(xs, w_ih, w_hh, b_ih, b_hh, h0, mask, valid, keep):
    """The forward of one layer direction: ``(outputs, h_T)``, with ``keep`` also the residuals.

    The input projection of all steps is one matmul; the biases are added
    inside the step, where they fuse into the gates' elementwise loop.
    """
    hidden = h0.shape[-1]
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih)
    w_hh_t, bias, b_hn = w_hh.T, _folded_bias(b_ih, b_hh), b_hh[2 * hidden :]

    def step(h, inputs):
        gx, v = inputs
        h_new, res = _cell(gx + bias, h, w_hh_t, b_hn, mask)
        out = h_new
        if v is not None:  # a held step keeps the state and outputs 0
            h_new, out = jnp.where(v, h_new, h), jnp.where(v, h_new, 0.0).astype(h.dtype)
        return h_new, ((out, res) if keep else out)

    h, ys = lax.scan(step, h0, (gates_x, valid))
    return ys, h


@jax.custom_vjp
def _layer(xs, w_ih, w_hh, b_ih, b_hh, h0, mask, valid):
    """One layer direction (input projection and recurrence): ``(outputs, h_T)``.

    A custom VJP over the whole layer for the LSTM's reasons: the backward
    scan carries only ``dh``, and every weight's gradient is one matmul over
    all timesteps afterwards. In ``h' = n + z * (h - n)`` every gate's
    gradient is ``dh'`` times a factor that does not depend on ``dh'``, so
    the factors are computed for all steps at once before the loop, and the
    loop does one elementwise product, the ``[batch, 3H] x [3H, H]`` matmul
    and the state's gradient. Where ``valid`` is False the state is held and
    the output is 0.
    """
    outs, h = _layer_scan(xs, w_ih, w_hh, b_ih, b_hh, h0, mask, valid, keep=False)
    return outs, h


def _layer_fwd(xs, w_ih, w_hh, b_ih, b_hh, h0, mask, valid):
    (outs, res), h = _layer_scan(xs, w_ih, w_hh, b_ih, b_hh, h0, mask, valid, keep=True)
    return (outs, h), (xs, w_ih, w_hh, h0, mask, valid, outs, res)


def _layer_bwd(residuals, cotangents):
    xs, w_ih, w_hh, h0, mask, valid, outs, res = residuals
    d_out, d_h = cotangents
    time, batch, hidden = outs.shape
    r, z, n, hn = (res[..., k * hidden : (k + 1) * hidden] for k in range(4))
    # Valid steps are a prefix of each sequence, so where a step is valid outs[t - 1] is h_{t-1}.
    h_prev = jnp.concatenate([h0[None], outs[:-1]])
    d_n = (1.0 - z) * (1.0 - n * n)  # d(pre-activation of n) / dh', and so on: all without dh'
    d_x = jnp.concatenate([d_n * hn * r * (1.0 - r), (h_prev - n) * z * (1.0 - z), d_n], axis=-1)
    d_hh = jnp.concatenate([d_x[..., : 2 * hidden], d_n * r], axis=-1)  # the n block of W_hn h is scaled by r
    if valid is not None:  # a held step: the gates get no gradient
        d_x = jnp.where(valid, d_x, 0.0).astype(d_x.dtype)
        d_hh = jnp.where(valid, d_hh, 0.0).astype(d_hh.dtype)

    def step(dh_next, inputs):
        d_out_t, d_hh_t, z_t, v = inputs
        dh = dh_next + d_out_t
        dgh = dh[:, None, :] * d_hh_t.reshape(batch, 3, hidden)
        dgh = dgh.reshape(batch, 3 * hidden)
        dh_prev = (dgh @ w_hh) if mask is None else (dgh @ w_hh) * mask
        dh_prev = dh * z_t + dh_prev
        if v is not None:  # a held step: the state's gradient passes through
            dh_prev = jnp.where(v, dh_prev, dh_next)
        return dh_prev, (dh, dgh)

    dh0, (dhs, dghs) = lax.scan(step, d_h, (d_out, d_hh, z, valid), reverse=True)
    dgxs = (dhs[:, :, None, :] * d_x.reshape(time, batch, 3, hidden)).reshape(time * batch, 3 * hidden)
    dghs = dghs.reshape(time * batch, 3 * hidden)
    if mask is not None:
        h_prev = h_prev * mask
    n_in = xs.shape[-1]
    # As for the LSTM: the barrier keeps XLA from folding the outer transpose into the dot.
    d_w_ih = lax.optimization_barrier(xs.reshape(time * batch, n_in).T @ dgxs).T
    d_w_hh = lax.optimization_barrier(h_prev.reshape(time * batch, hidden).T @ dghs).T
    d_xs = (dgxs @ w_ih).reshape(time, batch, n_in)
    d_mask = None if mask is None else jnp.zeros_like(mask)
    d_valid = None if valid is None else np.zeros(valid.shape, jax.dtypes.float0)  # bool: no gradient
    # b_ih adds to the input part of all three gates, b_hh to the recurrent part (b_hr, b_hz equal either way).
    return d_xs, d_w_ih, d_w_hh, dgxs.sum(0), dghs.sum(0), dh0, d_mask, d_valid


_layer.defvjp(_layer_fwd, _layer_bwd)
