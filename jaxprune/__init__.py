"""jaxprune: pure-functional weight pruning and dropout for JAX.

A mask is a pytree of bool arrays beside the params (True = keep, None = not
prunable); ``apply_mask`` inside a jitted step is all a model needs.
"""

from jaxprune import schedules
from jaxprune.checkpoint import Checkpointer
from jaxprune.dropout import (
    MCPrediction,
    concrete_dropout,
    concrete_regularizer,
    dropout,
    locked_dropout,
    mc_predict,
    weight_drop,
    zoneout,
)
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
from jaxprune.optim import masked_optimizer, zero_pruned
from jaxprune.prune import prune
from jaxprune.pruner import Pruner, PrunerState, rewind
from jaxprune.rnn import RNNDropout, init_lstm, lstm
from jaxprune.scores import magnitude, random, saliency
from jaxprune.structures import NM, Block, Structured, Unstructured

__version__ = "0.1.0"

__all__ = [
    "NM",
    "Block",
    "Checkpointer",
    "LayerStats",
    "MCPrediction",
    "Pruner",
    "PrunerState",
    "RNNDropout",
    "Structured",
    "Summary",
    "Unstructured",
    "apply_mask",
    "concrete_dropout",
    "concrete_regularizer",
    "dropout",
    "finalize",
    "init_lstm",
    "init_masks",
    "locked_dropout",
    "lstm",
    "magnitude",
    "masked_optimizer",
    "mc_predict",
    "pack_masks",
    "prune",
    "random",
    "rewind",
    "saliency",
    "schedules",
    "sparsity",
    "summary",
    "unpack_masks",
    "weight_drop",
    "zero_pruned",
    "zoneout",
]
