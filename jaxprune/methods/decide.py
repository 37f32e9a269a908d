"""When a method's ``update`` changes masks: decided by ``lax.cond`` under ``jit``, in Python outside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax


def when_due(due: jax.Array, update: Callable[[Any], Any], masks: Any) -> Any:
    """``update(masks)`` if ``due``, else ``masks``.

    Under ``jit`` (a traced ``due``) this is a ``lax.cond``, so a jitted loop
    compiles once. Outside ``jit`` (an update between epochs, say) it is a
    Python ``if``: a ``lax.cond`` there would be compiled again on every call,
    since its branches are new closures each time (about a second for an
    MLP), where the update itself reuses the programs already compiled for
    these shapes. A step that is not due still traces ``update`` (no
    compile, nothing run), so bad arguments raise on every step, as they do
    under ``jit``.
    """
    if isinstance(due, jax.core.Tracer):
        return lax.cond(due, update, lambda m: m, masks)
    if bool(due):
        return update(masks)
    jax.eval_shape(update, masks)
    return masks
