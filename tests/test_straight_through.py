"""StraightThrough (jaxpruner's magnitude_ste): masks from the dense weights at each update, gradients to all."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp


def mlp(seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "l0": {"kernel": jax.random.normal(k[0], (8, 16)), "bias": jnp.zeros(16)},
        "l1": {"kernel": jax.random.normal(k[1], (16, 3)), "bias": jnp.zeros(3)},
    }


def test_masks_are_recomputed_from_the_dense_weights_so_pruned_weights_come_back():
    method = jp.StraightThrough(schedule=0.5)
    params = {"w": jnp.array([[3.0, 1.0, 2.0, 0.5]])}
    state = method.init(params)
    state = method.update(state, params, 0)
    np.testing.assert_array_equal(state.masks["w"], [[True, False, True, False]])
    # Training moved the weights: 1.0 grew past 2.0, which the masks follow (Pruner's masks would not regrow).
    moved = {"w": jnp.array([[3.0, 5.0, 2.0, 0.5]])}
    state = method.update(state, moved, 1)
    np.testing.assert_array_equal(state.masks["w"], [[True, True, False, False]])
    assert int(state.count) == 2


def test_every_and_the_schedule_decide_when_and_how_much():
    schedule = jp.schedules.linear(0.8, rounds=4, every=10)
    method = jp.StraightThrough(schedule=schedule, every=5)
    params = mlp()
    state = method.init(params)
    update = jax.jit(method.update)
    for step in (0, 3, 5, 12, 20, 31, 40):
        new = update(state, params, step)
        if step % 5:
            chex.assert_trees_all_equal(new, state)
            continue
        expected = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=float(schedule(step)))
        chex.assert_trees_all_equal(new.masks, expected)
        assert int(new.count) == int(state.count) + 1
        state = new


def test_a_jitted_straight_through_loop_trains_pruned_weights_and_compiles_once():
    params = mlp()
    x = jax.random.normal(jax.random.key(1), (32, 8))
    y = jax.random.normal(jax.random.key(2), (32, 3))
    method = jp.StraightThrough(schedule=jp.schedules.polynomial(0.75, begin=0, end=20, every=5), every=5)
    tx = optax.sgd(0.05)

    def loss(p):
        h = jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"])
        return jnp.mean((h @ p["l1"]["kernel"] + p["l1"]["bias"] - y) ** 2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, state, t):
        state = method.update(state, params, t)
        grads = jax.grad(lambda p: loss(jp.apply_mask(p, state.masks, straight_through=True)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state

    chex.clear_trace_counter()
    state, opt_state = method.init(params), tx.init(params)
    before = None
    for t in range(30):
        params, opt_state, state = step(params, opt_state, state, jnp.int32(t))
        if t == 10:
            before = params
    # Pruned weights were trained too (straight-through): they moved between step 10 and the end.
    pruned = ~state.masks["l0"]["kernel"]
    assert bool(jnp.any(params["l0"]["kernel"][pruned] != before["l0"]["kernel"][pruned]))
    # The final masks are exactly the schedule's count, and finalize bakes the zeros in.
    assert int(jnp.sum(~state.masks["l0"]["kernel"]) + jnp.sum(~state.masks["l1"]["kernel"])) == round(0.75 * 176)
    final = jp.finalize(params, state.masks)
    assert bool(jnp.all(final["l0"]["kernel"][pruned] == 0.0))


def test_straight_through_arguments_are_checked():
    with pytest.raises(ValueError, match="`every` must be a positive int"):
        jp.StraightThrough(schedule=0.5, every=0)
    with pytest.raises(ValueError, match="`score` must be one of"):
        jp.StraightThrough(score="size", schedule=0.5)
    method = jp.StraightThrough(schedule=0.5)
    state = method.init(mlp())
    with pytest.raises(ValueError, match=r"`state\.masks` leaf 'l0/kernel' has shape"):
        method.update(state, {**mlp(), "l0": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}}, 0)
