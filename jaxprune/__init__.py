"""jaxprune: pure-functional weight pruning and dropout for JAX.

A mask is a pytree of bool arrays beside the params (True = keep, None = not
prunable); ``apply_mask`` inside a jitted step is all a model needs.
"""

from jaxprune import distributions, oneshot, schedules
from jaxprune._lazy import Lazy
from jaxprune._version import VERSION
from jaxprune.checkpoint import Checkpointer
from jaxprune.export import Bitmap, size_report, to_dense, to_sparse
from jaxprune.masks import (
    LayerStats,
    Summary,
    apply_mask,
    finalize,
    init_masks,
    pack_masks,
    sparsity,
    summary,
    unpack_masks,
)
from jaxprune.methods.pruner import Pruner, PrunerState, rewind
from jaxprune.methods.sparse_training import SET, RigL, SparseState, StaticSparse
from jaxprune.methods.straight_through import StraightThrough
from jaxprune.nn.dropouts import (
    MCPrediction,
    concrete_dropout,
    concrete_regularizer,
    dropout,
    locked_dropout,
    mc_predict,
    weight_drop,
    zoneout,
)
from jaxprune.nn.recurrent import RNNDropout, gru, init_gru, init_lstm, lstm
from jaxprune.optim import masked_optimizer, zero_pruned
from jaxprune.pruning import prune
from jaxprune.scores import magnitude, random, saliency
from jaxprune.structural import (
    UnitAxis,
    UnitSet,
    compact,
    gru_units,
    kept_units,
    lstm_units,
    mlp_units,
    prune_units,
    trace_units,
    unit_masks,
)
from jaxprune.structures import NM, Block, Structured, Unstructured

__version__ = VERSION

__all__ = [
    "NM",
    "SET",
    "Bitmap",
    "Block",
    "Checkpointer",
    "LayerStats",
    "Lazy",
    "MCPrediction",
    "Pruner",
    "PrunerState",
    "RNNDropout",
    "RigL",
    "SparseState",
    "StaticSparse",
    "StraightThrough",
    "Structured",
    "Summary",
    "UnitAxis",
    "UnitSet",
    "Unstructured",
    "apply_mask",
    "compact",
    "concrete_dropout",
    "concrete_regularizer",
    "distributions",
    "dropout",
    "finalize",
    "gru",
    "gru_units",
    "init_gru",
    "init_lstm",
    "init_masks",
    "kept_units",
    "locked_dropout",
    "lstm",
    "lstm_units",
    "magnitude",
    "masked_optimizer",
    "mc_predict",
    "mlp_units",
    "oneshot",
    "pack_masks",
    "prune",
    "prune_units",
    "random",
    "rewind",
    "saliency",
    "schedules",
    "size_report",
    "sparsity",
    "summary",
    "to_dense",
    "to_sparse",
    "trace_units",
    "unit_masks",
    "unpack_masks",
    "weight_drop",
    "zero_pruned",
    "zoneout",
]
