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

GATES = 3
STATES = ("h",)


def scan_layer(xs, w_ih, w_hh, b_ih, b_hh, state0, h_mask, zoneout_rate, z_key, deterministic, valid=None):
    """One direction of one layer: ``(outputs [time, batch, hidden], (h_T,))``.

    The arguments are those of ``lstm_cell.scan_layer``, with ``state0 = (h0,)``.
    """
    (h0,) = state0
    hidden = h0.shape[-1]
    b_hn = b_hh[2 * hidden :]
    folded = b_ih + jnp.concatenate([b_hh[: 2 * hidden], jnp.zeros_like(b_hn)])
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih) + folded
    w_hh_t = w_hh.T  # [hidden, 3 * hidden], transposed once outside the loop
    if zoneout_rate is None:
        mask = jnp.ones_like(h0) if h_mask is None else jnp.broadcast_to(h_mask, h0.shape).astype(h0.dtype)
        out, h = _recurrence(gates_x, w_hh_t, b_hn, h0, mask, valid)
        return out, (h,)
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


def _cell(gx, h, w_hh_t, b_hn, mask):
    """One GRU step given the input part of the gates ``gx``: ``(h, residuals)``.

    The one copy of the cell's math, shared by the zoneout scan and both
    passes of ``_recurrence``. ``mask`` (recurrent dropout on the ``h`` that
    enters the matmul; the ``z * h`` carry is not dropped) may be None. The
    residuals ``[r, z, n, W_hn h + b_hn]`` are what ``_recurrence_bwd`` needs.
    """
    hidden = h.shape[-1]
    gh = (h if mask is None else h * mask) @ w_hh_t
    rz = jax.nn.sigmoid(gx[..., : 2 * hidden] + gh[..., : 2 * hidden])
    r, z = rz[..., :hidden], rz[..., hidden:]
    hn = gh[..., 2 * hidden :] + b_hn
    n = jnp.tanh(gx[..., 2 * hidden :] + r * hn)
    return n + z * (h - n), jnp.concatenate([rz, n, hn], axis=-1)


def _held_step(gx, h, w_hh_t, b_hn, mask, v):
    """One step that only advances where ``v`` (None: everywhere): ``(h, residuals, output)``."""
    h_new, res = _cell(gx, h, w_hh_t, b_hn, mask)
    if v is None:
        return h_new, res, h_new
    return jnp.where(v, h_new, h), res, jnp.where(v, h_new, 0.0).astype(h_new.dtype)


def _recurrence_forward(gates_x, w_hh_t, b_hn, h0, mask, valid):
    def step(h, inputs):
        gx, v = inputs
        h, res, out = _held_step(gx, h, w_hh_t, b_hn, mask, v)
        return h, (out, h, res)

    h, (outs, hs, res) = lax.scan(step, h0, (gates_x, valid))
    return (outs, h), (w_hh_t, h0, mask, valid, hs, res)


@jax.custom_vjp
def _recurrence(gates_x, w_hh_t, b_hn, h0, mask, valid):
    """The GRU recurrence given the input part of the gates: ``(outputs, h_T)``.

    A custom VJP for the reason the LSTM has one: the backward scan carries
    only ``dh`` and emits each step's gate gradients, and the recurrent
    weight's gradient is one matmul over all timesteps afterwards. Where
    ``valid`` is False the state is held and the output is 0.
    """

    def step(h, inputs):
        gx, v = inputs
        h, _, out = _held_step(gx, h, w_hh_t, b_hn, mask, v)
        return h, out

    h, outs = lax.scan(step, h0, (gates_x, valid))  # inference keeps no residuals
    return outs, h


def _recurrence_bwd(residuals, cotangents):
    w_hh_t, h0, mask, valid, hs, res = residuals
    d_out, d_h = cotangents
    hidden = h0.shape[-1]
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    w = w_hh_t.T  # [3 * hidden, hidden], once outside the loop

    def step(dh_next, inputs):
        d_out_t, res_t, h_before, v = inputs
        r, z = res_t[..., :hidden], res_t[..., hidden : 2 * hidden]
        n, hn = res_t[..., 2 * hidden : 3 * hidden], res_t[..., 3 * hidden :]
        dh = dh_next + d_out_t
        dn = dh * (1.0 - z) * (1.0 - n * n)  # through n's tanh
        dr = dn * hn * r * (1.0 - r)
        dz = dh * (h_before - n) * z * (1.0 - z)
        dgx = jnp.concatenate([dr, dz, dn], axis=-1)  # the gradient of the input part of the gates
        dgh = jnp.concatenate([dr, dz, dn * r], axis=-1)  # ... and of the recurrent part
        dh_prev = dh * z + (dgh @ w) * mask
        if v is not None:  # a held step: the state's gradient passes through, the gates get none
            dgx = jnp.where(v, dgx, 0.0).astype(dgx.dtype)
            dgh = jnp.where(v, dgh, 0.0).astype(dgh.dtype)
            dh_prev = jnp.where(v, dh_prev, dh_next)
        return dh_prev, (dgx, dgh)

    dh0, (dgxs, dghs) = lax.scan(step, d_h, (d_out, res, h_prev, valid), reverse=True)
    d_w = jnp.einsum("tbh,tbg->hg", h_prev * mask, dghs)
    d_b_hn = jnp.sum(dghs[..., 2 * hidden :], axis=(0, 1))
    d_valid = None if valid is None else np.zeros(valid.shape, jax.dtypes.float0)  # bool: no gradient
    return dgxs, d_w, d_b_hn, dh0, jnp.zeros_like(mask), d_valid


_recurrence.defvjp(_recurrence_forward, _recurrence_bwd)
