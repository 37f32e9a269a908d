import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp

KEY = jax.random.key(0)


def test_dropout_keep_rate_and_mean_are_preserved():
    x = jnp.ones((400, 500))
    y = jp.dropout(KEY, x, 0.3)
    kept = float(jnp.mean(y != 0))
    assert kept == pytest.approx(0.7, abs=0.005)  # 200k draws: 5 standard deviations ~ 0.005
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)


def test_dropout_same_key_same_mask_deterministic_is_identity():
    x = jax.random.normal(KEY, (64, 64))
    np.testing.assert_array_equal(jp.dropout(KEY, x, 0.5), jp.dropout(KEY, x, 0.5))
    assert not np.array_equal(jp.dropout(KEY, x, 0.5), jp.dropout(jax.random.key(1), x, 0.5))
    np.testing.assert_array_equal(jp.dropout(KEY, x, 0.5, deterministic=True), x)
    np.testing.assert_array_equal(jp.dropout(KEY, x, 0.0), x)


def test_broadcast_dims_share_one_mask():
    y = jp.dropout(KEY, jnp.ones((8, 16, 32)), 0.5, broadcast_dims=(0, 1))
    assert bool(jnp.all(y == y[:1, :1]))


def test_locked_dropout_uses_the_same_mask_at_every_timestep():
    xs = jax.random.normal(KEY, (20, 4, 32)) + 3.0  # no exact zeros of its own
    ys = jp.locked_dropout(jax.random.key(5), xs, 0.4)
    dropped = np.asarray(ys == 0)
    assert dropped.any() and not dropped.all()
    assert (dropped == dropped[:1]).all()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_rates_raise(rate):
    with pytest.raises(ValueError, match="`rate` must be in"):
        jp.dropout(KEY, jnp.ones(3), rate)


def test_bad_rate_types_and_zoneout_range():
    with pytest.raises(TypeError, match="`rate` must be a float"):
        jp.dropout(KEY, jnp.ones(3), "0.5")
    with pytest.raises(ValueError, match=r"`rate` must be in \[0, 1\]"):
        jp.zoneout(KEY, jnp.ones(3), jnp.zeros(3), 1.5)
    jp.zoneout(KEY, jnp.ones(3), jnp.zeros(3), 1.0)  # rate 1 is valid for zoneout


def test_weight_drop_keeps_pruned_weights_zero_and_scales_the_rest():
    w = jnp.ones((100, 100))
    mask = jax.random.bernoulli(jax.random.key(2), 0.5, w.shape)
    y = jp.weight_drop(KEY, w, 0.25, mask=mask)
    assert bool(jnp.all(jnp.where(mask, True, y == 0)))
    survivors = y[mask]
    assert float(jnp.mean(survivors != 0)) == pytest.approx(0.75, abs=0.02)
    np.testing.assert_array_equal(jp.weight_drop(KEY, w, 0.25, mask=mask, deterministic=True), jnp.where(mask, w, 0))


def test_zoneout_fresh_mask_and_expectation():
    prev, new = jnp.zeros((300, 300)), jnp.ones((300, 300))
    z = jp.zoneout(KEY, prev, new, 0.2)
    assert float(jnp.mean(z == 0)) == pytest.approx(0.2, abs=0.01)
    np.testing.assert_allclose(jp.zoneout(KEY, prev, new, 0.2, deterministic=True), 0.8)
    assert not np.array_equal(z, jp.zoneout(jax.random.key(9), prev, new, 0.2))


def test_concrete_dropout_is_unbiased_and_its_rate_moves_under_gradient_descent():
    x = jnp.ones((200, 200))
    y = jp.concrete_dropout(KEY, x, jnp.asarray(0.0))  # p = 0.5
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.03)
    np.testing.assert_array_equal(jp.concrete_dropout(KEY, x, jnp.asarray(0.0), deterministic=True), x)

    # A noisy regression that is hurt by dropout: the learned rate must fall from 0.5.
    data = jax.random.normal(jax.random.key(1), (256, 8))
    target = data @ jnp.arange(1.0, 9.0)
    params = {"w": jnp.arange(1.0, 9.0), "p_logit": jnp.asarray(0.0)}

    def loss(params, key):
        h = jp.concrete_dropout(key, data, params["p_logit"])
        mse = jnp.mean((h @ params["w"] - target) ** 2)
        reg = jp.concrete_regularizer(
            params["p_logit"], params["w"], 8, weight_regularizer=1e-6, dropout_regularizer=1e-5
        )
        return mse + reg

    tx = optax.adam(0.05)
    opt_state = tx.init(params)

    @jax.jit  # one compile instead of 100 op-by-op passes
    def train_step(params, opt_state, step):
        updates, opt_state = tx.update(jax.grad(loss)(params, jax.random.key(step)), opt_state)
        return optax.apply_updates(params, updates), opt_state

    for step in range(100):
        params, opt_state = train_step(params, opt_state, step)
    assert float(jax.nn.sigmoid(params["p_logit"])) < 0.2


def test_mc_predict_mean_variance_and_bald():
    w = jax.random.normal(KEY, (16, 3))
    x = jax.random.normal(jax.random.key(1), (10, 16))

    def apply(key, x):
        return jp.dropout(key, x, 0.5) @ w

    out = jp.mc_predict(apply, jax.random.key(3), x, 64)
    one_pass = jax.jit(apply)  # the reference: one pass at a time, not vmapped
    samples = jnp.stack([one_pass(k, x) for k in jax.random.split(jax.random.key(3), 64)])
    np.testing.assert_allclose(out.mean, samples.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.variance, samples.var(0), rtol=1e-4, atol=1e-5)
    assert out.entropy is None

    cls = jp.mc_predict(apply, jax.random.key(3), x, 64, classifier=True)
    probs = jax.nn.softmax(samples, -1)
    mean = probs.mean(0)
    h = -jnp.sum(mean * jnp.log(mean), -1)
    np.testing.assert_allclose(cls.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(cls.entropy, h, rtol=1e-4)
    np.testing.assert_allclose(
        cls.mutual_information, h - jnp.mean(-jnp.sum(probs * jnp.log(probs), -1), 0), rtol=1e-3, atol=1e-6
    )
    assert bool(jnp.all(cls.mutual_information >= -1e-6))
    # Without dropout the passes agree: no epistemic uncertainty.
    det = jp.mc_predict(lambda k, x: x @ w, jax.random.key(3), x, 8, classifier=True)
    np.testing.assert_allclose(det.mutual_information, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="`num_samples` must be a positive int"):
        jp.mc_predict(apply, KEY, x, 0)


# Bad inputs: each raises jaxprune's own error, naming the argument, before any work.


@pytest.mark.parametrize("axis", [3, 4, -4])
def test_out_of_range_axes_raise_instead_of_wrapping(axis):
    xs = jnp.ones((5, 4, 3))
    with pytest.raises(ValueError, match=rf"`time_axis` must be an axis of the 3-D input, in \[-3, 2\]; got {axis}"):
        jp.locked_dropout(KEY, xs, 0.5, time_axis=axis)
    with pytest.raises(ValueError, match=r"`broadcast_dims` must be an axis of the 3-D input"):
        jp.dropout(KEY, xs, 0.5, broadcast_dims=(0, axis))
    with pytest.raises(ValueError, match="`time_axis`"):  # checked even when nothing is dropped
        jax.jit(lambda x: jp.locked_dropout(None, x, 0.5, time_axis=axis, deterministic=True))(xs)


def test_negative_axes_and_axis_types():
    xs = jax.random.normal(KEY, (4, 6, 20)) + 3.0
    ys = jp.locked_dropout(jax.random.key(1), xs, 0.5, time_axis=-1)  # one mask along the last axis
    dropped = np.asarray(ys == 0)
    assert dropped.any() and (dropped == dropped[..., :1]).all()
    np.testing.assert_array_equal(
        jp.dropout(KEY, xs, 0.5, broadcast_dims=(-3,)), jp.dropout(KEY, xs, 0.5, broadcast_dims=(0,))
    )
    with pytest.raises(TypeError, match="`time_axis` must be an int axis, got float"):
        jp.locked_dropout(KEY, xs, 0.5, time_axis=1.0)
    with pytest.raises(TypeError, match="`broadcast_dims` must be a sequence of int axes, got int"):
        jp.dropout(KEY, xs, 0.5, broadcast_dims=1)
    with pytest.raises(TypeError, match="`broadcast_dims` must be an int axis, got bool"):
        jp.dropout(KEY, xs, 0.5, broadcast_dims=(True,))


def test_weight_drop_mask_must_be_bool_and_exactly_ws_shape():
    w = jnp.ones((6, 8))
    for deterministic in (False, True):
        with pytest.raises(ValueError, match=r"`mask` must have `w`'s shape \(6, 8\), got \(1, 8\)"):
            jp.weight_drop(KEY, w, 0.5, mask=jnp.ones((1, 8), bool), deterministic=deterministic)
        with pytest.raises(TypeError, match=r"`mask` must be a bool array.*float32"):
            jp.weight_drop(KEY, w, 0.5, mask=jnp.ones((6, 8)), deterministic=deterministic)
    with pytest.raises(TypeError, match="`mask` must be a bool array"):
        jp.weight_drop(KEY, w, 0.5, mask=True)
    np.testing.assert_array_equal(jp.weight_drop(None, w, 0.5, mask=np.ones((6, 8), bool), deterministic=True), w)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("inf"), float("nan")])
def test_concrete_dropout_temperature_must_be_positive_and_finite(temperature):
    with pytest.raises(ValueError, match="`temperature` must be a positive finite float"):
        jp.concrete_dropout(KEY, jnp.ones(4), jnp.asarray(0.0), temperature=temperature)


def test_concrete_dropout_eps_p_logit_and_types():
    x = jnp.ones((3, 4))
    for eps in (0.0, 0.5, -1e-7, float("nan")):
        with pytest.raises(ValueError, match=r"`eps` must be in \(0, 0\.5\)"):
            jp.concrete_dropout(KEY, x, 0.0, eps=eps)
    with pytest.raises(TypeError, match="`temperature` must be a float, got str"):
        jp.concrete_dropout(KEY, x, 0.0, temperature="0.1")
    with pytest.raises(ValueError, match=r"`p_logit` of shape \(3,\) must broadcast to `x`'s shape \(3, 4\)"):
        jp.concrete_dropout(KEY, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="`p_logit` of shape"):  # broadcastable, but would grow the output
        jp.concrete_dropout(KEY, x, jnp.zeros((2, 3, 4)))
    assert jp.concrete_dropout(KEY, x, jnp.zeros(4)).shape == (3, 4)  # one rate per feature
    with pytest.raises(TypeError, match="`p_logit` must be a floating-point array"):
        jp.concrete_dropout(KEY, x, "0")


def test_integer_inputs_and_zoneout_shapes_raise():
    # An int array would cast the rate to 0 and skip the 1 / (1 - rate) scaling, silently.
    with pytest.raises(TypeError, match="`x` must be a floating-point array, got dtype int32"):
        jp.dropout(KEY, jnp.ones(3, jnp.int32), 0.5)
    with pytest.raises(TypeError, match="`w` must be a floating-point array"):
        jp.weight_drop(KEY, jnp.ones((2, 2), jnp.int32), 0.5)
    with pytest.raises(TypeError, match="`new` must be a floating-point array"):
        jp.zoneout(KEY, jnp.ones(3), jnp.ones(3, jnp.int32), 0.5)
    with pytest.raises(ValueError, match=r"`previous` and `new` must have the same shape, got \(3,\) and \(2, 3\)"):
        jp.zoneout(KEY, jnp.ones(3), jnp.ones((2, 3)), 0.5)


BAD_KEYS = [None, 0, jax.random.split(KEY, 2), jnp.zeros(3, jnp.uint32), jnp.zeros(2, jnp.int32)]
CALLS = {
    "dropout": lambda k, **kw: jp.dropout(k, jnp.ones(4), 0.5, **kw),
    "locked_dropout": lambda k, **kw: jp.locked_dropout(k, jnp.ones((2, 4)), 0.5, **kw),
    "weight_drop": lambda k, **kw: jp.weight_drop(k, jnp.ones((2, 4)), 0.5, **kw),
    "zoneout": lambda k, **kw: jp.zoneout(k, jnp.ones(4), jnp.zeros(4), 0.5, **kw),
    "concrete_dropout": lambda k, **kw: jp.concrete_dropout(k, jnp.ones(4), 0.0, **kw),
}


@pytest.mark.parametrize("bad", BAD_KEYS, ids=["None", "int", "batch", "uint32[3]", "int32[2]"])
@pytest.mark.parametrize("name", CALLS)
def test_bad_keys_raise_one_type_error(name, bad):
    with pytest.raises(TypeError, match=r"`key` must be (one|a) PRNG key.*a PRNG key is one jax\.random\.key"):
        CALLS[name](bad)
    CALLS[name](None, deterministic=True)  # deterministic calls need no key
    CALLS[name](jax.random.PRNGKey(0))  # a legacy uint32[2] key is one key


def test_bad_keys_raise_under_jit_and_in_mc_predict():
    batch = jax.random.split(KEY, 3)
    with pytest.raises(TypeError, match="`key` must be one PRNG key, got a batch of keys of shape"):
        jax.jit(lambda k: jp.dropout(k, jnp.ones(4), 0.5))(batch)
    x = jnp.ones(4)

    def apply(key, x):
        return jp.dropout(key, x, 0.5)

    for bad in BAD_KEYS:
        with pytest.raises(TypeError, match="`key` must be"):
            jp.mc_predict(apply, bad, x, 4)
    with pytest.raises(TypeError, match=r"`num_samples` must be a positive int, got float 4\.0"):
        jp.mc_predict(apply, KEY, x, 4.0)
    with pytest.raises(TypeError, match="`apply_fn` must be a callable"):
        jp.mc_predict(None, KEY, x, 4)
