"""Old import path of the unit sets (``jaxprune.units``); they live in ``jaxprune.structural`` now."""

from jaxprune.structural.hand import gru_units, lstm_units, mlp_units
from jaxprune.structural.unit_pruning import kept_units, prune_units
from jaxprune.structural.unit_sets import UnitAxis, UnitSet, locate

__all__ = ["UnitAxis", "UnitSet", "gru_units", "kept_units", "locate", "lstm_units", "mlp_units", "prune_units"]
