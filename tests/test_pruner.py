import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune import schedules


def mlp(sizes, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    return {
        f"dense_{i}": {"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a), "bias": jnp.zeros(b)}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def forward(params, x):
    layers = list(params.values())
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["kernel"] + layer["bias"])
    return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def pruned_count(masks):
    return sum(int((~m).sum()) for m in jax.tree.leaves(masks))


def test_pruner_in_jitted_loop_compiles_once_and_hits_the_final_target_exactly():
    params = mlp([16, 32, 32, 4])
    n = 16 * 32 + 32 * 32 + 32 * 4
    pruner = jp.Pruner(schedule=schedules.linear(final=0.9, rounds=5, every=10, begin=5))
    tx = jp.masked_optimizer(optax.adam(1e-2))
    x = jax.random.normal(jax.random.key(1), (64, 16))
    y = jax.random.normal(jax.random.key(2), (64, 4))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, pstate, t):
        def loss_fn(p):
            return jnp.mean((forward(jp.apply_mask(p, pstate.masks), x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=pstate.masks)
        params = optax.apply_updates(params, updates)
        pstate = pruner.update(pstate, params, t)
        return params, opt_state, pstate, loss

    pstate = pruner.init(params)
    opt_state = tx.init(params)
    history = []
    for t in range(80):
        params, opt_state, pstate, _ = step(params, opt_state, pstate, jnp.int32(t))
        history.append(pruned_count(pstate.masks))
    assert int(pstate.count) == 5
    # Rounds at steps 5, 15, 25, 35, 45: cumulative, exact at the end.
    for t, r in [(4, 0), (5, 1), (14, 1), (15, 2), (45, 5), (79, 5)]:
        expected = round(float(np.float32(0.9 * r / 5)) * n) if r < 5 else round(0.9 * n)
        assert abs(history[t] - expected) <= (0 if r in (0, 5) else 1), (t, history[t], expected)
    assert history[-1] == round(0.9 * n)
    assert float(jp.sparsity(pstate.masks)) == pytest.approx(round(0.9 * n) / n)


def test_pruner_per_layer_schedules_and_unmatched_leaf():
    params = mlp([8, 16, 4])
    pruner = jp.Pruner(schedule={"dense_1": 0.5, "dense_0": schedules.one_shot(0.25, at=3)}, scope="layer")
    state = pruner.init(params)
    state = pruner.update(state, params, 0)
    assert int((~state.masks["dense_1"]["kernel"]).sum()) == 32
    assert int((~state.masks["dense_0"]["kernel"]).sum()) == 0
    state = pruner.update(state, params, 3)
    assert int((~state.masks["dense_0"]["kernel"]).sum()) == 32
    with pytest.raises(ValueError, match="'dense_0/kernel' matches no pattern"):
        jp.Pruner(schedule={"dense_1": 0.5}).init(params)


def test_pruner_scores_need_their_inputs():
    params = mlp([8, 4])
    with pytest.raises(TypeError, match="needs `key=`"):
        p = jp.Pruner(score="random", schedule=0.5)
        p.update(p.init(params), params, 0)
    with pytest.raises(ValueError, match="needs `grads=`"):
        p = jp.Pruner(score="saliency", schedule=0.5)
        p.update(p.init(params), params, 0)
    with pytest.raises(ValueError, match="`score` must be one of"):
        jp.Pruner(score="taylor")
    p = jp.Pruner(score="random", schedule=0.5)
    state = p.update(p.init(params), params, 0, key=jax.random.key(0))
    assert int((~state.masks["dense_0"]["kernel"]).sum()) == 16


def test_lottery_ticket_per_layer_protocol_counts():
    """Frankle & Carbin's LeNet-300-100: 20% per round on hidden layers, 10% on the output layer."""
    params = mlp([784, 300, 100, 10])
    rounds = 15
    pruner = jp.Pruner(
        schedule={"dense_2": schedules.geometric(0.1, rounds), "dense_[01]": schedules.geometric(0.2, rounds)},
        scope="layer",
    )
    state = pruner.init(params)
    total = 784 * 300 + 300 * 100 + 100 * 10
    remaining = {}
    update = jax.jit(pruner.update)
    for r in range(rounds):
        state = update(state, params, jnp.int32(r))
        remaining[r + 1] = 1 - pruned_count(state.masks) / total
    assert round(remaining[3] * 100, 1) == 51.3
    assert round(remaining[7] * 100, 1) == 21.1
    assert round(remaining[15] * 100, 1) == 3.6
    # Count-exact: each layer holds exactly its scheduled count.
    for name, n, rate in [("dense_0", 784 * 300, 0.2), ("dense_1", 300 * 100, 0.2), ("dense_2", 1000, 0.1)]:
        assert int((~state.masks[name]["kernel"]).sum()) == round((1 - (1 - rate) ** rounds) * n)


def test_rewind_resets_survivors_to_init_and_zeros_the_rest():
    init = mlp([6, 5])
    trained = jax.tree.map(lambda x: x + 1.0, init)
    masks = jp.prune(jp.magnitude(trained), jp.init_masks(trained), sparsity=0.4)
    rewound = jp.rewind(trained, init, masks)
    k, m = rewound["dense_0"]["kernel"], masks["dense_0"]["kernel"]
    np.testing.assert_array_equal(k, jnp.where(m, init["dense_0"]["kernel"], 0.0))
    np.testing.assert_array_equal(rewound["dense_0"]["bias"], init["dense_0"]["bias"])


def test_iterative_magnitude_pruning_with_rewinding_trains_a_sparse_mlp():
    x = jax.random.normal(jax.random.key(0), (256, 10))
    w_true = jax.random.normal(jax.random.key(1), (10, 3))
    y = jnp.argmax(x @ w_true, -1)
    init = mlp([10, 64, 3], seed=3)
    tx = jp.masked_optimizer(optax.adam(3e-2))

    @jax.jit
    def train(params, masks):
        def body(carry, _):
            params, opt_state = carry
            grads = jax.grad(
                lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(jp.apply_mask(p, masks), x), y).mean()
            )(params)
            updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=200)
        return params

    masks = jp.init_masks(init)
    accs = []
    for r in range(1, 5):
        trained = train(jp.rewind(None, init, masks), masks)
        for name in trained:  # the optimizer kept every pruned weight at exactly zero
            assert bool(jnp.all(jnp.where(masks[name]["kernel"], True, trained[name]["kernel"] == 0.0)))
        accs.append(float(jnp.mean(jnp.argmax(forward(trained, x), -1) == y)))
        masks = jp.prune(jp.magnitude(trained), masks, sparsity=1 - 0.7**r)
    assert min(accs) > 0.9, accs
    assert float(jp.sparsity(masks)) == pytest.approx(round((1 - 0.7**4) * 832) / 832)


def test_library_score_functions_are_accepted_as_they_are():
    params = mlp([8, 4])
    grads = jax.tree.map(lambda x: jnp.cos(x * 3.0), params)
    key = jax.random.key(1)
    for fn, name in ((jp.magnitude, "magnitude"), (jp.random, "random"), (jp.saliency, "saliency")):
        a, b = jp.Pruner(score=fn, schedule=0.5), jp.Pruner(score=name, schedule=0.5)
        sa = a.update(a.init(params), params, 0, grads=grads, key=key)
        sb = b.update(b.init(params), params, 0, grads=grads, key=key)
        chex.assert_trees_all_equal(sa.masks, sb.masks)
    # The three-argument form keeps working: here it is magnitude again.
    c, m = jp.Pruner(score=lambda p, g, k: jp.magnitude(p), schedule=0.5), jp.Pruner(schedule=0.5)
    chex.assert_trees_all_equal(c.update(c.init(params), params, 0).masks, m.update(m.init(params), params, 0).masks)


def test_pruner_bad_inputs_name_what_the_user_passed():
    params = mlp([8, 4])
    with pytest.raises(ValueError, match=r"schedule key 'dense_\(' is not a valid regular expression"):
        jp.Pruner(schedule={"dense_(": 0.5})
    p = jp.Pruner(score="saliency", schedule=0.5)
    with pytest.raises(ValueError, match="`grads` does not have the structure of `params`"):
        p.update(p.init(params), params, 0, grads={"dense_0": {"kernel": params["dense_0"]["kernel"]}})
    other = mlp([8, 5])
    with pytest.raises(ValueError, match=r"`state.masks` leaf 'dense_0/kernel' has shape \(8, 4\) but `params`"):
        p.update(p.init(params), other, 0)
    r = jp.Pruner(score="random", schedule=0.5)
    for key in (3, jax.random.split(jax.random.key(0), 2), jnp.zeros(4, jnp.uint32)):
        with pytest.raises(TypeError, match="PRNG key"):
            r.update(r.init(params), params, 0, key=key)
    with pytest.raises(ValueError, match="`the scores that `score` returned` does not have the structure"):
        bad = jp.Pruner(score=lambda p, g, k: {"dense_0": {"kernel": p["dense_0"]["kernel"]}}, schedule=0.5)
        bad.update(bad.init(params), params, 0)


def test_pruner_checks_its_structure_when_built():
    with pytest.raises(TypeError, match="`structure` must be None, Unstructured"):
        jp.Pruner(structure="rows", schedule=0.5)
    with pytest.raises(ValueError, match="NM structures fix their sparsity"):
        jp.Pruner(structure=jp.NM(2, 4), schedule=0.5)


@pytest.mark.parametrize("kind", ["weights", "units"])
def test_eager_updates_prune_when_due_without_compiling_a_cond_each_call(kind, caplog):
    params = mlp([6, 8, 4])
    pruner = jp.Pruner(
        schedule=jp.schedules.linear(final=0.5, rounds=2, every=2, begin=1),
        units=None if kind == "weights" else jp.mlp_units(["dense_0", "dense_1"])[:1],
    )
    jitted = jax.jit(pruner.update)
    eager_state = jit_state = pruner.init(params)
    states = []
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        for step in range(5):
            before = eager_state
            eager_state = pruner.update(eager_state, params, step)
            jit_state = jitted(jit_state, params, step)
            states.append((before, eager_state))
            chex.assert_trees_all_equal(eager_state, jit_state)  # the same rounds, the same masks
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not any("jit(cond)" in m for m in compiled), compiled  # eager calls decide in Python
    # Steps 0, 2 and 4 are not due: the masks come back as they were, untouched; 1 and 3 prune.
    assert [before.masks is after.masks for before, after in states] == [True, False, True, False, True]
    assert int(eager_state.count) == 2
