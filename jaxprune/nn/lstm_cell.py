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
    if zoneout_rate is None:
        mask = None if h_mask is None else jnp.broadcast_to(h_mask, h0.shape).astype(h0.dtype)
        out, h, c = _layer(xs, w_ih, w_hh, b_ih + b_hh, h0, c0, mask, valid)
        return out, (h, c)
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih) + (b_ih + b_hh)
    w_hh_t = w_hh.T  # [hidden, 4 * hidden], transposed once outside the loop
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
    passes of ``_layer``. ``mask`` (recurrent dropout on ``h``) may be None.
    """
    a = _activations(gx + (h if mask is None else h * mask) @ w_hh_t)
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c, a


def _layer_scan(xs, w_ih, w_hh, bias, h0, c0, mask, valid, keep):
    """The forward of one layer direction: ``(outputs, h_T, c_T)``, with ``keep`` also the residuals.

    The residuals are each step's cell state and activations; the
    activations overwrite the input projection ``gates_x`` step by step (a
    loop-carried buffer updated in place), so they need no buffer of their
    own. The bias is added inside the step, where it fuses into the
    activation's elementwise loop, rather than in a pass over ``gates_x``.
    """
    gates_x = jnp.einsum("tbi,gi->tbg", xs, w_ih)
    w_hh_t = w_hh.T  # [hidden, 4 * hidden], transposed once outside the loop

    def cell(h, c, gx, v):
        h_new, c_new, a = _cell(gx + bias, h, c, w_hh_t, mask)
        if v is None:
            return h_new, c_new, a, h_new
        return jnp.where(v, h_new, h), jnp.where(v, c_new, c), a, jnp.where(v, h_new, 0.0).astype(h.dtype)

    if not keep:  # inference: no residuals

        def step(carry, inputs):
            h, c, _, out = cell(*carry, *inputs)
            return (h, c), out

        (h, c), outs = lax.scan(step, (h0, c0), (gates_x, valid))
        return outs, h, c

    def step_keep(carry, v):
        h, c, buf, t = carry
        h, c, a, out = cell(h, c, lax.dynamic_index_in_dim(buf, t, 0, keepdims=False), v)
        return (h, c, lax.dynamic_update_index_in_dim(buf, a, t, 0), t + 1), (out, c)

    (h, c, acts, _), (outs, cs) = lax.scan(step_keep, (h0, c0, gates_x, jnp.int32(0)), valid, length=gates_x.shape[0])
    return (outs, cs, acts), h, c


@jax.custom_vjp
def _layer(xs, w_ih, w_hh, bias, h0, c0, mask, valid):
    """One layer direction (input projection and recurrence): ``(outputs, h_T, c_T)``.

    A custom VJP over the whole layer, because JAX's derivative of the scan
    accumulates the recurrent weight's gradient step by step (a [hidden,
    4 * hidden] update and a thin matmul per timestep). Here the backward
    scan only carries (dh, dc) and emits each step's gate gradients; the
    weight gradients are then one matmul each over all timesteps at once,
    as cuDNN and PyTorch do it: ``xs^T @ dz`` and ``h_prev^T @ dz``.
    ``valid`` (``[time, batch, 1]`` bool, or None): where False the state is
    held and the output is 0, so there the backward passes (dh, dc) through
    and the gate gradients are 0. ``mask``: recurrent dropout on ``h``
    (``[batch, hidden]``), or None.
    """
    outs, h, c = _layer_scan(xs, w_ih, w_hh, bias, h0, c0, mask, valid, keep=False)
    return outs, h, c


def _layer_fwd(xs, w_ih, w_hh, bias, h0, c0, mask, valid):
    (outs, cs, acts), h, c = _layer_scan(xs, w_ih, w_hh, bias, h0, c0, mask, valid, keep=True)
    return (outs, h, c), (xs, w_ih, w_hh, h0, c0, mask, valid, outs, cs, acts)


def _layer_bwd(residuals, cotangents):
    xs, w_ih, w_hh, h0, c0, mask, valid, outs, cs, acts = residuals
    d_out, d_h, d_c = cotangents
    time, batch, hidden = outs.shape
    # What does not depend on the carried (dh, dc), for all steps at once, outside the loop (one
    # elementwise pass, no concatenation): per gate column dz = [dc, dc, dc, dh] * p, and dc = dc_next + dh * q.
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    a4 = acts.reshape(time, batch, 4, hidden)
    i, f, g, o = (a4[:, :, k] for k in range(4))
    tanh_c = jnp.tanh(cs)
    q = o * (1.0 - tanh_c * tanh_c)
    gate = lax.broadcasted_iota(jnp.int32, (1, 1, 4, 1), 2)
    other = jnp.where(gate == 0, g[:, :, None], jnp.where(gate == 1, c_prev[:, :, None], i[:, :, None]))
    other = jnp.where(gate == 3, tanh_c[:, :, None], other)  # [g, c_prev, i, tanh(c)] beside [i, f, g, o]
    p = (other * jnp.where(gate == 2, 1.0 - a4 * a4, a4 * (1.0 - a4))).reshape(time, batch, 4 * hidden)
    if valid is not None:  # a held step: the gates get no gradient
        p = jnp.where(valid, p, 0.0).astype(p.dtype)
    is_o = lax.broadcasted_iota(jnp.int32, (1, 4, 1), 1) == 3

    def step(carry, inputs):
        # dz overwrites p in the carried buffer (in place); dz is read back from the updated buffer
        # (behind a barrier, so XLA keeps it that way) since a second reader of the old buffer makes
        # XLA copy the whole buffer every step.
        dh_next, dc_next, buf, t = carry
        d_out_t, q_t, f_t, v = inputs
        t = t - 1
        dh = dh_next + d_out_t
        dc = dc_next + dh * q_t
        p_t = lax.dynamic_index_in_dim(buf, t, 0, keepdims=False).reshape(batch, 4, hidden)
        dz = (jnp.where(is_o, dh[:, None], dc[:, None]) * p_t).reshape(batch, 4 * hidden)
        buf = lax.dynamic_update_index_in_dim(buf, dz, t, 0)
        buf = lax.optimization_barrier(buf)
        dh_prev, dc_prev = lax.dynamic_index_in_dim(buf, t, 0, keepdims=False) @ w_hh, dc * f_t
        if mask is not None:
            dh_prev = dh_prev * mask
        if v is not None:  # a held step: the state's gradient passes through
            dh_prev = jnp.where(v, dh_prev, dh_next)
            dc_prev = jnp.where(v, dc_prev, dc_next)
        return (dh_prev, dc_prev, buf, t), None

    (dh0, dc0, dzs, _), _ = lax.scan(step, (d_h, d_c, p, jnp.int32(time)), (d_out, q, f, valid), reverse=True)
    # Valid steps are a prefix of each sequence, so where dz != 0 outs[t - 1] is h_{t-1}.
    h_prev = jnp.concatenate([h0[None], outs[:-1]])
    if mask is not None:
        h_prev = h_prev * mask
    n_in = xs.shape[-1]
    dz = dzs.reshape(time * batch, 4 * hidden)
    # The weight gradients as ([T * batch, in]^T @ dz)^T: the barrier keeps XLA from folding the outer
    # transpose into the dot, which makes the large dz the transposed operand (measured slower on CPU).
    d_w_ih = lax.optimization_barrier(xs.reshape(time * batch, n_in).T @ dz).T
    d_w_hh = lax.optimization_barrier(h_prev.reshape(time * batch, hidden).T @ dz).T
    d_xs = (dz @ w_ih).reshape(time, batch, n_in)
    d_mask = None if mask is None else jnp.zeros_like(mask)
    d_valid = None if valid is None else np.zeros(valid.shape, jax.dtypes.float0)  # bool: no gradient
    return d_xs, d_w_ih, d_w_hh, dz.sum(0), dh0, dc0, d_mask, d_valid


_layer.defvjp(_layer_fwd, _layer_bwd)
