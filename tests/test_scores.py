import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp


def test_magnitude_is_abs_and_keeps_none_leaves():
    params = {"w": jnp.array([[-2.0, 1.0]]), "skip": None}
    s = jp.magnitude(params)
    np.testing.assert_array_equal(s["w"], [[2.0, 1.0]])
    assert s["skip"] is None


def test_random_is_keyed_uniform_and_independent_per_leaf():
    params = {"a": jnp.zeros((100, 100)), "b": jnp.zeros((100, 100))}
    s1 = jp.random(jax.random.key(0), params)
    s2 = jp.random(jax.random.key(0), params)
    s3 = jp.random(jax.random.key(1), params)
    np.testing.assert_array_equal(s1["a"], s2["a"])
    assert not np.array_equal(s1["a"], s3["a"])
    assert not np.array_equal(s1["a"], s1["b"])
    assert 0.0 <= float(s1["a"].min()) and float(s1["a"].max()) < 1.0
    assert abs(float(s1["a"].mean()) - 0.5) < 0.02


def test_hash_generator_is_keyed_uniform_and_independent_per_leaf():
    params = {"a": jnp.zeros((256, 256)), "b": jnp.zeros((256, 256)), "skip": None}
    s1 = jp.random(jax.random.key(0), params, generator="hash")
    np.testing.assert_array_equal(s1["a"], jp.random(jax.random.key(0), params, generator="hash")["a"])
    assert s1["skip"] is None
    other = jp.random(jax.random.key(1), params, generator="hash")["a"]
    a = np.asarray(s1["a"]).ravel()
    assert 0.0 <= a.min() and a.max() < 1.0
    # 24 random bits per entry: equal bins hold equal counts (chi-square, 63 dof, p ~ 1e-4 cut-off), and
    # neighbouring positions, the other leaf and another key are uncorrelated.
    counts = np.bincount((a * 64).astype(int), minlength=64)
    expected = a.size / 64
    assert ((counts - expected) ** 2 / expected).sum() < 110
    for x, y in [(a[:-1], a[1:]), (a, np.asarray(s1["b"]).ravel()), (a, np.asarray(other).ravel())]:
        assert abs(np.corrcoef(x, y)[0, 1]) < 0.02
    with pytest.raises(ValueError, match="`generator` must be one of"):
        jp.random(jax.random.key(0), params, generator="philox")


def test_saliency_is_abs_weight_times_grad():
    params = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    grads = {"w": jnp.array([[0.5, 0.5], [-1.0, 4.0]])}
    np.testing.assert_array_equal(jp.saliency(params, grads)["w"], [[0.5, 1.0], [3.0, 2.0]])


def test_random_scores_prune_a_random_but_exact_subset():
    params = {"w": jnp.ones((50, 50))}
    masks = jp.prune(jp.random(jax.random.key(3), params), jp.init_masks(params), sparsity=0.3)
    assert int((~masks["w"]).sum()) == 750


def test_scores_name_a_leaf_that_is_not_numeric():
    with pytest.raises(TypeError, match="`params` leaf 'w' must be a numeric array, got str"):
        jp.magnitude({"w": "weights"})
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="`grads` does not have the structure of `params`"):
        jp.saliency(params, {"w": jnp.ones((2, 3))})
    with pytest.raises(TypeError, match="PRNG key"):
        jp.random(0, params)
