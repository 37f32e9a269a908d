"""Pruning inside Flax NNX and Linen train steps, on a schedule, a few hundred steps each."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune import schedules
from jaxprune.integrations.flax import PrunedTrainState, nnx_apply_mask, nnx_masks


def data():
    x = jax.random.normal(jax.random.key(0), (128, 10))
    y = jnp.sin(x @ jax.random.normal(jax.random.key(1), (10, 2)))
    return x, y


SCHEDULE = schedules.linear(final=0.8, rounds=4, every=50, begin=50)


def kernels_zero_where_pruned(params, masks):
    return all(
        bool(jnp.all(jnp.where(m, True, p == 0)))
        for p, m in zip(
            jax.tree.leaves(params, is_leaf=lambda x: x is None), jax.tree.leaves(masks, is_leaf=lambda x: x is None)
        )
        if m is not None
    )


def test_nnx_split_merge_train_step_with_pruner():
    x, y = data()
    model = nnx.Sequential(nnx.Linear(10, 32, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(32, 2, rngs=nnx.Rngs(1)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pruner = jp.Pruner(schedule=SCHEDULE)
    tx = jp.masked_optimizer(optax.adam(1e-2))

    @jax.jit
    def step(params, opt_state, pstate, t):
        def loss_fn(p):
            m = nnx.merge(graphdef, jp.apply_mask(p, pstate.masks), rest)
            return jnp.mean((m(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=pstate.masks)
        params = optax.apply_updates(params, updates)
        return params, opt_state, pruner.update(pstate, params, t), loss

    pstate, opt_state = pruner.init(params), tx.init(params)
    losses = []
    for t in range(300):
        params, opt_state, pstate, loss = step(params, opt_state, pstate, jnp.int32(t))
        losses.append(float(loss))
    n = 10 * 32 + 32 * 2
    assert sum(int((~m).sum()) for m in jax.tree.leaves(pstate.masks)) == round(0.8 * n)
    assert losses[-1] < 0.5 * losses[0]
    assert kernels_zero_where_pruned(params, pstate.masks)  # the optimizer keeps them at 0.0


def test_nnx_optimizer_with_masks():
    x, y = data()
    model = nnx.Sequential(nnx.Linear(10, 32, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(32, 2, rngs=nnx.Rngs(1)))
    optimizer = nnx.Optimizer(model, jp.masked_optimizer(optax.adamw(1e-2, weight_decay=1e-2)), wrt=nnx.Param)
    pruner = jp.Pruner(schedule=SCHEDULE)
    pstate = pruner.init(nnx.state(model, nnx.Param))
    assert jax.tree.structure(pstate.masks, is_leaf=lambda v: v is None) == jax.tree.structure(
        nnx_masks(model), is_leaf=lambda v: v is None
    )

    @nnx.jit
    def step(model, optimizer, pstate, t):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, masks=pstate.masks)
        pstate = pruner.update(pstate, nnx.state(model, nnx.Param), t)
        nnx_apply_mask(model, pstate.masks)
        return loss, pstate

    losses = []
    for t in range(300):
        loss, pstate = step(model, optimizer, pstate, jnp.int32(t))
        losses.append(float(loss))
    kernel = model.layers[0].kernel[...]
    mask = pstate.masks["layers"][0]["kernel"][...]
    assert bool(jnp.all(jnp.where(mask, True, kernel == 0)))
    assert float(jp.sparsity(pstate.masks)) == pytest.approx(round(0.8 * 384) / 384)
    assert losses[-1] < 0.5 * losses[0]


def test_linen_pruned_train_state():
    x, y = data()
    model = nn.Sequential([nn.Dense(32), nn.tanh, nn.Dense(2)])
    params = model.init(jax.random.key(0), x)["params"]
    state = PrunedTrainState.create(
        apply_fn=model.apply, params=params, tx=optax.sgd(0.05, momentum=0.9), pruner=jp.Pruner(schedule=SCHEDULE)
    )

    @jax.jit
    def step(state):
        def loss_fn(p):
            return jnp.mean((state.apply_fn({"params": jp.apply_mask(p, state.masks)}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(300):
        state, loss = step(state)
        losses.append(float(loss))
    assert float(jp.sparsity(state.masks)) == pytest.approx(round(0.8 * 384) / 384)
    for name in ("layers_0", "layers_2"):
        k, m = state.params[name]["kernel"], state.masks[name]["kernel"]
        assert bool(jnp.all(jnp.where(m, True, k == 0)))
    np.testing.assert_array_equal(state.masked_params()["layers_0"]["kernel"], state.params["layers_0"]["kernel"])
    assert losses[-1] < 0.5 * losses[0]
