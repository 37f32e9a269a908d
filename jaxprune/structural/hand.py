"""Unit sets written out by hand for the architectures whose layout is known: MLPs, ``jp.lstm`` and ``jp.gru``.

``trace_units`` finds the same sets from the traced program; these stay for
code that names the layers itself, and as the reference the tracer is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from jaxprune._checks import check_int
from jaxprune.structural.unit_sets import UnitAxis


def mlp_units(layers: Sequence[str], kernel: str = "kernel", bias: str | None = "bias") -> list[list[UnitAxis]]:
    """Unit sets of the hidden layers of a Flax-style MLP (``[in, out]`` kernels), given its layer paths in order."""
    if isinstance(layers, str) or not all(isinstance(x, str) for x in layers):
        raise TypeError(f"`layers` must be a list of layer paths (str), e.g. ['dense_0', 'dense_1'], got {layers!r}.")
    if len(layers) < 2:
        raise ValueError(f"an MLP needs at least 2 layers to have hidden units, got {list(layers)}.")
    sets = []
    for here, after in pairwise(layers):
        entries = [UnitAxis(f"{here}/{kernel}", -1)]
        if bias is not None:
            entries.append(UnitAxis(f"{here}/{bias}", 0))
        entries.append(UnitAxis(f"{after}/{kernel}", 0))
        sets.append(entries)
    return sets


def lstm_units(num_layers: int, prefix: str = "") -> list[list[UnitAxis]]:
    """Unit sets of a unidirectional ``jp.lstm`` stack, one per layer.

    Each holds the unit's rows in all four gate blocks of ``w_ih``, ``w_hh``
    and both biases, its column of ``w_hh`` and its column of the next layer's ``w_ih``.
    """
    return _recurrent_units(num_layers, prefix, gates=4)


def gru_units(num_layers: int, prefix: str = "") -> list[list[UnitAxis]]:
    """Unit sets of a unidirectional ``jp.gru`` stack, one per layer: ``lstm_units`` with three gate blocks."""
    return _recurrent_units(num_layers, prefix, gates=3)


def _recurrent_units(num_layers: int, prefix: str, gates: int) -> list[list[UnitAxis]]:
    check_int("num_layers", num_layers, minimum=1)
    sets = []
    for i in range(num_layers):
        p = f"{prefix}layer_{i}"
        entries = [UnitAxis(f"{p}/{k}", 0, gates) for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
        entries.append(UnitAxis(f"{p}/w_hh", 1))
        if i + 1 < num_layers:
            entries.append(UnitAxis(f"{prefix}layer_{i + 1}/w_ih", 1))
        sets.append(entries)
    return sets
