"""Flax helpers: NNX models and Linen ``TrainState``s with masks beside the params.

NNX, functional style (masks applied in the jitted step, the model untouched)::

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = jp.init_masks(params)
    model = nnx.merge(graphdef, jp.apply_mask(params, masks), rest)   # inside the step

NNX with ``nnx.Optimizer``: wrap the optax transform in ``jp.masked_optimizer``
and pass ``masks=`` to ``optimizer.update``; the stored weights then stay zero
and ``nnx_masks(model)`` gives masks for ``nnx.state(model, nnx.Param)``.

Linen: ``PrunedTrainState`` is a ``flax.training.train_state.TrainState`` that
carries a ``Pruner`` and its state, masks its optimizer and prunes on schedule
in ``apply_gradients``.
"""

from __future__ import annotations

from typing import Any

import optax
from flax import nnx, struct
from flax.training import train_state

from jaxprune.masks import Where, apply_mask, init_masks
from jaxprune.methods.pruner import Pruner, PrunerState
from jaxprune.optim import masked_optimizer

# Path patterns (for `where=` and per-layer schedules) of Flax's LSTM cells.
# nnx.LSTMCell and Linen's LSTMCell/OptimizedLSTMCell hold one kernel per gate:
# "ii", "if" ("if_" in NNX), "ig", "io" for the inputs and "hi", "hf", "hg",
# "ho" for the recurrent state; nnx.OptimizedLSTMCell fuses them into
# "dense_i" and "dense_h" kernels of 4x width.
LSTM_INPUT_KERNELS = r"(^|/)(ii|if_?|ig|io|dense_i)/kernel$"
LSTM_RECURRENT_KERNELS = r"(^|/)(hi|hf|hg|ho|dense_h)/kernel$"


def nnx_masks(model: nnx.Module, where: Where = None) -> Any:
    """``init_masks`` over ``nnx.state(model, nnx.Param)``."""
    return init_masks(nnx.state(model, nnx.Param), where)


def nnx_apply_mask(model: nnx.Module, masks: Any) -> None:
    """Zeros the pruned weights of an NNX ``model`` in place (e.g. right after a pruning round)."""
    nnx.update(model, apply_mask(nnx.state(model, nnx.Param), masks))


class PrunedTrainState(train_state.TrainState):
    """A Linen ``TrainState`` with masks beside the params.

    ``create(apply_fn=..., params=..., tx=..., pruner=...)`` wraps ``tx`` in
    ``masked_optimizer``; ``apply_gradients`` keeps pruned weights exactly zero
    and then lets the pruner prune if its schedule says so at the new step.
    Use ``state.masked_params()`` (or just ``state.params``, whose pruned
    entries are zero after every step) in ``apply_fn``.
    """

    pruner: Pruner = struct.field(pytree_node=False)
    pruner_state: PrunerState

    @property
    def masks(self) -> Any:
        return self.pruner_state.masks

    def masked_params(self) -> Any:
        return apply_mask(self.params, self.masks)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> PrunedTrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params, masks=self.masks)
        params = optax.apply_updates(self.params, updates)
        step = self.step + 1
        pruner_state = self.pruner.update(self.pruner_state, params, step)
        params = apply_mask(params, pruner_state.masks)  # newly pruned weights become zero now
        return self.replace(step=step, params=params, opt_state=opt_state, pruner_state=pruner_state, **kwargs)

    @classmethod
    def create(cls, *, apply_fn, params, tx, pruner: Pruner, **kwargs: Any) -> PrunedTrainState:
        pruner_state = pruner.init(params)
        pruner_state = pruner.update(pruner_state, params, 0)  # a schedule may start at step 0
        params = apply_mask(params, pruner_state.masks)
        return super().create(
            apply_fn=apply_fn,
            params=params,
            tx=masked_optimizer(tx),
            pruner=pruner,
            pruner_state=pruner_state,
            **kwargs,
        )
