"""Dropout as a PRNG-keyed transform, separate from the pruning state.

Every function takes a ``jax.random.key`` first and a ``deterministic``
switch, and uses inverted scaling (kept values are divided by ``1 - rate``)
so expectations are preserved and inference needs no rescaling.

* ``dropout``: plain, with ``broadcast_dims`` to share one mask along axes.
* ``locked_dropout``: variational / locked dropout (Gal & Ghahramani 2016):
  one mask per sequence, reused at every timestep.
* ``weight_drop``: DropConnect on a weight matrix (AWD-LSTM's recurrent
  weights), composable with a pruning mask.
* ``zoneout``: each unit keeps its previous value with probability ``rate``
  (Krueger et al. 2017); at test time the expectation.
* ``concrete_dropout`` and ``concrete_regularizer``: a learnable rate through
  the relaxed Bernoulli (Gal, Hron & Kendall 2017).
* ``mc_predict``: MC dropout at test time, vectorised over keys; predictive
  mean and variance, and for classifiers entropy and BALD mutual information.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._checks import check_float_array, check_int, check_key


def _real(name: str, value: Any) -> float | None:
    """A real scalar as a Python float, or None when traced (a traced value's range cannot be checked)."""
    if isinstance(value, jax.core.Tracer):
        return None
    real = isinstance(value, (numbers.Real, jax.Array, np.ndarray)) and not isinstance(value, (bool, np.bool_))
    if not real or jnp.ndim(value) != 0:
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__} {value!r}.")
    return float(value)


def check_rate(rate: Any, name: str = "rate", *, allow_one: bool = False) -> None:
    """Validates a concrete rate in [0, 1) (or [0, 1] with ``allow_one``); traced rates pass.

    Raises:
      TypeError: ``rate`` is not a real scalar.
      ValueError: ``rate`` is out of range (or NaN).
    """
    r = _real(name, rate)
    if r is None:
        return
    ok = 0.0 <= r <= 1.0 if allow_one else 0.0 <= r < 1.0
    if not ok:  # NaN fails both comparisons
        allowed = "[0, 1]" if allow_one else "[0, 1) (a rate of 1 would divide by zero)"
        raise ValueError(f"`{name}` must be in {allowed}, got {rate!r}.")


def _check_axis(name: str, axis: Any, ndim: int) -> int:
    """An axis of an ``ndim``-D array (negative counts from the end, as in NumPy); returns it as 0 ... ndim - 1.

    Out-of-range axes raise rather than wrap: ``axis % ndim`` would silently
    pick another axis.
    """
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"`{name}` must be an int axis, got {type(axis).__name__} {axis!r}.")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"`{name}` must be an axis of the {ndim}-D input, in [{-ndim}, {ndim - 1}]; got {axis}.")
    return axis % ndim


def keep_mask(key: jax.Array, shape: Sequence[int], rate: float | jax.Array) -> jax.Array:
    """Bool mask, True with probability ``1 - rate``."""
    return jax.random.bernoulli(key, 1.0 - jnp.asarray(rate, jnp.float32), tuple(shape))


def _drop(key: jax.Array, x: jax.Array, rate: float | jax.Array, shared: set[int]) -> jax.Array:
    """Inverted dropout on checked arguments, one mask value shared along the axes in ``shared``."""
    if not isinstance(rate, jax.core.Tracer) and float(rate) == 0.0:
        return x
    shape = [1 if d in shared else n for d, n in enumerate(x.shape)]
    keep = keep_mask(key, shape, rate)
    return jnp.where(keep, x / (1.0 - jnp.asarray(rate, x.dtype)), jnp.zeros((), x.dtype))


def dropout(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest by ``1 / (1 - rate)``.

    Args:
      key: one PRNG key; not used (and may be None) when ``deterministic``.
      x: a floating-point array.
      rate: drop probability in [0, 1) (may be traced).
      broadcast_dims: axes along which one mask value is shared (e.g. the time
        axis for locked dropout, the spatial axes for channel dropout); each in
        ``[-x.ndim, x.ndim - 1]``.
      deterministic: return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Raises:
      TypeError: ``key`` is not one PRNG key, ``x`` is not a floating array,
        ``rate`` is not a float, or ``broadcast_dims`` does not hold ints.
      ValueError: ``rate`` is out of range, or an axis is out of range for ``x``.
    """
    check_float_array("x", x)
    check_rate(rate)
    if isinstance(broadcast_dims, str) or not isinstance(broadcast_dims, Sequence):
        raise TypeError(
            f"`broadcast_dims` must be a sequence of int axes, got {type(broadcast_dims).__name__} {broadcast_dims!r}."
        )
    shared = {_check_axis("broadcast_dims", d, x.ndim) for d in broadcast_dims}
    if deterministic:
        return x
    return _drop(check_key(key), x, rate, shared)


def locked_dropout(
    key: jax.Array | None,
    xs: jax.Array,
    rate: float | jax.Array,
    *,
    time_axis: int = 0,
    deterministic: bool = False,
) -> jax.Array:
    """Variational dropout for a sequence: the same mask at every step along ``time_axis``.

    Args:
      key: one PRNG key; not used (and may be None) when ``deterministic``.
      xs: a floating-point sequence.
      rate: drop probability in [0, 1).
      time_axis: the axis the mask is shared along, in ``[-xs.ndim, xs.ndim - 1]``.
      deterministic: return ``xs`` unchanged.

    Returns:
      An array like ``xs``.

    Raises:
      TypeError, ValueError: as ``dropout``, with ``time_axis`` for the axis.
    """
    check_float_array("xs", xs)
    axis = _check_axis("time_axis", time_axis, xs.ndim)
    return dropout(key, xs, rate, broadcast_dims=(axis,), deterministic=deterministic)


def weight_drop(
    key: jax.Array | None,
    w: jax.Array,
    rate: float | jax.Array,
    *,
    mask: jax.Array | None = None,
    deterministic: bool = False,
) -> jax.Array:
    """DropConnect on a weight matrix (Wan et al. 2013; AWD-LSTM's recurrent weights).

    Draw once per sequence (outside the scan) so every timestep sees the same
    dropped weights. ``mask``, a pruning mask, is applied first: pruned
    weights stay exactly zero whether or not they are dropped.

    Args:
      key: one PRNG key; not used (and may be None) when ``deterministic``.
      w: a floating-point weight array.
      rate: drop probability in [0, 1).
      mask: a bool array of ``w``'s exact shape (True = keep), or None.
      deterministic: no drop (the pruning mask still applies).

    Returns:
      An array like ``w``.

    Raises:
      TypeError: a bad ``key``, ``w`` or ``rate``, or ``mask`` is not a bool array.
      ValueError: ``rate`` is out of range, or ``mask``'s shape is not ``w``'s.
    """
    check_float_array("w", w)
    check_rate(rate)
    if mask is not None:
        if getattr(mask, "dtype", None) != jnp.bool_ or not hasattr(mask, "shape"):
            what = f"dtype {mask.dtype}" if hasattr(mask, "dtype") else f"{type(mask).__name__} {mask!r}"
            raise TypeError(f"`mask` must be a bool array (True = keep) of `w`'s shape, got {what}.")
        # Exact, not broadcastable: a (1, n) mask on an (m, n) weight would prune whole columns.
        if tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"`mask` must have `w`'s shape {tuple(w.shape)}, got {tuple(mask.shape)}.")
    checked = None if deterministic else check_key(key)
    if mask is not None:
        w = jnp.where(mask, w, jnp.zeros((), w.dtype))
    return w if checked is None else _drop(checked, w, rate, set())


def zoneout(
    key: jax.Array | None,
    previous: jax.Array,
    new: jax.Array,
    rate: float | jax.Array,
    *,
    deterministic: bool = False,
) -> jax.Array:
    """Each unit keeps ``previous`` with probability ``rate``, else takes ``new`` (a fresh mask per call).

    Args:
      key: one PRNG key; not used (and may be None) when ``deterministic``.
      previous: the state before the update, a floating array of ``new``'s shape.
      new: the updated state.
      rate: probability of keeping ``previous``, in [0, 1].
      deterministic: return the expectation ``rate * previous + (1 - rate) * new``.

    Returns:
      An array like ``new``.

    Raises:
      TypeError: a bad ``key``, ``rate``, or a non-floating ``previous``/``new``.
      ValueError: ``rate`` is out of range, or ``previous`` and ``new`` differ in shape.
    """
    check_float_array("previous", previous)
    check_float_array("new", new)
    if tuple(previous.shape) != tuple(new.shape):
        raise ValueError(
            f"`previous` and `new` must have the same shape, got {tuple(previous.shape)} and {tuple(new.shape)}."
        )
    check_rate(rate, allow_one=True)
    checked = None if deterministic else check_key(key)
    rate = jnp.asarray(rate, new.dtype)
    if checked is None:
        return rate * previous + (1.0 - rate) * new
    stay = jax.random.bernoulli(checked, rate.astype(jnp.float32), new.shape)
    return jnp.where(stay, previous, new)


def concrete_dropout(
    key: jax.Array | None,
    x: jax.Array,
    p_logit: jax.Array,
    *,
    temperature: float = 0.1,
    deterministic: bool = False,
    eps: float = 1e-7,
) -> jax.Array:
    """Concrete dropout: a relaxed Bernoulli mask, differentiable in the rate ``sigmoid(p_logit)``.

    The drop probability per entry is
    ``sigmoid((log p - log(1-p) + log u - log(1-u)) / temperature)``, u ~ U(eps, 1 - eps),
    and kept values are scaled by ``1 / (1 - p)``. Learn ``p_logit`` with
    optax by adding ``concrete_regularizer`` to the loss.

    Args:
      key: one PRNG key; not used (and may be None) when ``deterministic``.
      x: a floating-point array.
      p_logit: the logit of the drop rate, a float or a floating array that
        broadcasts to ``x``'s shape (one rate per feature, say).
      temperature: of the relaxation, a positive finite float (small = close
        to a hard Bernoulli; a negative one would invert the drop).
      deterministic: return ``x`` unchanged.
      eps: clips ``u`` and ``p`` away from 0 and 1, in (0, 0.5).

    Returns:
      An array like ``x``.

    Raises:
      TypeError: a bad ``key``, ``x`` or ``p_logit``, or a non-float ``temperature``/``eps``.
      ValueError: ``temperature`` or ``eps`` is out of range, or ``p_logit`` does not broadcast to ``x``.
    """
    check_float_array("x", x)
    if isinstance(p_logit, (bool, np.bool_)) or not isinstance(p_logit, numbers.Real):
        check_float_array("p_logit", p_logit)
    p_shape, x_shape = tuple(jnp.shape(p_logit)), tuple(x.shape)
    try:
        fits = jnp.broadcast_shapes(p_shape, x_shape) == x_shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"`p_logit` of shape {p_shape} must broadcast to `x`'s shape {x_shape}.")
    t = _real("temperature", temperature)
    if t is not None and not 0.0 < t < math.inf:
        raise ValueError(f"`temperature` must be a positive finite float, got {temperature!r}.")
    e = _real("eps", eps)
    if e is not None and not 0.0 < e < 0.5:
        raise ValueError(f"`eps` must be in (0, 0.5), got {eps!r}.")
    if deterministic:
        return x
    checked = check_key(key)
    p = jax.nn.sigmoid(p_logit)
    u = jax.random.uniform(checked, x.shape, minval=eps, maxval=1.0 - eps)
    drop = jax.nn.sigmoid((jnp.log(p + eps) - jnp.log1p(eps - p) + jnp.log(u) - jnp.log1p(-u)) / temperature)
    return x * (1.0 - drop) / (1.0 - p)


def concrete_regularizer(
    p_logit: jax.Array,
    weights: Any,
    input_dim: int,
    *,
    weight_regularizer: float,
    dropout_regularizer: float,
) -> jax.Array:
    """Gal, Hron & Kendall's regulariser for one concrete-dropout layer.

    ``weight_regularizer * sum(W**2) / (1 - p) + dropout_regularizer * input_dim * (p log p + (1-p) log(1-p))``;
    the second term (negative entropy) pushes ``p`` towards 0.5, the first
    towards 0, and the data term decides between them. ``weights`` is the
    pytree of the weights that follow the dropout.
    """
    p = jax.nn.sigmoid(p_logit)
    sq = sum(jnp.sum(jnp.square(w)) for w in jax.tree.leaves(weights))
    entropy = p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p)
    return weight_regularizer * sq / (1.0 - p) + dropout_regularizer * input_dim * entropy


class MCPrediction(NamedTuple):
    """Monte Carlo dropout prediction (``entropy``/``mutual_information`` only for classifiers)."""

    mean: jax.Array
    variance: jax.Array
    entropy: jax.Array | None = None
    mutual_information: jax.Array | None = None


def mc_predict(
    apply_fn: Callable[[jax.Array, Any], jax.Array],
    key: jax.Array,
    inputs: Any,
    num_samples: int,
    *,
    classifier: bool = False,
) -> MCPrediction:
    """MC dropout (Gal & Ghahramani 2016): ``num_samples`` stochastic passes, vectorised with ``vmap``.

    Args:
      apply_fn: ``(key, inputs) -> outputs`` with dropout on (``deterministic=False``).
      key: split into ``num_samples`` keys, one per pass.
      inputs: passed unchanged to every pass.
      num_samples: number of passes (>= 1).
      classifier: if True, ``apply_fn`` returns logits over the last axis; the
        mean and variance are of the softmax probabilities, and the predictive
        entropy ``H[E p]`` and BALD mutual information ``H[E p] - E H[p]`` (in
        nats) are returned too.

    Returns:
      ``MCPrediction``; ``entropy`` and ``mutual_information`` are None unless ``classifier``.

    Raises:
      TypeError: ``apply_fn`` is not callable, ``key`` is not one PRNG key, or
        ``num_samples`` is not an int.
      ValueError: ``num_samples`` < 1.
    """
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be a callable (key, inputs) -> outputs, got {type(apply_fn).__name__}.")
    check_key(key)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    outs = jax.vmap(lambda k: apply_fn(k, inputs))(jax.random.split(key, num_samples))
    if not classifier:
        return MCPrediction(jnp.mean(outs, 0), jnp.var(outs, 0))
    probs = jax.nn.softmax(outs, axis=-1)
    mean = jnp.mean(probs, 0)

    def entropy(p):
        return -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0), axis=-1)

    h = entropy(mean)
    return MCPrediction(mean, jnp.var(probs, 0), h, h - jnp.mean(entropy(probs), 0))
