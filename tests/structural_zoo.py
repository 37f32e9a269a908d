"""A zoo of small pure-function JAX models for testing a structural-pruning tracer.

Each model is plain ``jax`` / ``jax.numpy`` / ``jax.lax`` with params as nested
dicts of float32 arrays in Flax-like layouts: dense kernels ``[in, out]``, conv
kernels HWIO on NHWC activations. ``apply`` takes every size from the shapes of
its inputs, so a tracer sees the coupling only through the computation.

``Model.expected`` lists the coupled unit sets a correct tracer must find: one
Python set per group of coupled channels, each holding the ``(leaf_path, axis)``
pairs (paths join dict keys with "/", axes non-negative) whose entries belong to
that group. Axes tied to the model's input or output are in no set. One
``(path, axis)`` may be in several sets (a concat consumer, a fused qkv kernel);
the comments say which slice of that axis belongs to which set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

Params = dict
UnitSets = list[set[tuple[str, int]]]

BATCH = 2
SEQ = 5
IMAGE = (8, 8)


@dataclass(frozen=True)
class Model:
    """A model of the zoo: ``apply(init(key), x())`` runs; ``expected`` is what a tracer must find."""

    name: str
    init: Callable[[jax.Array], dict]  # key -> params (nested dict of arrays)
    apply: Callable[[dict, jax.Array], Any]  # (params, x) -> output array (or tuple of arrays)
    x: Callable[[], jax.Array]  # makes the input (deterministic)
    expected: list[set[tuple[str, int]]]  # the coupled unit sets a correct tracer must find
    notes: str = ""


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks


class _Rng:
    """Float32 draws from one key, handed out in order.

    Each draw is a slice of a fixed-size ``jax.random`` pool (refilled from ``fold_in(key, i)``), so a process
    compiles the sampler once instead of once per leaf shape, which keeps ``init`` fast on small CPUs.
    """

    POOL = 4096

    def __init__(self, key: jax.Array):
        self._key, self._fills = key, 0
        self._pools = {"normal": np.empty(0, np.float32), "uniform": np.empty(0, np.float32)}

    def _draw(self, kind: str, shape: tuple[int, ...]) -> np.ndarray:
        n = math.prod(shape)
        while self._pools[kind].size < n:
            k = jax.random.fold_in(self._key, self._fills)
            self._fills += 1
            fill = getattr(jax.random, kind)(k, (self.POOL,), jnp.float32)
            self._pools[kind] = np.concatenate([self._pools[kind], np.asarray(fill)])
        out, self._pools[kind] = self._pools[kind][:n], self._pools[kind][n:]
        return out.reshape(shape)

    def normal(self, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
        """Entries from N(0, scale**2); the scaling is done in numpy (no per-shape compile)."""
        return jnp.asarray(np.float32(scale) * self._draw("normal", shape))

    def uniform(self, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> jax.Array:
        """Entries in [low, high)."""
        return jnp.asarray(np.float32(low) + np.float32(high - low) * self._draw("uniform", shape))


def _normal(rng: _Rng, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    return rng.normal(shape, 1 / math.sqrt(fan_in))


def _positive(rng: _Rng, shape: tuple[int, ...]) -> jax.Array:
    """Entries in [0.5, 1.5): non-trivial scales and variances."""
    return rng.uniform(shape, 0.5, 1.5)


def _small(rng: _Rng, shape: tuple[int, ...]) -> jax.Array:
    """Non-zero offsets (biases, means) that still matter."""
    return rng.normal(shape, 0.1)


def _init_dense(rng: _Rng, n_in: int, n_out: int, bias: bool = True) -> Params:
    p = {"kernel": _normal(rng, (n_in, n_out), n_in)}
    if bias:
        p["bias"] = _small(rng, (n_out,))
    return p


def _init_conv(rng: _Rng, size: int, c_in: int, c_out: int, bias: bool = True) -> Params:
    """An HWIO conv kernel; for a depthwise conv pass ``c_in=1`` (channels per group)."""
    p = {"kernel": _normal(rng, (size, size, c_in, c_out), size * size * c_in)}
    if bias:
        p["bias"] = _small(rng, (c_out,))
    return p


def _init_bn(rng: _Rng, c: int) -> Params:
    return {
        "scale": _positive(rng, (c,)),
        "bias": _small(rng, (c,)),
        "mean": _small(rng, (c,)),
        "var": _positive(rng, (c,)),
    }


def _init_ln(rng: _Rng, d: int) -> Params:
    return {"scale": _positive(rng, (d,)), "bias": _small(rng, (d,))}


def _dense(p: Params, x: jax.Array) -> jax.Array:
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def _conv(p: Params, x: jax.Array, stride: int = 1, groups: int = 1) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x,
        p["kernel"],
        (stride, stride),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
    return y + p["bias"] if "bias" in p else y


def _bn(p: Params, x: jax.Array) -> jax.Array:
    """BatchNorm in inference mode (running statistics)."""
    return (x - p["mean"]) / jnp.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]


def _ln(p: Params, x: jax.Array) -> jax.Array:
    """LayerNorm over the last axis."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _pool(x: jax.Array) -> jax.Array:
    """Global average pool of NHWC activations."""
    return x.mean(axis=(1, 2))


def _bn_leaves(path: str, axis: int = 0) -> set[tuple[str, int]]:
    return {(f"{path}/{k}", axis) for k in ("scale", "bias", "mean", "var")}


def _ln_leaves(path: str) -> set[tuple[str, int]]:
    return {(f"{path}/scale", 0), (f"{path}/bias", 0)}


def _image(channels: int = 3, seed: int = 1) -> Callable[[], jax.Array]:
    return lambda: _Rng(jax.random.key(seed)).normal((BATCH, *IMAGE, channels))


def _tokens(features: int, seed: int = 1) -> Callable[[], jax.Array]:
    return lambda: _Rng(jax.random.key(seed)).normal((BATCH, SEQ, features))


# ---------------------------------------------------------------------------------------------------------------------
# 1. mlp


def _mlp_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    return {"dense_0": _init_dense(rng, 8, 16), "dense_1": _init_dense(rng, 16, 12), "dense_2": _init_dense(rng, 12, 3)}


def _mlp_apply(p: Params, x: jax.Array) -> jax.Array:
    """Three dense layers with biases and relu: 8 -> 16 -> 12 -> 3."""
    h = jax.nn.relu(_dense(p["dense_0"], x))
    h = jax.nn.relu(_dense(p["dense_1"], h))
    return _dense(p["dense_2"], h)


MLP = Model(
    name="mlp",
    init=_mlp_init,
    apply=_mlp_apply,
    x=lambda: _Rng(jax.random.key(1)).normal((BATCH, 8)),
    expected=[
        {("dense_0/kernel", 1), ("dense_0/bias", 0), ("dense_1/kernel", 0)},  # 16 units
        {("dense_1/kernel", 1), ("dense_1/bias", 0), ("dense_2/kernel", 0)},  # 12 units
    ],
    notes="Plain MLP: one set per hidden layer.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 2. cnn_bn


def _cnn_bn_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    return {
        "conv1": _init_conv(rng, 3, 3, 8, bias=False),
        "bn1": _init_bn(rng, 8),
        "conv2": _init_conv(rng, 3, 8, 16, bias=False),
        "bn2": _init_bn(rng, 16),
        "head": _init_dense(rng, 16, 5),
    }


def _cnn_bn_apply(p: Params, x: jax.Array) -> jax.Array:
    """conv3x3 -> BN -> relu -> conv3x3 -> BN -> relu -> global average pool -> dense head."""
    h = jax.nn.relu(_bn(p["bn1"], _conv(p["conv1"], x)))
    h = jax.nn.relu(_bn(p["bn2"], _conv(p["conv2"], h)))
    return _dense(p["head"], _pool(h))


CNN_BN = Model(
    name="cnn_bn",
    init=_cnn_bn_init,
    apply=_cnn_bn_apply,
    x=_image(),
    expected=[
        {("conv1/kernel", 3), *_bn_leaves("bn1"), ("conv2/kernel", 2)},  # 8 channels
        {("conv2/kernel", 3), *_bn_leaves("bn2"), ("head/kernel", 0)},  # 16 channels
    ],
    notes="Convs without bias, each followed by an inference-mode BatchNorm (scale, bias, mean, var).",
)


# ---------------------------------------------------------------------------------------------------------------------
# 3. resnet_basic


def _resnet_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    return {
        "stem": {"conv": _init_conv(rng, 3, 3, 8, bias=False), "bn": _init_bn(rng, 8)},
        "block1": {
            "conv1": _init_conv(rng, 3, 8, 8, bias=False),
            "bn1": _init_bn(rng, 8),
            "conv2": _init_conv(rng, 3, 8, 8, bias=False),
            "bn2": _init_bn(rng, 8),
        },
        "block2": {
            "conv1": _init_conv(rng, 3, 8, 16, bias=False),
            "bn1": _init_bn(rng, 16),
            "conv2": _init_conv(rng, 3, 16, 16, bias=False),
            "bn2": _init_bn(rng, 16),
            "shortcut_conv": _init_conv(rng, 1, 8, 16, bias=False),
            "shortcut_bn": _init_bn(rng, 16),
        },
        "head": _init_dense(rng, 16, 5),
    }


def _basic_block(p: Params, x: jax.Array, stride: int) -> jax.Array:
    h = jax.nn.relu(_bn(p["bn1"], _conv(p["conv1"], x, stride)))
    h = _bn(p["bn2"], _conv(p["conv2"], h))
    shortcut = _bn(p["shortcut_bn"], _conv(p["shortcut_conv"], x, stride)) if "shortcut_conv" in p else x
    return jax.nn.relu(h + shortcut)


def _resnet_apply(p: Params, x: jax.Array) -> jax.Array:
    """Stem conv+BN, an identity basic block, a stride-2 basic block with a 1x1 conv+BN shortcut, pool, head."""
    h = jax.nn.relu(_bn(p["stem"]["bn"], _conv(p["stem"]["conv"], x)))
    h = _basic_block(p["block1"], h, stride=1)
    h = _basic_block(p["block2"], h, stride=2)
    return _dense(p["head"], _pool(h))


RESNET_BASIC = Model(
    name="resnet_basic",
    init=_resnet_init,
    apply=_resnet_apply,
    x=_image(),
    expected=[
        # The 8-channel residual stream: stem, block1's output (identity add) and block2's two readers.
        {
            ("stem/conv/kernel", 3),
            *_bn_leaves("stem/bn"),
            ("block1/conv1/kernel", 2),
            ("block1/conv2/kernel", 3),
            *_bn_leaves("block1/bn2"),
            ("block2/conv1/kernel", 2),
            ("block2/shortcut_conv/kernel", 2),
        },
        {("block1/conv1/kernel", 3), *_bn_leaves("block1/bn1"), ("block1/conv2/kernel", 2)},  # 8 channels
        {("block2/conv1/kernel", 3), *_bn_leaves("block2/bn1"), ("block2/conv2/kernel", 2)},  # 16 channels
        # The 16-channel stream after the downsampling add: main path and shortcut are added together.
        {
            ("block2/conv2/kernel", 3),
            *_bn_leaves("block2/bn2"),
            ("block2/shortcut_conv/kernel", 3),
            *_bn_leaves("block2/shortcut_bn"),
            ("head/kernel", 0),
        },
    ],
    notes="Residual adds merge the stem and block1 output into one set, and block2's main path and shortcut into "
    "another; each block's inner channels are a set of their own.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 4. mobilenet_v2


def _mobilenet_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    c, e = 4, 16  # block channels, expanded channels (x4)
    return {
        "stem": _init_conv(rng, 3, 3, c),
        "block": {
            "expand": _init_conv(rng, 1, c, e, bias=False),
            "expand_bn": _init_bn(rng, e),
            "depthwise": _init_conv(rng, 3, 1, e, bias=False),  # HWIO with I = 1 channel per group
            "depthwise_bn": _init_bn(rng, e),
            "project": _init_conv(rng, 1, e, c, bias=False),
            "project_bn": _init_bn(rng, c),
        },
        "head": _init_dense(rng, c, 5),
    }


def _mobilenet_apply(p: Params, x: jax.Array) -> jax.Array:
    """Stem conv + relu6, an inverted residual (1x1 expand, 3x3 depthwise, 1x1 project, add), pool, head."""
    h = jax.nn.relu6(_conv(p["stem"], x))
    b = p["block"]
    y = jax.nn.relu6(_bn(b["expand_bn"], _conv(b["expand"], h)))
    y = jax.nn.relu6(_bn(b["depthwise_bn"], _conv(b["depthwise"], y, groups=y.shape[-1])))
    y = _bn(b["project_bn"], _conv(b["project"], y))
    h = h + y
    return _dense(p["head"], _pool(h))


MOBILENET_V2 = Model(
    name="mobilenet_v2",
    init=_mobilenet_init,
    apply=_mobilenet_apply,
    x=_image(),
    expected=[
        # The 4-channel stream: stem output, added to the block's projection.
        {
            ("stem/kernel", 3),
            ("stem/bias", 0),
            ("block/expand/kernel", 2),
            ("block/project/kernel", 3),
            *_bn_leaves("block/project_bn"),
            ("head/kernel", 0),
        },
        # The 16 expanded channels: the depthwise conv keeps channel j as channel j, so its in and out are one set.
        {
            ("block/expand/kernel", 3),
            *_bn_leaves("block/expand_bn"),
            ("block/depthwise/kernel", 3),
            *_bn_leaves("block/depthwise_bn"),
            ("block/project/kernel", 2),
        },
    ],
    notes="The depthwise conv (feature_group_count == channels, kernel [3, 3, 1, C]) passes channels through one to "
    "one: its kernel axis 3 joins the expand and project sets into one. Its kernel axis 2 has size 1 and is in no set.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 5. densenet_concat


def _densenet_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    return {
        "stem": _init_conv(rng, 3, 3, 8),
        "layer_a": _init_conv(rng, 3, 8, 4),
        "conv_b": _init_conv(rng, 3, 12, 8),  # reads concat([stem (8), layer_a (4)])
        "head": _init_dense(rng, 8, 5),
    }


def _densenet_apply(p: Params, x: jax.Array) -> jax.Array:
    """Stem conv; conv A on it; concat([stem, A]) along channels; conv B on the concat; pool; head."""
    s = jax.nn.relu(_conv(p["stem"], x))
    a = jax.nn.relu(_conv(p["layer_a"], s))
    h = jax.nn.relu(_conv(p["conv_b"], jnp.concatenate([s, a], axis=-1)))
    return _dense(p["head"], _pool(h))


DENSENET_CONCAT = Model(
    name="densenet_concat",
    init=_densenet_init,
    apply=_densenet_apply,
    x=_image(),
    expected=[
        # Stem channels: conv_b/kernel axis 2 entries 0:8.
        {("stem/kernel", 3), ("stem/bias", 0), ("layer_a/kernel", 2), ("conv_b/kernel", 2)},
        # Layer A channels: conv_b/kernel axis 2 entries 8:12.
        {("layer_a/kernel", 3), ("layer_a/bias", 0), ("conv_b/kernel", 2)},
        {("conv_b/kernel", 3), ("conv_b/bias", 0), ("head/kernel", 0)},  # 8 channels
    ],
    notes="conv_b/kernel axis 2 (12 entries) is in two sets: entries 0:8 are the stem's channels, 8:12 layer A's. "
    "The two sources have different widths (8 and 4).",
)


# ---------------------------------------------------------------------------------------------------------------------
# 6. flatten_dense


def _flatten_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    c, positions = 4, (IMAGE[0] // 2) * (IMAGE[1] // 2)
    return {
        "conv": _init_conv(rng, 3, 3, c),
        "dense_0": _init_dense(rng, positions * c, 16),
        "head": _init_dense(rng, 16, 5),
    }


def _flatten_apply(p: Params, x: jax.Array) -> jax.Array:
    """conv (stride 2) -> relu -> flatten NHWC to [B, H*W*C] -> dense -> relu -> dense head."""
    h = jax.nn.relu(_conv(p["conv"], x, stride=2))
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(_dense(p["dense_0"], h))
    return _dense(p["head"], h)


FLATTEN_DENSE = Model(
    name="flatten_dense",
    init=_flatten_init,
    apply=_flatten_apply,
    x=_image(),
    expected=[
        # 4 channels; dense_0/kernel axis 0 has 4x4 positions x 4 channels = 64 entries, channel c at rows p*4 + c.
        {("conv/kernel", 3), ("conv/bias", 0), ("dense_0/kernel", 0)},
        {("dense_0/kernel", 1), ("dense_0/bias", 0), ("head/kernel", 0)},  # 16 units
    ],
    notes="Flattening NHWC puts channel c of spatial position p at feature p * C + c, so conv channel c owns "
    "dense_0/kernel rows c, C + c, 2C + c, ... (a strided slice, H*W rows per channel).",
)


# ---------------------------------------------------------------------------------------------------------------------
# 7. swiglu


def _swiglu_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    d, f = 8, 16
    return {
        "ffn": {
            "up": _init_dense(rng, d, f, bias=False),
            "gate": _init_dense(rng, d, f, bias=False),
            "down": _init_dense(rng, f, d, bias=False),
        },
        "head": _init_dense(rng, d, 5),
    }


def _swiglu_apply(p: Params, x: jax.Array) -> jax.Array:
    """x [B, T, D]; h = silu(x @ w_gate) * (x @ w_up); x + h @ w_down; per-token dense head."""
    f = p["ffn"]
    h = jax.nn.silu(_dense(f["gate"], x)) * _dense(f["up"], x)
    h = x + _dense(f["down"], h)
    return _dense(p["head"], h)


SWIGLU = Model(
    name="swiglu",
    init=_swiglu_init,
    apply=_swiglu_apply,
    x=_tokens(8),
    expected=[
        {("ffn/up/kernel", 1), ("ffn/gate/kernel", 1), ("ffn/down/kernel", 0)},  # 16 hidden units
    ],
    notes="The gating multiply couples up and gate column j. D is tied to the input through the residual add, so "
    "the stream (ffn/up/kernel axis 0, ffn/down/kernel axis 1, head/kernel axis 0) is in no set.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 8. squeeze_excite


def _se_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    c, r = 16, 4
    return {
        "conv1": _init_conv(rng, 3, 3, c),
        "se": {"reduce": _init_dense(rng, c, r), "expand": _init_dense(rng, r, c)},
        "conv2": _init_conv(rng, 3, c, 8),
        "head": _init_dense(rng, 8, 5),
    }


def _se_apply(p: Params, x: jax.Array) -> jax.Array:
    """conv -> relu -> squeeze-excite (pool, reduce + relu, expand + sigmoid, multiply) -> conv -> pool -> head."""
    h = jax.nn.relu(_conv(p["conv1"], x))
    s = jax.nn.relu(_dense(p["se"]["reduce"], _pool(h)))
    s = jax.nn.sigmoid(_dense(p["se"]["expand"], s))
    h = h * s[:, None, None, :]
    h = jax.nn.relu(_conv(p["conv2"], h))
    return _dense(p["head"], _pool(h))


SQUEEZE_EXCITE = Model(
    name="squeeze_excite",
    init=_se_init,
    apply=_se_apply,
    x=_image(),
    expected=[
        # 16 channels: the gate's expand output multiplies channel j of conv1's output.
        {
            ("conv1/kernel", 3),
            ("conv1/bias", 0),
            ("se/reduce/kernel", 0),
            ("se/expand/kernel", 1),
            ("se/expand/bias", 0),
            ("conv2/kernel", 2),
        },
        {("se/reduce/kernel", 1), ("se/reduce/bias", 0), ("se/expand/kernel", 0)},  # 4 squeeze units
        {("conv2/kernel", 3), ("conv2/bias", 0), ("head/kernel", 0)},  # 8 channels
    ],
    notes="The excite gate is multiplied onto the conv output, so its expand layer's outputs join the conv channels.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 9. vit_heads


def _vit_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    n_in, d, heads, head_dim, f = 6, 8, 3, 4, 16  # heads * head_dim = 12 != d

    def proj():
        return {"kernel": _normal(rng, (d, heads, head_dim), d), "bias": _small(rng, (heads, head_dim))}

    return {
        "embed": _init_dense(rng, n_in, d),
        "block": {
            "ln1": _init_ln(rng, d),
            "attn": {
                "query": proj(),
                "key": proj(),
                "value": proj(),
                "out": {
                    "kernel": _normal(rng, (heads, head_dim, d), heads * head_dim),
                    "bias": _small(rng, (d,)),
                },
            },
            "ln2": _init_ln(rng, d),
            "mlp": {"up": _init_dense(rng, d, f), "down": _init_dense(rng, f, d)},
        },
        "head": _init_dense(rng, d, 5),
    }


def _mha(p: Params, x: jax.Array) -> jax.Array:
    """Multi-head self-attention with per-head kernels: [D, heads, head_dim] in, [heads, head_dim, D] out."""
    q = jnp.einsum("btd,dhk->bthk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = jnp.einsum("btd,dhk->bthk", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = jnp.einsum("btd,dhk->bthk", x, p["value"]["kernel"]) + p["value"]["bias"]
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    weights = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum("bhqs,bshk->bqhk", weights, v)
    return jnp.einsum("bthk,hkd->btd", o, p["out"]["kernel"]) + p["out"]["bias"]


def _vit_apply(p: Params, x: jax.Array) -> jax.Array:
    """Patch-embedding dense, one pre-LN transformer block (attention + gelu MLP), mean over tokens, head."""
    h = _dense(p["embed"], x)
    b = p["block"]
    h = h + _mha(b["attn"], _ln(b["ln1"], h))
    h = h + _dense(b["mlp"]["down"], jax.nn.gelu(_dense(b["mlp"]["up"], _ln(b["ln2"], h))))
    return _dense(p["head"], h.mean(axis=1))


VIT_HEADS = Model(
    name="vit_heads",
    init=_vit_init,
    apply=_vit_apply,
    x=_tokens(6),
    expected=[
        # The residual stream D (8): every writer to and reader of it, the LayerNorms included.
        {
            ("embed/kernel", 1),
            ("embed/bias", 0),
            *_ln_leaves("block/ln1"),
            ("block/attn/query/kernel", 0),
            ("block/attn/key/kernel", 0),
            ("block/attn/value/kernel", 0),
            ("block/attn/out/kernel", 2),
            ("block/attn/out/bias", 0),
            *_ln_leaves("block/ln2"),
            ("block/mlp/up/kernel", 0),
            ("block/mlp/down/kernel", 1),
            ("block/mlp/down/bias", 0),
            ("head/kernel", 0),
        },
        # Heads (3), as whole units.
        {
            ("block/attn/query/kernel", 1),
            ("block/attn/query/bias", 0),
            ("block/attn/key/kernel", 1),
            ("block/attn/key/bias", 0),
            ("block/attn/value/kernel", 1),
            ("block/attn/value/bias", 0),
            ("block/attn/out/kernel", 0),
        },
        {("block/mlp/up/kernel", 1), ("block/mlp/up/bias", 0), ("block/mlp/down/kernel", 0)},  # 16 hidden units
    ],
    notes="The residual-stream set is coupled through a normalisation: LayerNorm reduces over D (mean and variance "
    "mix all D channels), so removing a stream channel changes the normalisation of the others; a tracer may "
    "report or flag this set specially. Attention units are whole heads; the head_dim axes (q/k axis 2 coupled by "
    "the q.k product, v axis 2 with out axis 1) are finer units not listed here.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 10. gpt2_fused_qkv

GPT2_HEAD_DIM = 4


def _gpt2_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    n_in, d, f = 6, 12, 16  # heads = d // GPT2_HEAD_DIM = 3
    return {
        "embed": _init_dense(rng, n_in, d),
        "h": {
            "ln_1": _init_ln(rng, d),
            "attn": {"c_attn": _init_dense(rng, d, 3 * d), "c_proj": _init_dense(rng, d, d)},
            "ln_2": _init_ln(rng, d),
            "mlp": {"c_fc": _init_dense(rng, d, f), "c_proj": _init_dense(rng, f, d)},
        },
        "ln_f": _init_ln(rng, d),
        "head": _init_dense(rng, d, 5),
    }


def _gpt2_attn(p: Params, x: jax.Array) -> jax.Array:
    """Causal self-attention with a fused qkv kernel [D, 3 * width]; heads = width // GPT2_HEAD_DIM.

    The attention width comes from c_attn's output, not from D, so the model still runs with heads cut out.
    """
    b, t, _ = x.shape
    q, k, v = jnp.split(_dense(p["c_attn"], x), 3, axis=-1)
    width = q.shape[-1]
    heads = width // GPT2_HEAD_DIM
    q, k, v = (a.reshape(b, t, heads, GPT2_HEAD_DIM) for a in (q, k, v))
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(GPT2_HEAD_DIM)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    o = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(logits, axis=-1), v)
    return _dense(p["c_proj"], o.reshape(b, t, width))


def _gpt2_apply(p: Params, x: jax.Array) -> jax.Array:
    """Input dense, one GPT-2 block (fused-qkv causal attention, gelu MLP), final LayerNorm, per-token head."""
    h = _dense(p["embed"], x)
    blk = p["h"]
    h = h + _gpt2_attn(blk["attn"], _ln(blk["ln_1"], h))
    h = h + _dense(blk["mlp"]["c_proj"], jax.nn.gelu(_dense(blk["mlp"]["c_fc"], _ln(blk["ln_2"], h))))
    return _dense(p["head"], _ln(p["ln_f"], h))


GPT2_FUSED_QKV = Model(
    name="gpt2_fused_qkv",
    init=_gpt2_init,
    apply=_gpt2_apply,
    x=_tokens(6),
    expected=[
        # The residual stream D (12), coupled through the LayerNorms.
        {
            ("embed/kernel", 1),
            ("embed/bias", 0),
            *_ln_leaves("h/ln_1"),
            ("h/attn/c_attn/kernel", 0),
            ("h/attn/c_proj/kernel", 1),
            ("h/attn/c_proj/bias", 0),
            *_ln_leaves("h/ln_2"),
            ("h/mlp/c_fc/kernel", 0),
            ("h/mlp/c_proj/kernel", 1),
            ("h/mlp/c_proj/bias", 0),
            *_ln_leaves("ln_f"),
            ("head/kernel", 0),
        },
        # Heads (3): head j is c_attn columns j*4:(j+1)*4 (q), D + j*4:... (k), 2D + j*4:... (v) and the same
        # columns of the bias, and c_proj rows j*4:(j+1)*4.
        {("h/attn/c_attn/kernel", 1), ("h/attn/c_attn/bias", 0), ("h/attn/c_proj/kernel", 0)},
        {("h/mlp/c_fc/kernel", 1), ("h/mlp/c_fc/bias", 0), ("h/mlp/c_proj/kernel", 0)},  # 16 hidden units
    ],
    notes="Fused qkv: c_attn/kernel axis 1 (3D = 36) is split into q, k, v regions of D each, then each region into "
    "heads of GPT2_HEAD_DIM (= 4) columns, so the 3 head units own 12 columns apiece (three strided blocks). "
    "c_proj/kernel axis 0 (D) holds head j at rows j*4:(j+1)*4 after the head merge reshape. The residual stream "
    "is coupled through LayerNorms (ln_1, ln_2, ln_f), as in vit_heads. Causal mask via jnp.tril.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 11. tied_embeddings


def _tied_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    v, d, h = 12, 8, 16
    return {
        "embed": {"embedding": _normal(rng, (v, d), d)},
        "mlp": {"up": _init_dense(rng, d, h), "down": _init_dense(rng, h, d)},
    }


def _tied_apply(p: Params, ids: jax.Array) -> jax.Array:
    """ids [B, T] -> E[ids] -> residual dense D -> H -> D MLP -> logits h @ E.T [B, T, V]."""
    e = p["embed"]["embedding"]
    h = jnp.take(e, ids, axis=0)
    h = h + _dense(p["mlp"]["down"], jax.nn.relu(_dense(p["mlp"]["up"], h)))
    return h @ e.T


def _token_ids() -> jax.Array:
    """int32 ids [B, T] in [0, 12)."""
    return jnp.floor(_Rng(jax.random.key(1)).uniform((BATCH, SEQ), 0, 12)).astype(jnp.int32)


TIED_EMBEDDINGS = Model(
    name="tied_embeddings",
    init=_tied_init,
    apply=_tied_apply,
    x=_token_ids,
    expected=[
        # D (8): the table's feature axis is both the lookup's output and the logits' contraction.
        {("embed/embedding", 1), ("mlp/up/kernel", 0), ("mlp/down/kernel", 1), ("mlp/down/bias", 0)},
        {("mlp/up/kernel", 1), ("mlp/up/bias", 0), ("mlp/down/kernel", 0)},  # 16 hidden units
    ],
    notes="The embedding table is used twice (lookup and transposed output projection). Its vocabulary axis 0 is "
    "tied to the input ids and to the logits, so it is in no set; its D axis is internal and prunable.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 12. lstm_head / 13. gru_head


def _recurrent_init(name: str, init_fn: Callable, n_in: int = 3, hidden: int = 8, layers: int = 2, out: int = 4):
    """``{name: init_fn(...) params, "head": dense}`` for a stack of ``layers`` recurrent layers."""

    def init(key: jax.Array) -> Params:
        k_rnn, k_head = jax.random.split(key)
        return {name: init_fn(k_rnn, n_in, hidden, num_layers=layers), "head": _init_dense(_Rng(k_head), hidden, out)}

    return init


def _lstm_apply(p: Params, xs: jax.Array) -> jax.Array:
    """A 2-layer ``jp.lstm`` over xs [T, B, in]; dense head on the last step's output."""
    out, _ = jp.lstm(p["lstm"], xs)
    return _dense(p["head"], out[-1])


def _gru_apply(p: Params, xs: jax.Array) -> jax.Array:
    """A 2-layer ``jp.gru`` over xs [T, B, in]; dense head on the last step's output."""
    out, _ = jp.gru(p["gru"], xs)
    return _dense(p["head"], out[-1])


def _recurrent_expected(prefix: str, layers: int = 2) -> UnitSets:
    sets = []
    for i in range(layers):
        p = f"{prefix}/layer_{i}"
        s = {(f"{p}/{k}", 0) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}  # gate-blocked rows
        s.add((f"{p}/w_hh", 1))
        s.add((f"{prefix}/layer_{i + 1}/w_ih", 1) if i + 1 < layers else ("head/kernel", 0))
        sets.append(s)
    return sets


def _sequence(n_in: int = 3) -> Callable[[], jax.Array]:
    return lambda: _Rng(jax.random.key(1)).normal((SEQ, BATCH, n_in))


LSTM_HEAD = Model(
    name="lstm_head",
    init=_recurrent_init("lstm", jp.init_lstm),
    apply=_lstm_apply,
    x=_sequence(),
    expected=_recurrent_expected("lstm"),
    notes="Per layer, hidden unit j is row j of each of the 4 gate blocks (i, f, g, o) of w_ih, w_hh, b_ih, b_hh "
    "(axis 0, 4H = 32 rows), column j of w_hh, and column j of the next layer's w_ih (or row j of the head kernel). "
    "The recurrence h -> w_hh couples rows and columns of w_hh.",
)

GRU_HEAD = Model(
    name="gru_head",
    init=_recurrent_init("gru", jp.init_gru),
    apply=_gru_apply,
    x=_sequence(),
    expected=_recurrent_expected("gru"),
    notes="As lstm_head with 3 gate blocks (r, z, n): axis 0 of w_ih, w_hh, b_ih, b_hh has 3H = 24 rows.",
)


# ---------------------------------------------------------------------------------------------------------------------
# 14. shared_weight


def _shared_init(key: jax.Array) -> Params:
    rng = _Rng(key)
    return {"dense_in": _init_dense(rng, 6, 8), "shared": _init_dense(rng, 8, 8), "dense_out": _init_dense(rng, 8, 3)}


def _shared_apply(p: Params, x: jax.Array) -> jax.Array:
    """relu(x @ W1); relu(h @ W) twice with the same W; h @ W2."""
    h = jax.nn.relu(_dense(p["dense_in"], x))
    h = jax.nn.relu(_dense(p["shared"], h))
    h = jax.nn.relu(_dense(p["shared"], h))
    return _dense(p["dense_out"], h)


SHARED_WEIGHT = Model(
    name="shared_weight",
    init=_shared_init,
    apply=_shared_apply,
    x=lambda: _Rng(jax.random.key(1)).normal((BATCH, 6)),
    expected=[
        {
            ("dense_in/kernel", 1),
            ("dense_in/bias", 0),
            ("shared/kernel", 0),
            ("shared/kernel", 1),
            ("shared/bias", 0),
            ("dense_out/kernel", 0),
        },
    ],
    notes="W is applied twice: its output units feed its own input, so its axis 0 and axis 1 (and bias) fall into "
    "one set with dense_in's outputs and dense_out's inputs (8 units).",
)


ZOO: dict[str, Model] = {
    m.name: m
    for m in (
        MLP,
        CNN_BN,
        RESNET_BASIC,
        MOBILENET_V2,
        DENSENET_CONCAT,
        FLATTEN_DENSE,
        SWIGLU,
        SQUEEZE_EXCITE,
        VIT_HEADS,
        GPT2_FUSED_QKV,
        TIED_EMBEDDINGS,
        LSTM_HEAD,
        GRU_HEAD,
        SHARED_WEIGHT,
    )
}
