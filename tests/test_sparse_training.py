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
    params, _, state, history = train(jp.StaticSparse(0.9), mlp(), 30)  # `train` is below, shared with SET/RigL
    first = history[0][0]
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


# --- SET and RigL -------------------------------------------------------------


def reference_move(mask, w, grow_score, n_move):
    """NumPy reference, from the papers: drop the n_move smallest |w| among the active (earlier index first on
    ties); grow the n_move largest scores among the connections not kept by the drop (earlier index first)."""
    mask, w, grow_score = (np.asarray(x).reshape(-1) for x in (mask, w, grow_score))
    idx = np.arange(mask.size)
    active = idx[mask]
    dropped = active[np.lexsort((active, np.abs(w[active])))][:n_move]
    kept = mask.copy()
    kept[dropped] = False
    candidates = idx[~kept]
    grown = candidates[np.lexsort((candidates, -grow_score[candidates]))][:n_move]
    new = kept.copy()
    new[grown] = True
    return new


@pytest.mark.parametrize("method_cls", [jp.SET, jp.RigL])
def test_drop_and_grow_match_the_reference_and_conserve_every_layer(method_cls):
    params = mlp(1)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(7), x.shape), params)
    method = method_cls(0.8, every=10, end=100, drop_fraction=0.5)
    state = method.init(params, jax.random.key(1))
    key = jax.random.key(9)
    update = jax.jit(lambda s, t: method.update(s, params, t, grads=grads, key=key))
    for t in (0, 5, 100, 130):  # not due: nothing moves
        chex.assert_trees_all_equal(update(state, t), state)
    new = update(state, 30)
    assert int(new.count) == 1
    grow = jp.random(key, params, generator="hash") if method_cls is jp.SET else jp.magnitude(grads)
    fraction = float(method.fraction(jnp.int32(30)))  # the float32 value the update uses
    for k in ("l0", "l1", "out"):
        old_m = state.masks[k]["kernel"]
        active = int(old_m.sum())
        expected = reference_move(old_m, params[k]["kernel"], grow[k]["kernel"], round(fraction * active))
        np.testing.assert_array_equal(np.asarray(new.masks[k]["kernel"]).reshape(-1), expected, err_msg=k)
        assert int(new.masks[k]["kernel"].sum()) == active  # exactly conserved
        assert int((new.masks[k]["kernel"] & ~old_m).sum()) > 0  # and something really moved


def test_set_regrows_each_candidate_with_equal_probability():
    # One 32 x 32 layer, the drop deterministic: over 300 keys every connection not kept by the drop step is
    # regrown with probability n_move / candidates, and regrowths under different keys are independent.
    params = {"l": {"kernel": jax.random.normal(jax.random.key(0), (32, 32))}}
    method = jp.SET(0.5, distribution="uniform", every=1, end=10**6, drop_fraction=0.5)
    state = method.init(params, jax.random.key(1))
    keys = jax.random.split(jax.random.key(2), 300)
    new = np.asarray(jax.jit(jax.vmap(lambda k: method.update(state, params, 1, key=k).masks["l"]["kernel"]))(keys))
    old = np.asarray(state.masks["l"]["kernel"])
    kept = new.all(axis=0)  # the drop step's survivors are in every draw
    assert kept.sum() == 256 and (kept <= old).all()
    regrown = new[:, ~kept]
    n_move = 512 - 256
    assert (regrown.sum(axis=1) == n_move).all()
    p = n_move / regrown.shape[1]
    counts = regrown.sum(axis=0)
    chi2 = ((counts - 300 * p) ** 2 / (300 * p * (1 - p))).sum()  # ~ chi-square with 768 dof: 768 +- 39
    assert chi2 < 768 + 5 * 39
    overlap = (regrown[0] & regrown[1]).sum()  # hypergeometric: mean 85.3, sd ~6.5
    assert abs(overlap - n_move * p) < 5 * 6.5


def train(method, params, steps, state=None, opt_state=None, start=0):
    """A RigL/SET train step: dense gradient (no apply_mask; pruned weights stored as exact zeros), the method's
    update first, then masked_optimizer with the new masks."""
    chex.clear_trace_counter()  # a new `step` per call; within a call it must trace once
    tx = jp.masked_optimizer(optax.adam(1e-2))
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
        new_state = method.update(state, params, t, grads=grads, key=jax.random.fold_in(jax.random.key(5), t))
        updates, opt_state = tx.update(grads, opt_state, params, masks=new_state.masks)
        return optax.apply_updates(params, updates), opt_state, new_state, state, params

    if state is None:
        state = method.init(params, jax.random.key(0))
        params = jp.apply_mask(params, state.masks)
        opt_state = tx.init(params)
    history = []
    for t in range(start, start + steps):
        before_opt = opt_state
        params, opt_state, state, old_state, old_params = step(params, opt_state, state, t)
        history.append((old_state, state, old_params, before_opt))
    return params, opt_state, state, history


@pytest.mark.parametrize("method_cls", [jp.SET, jp.RigL])
def test_regrown_weights_and_moments_start_at_zero_and_dropped_weights_become_zero(method_cls):
    method = method_cls(0.8, every=5, end=40)
    params, _, state, history = train(method, mlp(), 21)
    assert int(state.count) == 4  # steps 5, 10, 15, 20
    moved = 0
    history, params, state = jax.device_get((history, params, state))  # NumPy: boolean indexing compiles nothing
    for old_state, new_state, old_params, old_opt in history:
        for k in ("l0", "l1", "out"):
            old_m, new_m = old_state.masks[k]["kernel"], new_state.masks[k]["kernel"]
            assert int(new_m.sum()) == int(old_m.sum())
            grown = new_m & ~old_m
            moved += int(grown.sum())
            assert np.all(old_params[k]["kernel"][grown] == 0.0)  # regrown weights start at exactly 0
            mu, nu = old_opt[0].mu[k]["kernel"], old_opt[0].nu[k]["kernel"]
            assert np.all(mu[grown] == 0.0) and np.all(nu[grown] == 0.0)  # and with zero moments
    assert moved > 0
    for k in ("l0", "l1", "out"):  # every inactive weight is exactly zero after the step that dropped it
        assert np.all(params[k]["kernel"][~state.masks[k]["kernel"]] == 0.0)


def test_rigl_resumes_bit_identically_from_a_checkpoint(tmp_path):
    method = jp.RigL(0.8, every=5, end=40)
    full_params, full_opt, full_state, _ = train(method, mlp(), 16)
    params, opt_state, state, _ = train(method, mlp(), 8)
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(8, {"params": params, "opt": opt_state, "method": state})
        like = jax.eval_shape(lambda: {"params": params, "opt": opt_state, "method": state})
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt:
        back = ckpt.restore(like)
    params, opt_state, state, _ = train(method, back["params"], 8, back["method"], back["opt"], start=8)
    chex.assert_trees_all_equal((params, opt_state, state), (full_params, full_opt, full_state))


def test_set_and_rigl_arguments_are_checked():
    params = mlp()
    with pytest.raises(ValueError, match=r"`drop_fraction` must be in \[0, 1\]"):
        jp.RigL(0.9, drop_fraction=1.5, end=10)
    with pytest.raises(ValueError, match="`every` must be a positive int"):
        jp.SET(0.9, every=0, end=10)
    with pytest.raises(TypeError, match="`end` must be a positive int"):
        jp.SET(0.9, end=None)
    rigl, set_ = jp.RigL(0.9, end=10), jp.SET(0.9, end=10)
    with pytest.raises(ValueError, match=r"RigL\.update needs `grads=`"):
        rigl.update(rigl.init(params, jax.random.key(0)), params, 5)
    with pytest.raises(TypeError, match=r"SET\.update needs `key=`"):
        set_.update(set_.init(params, jax.random.key(0)), params, 5)
