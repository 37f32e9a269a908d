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

One-shot pruning: ``nnx_input_stats`` and ``linen_input_stats`` collect what
every ``nnx.Linear`` / ``nn.Dense`` saw on calibration batches, for
``jp.oneshot.prune_kernel``.

Structural pruning (``flax_units``, re-exported here): ``nnx_units`` traces a
module's unit sets, ``nnx_compact`` cuts the pruned ones out into a new,
smaller module. Linen modules take their sizes from constructor arguments, so
``jp.compact`` on their variables gives the smaller arrays, and the module
must be built again with the kept widths (``jp.kept_units`` gives them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import linen as nn
from flax import nnx, struct
from flax.training import train_state

from jaxprune.integrations.flax_units import (  # noqa: F401  (re-exported)
    UNIT_STATE,
    nnx_compact,
    nnx_unit_masks,
    nnx_unit_state,
    nnx_units,
)
from jaxprune.masks import Where, apply_mask, init_masks
from jaxprune.methods.pruner import Pruner, PrunerState
from jaxprune.oneshot.sequential import check_target, prune_in_model
from jaxprune.oneshot.stats import InputStats, accumulate, init_stats
from jaxprune.optim import masked_optimizer

# Path patterns (for `where=` and per-layer schedules) of Flax's LSTM cells.
# nnx.LSTMCell and Linen's LSTMCell/OptimizedLSTMCell hold one kernel per gate:
# "ii", "if" ("if_" in NNX), "ig", "io" for the inputs and "hi", "hf", "hg",
# "ho" for the recurrent state; nnx.OptimizedLSTMCell fuses them into
# "dense_i" and "dense_h" kernels of 4x width.
LSTM_INPUT_KERNELS = r"(^|/)(ii|if_?|ig|io|dense_i)/kernel$"
LSTM_RECURRENT_KERNELS = r"(^|/)(hi|hf|hg|ho|dense_h)/kernel$"
# Flax's GRU cells: Linen's GRUCell holds "ir", "iz", "in" (inputs) and "hr",
# "hz", "hn" (state); nnx.GRUCell fuses them into "dense_i" and "dense_h" of 3x width.
GRU_INPUT_KERNELS = r"(^|/)(ir|iz|in|dense_i)/kernel$"
GRU_RECURRENT_KERNELS = r"(^|/)(hr|hz|hn|dense_h)/kernel$"


# The layers whose inputs one-shot calibration records.
_LINEARS = (nnx.Linear, nnx.LinearGeneral)


def nnx_masks(model: nnx.Module, where: Where = None) -> Any:
    """``init_masks`` over ``nnx.state(model, nnx.Param)``."""
    return init_masks(nnx.state(model, nnx.Param), where)


def nnx_apply_mask(model: nnx.Module, masks: Any) -> None:
    """Zeros the pruned weights of an NNX ``model`` in place (e.g. right after a pruning round)."""
    nnx.update(model, apply_mask(nnx.state(model, nnx.Param), masks))


def nnx_input_stats(
    model: nnx.Module,
    forward: Callable[[nnx.Module, Any], Any],
    batches: Sequence[Any],
    *,
    hessian: bool = True,
) -> dict[str, InputStats]:
    """What every ``nnx.Linear`` / ``nnx.LinearGeneral`` of ``model`` saw as input on calibration batches, by path.

    ``forward(model, batch)`` runs the model (its output is ignored). Runs
    jitted, once per batch, on a copy of the model: each copy's Linears get a
    ``dot_general`` that records its input, so ``model`` itself is untouched.
    A Linear called several times (shared weights) adds every call's inputs.
    The kernel of ``stats["blocks/0/mlp"]`` is ``blocks/0/mlp/kernel`` in
    ``nnx.state(model, nnx.Param)`` (and in ``nnx_masks(model)``), ``[in, out]``.
    A ``LinearGeneral`` that contracts its input's trailing axes (as
    ``nnx.MultiHeadAttention``'s projections do) is recorded with those axes
    flattened into one: its kernel is ``[in, out]`` once reshaped to
    ``(stats.sq_norms.shape[0], -1)``. Other contractions are not recorded.
    Compiled once per model structure and ``forward`` (pass the same function
    object each time to reuse it).

    Raises:
      ValueError: ``batches`` is empty or ``forward`` calls no Linear.
    """
    graphdef, state = nnx.split(model)
    batches = _nonempty(batches)
    shapes = jax.eval_shape(functools.partial(_nnx_record, graphdef, forward), state, batches[0])
    stats = _init_all(shapes, hessian)
    for batch in batches:
        stats = _nnx_add(graphdef, forward, state, stats, batch)
    return stats


def _nnx_record(graphdef: Any, forward: Callable, state: Any, batch: Any) -> dict[str, list[jax.Array]]:
    copy = nnx.merge(graphdef, state)
    seen: dict[str, list[jax.Array]] = {}
    for path, node in nnx.iter_graph(copy):
        if isinstance(node, _LINEARS) and getattr(node, "dot_general_cls", None) is None:
            original = node.dot_general or jax.lax.dot_general
            node.dot_general = _recording(original, seen.setdefault(_join(path), []))
    forward(copy, batch)
    return {name: xs for name, xs in seen.items() if xs}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _nnx_add(graphdef: Any, forward: Callable, state: Any, stats: dict, batch: Any) -> dict:
    return _add_all(stats, _nnx_record(graphdef, forward, state, batch))


def _in_out(node: nnx.Linear | nnx.LinearGeneral) -> tuple[int, int]:
    """A Linear's kernel as ``[in, out]``: a LinearGeneral contracts its kernel's first ``len(axis)`` axes."""
    shape = node.kernel.shape
    n = len(node.axis) if isinstance(node, nnx.LinearGeneral) else 1
    return math.prod(shape[:n]), math.prod(shape[n:])


def _call_block(block: nnx.Module, x: Any) -> Any:
    return block(x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_block(graphdef: Any, call: Callable, state: Any, x: Any) -> Any:
    return call(nnx.merge(graphdef, state), x)


def nnx_prune_blocks(
    blocks: Sequence[nnx.Module],
    inputs: Sequence[Any],
    *,
    method: str = "sparsegpt",
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    call: Callable[[nnx.Module, Any], Any] | None = None,
) -> list[Any]:
    """Prunes every ``nnx.Linear`` (and ``LinearGeneral``) of each block in turn, in place, as the papers do.

    ``inputs`` are the first block's calibration inputs, one array per batch
    (e.g. the embedded tokens). Block ``i`` is pruned from what its Linears
    see when it runs on the outputs of blocks ``0..i-1`` *already pruned*;
    then the pruned block's outputs become block ``i + 1``'s inputs. Memory
    holds one block's statistics at a time. Each kernel is pruned by
    ``jp.oneshot.prune_kernel`` (``method``: ``"sparsegpt"``, ``"wanda"`` or
    ``"magnitude"``) and written back into the block.

    Args:
      blocks: the blocks, in order (e.g. a transformer's ``model.blocks``).
      inputs: calibration inputs of the first block, a sequence of arrays.
      method: as in ``prune_kernel``.
      sparsity: as in ``prune_kernel``.
      nm: as in ``prune_kernel``.
      blocksize: as in ``prune_kernel``.
      percdamp: as in ``prune_kernel``.
      call: ``call(block, x) -> y`` runs a block (default ``block(x)``).

    Returns:
      Each block's masks, shaped as ``nnx_masks(block)``: the Linear kernels
      pruned, every other leaf as ``nnx_masks`` makes it. Put them into a
      model's masks with ``masks["blocks"][i] = block_masks[i]``.

    Raises:
      ValueError: a bad target (before any work); or statistics a kernel
        cannot be pruned from, naming the block and the kernel: NaN or inf
        in what it saw (Wanda's norms, SparseGPT's Hessian), or a Hessian not
        positive definite after damping (raise ``percdamp``). The kernels
        pruned before it stay pruned in place.
    """
    call = call or _call_block
    inputs = list(inputs)
    target = {"method": method, "sparsity": sparsity, "nm": nm, "blocksize": blocksize, "percdamp": percdamp}
    check_target(
        [_in_out(node) for block in blocks for _, node in nnx.iter_graph(block) if isinstance(node, _LINEARS)], **target
    )
    out = []
    for i, block in enumerate(blocks):
        stats = nnx_input_stats(block, call, inputs, hessian=method == "sparsegpt")
        masks = nnx_masks(block)
        for path, node in nnx.iter_graph(block):
            name = _join(path)
            if not isinstance(node, _LINEARS) or name not in stats:
                continue
            shape = node.kernel.shape  # [in..., out...]: as [in, out] for pruning, then back
            flat = node.kernel[...].reshape(stats[name].sq_norms.shape[0], -1)
            source = f"the calibration `inputs` gave block {i}'s {name}/kernel"
            kernel, mask = prune_in_model(source, flat, stats[name], **target)
            kernel, mask = kernel.reshape(shape), mask.reshape(shape)
            node.kernel[...] = kernel
            leaf = masks
            for p in path:
                leaf = leaf[p]
            leaf["kernel"][...] = mask
        graphdef, state = nnx.split(block)
        inputs = [_run_block(graphdef, call, state, x) for x in inputs]
        out.append(masks)
    return out


def linen_input_stats(
    module: nn.Module,
    variables: Any,
    batches: Sequence[Any],
    *,
    hessian: bool = True,
    **apply_kwargs: Any,
) -> dict[str, InputStats]:
    """What every ``nn.Dense`` of a Linen ``module`` saw as input on calibration batches, by the Dense's path.

    Runs ``module.apply(variables, batch, **apply_kwargs)`` jitted once per
    batch under ``nn.intercept_methods``, recording each Dense call's input.
    The kernel of ``stats["hidden"]`` is ``variables["params"]["hidden"]["kernel"]``, ``[in, out]``.

    Raises:
      ValueError: ``batches`` is empty or the module calls no Dense.
    """

    def run(batch):
        seen: dict[str, list[jax.Array]] = {}

        def record(call, args, kwargs, context):
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                seen.setdefault(_join(context.module.path), []).append(args[0])
            return call(*args, **kwargs)

        with nn.intercept_methods(record):
            module.apply(variables, batch, **apply_kwargs)
        return seen

    batches = _nonempty(batches)
    stats = _init_all(jax.eval_shape(run, batches[0]), hessian)
    add = jax.jit(lambda stats, batch: _add_all(stats, run(batch)))
    for batch in batches:
        stats = add(stats, batch)
    return stats


def _join(path: Sequence[Any]) -> str:
    return "/".join(str(p) for p in path)


def _recording(dot_general: Callable[..., jax.Array], inputs: list[jax.Array]) -> Callable[..., jax.Array]:
    """``dot_general`` that also records its input, flattened to ``[..., in]``, where the input axes are clear.

    Clear means: no batch dimensions, the input's contracted axes are its
    last ones and the kernel's its first ones, in the same order (``Linear``;
    ``LinearGeneral`` over trailing axes, as ``MultiHeadAttention``'s
    projections). The kernel is then ``[in, out]`` once reshaped. Other calls
    are not recorded, so their layer gets no statistics and is not pruned.
    """

    def record(x, kernel, dimension_numbers, *args, **kwargs):
        (x_axes, k_axes), batch = dimension_numbers
        n = len(x_axes)
        trailing = tuple(a % x.ndim for a in x_axes) == tuple(range(x.ndim - n, x.ndim))
        if trailing and tuple(k_axes) == tuple(range(n)) and not any(batch):
            inputs.append(x.reshape(*x.shape[: x.ndim - n], -1))
        return dot_general(x, kernel, dimension_numbers, *args, **kwargs)

    return record


def _nonempty(batches: Sequence[Any]) -> list[Any]:
    batches = list(batches)
    if not batches:
        raise ValueError("`batches` must hold at least one calibration batch, got none.")
    return batches


def _init_all(shapes: dict[str, list[jax.ShapeDtypeStruct]], hessian: bool) -> dict[str, InputStats]:
    if not shapes:
        raise ValueError("the forward pass called no nnx.Linear / nn.Dense: nothing to collect.")
    return {name: init_stats(xs[0].shape[-1], hessian=hessian) for name, xs in shapes.items()}


def _add_all(stats: dict[str, InputStats], seen: dict[str, list[jax.Array]]) -> dict[str, InputStats]:
    stats = dict(stats)
    for name, xs in seen.items():
        for x in xs:
            stats[name] = accumulate(stats[name], x)
    return stats


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
    def create(cls, *, apply_fn, params, tx, pruner: Pruner | None = None, **kwargs: Any) -> PrunedTrainState:
        # `pruner` has a default only so the signature stays TrainState.create's; it is required.
        if pruner is None:
            raise TypeError("PrunedTrainState.create needs `pruner=` (a jp.Pruner or another method).")
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
