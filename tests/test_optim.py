import jax
import jax.numpy as jnp
import optax
import pytest

import jaxprune as jp

OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
}


def problem():
    params = {
        "w1": jax.random.normal(jax.random.key(0), (12, 16)),
        "b1": jnp.ones(16),
        "w2": jax.random.normal(jax.random.key(1), (16, 3)),
    }
    x = jax.random.normal(jax.random.key(2), (32, 12))
    y = jax.random.normal(jax.random.key(3), (32, 3))

    def loss(p, masks):
        p = jp.apply_mask(p, masks)
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    return params, loss


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_never_become_nonzero_over_hundreds_of_steps(name):
    params, loss = problem()
    tx = jp.masked_optimizer(OPTIMIZERS[name]())
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5)

    @jax.jit
    def run(params, masks):
        def body(carry, _):
            params, opt_state = carry
            l, grads = jax.value_and_grad(loss)(params, masks)
            updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
            params = optax.apply_updates(params, updates)
            leaked = sum(jnp.sum(jnp.where(masks[k], 0, params[k] != 0)) for k in ("w1", "w2"))
            return (params, opt_state), (l, leaked)

        (params, opt_state), (losses, leaked) = jax.lax.scan(body, (params, tx.init(params)), None, length=300)
        return params, opt_state, losses, leaked

    out, _, losses, leaked = run(params, masks)
    assert int(leaked.max()) == 0  # checked after every one of the 300 steps
    assert float(losses[-1]) < float(losses[0])
    # A second pruning round mid-training: the newly pruned weights become zero at
    # once and their optimizer moments are cleared, so nothing leaks back later.
    masks2 = jp.prune(jp.magnitude(out), masks, sparsity=0.8)
    _, opt_state2, _, leaked2 = run(out, masks2)
    assert int(leaked2.max()) == 0
    moments = optax.tree_utils.tree_get_all_with_path(opt_state2, "mu") or optax.tree_utils.tree_get_all_with_path(
        opt_state2, "trace"
    )
    for _, tree in moments:
        assert bool(jnp.all(jnp.where(masks2["w1"], True, tree["w1"] == 0)))


def test_plain_optimizer_would_revive_pruned_weights():
    """The failure the transform exists for: AdamW's weight decay and momentum move pruned weights."""
    params, loss = problem()
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5)
    tx = optax.adamw(1e-2, weight_decay=0.1)
    opt_state = tx.init(params)
    for _ in range(5):
        grads = jax.grad(loss)(params, masks)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    assert bool(jnp.any(jnp.where(masks["w1"], False, params["w1"] != 0)))


def test_zero_pruned_as_last_link_of_a_chain():
    params, loss = problem()
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.6)
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), jp.zero_pruned())
    opt_state = tx.init(params)
    for _ in range(20):
        grads = jax.grad(loss)(params, masks)
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        params = optax.apply_updates(params, updates)
    assert bool(jnp.all(jnp.where(masks["w1"], True, params["w1"] == 0)))
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(grads, opt_state, None, masks=masks)


@pytest.mark.parametrize("make", [jp.masked_optimizer, lambda tx: optax.chain(tx, jp.zero_pruned())])
def test_masks_that_do_not_mirror_params_raise_instead_of_broadcasting(make):
    params, _ = problem()
    masks = jp.init_masks(params)
    tx = make(optax.sgd(0.1))
    state = tx.init(params)
    bad = [
        ({**masks, "w1": jnp.ones((1, 16), bool)}, ValueError, r"'w1' has shape \(1, 16\) but `params` has \(12, 16\)"),
        ({"w1": masks["w1"]}, ValueError, "does not have the structure of `params`"),
        ({**masks, "w1": jnp.ones((12, 16))}, TypeError, "'w1' must be a bool array"),
        (None, TypeError, "needs `masks=`"),
    ]
    for m, error, match in bad:
        with pytest.raises(error, match=match):
            tx.update(params, state, params, masks=m)
    with pytest.raises(ValueError, match="`updates` does not have the structure"):
        tx.update({"w1": params["w1"]}, state, params, masks=masks)


def test_masked_optimizer_needs_an_optax_transform():
    with pytest.raises(TypeError, match="`inner` must be an optax GradientTransformation"):
        jp.masked_optimizer(None)
