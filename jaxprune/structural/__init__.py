"""Structural pruning: whole units (channels, hidden units, heads) removed across every leaf that holds them.

* ``unit_sets``: the set type (``UnitAxis``, ``UnitSet``).
* ``trace``, ``rules``, ``graph``: sets found from the traced program, one rule per primitive.
* ``hand``: sets written out for MLPs, ``jp.lstm`` and ``jp.gru``.
* ``unit_pruning``: ``prune_units`` chooses the units; ``compaction``: ``compact`` cuts them out.
"""

from jaxprune.structural.compaction import compact
from jaxprune.structural.hand import gru_units, lstm_units, mlp_units
from jaxprune.structural.trace import trace_units
from jaxprune.structural.unit_pruning import kept_units, prune_units, unit_masks
from jaxprune.structural.unit_sets import UnitAxis, UnitSet

__all__ = [
    "UnitAxis",
    "UnitSet",
    "compact",
    "gru_units",
    "kept_units",
    "lstm_units",
    "mlp_units",
    "prune_units",
    "trace_units",
    "unit_masks",
]
