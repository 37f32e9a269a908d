"""The checks of recurrent layers' arguments, shared by the ``lax.scan`` stack (``recurrent``) and cuDNN (``cudnn``).

Everything here reads shapes and dtypes only (and ``lengths``' values where
they are concrete), so it runs before any work and under ``jit``, and every
message names the argument, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._checks import check_float_array

WEIGHTS = ("w_ih", "w_hh", "b_ih", "b_hh")


class Cell(NamedTuple):
    """What the checks (and the stacking code) need to know about a kind of cell."""

    name: str  # for messages: "LSTM", "GRU"
    init: str  # the init function's name, for messages
    gates: int  # gate blocks stacked along the weights' first axis
    states: tuple[str, ...]  # the recurrent state's parts, in initial_state's order


LSTM_CELL = Cell("LSTM", "init_lstm", 4, ("h0", "c0"))
GRU_CELL = Cell("GRU", "init_gru", 3, ("h0",))


def layer_names(num_layers: int, bidirectional: bool) -> list[list[str]]:
    """The params' layer names, one list per layer: ``[["layer_0", "layer_0_reverse"], ...]``."""
    return [[f"layer_{i}"] + ([f"layer_{i}_reverse"] if bidirectional else []) for i in range(num_layers)]


class Dims(NamedTuple):
    """What checked params say about the stack."""

    num_layers: int
    directions: int
    widths: tuple[tuple[int, ...], ...]  # hidden units of each layer's directions
    input_size: int
    dtype: Any

    @property
    def flat_widths(self) -> list[int]:
        """Widths in the states' order: layer 0 (forward, reverse), layer 1, ..."""
        return [w for layer in self.widths for w in layer]

    @property
    def uniform(self) -> bool:
        """Whether every layer and direction has one width, so final states stack as PyTorch's."""
        return len(set(self.flat_widths)) == 1


def check_params(params: Any, cell: Cell) -> Dims:
    """Checks the layer names, and every weight's shape and dtype.

    Each layer's width comes from its own ``w_hh``; its ``w_ih`` must take
    the input (layer 0) or the previous layer's directions concatenated.
    Every layer is checked, so params converted from PyTorch with a slip (a
    transposed weight, a missing bias, a layer that does not fit the one
    before) fail here by name rather than inside the einsum or the scan.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"`params` must be a dict of layers (as {cell.init} returns), got {type(params).__name__}.")
    names = [n for n in params if isinstance(n, str) and n.startswith("layer_")]
    bidirectional = any(n.endswith("_reverse") for n in names)
    num_layers = len(names) // (2 if bidirectional else 1)
    layers = layer_names(num_layers, bidirectional)
    if num_layers < 1 or set(names) != {n for layer in layers for n in layer}:
        raise ValueError(
            f"`params` must hold layer_0 ... layer_{{L-1}} (and their *_reverse); got {sorted(map(str, params))}."
        )
    for name in names:
        layer = params[name]
        keys = set(layer) if isinstance(layer, Mapping) else None
        if keys != set(WEIGHTS):
            got = sorted(map(str, keys)) if keys is not None else type(layer).__name__
            raise ValueError(f"`params[{name!r}]` must hold exactly {list(WEIGHTS)} (as {cell.init}); got {got}.")
        for k in WEIGHTS:
            check_float_array(f"params[{name!r}][{k!r}]", layer[k])
    g, dtype = cell.gates, params["layer_0"]["w_hh"].dtype
    w_ih = params["layer_0"]["w_ih"]
    if w_ih.ndim != 2:
        raise ValueError(f"`params['layer_0']['w_ih']` must be [{g} * hidden, input], got shape {tuple(w_ih.shape)}.")
    n_in, widths = w_ih.shape[1], []
    for i, names_i in enumerate(layers):
        row = []
        for name in names_i:
            w_hh = params[name]["w_hh"]
            if w_hh.ndim != 2 or w_hh.shape[0] != g * w_hh.shape[1] or w_hh.shape[1] < 1:
                raise ValueError(
                    f"`params[{name!r}]['w_hh']` must be [{g} * hidden, hidden] ({cell.name}), "
                    f"got shape {tuple(w_hh.shape)}."
                )
            hidden = w_hh.shape[1]
            expected: dict[str, tuple[int, ...]] = {"w_ih": (g * hidden, n_in), "w_hh": (g * hidden, hidden)}
            expected |= {"b_ih": (g * hidden,), "b_hh": (g * hidden,)}
            for k, shape in expected.items():
                w = params[name][k]
                if tuple(w.shape) != shape:
                    feeds = "the input" if i == 0 else f"layer {i - 1}'s outputs"
                    raise ValueError(
                        f"`params[{name!r}][{k!r}]` has shape {tuple(w.shape)}, expected {shape}: hidden size "
                        f"{hidden} (its w_hh is [{g} * hidden, hidden]) and {n_in} inputs to layer {i} ({feeds})."
                    )
                if w.dtype != dtype:
                    raise TypeError(
                        f"`params[{name!r}][{k!r}]` is {w.dtype} but `params['layer_0']['w_hh']` is {dtype}; "
                        f"all {cell.name} params must share one dtype."
                    )
            row.append(hidden)
        widths.append(tuple(row))
        n_in = sum(row)  # the next layer takes this layer's directions concatenated
    return Dims(num_layers, len(layers[0]), tuple(widths), w_ih.shape[1], dtype)


def _check_dtype(name: str, x: jax.Array, dims: Dims, cell: Cell) -> None:
    if x.dtype != dims.dtype:
        raise TypeError(
            f"`{name}` is {x.dtype} but the {cell.name} params are {dims.dtype}; cast one to the other, e.g. "
            f"`.astype(jnp.{dims.dtype})` (as in PyTorch, input, state and weights must share a dtype)."
        )


def check_xs(dims: Dims, xs: Any, batch_first: bool, cell: Cell) -> None:
    check_float_array("xs", xs)
    layout = "[batch, time, input]" if batch_first else "[time, batch, input]"
    if xs.ndim != 3:
        raise ValueError(f"`xs` must be 3-D {layout}, got shape {tuple(xs.shape)}.")
    if xs.shape[-1] != dims.input_size:
        raise ValueError(
            f"`xs` has input size {xs.shape[-1]} (shape {tuple(xs.shape)}, {layout}), but "
            f"`params['layer_0']['w_ih']` ([{cell.gates} * hidden, input]) takes {dims.input_size}."
        )
    if xs.shape[1 if batch_first else 0] == 0:  # PyTorch refuses it too; the custom VJP needs a step
        raise ValueError(f"`xs` has no timesteps (shape {tuple(xs.shape)}, {layout}); give at least one.")
    _check_dtype("xs", xs, dims, cell)


def split_state(dims: Dims, cell: Cell, initial_state: Any, batch: int) -> list[list[jax.Array]] | None:
    """``initial_state`` as one list per state part of ``[batch, width]`` arrays, one per layer and direction.

    Each part is an array ``[layers * directions, batch, hidden]`` (as
    PyTorch's), or, needed when the widths differ, a sequence of
    ``[batch, width]`` arrays in the same order.
    """
    if initial_state is None:
        return None
    n = len(cell.states)
    if n == 1:
        parts, names = [initial_state], ["initial_state"]
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != n:
            pair = ", ".join(cell.states)
            raise TypeError(f"`initial_state` must be a pair ({pair}), got {type(initial_state).__name__}.")
        parts, names = list(initial_state), [f"initial_state[{i}]" for i in range(n)]
    widths, count = dims.flat_widths, len(dims.flat_widths)
    split = []
    for name, state, what in zip(names, parts, cell.states):
        if isinstance(state, (tuple, list)):
            if len(state) != count:
                alone = f" (the {cell.name}'s state is {what} alone, not a pair)" if n == 1 else ""
                raise ValueError(
                    f"`{name}` ({what}) holds {len(state)} arrays; give one per layer and direction ({count}), "
                    f"or one array [layers * directions, batch, hidden]{alone}."
                )
            for k, (s, width) in enumerate(zip(state, widths)):
                check_float_array(f"{name}[{k}]", s)
                if tuple(s.shape) != (batch, width):
                    raise ValueError(
                        f"`{name}[{k}]` ({what}) has shape {tuple(s.shape)}, expected {(batch, width)}: "
                        f"[batch, hidden] of layer {k // dims.directions}."
                    )
                _check_dtype(f"{name}[{k}]", s, dims, cell)
            split.append(list(state))
            continue
        check_float_array(name, state)
        shape = (count, batch, widths[0])
        if not dims.uniform:
            raise ValueError(
                f"`{name}` ({what}) must be a list of {count} arrays [batch, hidden]: the layers have "
                f"different widths {[list(w) for w in dims.widths]}, so one array cannot hold them."
            )
        if tuple(state.shape) != shape:
            raise ValueError(
                f"`{name}` ({what}) has shape {tuple(state.shape)}, expected {shape}: "
                f"[num_layers * directions, batch, hidden] for {dims.num_layers} layer(s), "
                f"{dims.directions} direction(s), batch {batch} and hidden size {widths[0]}."
            )
        _check_dtype(name, state, dims, cell)
        split.append(list(state))
    return split


def check_lengths(lengths: Any, xs: jax.Array, batch_first: bool) -> None:
    """``lengths``: None, or ints ``[batch]`` in [0, time] (the range is checked where the values are concrete)."""
    if lengths is None:
        return
    time, batch = (xs.shape[1], xs.shape[0]) if batch_first else (xs.shape[0], xs.shape[1])
    dtype = getattr(lengths, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        what = f"dtype {dtype}" if dtype is not None else f"{type(lengths).__name__}"
        raise TypeError(f"`lengths` must be an int array [batch], got {what}.")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"`lengths` must have shape ({batch},) (one length per sequence), got {tuple(lengths.shape)}.")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        bad = (values < 0) | (values > time)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"`lengths` must be in [0, {time}] (the timesteps), got lengths[{i}] = {values[i]}.")
