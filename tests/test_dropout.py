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
    for step in range(100):
        grads = jax.grad(loss)(params, jax.random.key(step))
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
    assert float(jax.nn.sigmoid(params["p_logit"])) < 0.2


def test_mc_predict_mean_variance_and_bald():
    w = jax.random.normal(KEY, (16, 3))
    x = jax.random.normal(jax.random.key(1), (10, 16))

    def apply(key, x):
        return jp.dropout(key, x, 0.5) @ w

    out = jp.mc_predict(apply, jax.random.key(3), x, 64)
    samples = jnp.stack([apply(k, x) for k in jax.random.split(jax.random.key(3), 64)])
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
