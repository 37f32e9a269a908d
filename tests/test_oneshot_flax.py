"""Calibration statistics of Flax layers (nnx.Linear, nn.Dense) for one-shot pruning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.integrations.flax import linen_input_stats, nnx_input_stats, nnx_masks, nnx_prune_blocks


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(6, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jax.nn.relu(nn.Dense(8, name="hidden")(x))
        return nn.Dense(3, name="out")(h)


def batches():
    return [jax.random.normal(jax.random.key(i), (n, 6)) for i, n in enumerate((5, 7))]


def check_against(stats, inputs_by_name):
    for name, inputs in inputs_by_name.items():
        rows = np.concatenate([np.asarray(x, np.float64) for x in inputs])
        np.testing.assert_allclose(stats[name].sq_norms, (rows**2).sum(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[name].hessian, rows.T @ rows, rtol=1e-5, atol=1e-5)
        assert int(stats[name].tokens) == rows.shape[0]


def test_nnx_stats_are_each_linears_inputs_and_the_model_is_untouched():
    model = MLP(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model))
    stats = nnx_input_stats(model, lambda m, x: m(x), batches())
    assert set(stats) == {"hidden", "out"}
    check_against(stats, {"hidden": batches(), "out": [jax.nn.relu(model.hidden(x)) for x in batches()]})
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(model)), before)
    assert model.hidden.dot_general is jax.lax.dot_general  # the copies were instrumented, not the model


def test_linen_stats_are_each_denses_inputs():
    module = LinenMLP()
    variables = module.init(jax.random.key(0), batches()[0])
    stats = linen_input_stats(module, variables, batches(), hessian=False)
    p = variables["params"]["hidden"]
    hidden = [jax.nn.relu(x @ p["kernel"] + p["bias"]) for x in batches()]
    for name, inputs in {"hidden": batches(), "out": hidden}.items():
        rows = np.concatenate([np.asarray(x, np.float64) for x in inputs])
        np.testing.assert_allclose(stats[name].sq_norms, (rows**2).sum(0), rtol=1e-5, atol=1e-6)
        assert stats[name].hessian is None


def test_nnx_model_pruned_from_its_stats_with_sparsegpt():
    model = MLP(nnx.Rngs(1))
    stats = nnx_input_stats(model, lambda m, x: m(x), batches())
    params = nnx.state(model, nnx.Param)
    masks = nnx_masks(model)
    x = jnp.concatenate(batches())
    dense = model(x)
    for name in ("hidden", "out"):
        kernel, mask = jp.oneshot.prune_kernel(
            params[name]["kernel"][...], stats[name], method="sparsegpt", sparsity=0.5
        )
        params[name]["kernel"] = kernel
        masks[name]["kernel"] = mask
    nnx.update(model, params)
    assert float(jp.sparsity(masks)) == pytest.approx(0.5)
    assert float(jnp.mean((model(x) - dense) ** 2)) < float(jnp.mean(dense**2))


def test_stats_need_batches_and_a_linear():
    with pytest.raises(ValueError, match="at least one calibration batch"):
        nnx_input_stats(MLP(nnx.Rngs(0)), lambda m, x: m(x), [])
    with pytest.raises(ValueError, match=r"called no nnx\.Linear"):
        nnx_input_stats(MLP(nnx.Rngs(0)), lambda m, x: x, batches())


class Block(nnx.Module):
    def __init__(self, rngs):
        self.up = nnx.Linear(6, 12, rngs=rngs)
        self.down = nnx.Linear(12, 6, rngs=rngs)

    def __call__(self, x):
        return x + self.down(jax.nn.relu(self.up(x)))


def test_nnx_blocks_are_pruned_in_turn_each_from_the_pruned_blocks_before_it():
    blocks = [Block(nnx.Rngs(i)) for i in range(2)]
    originals = [nnx.clone(b) for b in blocks]
    masks = nnx_prune_blocks(blocks, batches(), method="wanda", sparsity=0.5)
    # By hand: block 0 from the inputs; block 1 from what the *pruned* block 0 outputs.
    inputs = batches()
    for i, (block, original) in enumerate(zip(blocks, originals)):
        hidden = [jax.nn.relu(original.up(x)) for x in inputs]
        for name, seen in (("up", inputs), ("down", hidden)):
            rows = jnp.concatenate(seen)
            want = jp.oneshot.wanda(getattr(original, name).kernel[...], jnp.linalg.norm(rows, axis=0), sparsity=0.5)
            np.testing.assert_array_equal(masks[i][name]["kernel"][...], want, err_msg=f"block {i} {name}")
            np.testing.assert_array_equal(getattr(block, name).kernel[...] == 0, ~want)  # written back, in place
        inputs = [block(x) for x in inputs]
    assert float(jp.sparsity(masks[1])) == pytest.approx(0.5)


class AttentionBlock(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)

    def __call__(self, x):
        return x + self.attn(x)


def test_multi_head_attention_projections_are_recorded_and_pruned():
    block = AttentionBlock(nnx.Rngs(0))
    x = [jax.random.normal(jax.random.key(i), (3, 5, 8)) for i in range(2)]
    original = nnx.clone(block)
    stats = nnx_input_stats(block, lambda b, x: b(x), x)
    assert set(stats) == {"attn/query", "attn/key", "attn/value", "attn/out"}
    assert stats["attn/out"].sq_norms.shape == (8,)  # (heads, head_dim) flattened: the out projection's inputs
    rows = np.concatenate([np.asarray(b).reshape(-1, 8) for b in x])
    np.testing.assert_allclose(stats["attn/query"].sq_norms, (rows**2).sum(0), rtol=1e-5)
    (masks,) = nnx_prune_blocks([block], x, method="wanda", sparsity=0.5)
    for name in ("query", "key", "value", "out"):
        kernel = getattr(original.attn, name).kernel[...]
        want = jp.oneshot.wanda(
            kernel.reshape(8, -1), jp.oneshot.input_norms(stats[f"attn/{name}"]), sparsity=0.5
        ).reshape(kernel.shape)
        np.testing.assert_array_equal(masks["attn"][name]["kernel"][...], want, err_msg=name)
        assert float(jnp.mean(getattr(block.attn, name).kernel[...] == 0)) == 0.5


def test_nnx_prune_blocks_checks_the_target_before_any_work():
    blocks = [Block(nnx.Rngs(0))]  # inputs 6 (up) and 12 (down)
    before = np.asarray(blocks[0].up.kernel[...])
    with pytest.raises(ValueError, match="6 inputs are not divisible by m=4"):
        nnx_prune_blocks(blocks, batches(), method="sparsegpt", nm=(2, 4))
    with pytest.raises(ValueError, match="`method` must be one of"):
        nnx_prune_blocks(blocks, batches(), method="obs", sparsity=0.5)
    np.testing.assert_array_equal(blocks[0].up.kernel[...], before)


def test_nnx_prune_blocks_names_the_kernel_whose_calibration_inputs_hold_nan():
    blocks = [Block(nnx.Rngs(0)), Block(nnx.Rngs(1))]
    bad = batches()
    bad[1] = bad[1].at[3, 2].set(jnp.nan)
    for method, what in (("sparsegpt", "`hessian` must be finite"), ("wanda", "`input_norms`")):
        with pytest.raises(
            ValueError, match=f"the calibration `inputs` gave block 0's (up|down)/kernel statistics .*{what}"
        ):
            nnx_prune_blocks([nnx.clone(b) for b in blocks], bad, method=method, sparsity=0.5)
    nnx_prune_blocks(blocks, bad, method="magnitude", sparsity=0.5)  # magnitude reads no statistics
