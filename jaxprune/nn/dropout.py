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

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def check_rate(rate: Any, name: str = "rate", *, allow_one: bool = False) -> None:
    """Validates a concrete rate in [0, 1) (or [0, 1] with ``allow_one``); traced rates pass."""
    if isinstance(rate, jax.core.Tracer):
        return
    if isinstance(rate, bool) or not isinstance(rate, (numbers.Real, jax.Array)) or jnp.ndim(rate) != 0:
        raise TypeError(f"`{name}` must be a float, got {type(rate).__name__} {rate!r}.")
    r = float(rate)
    ok = 0.0 <= r <= 1.0 if allow_one else 0.0 <= r < 1.0
    if not ok:  # NaN fails both comparisons
        allowed = "[0, 1]" if allow_one else "[0, 1) (a rate of 1 would divide by zero)"
        raise ValueError(f"`{name}` must be in {allowed}, got {rate!r}.")


def keep_mask(key: jax.Array, shape: Sequence[int], rate: float | jax.Array) -> jax.Array:
    """Bool mask, True with probability ``1 - rate``."""
    return jax.random.bernoulli(key, 1.0 - jnp.asarray(rate, jnp.float32), tuple(shape))


def dropout(
    key: jax.Array,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest by ``1 / (1 - rate)``.

    ``broadcast_dims``: axes along which one mask value is shared (e.g. the
    time axis for locked dropout, the spatial axes for channel dropout).
    """
    check_rate(rate)
    if deterministic or (not isinstance(rate, jax.core.Tracer) and float(rate) == 0.0):
        return x
    dims = {d % x.ndim for d in broadcast_dims}
    shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
    keep = keep_mask(key, shape, rate)
    return jnp.where(keep, x / (1.0 - jnp.asarray(rate, x.dtype)), jnp.zeros((), x.dtype))


def locked_dropout(
    key: jax.Array, xs: jax.Array, rate: float | jax.Array, *, time_axis: int = 0, deterministic: bool = False
) -> jax.Array:
    """Variational dropout for a sequence: the same mask at every step along ``time_axis``."""
    return dropout(key, xs, rate, broadcast_dims=(time_axis,), deterministic=deterministic)


def weight_drop(
    key: jax.Array,
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
    """
    if mask is not None:
        w = jnp.where(mask, w, jnp.zeros((), w.dtype))
    return dropout(key, w, rate, deterministic=deterministic)


def zoneout(
    key: jax.Array,
    previous: jax.Array,
    new: jax.Array,
    rate: float | jax.Array,
    *,
    deterministic: bool = False,
) -> jax.Array:
    """Each unit keeps ``previous`` with probability ``rate``, else takes ``new`` (a fresh mask per call).

    ``deterministic=True`` gives the expectation ``rate * previous + (1 - rate) * new``.
    """
    check_rate(rate, allow_one=True)
    rate = jnp.asarray(rate, new.dtype)
    if deterministic:
        return rate * previous + (1.0 - rate) * new
    stay = jax.random.bernoulli(key, rate.astype(jnp.float32), new.shape)
    return jnp.where(stay, previous, new)


def concrete_dropout(
    key: jax.Array,
    x: jax.Array,
    p_logit: jax.Array,
    *,
    temperature: float = 0.1,
    deterministic: bool = False,
    eps: float = 1e-7,
) -> jax.Array:
    """Concrete dropout: a relaxed Bernoulli mask, differentiable in the rate ``sigmoid(p_logit)``.

    The drop probability per entry is
    ``sigmoid((log p - log(1-p) + log u - log(1-u)) / temperature)``, u ~ U(0, 1),
    and kept values are scaled by ``1 / (1 - p)``. Learn ``p_logit`` with
    optax by adding ``concrete_regularizer`` to the loss.
    """
    p = jax.nn.sigmoid(p_logit)
    if deterministic:
        return x
    u = jax.random.uniform(key, x.shape, minval=eps, maxval=1.0 - eps)
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
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    outs = jax.vmap(lambda k: apply_fn(k, inputs))(jax.random.split(key, num_samples))
    if not classifier:
        return MCPrediction(jnp.mean(outs, 0), jnp.var(outs, 0))
    probs = jax.nn.softmax(outs, axis=-1)
    mean = jnp.mean(probs, 0)

    def entropy(p):
        return -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0), axis=-1)

    h = entropy(mean)
    return MCPrediction(mean, jnp.var(probs, 0), h, h - jnp.mean(entropy(probs), 0))
