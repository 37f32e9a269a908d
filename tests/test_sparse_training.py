import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp


def mlp(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "l0": {"kernel": jax.random.normal(k[0], (16, 32)), "bias": jnp.zeros(32)},
        "l1": {"kernel": jax.random.normal(k[1], (32, 32)), "bias": jnp.zeros(32)},
        "out": {"kernel": jax.random.normal(k[2], (32, 4)), "bias": jnp.zeros(4)},
    }


def pruned(masks):
    return {p: r.total - r.kept for p, r in ((r.path, r) for r in jp.summary(masks).rows)}


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_static_sparse_draws_each_layers_exact_share_once(distribution):
    params = mlp()
    method = jp.StaticSparse(0.9, distribution=distribution)
    state = method.init(params, jax.random.key(1))
    shares = jp.distributions.get(distribution)(jp.init_masks(params), 0.9)
    assert pruned(state.masks) == {
        f"{k}/kernel": round(shares[k]["kernel"] * params[k]["kernel"].size) for k in ("l0", "l1", "out")
    }
    # Random masks: another key draws other masks of the same sizes; the same key the same masks.
    other = method.init(params, jax.random.key(2))
    assert pruned(other.masks) == pruned(state.masks)
    assert not bool(jnp.all(other.masks["l1"]["kernel"] == state.masks["l1"]["kernel"]))
    chex.assert_trees_all_equal(method.init(params, jax.random.key(1)), state)


def test_static_sparse_by_magnitude_keeps_each_layers_largest_weights():
    params = mlp()
    state = jp.StaticSparse(0.8, score="magnitude").init(params)
    for k in ("l0", "l1", "out"):
        w, m = np.abs(np.asarray(params[k]["kernel"])), np.asarray(state.masks[k]["kernel"])
        if (~m).any() and m.any():
            assert w[~m].max() <= w[m].min()


def test_static_sparse_masks_never_change_in_a_jitted_loop_and_weights_stay_zero():
    params = mlp()
    method = jp.StaticSparse(0.9)
    state = method.init(params, jax.random.key(0))
    params = jp.apply_mask(params, state.masks)
    tx = jp.masked_optimizer(optax.adam(1e-2))
    opt_state = tx.init(params)
    x = jax.random.normal(jax.random.key(3), (64, 16))
    y = jax.random.normal(jax.random.key(4), (64, 4))

    def loss(p):
        h = jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"])
        h = jnp.tanh(h @ p["l1"]["kernel"] + p["l1"]["bias"])
        return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - y) ** 2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, state, t):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=state.masks)
        return optax.apply_updates(params, updates), opt_state, method.update(state, params, t, grads=grads)

    first = state
    for t in range(30):
        params, opt_state, state = step(params, opt_state, state, t)
    chex.assert_trees_all_equal(state, first)
    for k in ("l0", "l1", "out"):
        assert bool(jnp.all(params[k]["kernel"][~state.masks[k]["kernel"]] == 0.0))


def test_static_sparse_state_round_trips_through_a_checkpoint(tmp_path):
    params = mlp()
    state = jp.StaticSparse(0.9).init(params, jax.random.key(0))
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"params": params, "method": state})
        back = ckpt.restore(like=jax.eval_shape(lambda: {"params": params, "method": state}))
    assert isinstance(back["method"], jp.SparseState)
    chex.assert_trees_all_equal(back["method"], state)


def test_static_sparse_arguments_are_checked():
    params = mlp()
    with pytest.raises(ValueError, match=r"`sparsity` must be in \[0, 1\]"):
        jp.StaticSparse(1.5)
    with pytest.raises(ValueError, match="`distribution` must be one of"):
        jp.StaticSparse(0.5, distribution="er")
    with pytest.raises(ValueError, match="`score` must be one of"):
        jp.StaticSparse(0.5, score="saliency")
    with pytest.raises(TypeError, match="needs `key=` in init"):
        jp.StaticSparse(0.5).init(params)
    with pytest.raises(TypeError, match="PRNG key"):
        jp.StaticSparse(0.5).init(params, 3)
    method = jp.StaticSparse(0.5)
    state = method.init(params, jax.random.key(0))
    with pytest.raises(ValueError, match=r"`state\.masks` leaf 'l0/kernel' has shape"):
        method.update(state, {**params, "l0": {"kernel": jnp.ones((16, 8)), "bias": jnp.zeros(8)}}, 0)
