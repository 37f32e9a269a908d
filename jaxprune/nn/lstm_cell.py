"""The LSTM cell's math: one layer and direction over a sequence, with a custom VJP.

PyTorch's ``nn.LSTM`` layout and gate order (i, f, g, o). The input
projection of all timesteps is one matmul before the scan, so the scanned
step is a single ``[batch, hidden] x [hidden, 4 * hidden]`` matmul and the
cell's elementwise math. ``jaxprune.nn.recurrent`` stacks layers and
directions around ``scan_layer``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune.nn.dropouts import zoneout

GATES = 4
STATES = ("h", "c")


def scan_layer(xs, w_ih, w_hh, b_ih, b_hh, state0, h_mask, zoneout_rate, z_key, deterministic, valid=None):
    """One direction of one layer: ``(outputs [time, batch, hidden], (h_T, c_T))``.

    Args:
      xs: ``[time, batch, input]``.
      w_ih, w_hh, b_ih, b_hh: the layer's (masked) weights in PyTorch's layout.
      state0: ``(h0, c0)``, each ``[batch, hidden]``.
      h_mask: recurrent dropout mask on ``h`` (``[batch, hidden]``), or None.
      zoneout_rate: a checked rate, or None for no zoneout (the custom-VJP path).
      z_key: the zoneout key (None when deterministic).
      deterministic: zoneout uses its expectation.
      valid: bool ``[time, batch, 1]``, or None for every step: past a
        sequence's length its state is held and its outputs are 0.
    """
    h0, c0 = state0
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih) + (b_ih + b_hh)
    w_hh_t = w_hh.T  # [hidden, 4 * hidden], transposed once outside the loop
    if zoneout_rate is None:
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
