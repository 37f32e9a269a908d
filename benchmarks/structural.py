"""Structural pruning of ResNet-18 and a ViT-S-like model: Torch-Pruning 1.6.1 beside jaxprune, on CPU.

ResNet-18 (torchvision's architecture, written out here twice: in Flax NNX, NHWC, and in
PyTorch, with the same weights copied over; torchvision's CPU build is not on the
registry), 50% of each group's channels removed, groups pruned independently:
  * PyTorch: Torch-Pruning's MagnitudePruner with MagnitudeImportance(p=2),
    pruning_ratio=0.5, global_pruning=False, ignored_layers=[fc];
  * JAX: jaxprune's nnx_units (sets traced from model(x); a residual stage's stream is
    one set, like Torch-Pruning's groups) + prune_units(magnitude, sparsity=0.5,
    scope="layer") + nnx_compact.
Reported side by side: MACs per image before and after (PyTorch:
tp.utils.count_ops_and_params, which also counts BN, ReLU, pooling and adds; its
conv + linear part is shown too. JAX: conv_general_dilated and dot_general MACs
summed over jax.make_jaxpr of the forward), params, the latency of the dense and
pruned models (median of interleaved timed calls after warm-up; jax.jit +
block_until_ready, torch.inference_mode), and the wall time to find the groups and
prune (Torch-Pruning: building the pruner, i.e. its DependencyGraph, + step();
jaxprune: nnx_units + nnx_unit_masks + prune_units + nnx_compact), first call and
best of the repeats.

Also a ResNet-18 written by hand in NNX at the compacted model's widths (the same
class, given a width per conv), timed in the same rounds: goal, compacted within 5%
of it (nothing of the pruning left in the compiled program). The compacted model's
weights are copied into it to check that the two compute the same function.

And a ViT-S-like model in NNX (patch 16, dim 384, 6 heads via nnx.MultiHeadAttention,
MLP 1536; --vit-depth layers, 12 by default as in ViT-S/16) with half of each attention's heads removed
(only the head sets: sets whose `.normalized` is non-empty, the residual stream
under LayerNorm, are left alone, and so are the MLP sets): latency, MACs, params,
beside a hand-written ViT with the kept head count.

Goals: jaxprune's find-groups-and-prune time <= Torch-Pruning's; compacted within
5% of hand-written. Prints a Markdown table and writes benchmarks/results/structural.json.
The share of the CPUs that other processes took while timing is recorded and warned
about above 5%: on 2 cores, PyTorch's OpenMP threads slow down many-fold when another
process holds a core, so such a run's PyTorch latencies mean little.

  python benchmarks/structural.py            # 224x224, batch 1 and 16 (a few minutes on 2 cores)
  python benchmarks/structural.py --quick    # 64x64, batch 1, few repetitions, 2-layer ViT (under a minute)
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from _common import write

import jaxprune as jp

# ResNet-18: (width, stride) of each stage, two BasicBlocks each.
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def resnet18_widths() -> dict[str, int]:
    """The output width of every conv of torchvision's ResNet-18, by its PyTorch module name."""
    w = {"conv1": 64}
    for s, (c, _) in enumerate(STAGES, 1):
        for b in range(2):
            w[f"layer{s}.{b}.conv1"] = c
            w[f"layer{s}.{b}.conv2"] = c
            if s > 1 and b == 0:
                w[f"layer{s}.{b}.downsample"] = c
    return w


def _stream(widths: dict[str, int], s: int, b: int, cin: int) -> int:
    """The residual stream width after block b of stage s (checked against the shortcut)."""
    out = widths[f"layer{s}.{b}.conv2"]
    down = widths.get(f"layer{s}.{b}.downsample")
    if (down if down is not None else cin) != out:
        raise ValueError(f"layer{s}.{b}: conv2 gives {out} channels, the shortcut {down or cin}")
    return out


# ----------------------------------------------------------------------------------------- Flax NNX ResNet-18


class NNXBlock(nnx.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, down: bool, *, rngs: nnx.Rngs):
        pad = ((1, 1), (1, 1))
        self.conv1 = nnx.Conv(cin, mid, (3, 3), strides=stride, padding=pad, use_bias=False, rngs=rngs)
        self.bn1 = nnx_bn(mid, rngs)
        self.conv2 = nnx.Conv(mid, cout, (3, 3), padding=pad, use_bias=False, rngs=rngs)
        self.bn2 = nnx_bn(cout, rngs)
        if down:
            self.down_conv = nnx.Conv(cin, cout, (1, 1), strides=stride, padding="VALID", use_bias=False, rngs=rngs)
            self.down_bn = nnx_bn(cout, rngs)
        else:
            self.down_conv = self.down_bn = None

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x if self.down_conv is None else self.down_bn(self.down_conv(x))
        return nnx.relu(y + short)


def nnx_bn(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)


class NNXResNet18(nnx.Module):
    """torchvision's ResNet-18 in NHWC; ``widths`` gives each conv's output width (by PyTorch module name)."""

    def __init__(self, widths: dict[str, int] | None = None, num_classes: int = 1000, *, rngs: nnx.Rngs):
        widths = widths or resnet18_widths()
        c = widths["conv1"]
        self.conv1 = nnx.Conv(3, c, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False, rngs=rngs)
        self.bn1 = nnx_bn(c, rngs)
        for s, (_, stride) in enumerate(STAGES, 1):
            blocks = []
            for b in range(2):
                out = _stream(widths, s, b, c)
                mid = widths[f"layer{s}.{b}.conv1"]
                blocks.append(NNXBlock(c, mid, out, stride if b == 0 else 1, s > 1 and b == 0, rngs=rngs))
                c = out
            setattr(self, f"layer{s}", nnx.List(blocks))
        self.fc = nnx.Linear(c, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s in range(1, 5):
            for block in getattr(self, f"layer{s}"):
                x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))


def nnx_convs(model: NNXResNet18) -> dict[str, nnx.Conv]:
    """Every conv of the NNX ResNet, by its PyTorch module name."""
    convs = {"conv1": model.conv1}
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            convs[f"layer{s}.{b}.conv1"] = block.conv1
            convs[f"layer{s}.{b}.conv2"] = block.conv2
            if block.down_conv is not None:
                convs[f"layer{s}.{b}.downsample"] = block.down_conv
    return convs


def nnx_widths(model: NNXResNet18) -> dict[str, int]:
    """Each conv's output width as its kernel has it (what the compiled program computes)."""
    return {name: int(conv.kernel[...].shape[-1]) for name, conv in nnx_convs(model).items()}


def attribute_mismatches(model: nnx.Module) -> list[str]:
    """Modules whose features/num_heads attributes disagree with their weights' shapes."""
    bad = []
    for path, node in nnx.iter_graph(model):
        where = "/".join(map(str, path))
        if isinstance(node, nnx.Conv):
            k = node.kernel[...].shape
            if (node.in_features, node.out_features) != (k[-2] * node.feature_group_count, k[-1]):
                bad.append(f"{where}: in/out_features {node.in_features}/{node.out_features}, kernel {k}")
        elif isinstance(node, nnx.Linear):
            k = node.kernel[...].shape
            if (node.in_features, node.out_features) != tuple(k):
                bad.append(f"{where}: in/out_features {node.in_features}/{node.out_features}, kernel {k}")
        elif isinstance(node, nnx.BatchNorm | nnx.LayerNorm):
            n = (node.scale if node.scale is not None else node.bias)[...].shape[-1]
            if node.num_features != n:
                bad.append(f"{where}: num_features {node.num_features}, scale {n}")
        elif isinstance(node, nnx.MultiHeadAttention):
            q = node.query.kernel[...].shape  # [in, heads, head_dim]
            if (node.num_heads, node.head_dim, node.qkv_features) != (q[1], q[2], q[1] * q[2]):
                bad.append(
                    f"{where}: num_heads {node.num_heads}, head_dim {node.head_dim}, "
                    f"qkv_features {node.qkv_features}, query kernel {q}"
                )
    return bad


def randomize_norms(model: nnx.Module, seed: int) -> None:
    """Random BN/LN affine parameters and BN running statistics, so that they count in the scores and outputs."""
    rng = np.random.default_rng(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm | nnx.LayerNorm):
            n = node.num_features
            node.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
            node.bias[...] = jnp.asarray(rng.normal(0, 0.1, n), jnp.float32)
            if isinstance(node, nnx.BatchNorm):
                node.mean[...] = jnp.asarray(rng.normal(0, 0.1, n), jnp.float32)
                node.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)


def num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ------------------------------------------------------------------------------------------ PyTorch ResNet-18


def torch_resnet18(widths: dict[str, int] | None = None, num_classes: int = 1000):
    """torchvision.models.resnet18's architecture (same module names), written out."""
    import torch.nn as tnn

    class BasicBlock(tnn.Module):
        def __init__(self, cin, mid, cout, stride, down):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, mid, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(mid)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(mid, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = (
                tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)) if down else None
            )

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            w = widths or resnet18_widths()
            c = w["conv1"]
            self.conv1 = tnn.Conv2d(3, c, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            for s, (_, stride) in enumerate(STAGES, 1):
                blocks = []
                for b in range(2):
                    out = _stream(w, s, b, c)
                    blocks.append(
                        BasicBlock(c, w[f"layer{s}.{b}.conv1"], out, stride if b == 0 else 1, s > 1 and b == 0)
                    )
                    c = out
                setattr(self, f"layer{s}", tnn.Sequential(*blocks))
            self.avgpool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(c, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet().eval()


def copy_to_torch(nnx_model: NNXResNet18, torch_model) -> None:
    """The NNX model's weights into the PyTorch one (HWIO -> OIHW, [in, out] -> [out, in])."""
    import torch

    def put(t, a):
        t.copy_(torch.from_numpy(np.array(a)))

    def bn(tb, nb):
        put(tb.weight, nb.scale[...])
        put(tb.bias, nb.bias[...])
        put(tb.running_mean, nb.mean[...])
        put(tb.running_var, nb.var[...])

    with torch.no_grad():
        mods = dict(torch_model.named_modules())
        for name, conv in nnx_convs(nnx_model).items():
            tname = name.replace("downsample", "downsample.0")
            put(mods[tname].weight, np.transpose(np.array(conv.kernel[...]), (3, 2, 0, 1)))
        bn(mods["bn1"], nnx_model.bn1)
        for s in range(1, 5):
            for b, block in enumerate(getattr(nnx_model, f"layer{s}")):
                bn(mods[f"layer{s}.{b}.bn1"], block.bn1)
                bn(mods[f"layer{s}.{b}.bn2"], block.bn2)
                if block.down_bn is not None:
                    bn(mods[f"layer{s}.{b}.downsample.1"], block.down_bn)
        put(mods["fc"].weight, np.array(nnx_model.fc.kernel[...]).T)
        put(mods["fc"].bias, nnx_model.fc.bias[...])


def torch_counts(model, x) -> dict:
    """Torch-Pruning's count_ops_and_params: MACs per image (all ops, and conv + linear alone) and params."""
    import torch
    import torch_pruning as tp

    macs, params, layer_macs, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    matmul = sum(v or 0 for m, v in layer_macs.items() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    return {"macs": int(macs), "macs_conv_linear": int(matmul), "params": int(params)}


def torch_prune(model, x, record: bool = False) -> tuple[object, dict]:
    """Torch-Pruning 1.6.1 on ``model`` in place, 50% of each group; the pruned indices by root module name."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        global_pruning=False,
        ignored_layers=[model.fc],
    )
    pruned = {}
    if record:
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            pruned[names[dep.target.module]] = sorted(int(i) for i in idxs)
            group.prune()
    else:
        pruner.step()
    return model, pruned


# ---------------------------------------------------------------------------------------------- ViT-S in NNX


class Encoder(nnx.Module):
    def __init__(self, dim: int, heads: int, qkv: int, mlp: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads, dim, qkv_features=qkv, out_features=dim, decode=False, keep_rngs=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp, rngs=rngs)
        self.fc2 = nnx.Linear(mlp, dim, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class ViT(nnx.Module):
    """ViT-S/16-like: patch embedding, class token, learned positions, pre-LN encoders, head on the class token."""

    def __init__(
        self,
        image: int = 224,
        patch: int = 16,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp: int = 1536,
        num_classes: int = 1000,
        head_dim: int | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        head_dim = head_dim or dim // heads
        tokens = (image // patch) ** 2 + 1
        self.dim = dim
        self.patch = nnx.Conv(3, dim, (patch, patch), strides=patch, padding="VALID", rngs=rngs)
        self.cls = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, dim)))
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, dim)))
        self.blocks = nnx.List([Encoder(dim, heads, heads * head_dim, mlp, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        cls = jnp.broadcast_to(self.cls[...], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


# --------------------------------------------------------------------------------------------- MAC counting


def _subjaxprs(params: dict):
    for v in params.values():
        for item in v if isinstance(v, tuple | list) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def jaxpr_macs(jaxpr) -> int:
    """MACs of conv_general_dilated and dot_general in ``jaxpr``, recursing into sub-jaxprs (jit, scan, ...)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
            spatial = math.prod(rhs[d] for d in rhs_spec[2:])
            total += math.prod(out) * spatial * rhs[rhs_spec[1]]  # rhs's in-feature dim is per group already
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        subs = [jaxpr_macs(j) for j in _subjaxprs(eqn.params)]
        if subs:
            if name == "cond":
                total += max(subs)
            else:
                total += sum(subs) * (eqn.params.get("length", 1) if name == "scan" else 1)
    return total


def nnx_macs(model: nnx.Module, x: jax.Array) -> int:
    """MACs per image of ``model(x)``, from its jaxpr."""
    graphdef, state = nnx.split(model)
    closed = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    return jaxpr_macs(closed.jaxpr) // x.shape[0]


# ---------------------------------------------------------------------------------------------------- timing


def jitted(model: nnx.Module) -> Callable[..., jax.Array]:
    """``model`` as a jitted function of its input; the state is an argument (not folded in as constants).

    ``f(x, state)`` runs it with another state of the same structure (the masked model's).
    """
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

    def call(x, other=None):
        return forward(state if other is None else other, x)

    call.hlo = lambda x: forward.lower(state, x).as_text()  # the program XLA is given (StableHLO)
    return call


def _ready(out) -> None:
    if isinstance(out, jax.Array):
        out.block_until_ready()


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall, busy CPU seconds of the whole machine, this process's CPU seconds), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    t = os.times()
    return time.perf_counter(), (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def other_cpu(start) -> float | None:
    """The share of all cores that other processes used since ``start`` (a ``_cpu_snapshot``)."""
    now = _cpu_snapshot()
    if start is None or now is None:
        return None
    wall = now[0] - start[0]
    return max(0.0, ((now[1] - start[1]) - (now[2] - start[2])) / (wall * (os.cpu_count() or 1)))


def median_latency(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each call over ``repeats`` rounds that interleave the calls (after ``warmup`` each).

    Also ``"other_cpu"``: the share of the cores that other processes took meanwhile (they skew the times).
    """
    times = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            _ready(call())
    start = _cpu_snapshot()
    names = list(calls)
    for i in range(repeats):
        # Rotate the order, so that each variant follows each other one (whose data it evicts from cache) alike.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            call = calls[name]
            t0 = time.perf_counter()
            _ready(call())
            times[name].append(time.perf_counter() - t0)
    return {**{name: statistics.median(t) for name, t in times.items()}, "other_cpu": other_cpu(start)}


def _ms(timed: dict) -> tuple[dict[str, float], float | None]:
    """``median_latency``'s seconds as milliseconds, and its other-process CPU share apart."""
    timed = dict(timed)
    other = timed.pop("other_cpu")
    return {k: v * 1e3 for k, v in timed.items()}, other


def _flat(tree) -> dict[str, object]:
    """Leaves of a (state or masks) pytree by ``/``-joined path."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]:
        keys = []
        for k in path:
            if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
                continue  # the array inside an nnx.Variable
            keys.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
        out["/".join(keys)] = leaf
    return out


# -------------------------------------------------------------------------------------------------- jaxprune


def jaxprune_api():
    from jaxprune.integrations.flax import nnx_compact, nnx_unit_masks, nnx_units

    return nnx_units, nnx_unit_masks, nnx_compact


def jaxprune_prune(model: nnx.Module, x: jax.Array, select: Callable[[list], list]) -> dict:
    """Finds the unit sets, prunes 50% of each selected set's units and compacts; times each phase."""
    nnx_units, nnx_unit_masks, nnx_compact = jaxprune_api()
    t = [time.perf_counter()]
    units = nnx_units(model, x)
    t.append(time.perf_counter())
    masks = nnx_unit_masks(model, units)
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    chosen = select(units)
    masks = jp.prune_units(jp.magnitude(state, lazy=True), masks, chosen, sparsity=0.5, scope="layer")
    jax.block_until_ready(masks)
    t.append(time.perf_counter())
    small = nnx_compact(model, masks, units)
    jax.block_until_ready(nnx.state(small))
    t.append(time.perf_counter())
    return {
        "units": units,
        "chosen": chosen,
        "masks": masks,
        "small": small,
        "seconds": t[-1] - t[0],
        "phases": {"nnx_units": t[1] - t[0], "masks + prune_units": t[2] - t[1], "nnx_compact": t[3] - t[2]},
    }


def same_channels(masks, pruned_idx: dict[str, list[int]]) -> str:
    """How many of Torch-Pruning's groups (pruned indices by root conv) jaxprune's masks cut identically."""
    flat, same = _flat(masks), 0
    for name, idx in pruned_idx.items():
        mask = flat.get(name.replace("downsample.0", "down_conv").replace(".", "/") + "/kernel")
        if mask is not None:
            kept = np.asarray(mask).reshape(-1, np.shape(mask)[-1]).any(axis=0)
            same += set(np.flatnonzero(~kept).tolist()) == set(idx)
    return f"{same}/{len(pruned_idx)}"


def masked_model(model: nnx.Module, masks) -> nnx.Module:
    """A copy of ``model`` with the pruned weights zeroed (the reference the compacted model must match)."""
    masked = nnx.clone(model)
    state = nnx.state(masked, nnx.Any(nnx.Param, nnx.BatchStat))
    nnx.update(masked, jp.apply_mask(state, masks))
    return masked


def describe_sets(units, model: nnx.Module) -> list[str]:
    """One line per set: its unit count, leaves, and what normalizes it."""
    shapes = {p: np.shape(x) for p, x in _flat(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))).items()}
    out = []
    for s in units:
        e = s[0]
        n = e.num_units(shapes[e.path][e.axis]) if e.path in shapes else "?"
        tag = f"; normalized by {', '.join(s.normalized)}" if s.normalized else ""
        out.append(f"{n} units over {len(s.paths)} leaves ({', '.join(s.paths[:3])}, ...){tag}")
    return out


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


def _fail(errors: list, where: str, exc: BaseException) -> None:
    tb = traceback.format_exc()
    errors.append({"where": where, "error": f"{type(exc).__name__}: {exc}", "traceback": tb})
    print(f"\n!!! jaxprune FAILED in {where}: {type(exc).__name__}: {exc}\n{tb}", flush=True)


# ---------------------------------------------------------------------------------------------------- ResNet


def bench_resnet(args, errors: list) -> dict:
    import torch

    res: dict = {"image": args.image, "batches": args.batches}
    model = NNXResNet18(rngs=nnx.Rngs(0))
    randomize_norms(model, 1)
    tmodel = torch_resnet18()
    copy_to_torch(model, tmodel)
    x1 = jax.random.normal(jax.random.key(2), (1, args.image, args.image, 3), jnp.float32)
    tx1 = torch.from_numpy(np.array(x1).transpose(0, 3, 1, 2).copy())
    fns = {"jax dense": jitted(model)}
    f_dense = fns["jax dense"]
    with torch.inference_mode():
        res["dense_torch_vs_jax_rel_diff"] = _rel(f_dense(x1), tmodel(tx1).numpy())

    # --- Torch-Pruning: the first run on a fresh copy, recording the groups' choices, then timed repeats.
    tdense = torch_counts(tmodel, tx1)
    tp_times, pruned_idx, tpruned = [], {}, None
    for i in range(args.prune_repeats):
        m = copy.deepcopy(tmodel)
        start = time.perf_counter()
        m, idx = torch_prune(m, tx1, record=i == 0)
        tp_times.append(time.perf_counter() - start)
        if i == 0:
            tpruned, pruned_idx = m, idx
    tsmall = torch_counts(tpruned, tx1)
    res["torch"] = {
        "dense": tdense,
        "pruned": tsmall,
        "prune_seconds_first": tp_times[0],
        "prune_seconds_best": min(tp_times),
        "groups": len(pruned_idx),
    }

    # --- jaxprune.
    jdense = {"macs": nnx_macs(model, x1), "params": num_params(model)}
    res["jaxprune"] = {"dense": jdense}
    try:
        select = lambda units: [s for s in units if not s.normalized]  # noqa: E731
        runs = [jaxprune_prune(model, x1, select) for _ in range(args.prune_repeats)]
        run = runs[0]
        small, units, masks = run["small"], run["units"], run["masks"]
        res["jaxprune"].update(
            {
                "prune_seconds_first": run["seconds"],
                "prune_seconds_best": min(r["seconds"] for r in runs),
                "phases_first": run["phases"],
                "phases_best": min((r["phases"] for r in runs), key=lambda p: sum(p.values())),
                "sets": len(units),
                "sets_pruned": len(run["chosen"]),
                "set_summary": describe_sets(units, model),
                "pruned": {"macs": nnx_macs(small, x1), "params": num_params(small)},
                "widths": nnx_widths(small),
                "attribute_mismatches": attribute_mismatches(small),
                "original_untouched": nnx_widths(model) == resnet18_widths(),
            }
        )
        fns["jax compacted"] = jitted(small)
        out_small = fns["jax compacted"](x1)
        out_masked = f_dense(x1, nnx.state(masked_model(model, masks)))
        res["jaxprune"]["compacted_vs_masked_rel_diff"] = _rel(out_small, out_masked)
        # Which channels each group kept, against Torch-Pruning's choice on the same weights; then on a copy
        # with the BN biases zeroed (jaxprune's magnitude scores them, MagnitudeImportance(bias=False) not).
        res["jaxprune"]["groups_same_channels_as_torch_pruning"] = same_channels(masks, pruned_idx)
        if not args.quick:
            nobias = nnx.clone(model)
            for _, node in nnx.iter_graph(nobias):
                if isinstance(node, nnx.BatchNorm):
                    node.bias[...] = jnp.zeros_like(node.bias[...])
            tnobias = torch_resnet18()
            copy_to_torch(nobias, tnobias)
            _, idx = torch_prune(tnobias, tx1, record=True)
            m = jaxprune_prune(nobias, x1, select)["masks"]
            res["jaxprune"]["groups_same_channels_bn_biases_zeroed"] = same_channels(m, idx)
        # The hand-written model at the compacted widths, with the compacted weights copied in.
        # (Copies, not the same buffers: a call right after the other would find them in cache.)
        hand = NNXResNet18(nnx_widths(small), rngs=nnx.Rngs(3))
        nnx.update(hand, jax.tree.map(jnp.copy, nnx.state(small, nnx.Any(nnx.Param, nnx.BatchStat))))
        fns["jax hand-written"] = jitted(hand)
        res["hand_vs_compacted_rel_diff"] = _rel(fns["jax hand-written"](x1), out_small)
        res["hand_vs_compacted_same_program"] = fns["jax hand-written"].hlo(x1) == fns["jax compacted"].hlo(x1)
        res["torch_pruned_widths_equal_jaxprune"] = nnx_widths(small) == {
            n: int(m.weight.shape[0])
            for n, m in tpruned.named_modules()
            if isinstance(m, torch.nn.Conv2d)
            for n in [n.replace("downsample.0", "downsample")]
        }
    except Exception as exc:
        _fail(errors, "ResNet-18 pruning/compaction", exc)

    # --- latency, per batch size. Each framework's variants in their own interleaved rounds: OpenMP's and
    # XLA's worker threads spin for a while after a call, which would slow the other framework's next call.
    res["latency_ms"], res["other_processes_cpu_share"] = {}, {}
    for batch in args.batches:
        x = jax.random.normal(jax.random.key(4), (batch, args.image, args.image, 3), jnp.float32)
        tx = torch.from_numpy(np.array(x).transpose(0, 3, 1, 2).copy())
        calls = {name: lambda f=f, x=x: f(x) for name, f in fns.items()}

        def torch_call(m, tx=tx):
            def call():
                with torch.inference_mode():
                    return m(tx)

            return call

        reps = args.repeats if batch == 1 else args.repeats_large
        ms, other_jax = _ms(median_latency(calls, reps))
        torch_calls = {"torch dense": torch_call(tmodel), "torch pruned": torch_call(tpruned)}
        ms_torch, other_torch = _ms(median_latency(torch_calls, reps))
        res["latency_ms"][str(batch)] = {**ms, **ms_torch}
        res["other_processes_cpu_share"][str(batch)] = {"jax": other_jax, "torch": other_torch}
    return res


# ------------------------------------------------------------------------------------------------------- ViT


def bench_vit(args, errors: list) -> dict:
    cfg = {"image": args.image, "patch": 16, "dim": 384, "depth": args.vit_depth, "heads": 6, "mlp": 1536}
    res: dict = {"config": cfg, "batches": args.batches}
    model = ViT(**cfg, rngs=nnx.Rngs(10))
    randomize_norms(model, 11)
    x1 = jax.random.normal(jax.random.key(12), (1, args.image, args.image, 3), jnp.float32)
    res["dense"] = {"macs": nnx_macs(model, x1), "params": num_params(model)}
    fns = {"jax dense": jitted(model)}
    try:

        def heads_only(units):
            return [s for s in units if not s.normalized and all("/attn/" in p for p in s.paths)]

        runs = [jaxprune_prune(model, x1, heads_only) for _ in range(args.prune_repeats)]
        run = runs[0]
        small, units = run["small"], run["units"]
        # As the query kernels ([in, heads, head_dim]) have them; the attributes are checked separately.
        heads = [int(b.attn.query.kernel[...].shape[1]) for b in small.blocks]
        head_dims = [int(b.attn.query.kernel[...].shape[2]) for b in small.blocks]
        res.update(
            {
                "prune_seconds_first": run["seconds"],
                "prune_seconds_best": min(r["seconds"] for r in runs),
                "phases_first": run["phases"],
                "sets": len(units),
                "sets_pruned": len(run["chosen"]),
                "set_summary": describe_sets(units, model),
                "pruned": {"macs": nnx_macs(small, x1), "params": num_params(small)},
                "heads_after": heads,
                "head_dims_after": head_dims,
                "attribute_mismatches": attribute_mismatches(small),
                "original_untouched": [int(b.attn.query.kernel[...].shape[1]) for b in model.blocks]
                == [cfg["heads"]] * cfg["depth"],
            }
        )
        fns["jax compacted"] = jitted(small)
        out_small = fns["jax compacted"](x1)
        masked = nnx.state(masked_model(model, run["masks"]))
        res["compacted_vs_masked_rel_diff"] = _rel(out_small, fns["jax dense"](x1, masked))
        if len(set(heads)) == 1 and len(set(head_dims)) == 1:
            hand = ViT(**{**cfg, "heads": heads[0]}, head_dim=head_dims[0], rngs=nnx.Rngs(13))
            nnx.update(hand, jax.tree.map(jnp.copy, nnx.state(small, nnx.Param)))
            fns["jax hand-written"] = jitted(hand)
            res["hand_vs_compacted_rel_diff"] = _rel(fns["jax hand-written"](x1), out_small)
            res["hand_vs_compacted_same_program"] = fns["jax hand-written"].hlo(x1) == fns["jax compacted"].hlo(x1)
    except Exception as exc:
        _fail(errors, "ViT head pruning/compaction", exc)

    res["latency_ms"], res["other_processes_cpu_share"] = {}, {}
    for batch in args.batches:
        x = jax.random.normal(jax.random.key(14), (batch, args.image, args.image, 3), jnp.float32)
        calls = {name: lambda f=f, x=x: f(x) for name, f in fns.items()}
        reps = args.repeats if batch == 1 else args.repeats_large
        res["latency_ms"][str(batch)], other = _ms(median_latency(calls, reps))
        res["other_processes_cpu_share"][str(batch)] = other
    return res


# ------------------------------------------------------------------------------------------------------ report


def _tp_version() -> str:
    """torch-pruning's installed version (its ``__version__`` string says 1.6.0 in the 1.6.1 release)."""
    from importlib.metadata import version

    return version("torch-pruning")


def _g(n) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.1f} M"


def _markdown(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def report(results: dict) -> str:
    r, v = results["resnet18"], results["vit"]
    t, j = r["torch"], r["jaxprune"]
    jp_ok = "pruned" in j
    rows = []
    ms = r["latency_ms"]

    def lat(batch, key):
        x = ms[batch].get(key)
        return f"{x:.2f} ms" if x is not None else "n/a"

    def ratio(batch, dense, pruned):
        a, b = ms[batch].get(dense), ms[batch].get(pruned)
        return f"{a / b:.2f}x" if a and b else "n/a"

    rows.append(
        [
            "ResNet-18 MACs/image, dense -> pruned",
            f"{_g(t['dense']['macs'])} -> {_g(t['pruned']['macs'])} (conv+linear: "
            f"{_g(t['dense']['macs_conv_linear'])} -> {_g(t['pruned']['macs_conv_linear'])})",
            f"{_g(j['dense']['macs'])} -> {_g(j['pruned']['macs']) if jp_ok else 'n/a'}",
        ]
    )
    rows.append(
        [
            "ResNet-18 params, dense -> pruned",
            f"{t['dense']['params'] / 1e6:.2f} M -> {t['pruned']['params'] / 1e6:.2f} M",
            f"{j['dense']['params'] / 1e6:.2f} M -> " + (f"{j['pruned']['params'] / 1e6:.2f} M" if jp_ok else "n/a"),
        ]
    )
    rows.append(
        [
            "groups found / pruned",
            f"{t['groups']} groups",
            f"{j['sets']} sets / {j['sets_pruned']} pruned" if jp_ok else "n/a",
        ]
    )
    rows.append(
        [
            "find groups + prune (first call; best of repeats)",
            f"{t['prune_seconds_first']:.3f} s; {t['prune_seconds_best']:.3f} s",
            f"{j['prune_seconds_first']:.3f} s; {j['prune_seconds_best']:.3f} s" if jp_ok else "n/a",
        ]
    )
    for batch in ms:
        rows.append(
            [
                f"ResNet-18 latency, batch {batch}, dense -> pruned (speed-up)",
                f"{lat(batch, 'torch dense')} -> {lat(batch, 'torch pruned')} "
                f"({ratio(batch, 'torch dense', 'torch pruned')})",
                f"{lat(batch, 'jax dense')} -> {lat(batch, 'jax compacted')} "
                f"({ratio(batch, 'jax dense', 'jax compacted')})",
            ]
        )
        rows.append(
            [
                f"ResNet-18 batch {batch}: compacted vs hand-written at the same widths",
                "",
                f"{lat(batch, 'jax compacted')} vs {lat(batch, 'jax hand-written')} "
                f"(compacted takes {ratio(batch, 'jax compacted', 'jax hand-written')} hand-written's time)",
            ]
        )
    vok = "pruned" in v
    cfg = v["config"]
    name = f"ViT ({cfg['depth']} layers, dim {cfg['dim']}, {cfg['heads']} heads, MLP {cfg['mlp']}, {cfg['image']}px/16)"
    rows.append(
        [
            f"{name}: MACs/image, params",
            "",
            f"{_g(v['dense']['macs'])} -> {_g(v['pruned']['macs']) if vok else 'n/a'}; "
            f"{v['dense']['params'] / 1e6:.2f} M -> "
            + (f"{v['pruned']['params'] / 1e6:.2f} M (heads {v['heads_after'][0]})" if vok else "n/a"),
        ]
    )
    if vok:
        rows.append(
            [
                "ViT find sets + prune heads (first; best)",
                "",
                f"{v['prune_seconds_first']:.3f} s; {v['prune_seconds_best']:.3f} s",
            ]
        )
    vms = v["latency_ms"]
    for batch in vms:
        d, c, h = (vms[batch].get(k) for k in ("jax dense", "jax compacted", "jax hand-written"))
        cell = f"{d:.2f} ms"
        if c:
            cell += f" -> {c:.2f} ms ({d / c:.2f}x)"
        if h:
            cell += f"; hand-written {h:.2f} ms"
        rows.append([f"ViT latency, batch {batch}, dense -> heads halved", "", cell])
    headers = ["ResNet-18 50% channels / ViT 50% heads", f"Torch-Pruning {_tp_version()}", "jaxprune (XLA)"]
    return _markdown(headers, rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64x64, batch 1, few repetitions, 2-layer ViT")
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds at batch 1")
    ap.add_argument("--repeats-large", type=int, default=20, help="timed rounds at larger batches")
    ap.add_argument("--prune-repeats", type=int, default=3)
    ap.add_argument("--vit-depth", type=int, default=12)
    args = ap.parse_args(argv)
    if args.quick:
        args.image, args.batches, args.repeats, args.prune_repeats, args.vit_depth = 64, [1], 5, 1, 2
    import torch

    errors: list = []
    try:
        jaxprune_api()
    except Exception as exc:
        _fail(errors, "import of nnx_units / nnx_unit_masks / nnx_compact", exc)
    run_start = _cpu_snapshot()
    results = {
        "quick": args.quick,
        "torch": torch.__version__,
        "torch_pruning": _tp_version(),
        "torch_threads": torch.get_num_threads(),
        "errors": errors,
    }
    results["resnet18"] = bench_resnet(args, errors)
    results["vit"] = bench_vit(args, errors)

    r, v = results["resnet18"], results["vit"]
    print(
        f"\nStructural pruning, {args.image}x{args.image} inputs, batches {args.batches}, CPU "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads; jax {jax.__version__})"
    )
    md = report(results)
    print(md)
    j = r["jaxprune"]
    checks = [f"dense PyTorch vs dense JAX ResNet-18 outputs: max rel. diff {r['dense_torch_vs_jax_rel_diff']:.1e}"]
    goals = {}
    if "pruned" in j:
        checks += [
            f"ResNet-18 compacted vs masked outputs: max rel. diff {j['compacted_vs_masked_rel_diff']:.1e}",
            f"ResNet-18 hand-written (compacted weights copied in) vs compacted: "
            f"max rel. diff {r.get('hand_vs_compacted_rel_diff', float('nan')):.1e}; "
            f"identical StableHLO programs: {r.get('hand_vs_compacted_same_program')}",
            f"kept widths identical to Torch-Pruning's: {r.get('torch_pruned_widths_equal_jaxprune')}; "
            f"groups that kept the very same channels: {j.get('groups_same_channels_as_torch_pruning')}"
            + (
                f" ({j['groups_same_channels_bn_biases_zeroed']} with the BN biases zeroed: jaxprune's magnitude "
                "scores them, MagnitudeImportance(bias=False) does not)"
                if "groups_same_channels_bn_biases_zeroed" in j
                else ""
            ),
            f"attribute/weight-shape mismatches in the compacted ResNet: {j['attribute_mismatches'] or 'none'}",
        ]
        goals["prune_time_le_torch_pruning_first"] = j["prune_seconds_first"] <= r["torch"]["prune_seconds_first"]
        goals["prune_time_le_torch_pruning_best"] = j["prune_seconds_best"] <= r["torch"]["prune_seconds_best"]
        # The goal, from Torch-Pruning's 0.20 s on its author's run of the same 2-core machine.
        goals["prune_time_le_0.20s_first"] = j["prune_seconds_first"] <= 0.20
        for name, res in (("resnet18", r), ("vit", v)):
            for batch, t in res.get("latency_ms", {}).items():
                if "jax hand-written" in t and "jax compacted" in t:
                    goals[f"{name}_compacted_within_5pct_of_hand_batch{batch}"] = (
                        t["jax compacted"] <= 1.05 * t["jax hand-written"]
                    )
        ph = ", ".join(f"{k} {s:.3f} s" for k, s in j["phases_first"].items())
        checks.append(f"jaxprune phases (first call): {ph}")
    if "pruned" in v:
        checks += [
            f"ViT compacted vs masked outputs: max rel. diff {v['compacted_vs_masked_rel_diff']:.1e}; "
            f"heads per layer after: {v['heads_after']}; "
            f"hand-written vs compacted: {v.get('hand_vs_compacted_rel_diff', float('nan')):.1e}, "
            f"identical StableHLO programs: {v.get('hand_vs_compacted_same_program')}",
            f"attribute/weight-shape mismatches in the compacted ViT: {v['attribute_mismatches'] or 'none'}",
        ]
    for c in checks:
        print("  " + c)
    if goals:
        print("goals: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in goals.items()))
    results["goals"] = goals
    if errors:
        print("\n!!! jaxprune side FAILED (see above and 'errors' in the JSON):")
        for e in errors:
            print(f"  {e['where']}: {e['error']}")
    results["table_markdown"] = md
    results["other_processes_cpu_share"] = other_cpu(run_start)
    shares = [("whole run", results["other_processes_cpu_share"])]
    for name in ("resnet18", "vit"):
        for batch, o in results[name]["other_processes_cpu_share"].items():
            shares += [(f"{name} batch {batch} {k}", x) for k, x in (o.items() if isinstance(o, dict) else [("", o)])]
    busy = [f"{where.strip()}: {x:.0%}" for where, x in shares if x is not None and x > 0.05]
    if busy:
        print(
            "WARNING: other processes took this share of the CPUs while timing (latencies are skewed, "
            "PyTorch's OpenMP threads most): " + "; ".join(busy)
        )
    path = write("structural_quick" if args.quick else "structural", results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
