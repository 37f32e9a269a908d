"""PyTorch ``state_dict``s in and out: pruned models from ``torch.nn.utils.prune`` to jaxprune and back.

    params, masks = from_torch_state_dict(model.state_dict(), layout={"fc": "linear", "emb": "embedding"})
    outputs, _ = jp.lstm(params["lstm"], xs, masks=masks["lstm"])
    model.load_state_dict(to_torch_state_dict(params, masks, layout={...}), strict=True)   # a fresh, unpruned model

**Pruned form.** After ``torch.nn.utils.prune`` a parameter ``weight`` is
stored as ``weight_orig`` (the unmasked values) and a float buffer
``weight_mask`` (0./1.), however many rounds were applied. Such a pair
becomes one param leaf ``weight`` holding the ``_orig`` values and one bool
mask leaf (every mask value must be exactly 0 or 1). Every other leaf's mask
is ``None`` (not prunable); ``jp.init_masks(params)`` gives all-True masks for
the weights instead, for pruning an unpruned PyTorch model. A ``X_orig``
without its ``X_mask``, or beside a plain ``X``, raises; a ``X_mask`` without
``X_orig`` is an ordinary buffer (an attention mask) and is kept as it is.

**Names.** A module prefix becomes a key path: ``"encoder.lstm.weight_ih_l0"``
goes to ``params["encoder"]["lstm"]...``. What a module's entries become
depends on its *kind*::

    kind            PyTorch entries                          jaxprune / Flax entries
    "lstm"          {weight,bias}_{ih,hh}_l{k}[_reverse]     layer_{k}[_reverse]/{w,b}_{ih,hh}  (jp.init_lstm)
    "gru"           the same, 3 gates                        the same                           (jp.init_gru)
    "linear"        weight [out, in], bias                   kernel [in, out], bias             (Flax Dense)
    "conv2d"        weight [out, in/groups, kh, kw], bias    kernel [kh, kw, in/groups, out], bias  (Flax Conv)
    "embedding"     weight [num, dim]                        embedding [num, dim]               (Flax Embed)
    "layernorm"     weight, bias                             scale, bias                        (Flax LayerNorm)
    "torch"         anything                                 the same names and layouts

**What is inferred, what must be given.** A state_dict does not record
module types. Only recurrent modules are inferred: their entry names
(``weight_ih_l0``) belong to ``nn.LSTM``/``nn.GRU``/``nn.RNN`` alone, and
``weight_hh_l0`` is ``[gates * H, H]``: 4 gates is an LSTM, 3 a GRU (``nn.RNN``
and ``nn.LSTM(proj_size=...)`` raise: ``jp.lstm`` has no projection). Every
other module keeps PyTorch's names and layouts (``"torch"``) unless
``layout`` names its kind, because the shapes cannot tell: a 2-D ``weight``
is an ``nn.Linear`` (``[out, in]``) or an ``nn.Embedding`` (``[num, dim]``,
not to be transposed), a 4-D one a ``Conv2d`` or a ``ConvTranspose2d``
(``[in, out/groups, kh, kw]``), a 1-D pair a ``LayerNorm`` or a
``BatchNorm``'s affine part. Keeping the layout is never wrong; transposing
on a guess could be.

``to_torch_state_dict`` is the exact inverse. It reads the kind from the
jaxprune names (``layer_{k}/w_ih``, ``kernel`` 2-D or 4-D, ``embedding``,
``scale``; anything else is kept); pass it the same ``layout`` where a
module kept as ``"torch"`` happens to use one of those names.

Tensors are read on the CPU and copied into NumPy arrays (exact dtypes,
``bfloat16`` included): params and masks are NumPy arrays, which every jax
function takes. NumPy arrays may be passed instead of tensors, so importing
needs no PyTorch; exporting returns tensors and needs it. PyTorch is imported
lazily: it is never a dependency of jaxprune.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._tree import check_masks_match

__all__ = ["KINDS", "from_torch_state_dict", "to_torch_state_dict"]

KINDS = ("lstm", "gru", "linear", "conv2d", "embedding", "layernorm", "torch")

_RNN_ENTRY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")
_RNN_LAYER = re.compile(r"^layer_(\d+)(_reverse)?$")
_RNN_LEAVES = ("w_ih", "w_hh", "b_ih", "b_hh")
_GATES = {"lstm": 4, "gru": 3}
# nn.Conv2d weight [out, in/groups, kh, kw] <-> Flax Conv kernel [kh, kw, in/groups, out].
_TO_HWIO = (2, 3, 1, 0)


# ---------------------------------------------------------------- arrays


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported: never import it here
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(key: str, value: Any) -> np.ndarray:
    """A copy (never a view of the tensor's storage, which PyTorch may change later), dtype kept."""
    if _is_tensor(value):
        import torch

        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; jax's (jnp.bfloat16) has the same bits
            return t.view(torch.int16).numpy().view(jnp.bfloat16).copy()
        return t.numpy().copy()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.array(value)
    raise TypeError(
        f"state_dict[{key!r}] must be a torch.Tensor or a NumPy array, got {type(value).__name__}; "
        "load a checkpoint's state_dict (model.state_dict()), not the module or its pickle."
    )


def _to_tensor(x: Any, dtype: Any = None) -> Any:
    import torch

    a = np.array(x)  # a writable, contiguous copy: torch.from_numpy shares its memory
    if dtype is not None:
        a = a.astype(dtype)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _mask_from_torch(key: str, m: np.ndarray, shape: tuple) -> np.ndarray:
    if m.shape != shape:
        raise ValueError(f"state_dict[{key!r}] has shape {m.shape}, but its _orig has {shape}.")
    if m.dtype != bool and not np.all((m == 0) | (m == 1)):  # NaN fails both
        bad = m[~((m == 0) | (m == 1))].reshape(-1)[0]
        raise ValueError(f"state_dict[{key!r}] must hold only 0 and 1 (a pruning mask), found {bad.item()!r}.")
    return m.astype(bool)


# ---------------------------------------------------------------- import


def _unprune(entries: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``X_orig`` + ``X_mask`` -> ``X`` (the original values) and its bool mask; other entries as they are."""
    arrays, masks = {}, {}
    for key, x in entries.items():
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            if base + "_mask" not in entries:
                raise ValueError(
                    f"state_dict[{key!r}] has no {base + '_mask'!r} beside it: torch.nn.utils.prune stores a pruned "
                    "parameter as both, so the mask was lost on the way (a state_dict filtered to parameters?)."
                )
            if base in entries:
                raise ValueError(f"state_dict holds both {base!r} and {key!r}: which one is the parameter?")
            arrays[base] = x
            masks[base] = _mask_from_torch(base + "_mask", entries[base + "_mask"], x.shape)
        elif key.endswith("_mask") and key[: -len("_mask")] + "_orig" in entries:
            continue  # taken with its _orig
        else:
            arrays[key] = x
    return arrays, masks


def _split(key: str) -> tuple[str, str]:
    prefix, _, name = key.rpartition(".")
    return prefix, name


def _infer(prefix: str, names: list[str], arrays: dict[str, np.ndarray]) -> str:
    if not any(_RNN_ENTRY.match(n) for n in names):
        return "torch"
    projected = [n for n in names if (m := _RNN_ENTRY.match(n)) and m.group(2) == "hr"]
    if projected:  # weight_hh_l0 is [4H, proj_size] then: its shape says nothing about the gates
        key = f"{prefix}.{projected[0]}" if prefix else projected[0]
        raise ValueError(f"state_dict[{key!r}]: nn.LSTM(proj_size=...) is not supported by jp.lstm.")
    key = f"{prefix}.weight_hh_l0" if prefix else "weight_hh_l0"
    w_hh = arrays.get(key)
    if w_hh is None or w_hh.ndim != 2 or w_hh.shape[1] == 0 or w_hh.shape[0] % w_hh.shape[1]:
        raise ValueError(
            f"module {prefix!r} looks recurrent (weight_ih_l0...) but {key!r} is "
            f"{'missing' if w_hh is None else f'of shape {w_hh.shape}'}, not [gates * hidden, hidden]."
        )
    gates = w_hh.shape[0] // w_hh.shape[1]
    if gates == 4:
        return "lstm"
    if gates == 3:
        return "gru"
    what = "an nn.RNN (1 gate)" if gates == 1 else f"{gates} gates"
    raise ValueError(
        f"module {prefix!r}: {key!r} of shape {w_hh.shape} is {what}; jaxprune has LSTM (4) and GRU (3) "
        f'only. Pass layout={{{prefix!r}: "torch"}} to keep it as it is.'
    )


# A module's conversion: PyTorch entry name -> (jaxprune key path, transpose axes or None).
_Plan = dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]


def _plan_rnn(kind: str, prefix: str, entries: dict[str, np.ndarray]) -> _Plan:
    plan: _Plan = {}
    for name in entries:
        m = _RNN_ENTRY.match(name)
        key = f"{prefix}.{name}" if prefix else name
        if m is None:
            raise ValueError(f"state_dict[{key!r}] is not an {kind.upper()} entry ({{weight,bias}}_{{ih,hh}}_l<k>).")
        what, mat, layer, reverse = m.groups()
        if mat == "hr":
            raise ValueError(f"state_dict[{key!r}]: nn.LSTM(proj_size=...) is not supported by jp.lstm.")
        plan[name] = ((f"layer_{layer}{reverse or ''}", f"{what[0]}_{mat}"), None)
    gates = _GATES[kind]
    by_path = {path: entries[name] for name, (path, _) in plan.items()}
    for layer in sorted({path[0] for path in by_path}):
        missing = [n for n in _RNN_LEAVES if (layer, n) not in by_path]
        if missing:
            hint = " (nn.LSTM/nn.GRU(bias=False): jp.lstm/jp.gru need biases)" if "b_ih" in missing else ""
            raise ValueError(f"module {prefix!r}, {layer}: no {missing} in the state_dict{hint}.")
        w_hh = by_path[(layer, "w_hh")]
        if w_hh.ndim != 2 or w_hh.shape[0] != gates * w_hh.shape[1]:
            raise ValueError(
                f"module {prefix!r} is an {kind.upper()} but its {layer} weight_hh has shape {w_hh.shape}, "
                f"not [{gates} * hidden, hidden]."
            )
    return plan


# Per kind: PyTorch name -> (jaxprune name, number of dims or None for any, transpose axes or None).
_MODULES: dict[str, dict[str, tuple[str, int | None, tuple[int, ...] | None]]] = {
    "linear": {"weight": ("kernel", 2, (1, 0)), "bias": ("bias", 1, None)},
    "conv2d": {"weight": ("kernel", 4, _TO_HWIO), "bias": ("bias", 1, None)},
    "embedding": {"weight": ("embedding", 2, None)},
    "layernorm": {"weight": ("scale", None, None), "bias": ("bias", None, None)},
}


def _plan(kind: str, prefix: str, entries: dict[str, np.ndarray]) -> _Plan:
    """How one module's entries move to jaxprune's names, checked against what the kind has."""
    if kind == "torch":
        return {n: ((n,), None) for n in entries}
    if kind in _GATES:
        return _plan_rnn(kind, prefix, entries)
    allowed = _MODULES[kind]
    plan: _Plan = {}
    for name, x in entries.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in allowed:
            raise ValueError(
                f"state_dict[{key!r}] is not an entry of a {kind!r} module (expected {sorted(allowed)}); "
                f'fix layout[{prefix!r}] or give "torch" to keep the module as it is.'
            )
        new, ndim, axes = allowed[name]
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"state_dict[{key!r}] has shape {x.shape}; a {kind!r} {name} has {ndim} dims.")
        plan[name] = ((new,), axes)
    return plan


def _move(x: np.ndarray | None, axes: tuple[int, ...] | None) -> np.ndarray | None:
    if x is None:
        return None
    return np.ascontiguousarray(x if axes is None else np.transpose(x, axes))


def _insert(tree: dict, path: tuple[str, ...], value: Any, key: str) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"state_dict[{key!r}] goes under {'/'.join(path)}, where another entry already is.")
    if path[-1] in node:
        raise ValueError(f"state_dict[{key!r}] goes to {'/'.join(path)}, where another entry already is.")
    node[path[-1]] = value


def _check_layout(layout: Mapping[str, str] | None, prefixes: set[str]) -> dict[str, str]:
    if layout is None:
        return {}
    if not isinstance(layout, Mapping):
        raise TypeError(f"`layout` must be a mapping from module prefix to kind, got {type(layout).__name__}.")
    for prefix, kind in layout.items():
        if kind not in KINDS:
            raise ValueError(f"layout[{prefix!r}] = {kind!r}; kinds: {list(KINDS)}.")
        if prefix not in prefixes:
            raise ValueError(
                f"layout names module {prefix!r}, which has no entries; modules: {sorted(prefixes)} "
                '("" is the root, e.g. the state_dict of an nn.LSTM itself).'
            )
    return dict(layout)


def from_torch_state_dict(
    state_dict: Mapping[str, Any], *, layout: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PyTorch ``state_dict`` (plain or pruned) as jaxprune ``(params, masks)``.

    Args:
      state_dict: ``{dotted name: tensor or NumPy array}``, as ``module.state_dict()``
        gives it, with or without ``torch.nn.utils.prune``'s ``X_orig``/``X_mask`` pairs.
      layout: module prefix (``"encoder.fc"``; ``""`` for the root) -> kind, one of
        ``KINDS`` (see the module docstring). Modules not named: recurrent ones are
        inferred, the others kept as they are (``"torch"``).

    Returns:
      ``(params, masks)``: nested dicts of NumPy arrays, the same structure; params
      hold the unmasked (``_orig``) values; masks are bool where the state_dict had a
      ``_mask``, ``None`` elsewhere.

    Raises:
      TypeError: a value is not a tensor or array; ``layout`` is not a mapping.
      ValueError: before any conversion, naming the key: an ``_orig`` without its
        ``_mask`` or beside a plain entry; a mask not all 0/1 or of another shape; a
        layout kind that is unknown or names no module; an entry that its module's kind
        does not have, or of the wrong rank; an unsupported recurrent module (``nn.RNN``,
        ``proj_size``, ``bias=False``).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`state_dict` must be a mapping of names to tensors, got {type(state_dict).__name__}.")
    entries = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {key!r}.")
        entries[key] = _to_numpy(key, value)
    arrays, masks = _unprune(entries)
    modules: dict[str, list[str]] = {}
    for key in arrays:
        prefix, name = _split(key)
        modules.setdefault(prefix, []).append(name)
    layout = _check_layout(layout, set(modules))
    plans = []  # every module planned (and so checked) before anything is converted
    for prefix, names in modules.items():
        kind = layout.get(prefix) or _infer(prefix, names, arrays)
        keys = {n: f"{prefix}.{n}" if prefix else n for n in names}
        plans.append((prefix, keys, _plan(kind, prefix, {n: arrays[k] for n, k in keys.items()})))
    params: dict[str, Any] = {}
    out_masks: dict[str, Any] = {}
    for prefix, keys, plan in plans:
        base = tuple(prefix.split(".")) if prefix else ()
        for name, (path, axes) in plan.items():
            key = keys[name]
            _insert(params, base + path, _move(arrays[key], axes), key)
            _insert(out_masks, base + path, _move(masks.get(key), axes), key)
    return params, out_masks


# ---------------------------------------------------------------- export


def _infer_out(node: Mapping[str, Any]) -> str:
    rnn = [k for k, v in node.items() if _RNN_LAYER.match(str(k)) and isinstance(v, Mapping) and "w_ih" in v]
    if rnn:
        return "lstm"  # the names are the same for a GRU
    kernel = node.get("kernel")
    if kernel is not None and not isinstance(kernel, Mapping):
        return "conv2d" if np.ndim(kernel) == 4 else "linear"
    if "embedding" in node and not isinstance(node["embedding"], Mapping):
        return "embedding"
    if "scale" in node and not isinstance(node["scale"], Mapping):
        return "layernorm"
    return "torch"


def _rnn_out(where: str, layer: str, leaves: Mapping[str, Any], masks: Any) -> list[tuple[str, Any, Any]]:
    match = _RNN_LAYER.match(layer)
    assert match is not None  # the caller routes only layer_<k>[_reverse] names here
    index, reverse = match.groups()
    out = []
    for leaf, w in leaves.items():
        if leaf not in _RNN_LEAVES or isinstance(w, Mapping):
            raise ValueError(f"params leaf {where}/{leaf} is not one of an RNN layer's {list(_RNN_LEAVES)}.")
        name = f"{'weight' if leaf[0] == 'w' else 'bias'}_{leaf[2:]}_l{index}{reverse or ''}"
        out.append((name, w, None if masks is None else masks.get(leaf)))
    return out


def _convert_out(kind: str, path: str, node: Mapping[str, Any], masks: Any) -> tuple[list, list]:
    """``[(torch name, array, mask)]`` of this module's own entries, and its children ``[(name, node, masks)]``."""
    inverse = {new: (old, ndim, axes) for old, (new, ndim, axes) in _MODULES.get(kind, {}).items()}
    own, children = [], []
    for name, x in node.items():
        where = f"{path}/{name}" if path else str(name)
        m = None if masks is None else masks.get(name)
        if kind in _GATES and isinstance(x, Mapping) and _RNN_LAYER.match(str(name)):
            own += _rnn_out(where, name, x, m)
        elif isinstance(x, Mapping):
            children.append((name, x, m))
        elif kind == "torch":
            own.append((name, x, m))
        elif kind in _GATES:
            raise ValueError(f"params leaf {where} is not in an RNN layer (layer_<k>[_reverse]/w_ih, ...).")
        elif name not in inverse:
            raise ValueError(f"params leaf {where} is not an entry of a {kind!r} module ({sorted(inverse)}).")
        else:
            torch_name, ndim, axes = inverse[name]
            if ndim is not None and np.ndim(x) != ndim:
                raise ValueError(f"params leaf {where} has shape {np.shape(x)}; a {kind!r} {name} has {ndim} dims.")
            back = None if axes is None else tuple(np.argsort(axes))
            own.append((torch_name, _move(np.asarray(x), back), _move(None if m is None else np.asarray(m), back)))
    return own, children


def to_torch_state_dict(
    params: Mapping[str, Any],
    masks: Mapping[str, Any] | None = None,
    *,
    pruned_form: bool = False,
    layout: Mapping[str, str] | None = None,
) -> OrderedDict[str, Any]:
    """jaxprune ``(params, masks)`` as a PyTorch ``state_dict``: the inverse of ``from_torch_state_dict``.

    Args:
      params: nested dicts of arrays (NumPy or jax), e.g. from ``from_torch_state_dict``.
      masks: bool masks mirroring ``params`` (``None`` leaves: not pruned), or None.
      pruned_form: False: plain weights with the pruned entries set to 0, loadable with
        ``strict=True`` by an unpruned model. True: each masked leaf as ``X_orig`` (the
        unmasked values) and ``X_mask`` (0./1. in the leaf's dtype), loadable by a model
        on which ``prune.identity`` (or ``custom_from_mask``) was applied to those
        parameters, so pruning can go on in PyTorch.
      layout: module path (``"encoder.fc"``) -> kind, as for ``from_torch_state_dict``;
        modules not named get their kind from the jaxprune names.

    Returns:
      An ``OrderedDict`` of CPU tensors.

    Raises:
      ImportError: PyTorch is not installed.
      TypeError, ValueError: ``params`` is not nested mappings; ``masks`` does not mirror
        it (the first differing path is named); a leaf that its module's kind does not have.
    """
    try:
        import torch  # noqa: F401  (the tensors below need it)
    except ImportError as e:
        raise ImportError("to_torch_state_dict returns torch tensors; install PyTorch (pip install torch).") from e
    if not isinstance(params, Mapping):
        raise TypeError(f"`params` must be nested dicts of arrays, got {type(params).__name__}.")
    if not isinstance(pruned_form, bool):
        raise TypeError(f"`pruned_form` must be a bool, got {pruned_form!r}.")
    if masks is not None:
        check_masks_match(params, masks)
    layout = dict(layout or {})
    for prefix, kind in layout.items():
        if kind not in KINDS:
            raise ValueError(f"layout[{prefix!r}] = {kind!r}; kinds: {list(KINDS)}.")
    entries: list[tuple[str, Any, Any]] = []
    used = set()

    def walk(prefix: tuple[str, ...], node: Mapping[str, Any], node_masks: Any) -> None:
        dotted = ".".join(prefix)
        kind = layout.get(dotted) or _infer_out(node)
        used.add(dotted)
        own, children = _convert_out(kind, "/".join(prefix), node, node_masks)
        entries.extend((".".join((*prefix, name)), x, m) for name, x, m in own)
        for name, child, child_masks in children:
            walk((*prefix, str(name)), child, child_masks)

    walk((), params, masks)
    unused = sorted(set(layout) - used)
    if unused:
        raise ValueError(f"layout names modules {unused} that `params` does not have.")
    out: OrderedDict[str, Any] = OrderedDict()
    for key, x, m in entries:
        x = np.asarray(x)
        if m is None:
            out[key] = _to_tensor(x)
        elif pruned_form:
            out[key + "_orig"] = _to_tensor(x)
            out[key + "_mask"] = _to_tensor(np.asarray(m), x.dtype)
        else:
            out[key] = _to_tensor(np.where(np.asarray(m), x, np.zeros((), x.dtype)))
    return out
