"""Host-built arrays put back where the arrays they replace live (private).

``init_masks``, ``prune_units`` and ``compact`` build small leaves with NumPy
on the host (no compile per shape) and place them all in one batched
``device_put``. Each goes to its source's device, and is committed to it only
where the source was: a jitted step fed committed arrays on its first call
and its own uncommitted outputs after would compile twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def put_like(arrays: Sequence[np.ndarray], sources: Sequence[Any]) -> list[jax.Array]:
    """``arrays[i]`` on the device of ``sources[i]`` (a one-device ``jax.Array``, or anything else: the
    default device), committed only if ``sources[i]`` is."""
    where = [next(iter(s.sharding.device_set)) if isinstance(s, jax.Array) and s.committed else None for s in sources]
    return list(jax.device_put(list(arrays), where)) if arrays else []
