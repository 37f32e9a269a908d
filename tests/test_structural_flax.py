"""Structural pruning of Flax NNX modules: nnx_units, nnx_unit_masks, nnx_compact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.integrations.flax import nnx_compact, nnx_unit_masks, nnx_unit_state, nnx_units


class Net(nnx.Module):
    """Conv + BatchNorm, a depthwise conv, attention over the pixels with a pre-LayerNorm, a head."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, rngs=rngs)
        self.ln = nnx.LayerNorm(16, rngs=rngs)
        self.att = nnx.MultiHeadAttention(num_heads=4, in_features=16, qkv_features=16, decode=False, rngs=rngs)
        self.embed = nnx.Embed(10, 16, rngs=rngs)
        self.fc = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x, ids):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.dw(x))
        x = nnx.relu(self.bn2(self.conv2(x)))
        b, h, w, c = x.shape
        t = x.reshape(b, h * w, c) + self.embed(ids)[:, None, :]
        t = t + self.att(self.ln(t))
        return self.fc(t.mean(1))


@pytest.fixture(scope="module")
def net():
    model = Net(nnx.Rngs(0))
    # Running statistics that matter (not the initial 0 and 1).
    for i, bn in enumerate((model.bn1, model.bn2)):
        n = bn.mean.get_value().shape[0]
        bn.mean.set_value(jax.random.normal(jax.random.key(i), (n,)))
        bn.var.set_value(jax.random.uniform(jax.random.key(i + 2), (n,), minval=0.5, maxval=1.5))
    model.eval()
    return model


def _paths(sets):
    return sorted(sorted((e.path, e.axis) for e in s) for s in sets)


def test_sets_from_a_training_mode_trace_equal_the_eval_ones(net):
    x, ids = jnp.ones((2, 6, 6, 3)), jnp.array([1, 2])
    units = nnx_units(net, x, ids)
    net.train()
    try:
        assert _paths(nnx_units(net, x, ids)) == _paths(units)  # updated batch stats are carried, not outputs
    finally:
        net.eval()
    heads = next(s for s in units if any(e.path == "att/query/kernel" and e.axis == 1 for e in s))
    assert {e.path for e in heads} >= {"att/query/kernel", "att/key/kernel", "att/value/kernel", "att/out/kernel"}
    stream = next(s for s in units if any(e.path == "fc/kernel" for e in s))
    assert stream.normalized == ("reduce_sum",)  # the LayerNorm's statistics over the channels
    assert {"embed/embedding", "bn2/mean", "bn2/var", "ln/scale"} <= {e.path for e in stream}
    first = next(s for s in units if any(e.path == "conv1/kernel" for e in s))
    assert {(e.path, e.axis) for e in first} == {
        ("conv1/kernel", 3), ("bn1/scale", 0), ("bn1/bias", 0), ("bn1/mean", 0), ("bn1/var", 0),
        ("dw/kernel", 3), ("dw/bias", 0), ("conv2/kernel", 2),
    }  # fmt: skip


def test_compacted_module_equals_the_masked_one_and_the_original_is_untouched(net):
    x, ids = jax.random.normal(jax.random.key(3), (2, 6, 6, 3)), jnp.array([1, 7])
    units = nnx_units(net, x, ids)
    state = nnx_unit_state(net)
    masks = nnx_unit_masks(net, units)
    # Statistics carried, not scored (an nnx.State holds None inside its Variable).
    assert masks["bn1"]["mean"].get_value() is None and masks["bn1"]["scale"].get_value() is not None
    prunable = [s for s in units if not s.normalized]
    masks = jp.prune_units(jp.magnitude(state), masks, prunable, sparsity=0.5, scope="layer")
    before = jax.tree.map(np.asarray, nnx.state(net))
    small = nnx_compact(net, masks, units)
    graphdef, _, rest = nnx.split(net, nnx.Any(nnx.Param, nnx.BatchStat), ...)
    masked = nnx.merge(graphdef, jp.apply_mask(state, masks), rest)
    np.testing.assert_allclose(small(x, ids), masked(x, ids), atol=1e-5)
    assert (small.conv1.out_features, small.bn1.num_features, small.dw.feature_group_count) == (4, 4, 4)
    assert (small.conv2.in_features, small.att.num_heads, small.att.qkv_features) == (4, 2, 8)
    assert small.att.query.out_features == (2, 4) and small.att.out.in_features == (2, 4)
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), before, nnx.state(net))
    assert all(jax.tree.leaves(chex_equal)) and net.conv1.out_features == 8  # the original is untouched
    # A restore template: the same compaction of nnx.eval_shape(original), from the kept indices alone.
    kept = jp.kept_units(masks, units)
    template = nnx_compact(nnx.eval_shape(lambda: Net(nnx.Rngs(0))), None, units, kept=kept)
    shapes = jax.tree.map(jnp.shape, nnx.state(template, nnx.Param))
    assert shapes == jax.tree.map(jnp.shape, nnx.state(small, nnx.Param))
    assert template.att.num_heads == 2


class GroupNormNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.gn = nnx.GroupNorm(16, num_groups=4, rngs=rngs)
        self.c2 = nnx.Conv(16, 5, (3, 3), rngs=rngs)

    def __call__(self, x):
        return self.c2(nnx.relu(self.gn(self.c1(x))))


def test_group_norm_loses_whole_groups_or_shrinks_each_one():
    model = GroupNormNet(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    state = nnx_unit_state(model)
    # Whole groups (the default): 4 units of 4 channels each; the statistics stay within a unit, so not marked.
    (units,) = [nnx_units(model, x)]
    assert len(units) == 1 and not units[0].normalized and units[0][0].num_units(16) == 4
    masks = jp.prune_units(jp.magnitude(state), nnx_unit_masks(model, units), units, sparsity=0.5)
    small = nnx_compact(model, masks, units)
    assert (small.gn.num_groups, small.gn.group_size, small.c2.in_features) == (2, 4, 8)
    masked = nnx.merge(*nnx.split(model, nnx.Any(nnx.Param, nnx.BatchStat), ...)[::2], jp.apply_mask(state, masks))
    np.testing.assert_allclose(small(x), masked(x), atol=1e-5)
    # Positions within every group (heads="dims"): 4 groups stay, each of 2 channels; marked, as the group
    # statistics then change, and the compacted module runs at its new sizes.
    units = nnx_units(model, x, heads="dims")
    assert len(units) == 1 and units[0].normalized
    masks = jp.prune_units(jp.magnitude(state), nnx_unit_masks(model, units), units, sparsity=0.5)
    small = nnx_compact(model, masks, units)
    assert (small.gn.num_groups, small.gn.group_size, small.c2.in_features) == (4, 2, 8)
    assert small(x).shape == (2, 6, 6, 5)


def test_dropout_in_training_mode_traces():
    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.a, self.drop, self.b = (
                nnx.Linear(4, 8, rngs=rngs),
                nnx.Dropout(0.5, rngs=rngs),
                nnx.Linear(8, 2, rngs=rngs),
            )

        def __call__(self, x):
            return self.b(self.drop(nnx.relu(self.a(x))))

    model = Mlp(nnx.Rngs(0))
    model.train()
    counts = jax.tree.leaves(nnx.state(model, nnx.RngCount))
    assert _paths(nnx_units(model, jnp.ones((3, 4)))) == [[("a/bias", 0), ("a/kernel", 1), ("b/kernel", 0)]]
    assert jax.tree.leaves(nnx.state(model, nnx.RngCount)) == counts  # the model's RNG streams did not move


def test_nnx_errors(net):
    with pytest.raises(TypeError, match=r"`model` must be an nnx\.Module"):
        nnx_units(lambda x: x, jnp.ones((1, 6, 6, 3)))
    with pytest.raises(ValueError, match="`fn` could not be traced"):
        nnx_units(net, jnp.ones((1, 6, 6, 5)), jnp.array([1]))  # 5 input channels
    units = nnx_units(net, jnp.ones((1, 6, 6, 3)), jnp.array([1]))
    with pytest.raises(ValueError, match="give `masks`"):
        nnx_compact(net, None, units)


RESTORE = """
import sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import jaxprune as jp
from jaxprune.integrations.flax import nnx_compact, nnx_units
sys.path.insert(0, sys.argv[2])
from test_structural_flax import Net

# Only the original definition: the sets are traced from its abstract copy, the kept units read back first.
abstract = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
units = nnx_units(abstract, jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32))
with jp.Checkpointer(sys.argv[1], read_only=True) as ckpt:
    flat = ckpt.restore_flat()
    kept = [flat[f"kept/{i}"] for i in range(len(units))]
    template = nnx_compact(abstract, None, units, kept=kept)
    restored = ckpt.restore({"model": nnx.state(template), "kept": kept})
nnx.update(template, restored["model"])
template.eval()  # a mode is a module attribute, not state: the checkpoint does not hold it
print(np.asarray(template(jnp.ones((2, 6, 6, 3)), jnp.array([1, 7]))).tolist())
"""


def test_a_compacted_model_restores_in_a_fresh_process(net, tmp_path):
    import json
    import os
    import subprocess
    import sys

    x, ids = jnp.ones((2, 6, 6, 3)), jnp.array([1, 7])
    units = nnx_units(net, x, ids)
    masks = jp.prune_units(
        jp.magnitude(nnx_unit_state(net)), nnx_unit_masks(net, units), [s for s in units if not s.normalized],
        sparsity=0.5,
    )  # fmt: skip
    small = nnx_compact(net, masks, units)
    with jp.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(0, {"model": nnx.state(small), "kept": jp.kept_units(masks, units)})
    out = subprocess.run(
        [sys.executable, "-c", RESTORE, str(tmp_path / "ckpt"), os.path.dirname(__file__)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(json.loads(out.stdout.strip().splitlines()[-1]), small(x, ids), atol=1e-6)
