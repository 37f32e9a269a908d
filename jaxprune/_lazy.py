"""``Lazy``: a score leaf computed where it is used instead of stored (private; exported as ``jp.Lazy``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


class Lazy:
    """A score leaf ``fn(*args)`` that the selection computes inside each of its passes.

    ``Lazy(jnp.abs, (w,))`` selects by ``|w|`` without writing ``|w|`` out:
    a score computed in the same jitted call is otherwise stored once and read
    back by every pass (XLA hoists it out of the search loop), and for 100M
    weights that store costs as much as several passes, and as much memory
    as the weights. ``fn`` must be elementwise in effect: it is evaluated
    whole, never on slices. ``jp.magnitude(params, lazy=True)`` builds these.

    It is one opaque leaf, deliberately not a pytree node: ``jax.tree.map``
    over a tree of lazy scores hands the function the ``Lazy`` itself, so
    arithmetic on it raises instead of being applied, silently, to its
    inputs; for the same reason it cannot be a ``jit`` argument (``prune``
    passes its inputs through its own ``jit``). ``evaluate()`` gives the
    array. Selections compile once per ``fn``: give a named function (as
    ``jnp.abs``), not a new lambda at every call.
    """

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., jax.Array], args: tuple[Any, ...]):
        if not callable(fn):
            raise TypeError(f"Lazy: `fn` must be callable, got {fn!r}.")
        self.fn, self.args = fn, tuple(args)

    def evaluate(self) -> jax.Array:
        return self.fn(*self.args)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.fn is jnp.abs:  # jp.magnitude's own: no trace needed (a model has hundreds of leaves)
            return tuple(self.args[0].shape)
        return tuple(jax.eval_shape(self.fn, *self.args).shape)

    @property
    def dtype(self) -> Any:
        return jax.eval_shape(self.fn, *self.args).dtype

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        # Without this, np.asarray(lazy) silently gives a 0-d object array.
        raise TypeError("a Lazy score is not an array; call .evaluate() (or jp.magnitude(params) without lazy=True).")

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", repr(self.fn))
        return f"Lazy({name}, shape={self.shape}, dtype={self.dtype})"


def evaluated(score: Any) -> Any:
    """The array of a score leaf: ``Lazy`` ones computed, anything else as it is."""
    return score.evaluate() if isinstance(score, Lazy) else score
