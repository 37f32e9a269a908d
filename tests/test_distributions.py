import itertools
import math

import chex
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune import distributions


def masks_of(**shapes):
    return {k: None if s is None else jnp.ones(s, bool) for k, s in shapes.items()}


# The shapes and values of jaxpruner's published ERK tests (sparsity_distributions_test.py), 2 decimals.
JAXPRUNER_ERK = [
    ({"a": (2, 4)}, 0.5, 1.0, {"a": 0.5}),
    ({"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}, 0.5, 1.0, {"a": 0.0, "b": 0.31, "c": 0.655}),
    ({"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}, 0.8, 1.0, {"a": 0.556, "b": 0.70, "c": 0.85}),
    ({"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}, 0.5, 2.0, {"a": 0.0, "b": 0.033, "c": 0.758}),
    ({"a": (2, 4), "c": (3, 6, 7), "d": (7, 4)}, 0.5, 1.0, {"a": 0.0, "c": 0.64, "d": 0.0}),
    ({"a": (2, 4), "c": (3, 6, 7), "d": None}, 0.5, 1.0, {"a": 0.0, "c": 0.53, "d": None}),
]


@pytest.mark.parametrize(("shapes", "sparsity", "power", "expected"), JAXPRUNER_ERK)
def test_erk_matches_jaxprunes_published_values(shapes, sparsity, power, expected):
    got = distributions.erk(masks_of(**shapes), sparsity, power=power)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=0.005) if v is not None else got[k] is None


shape = st.lists(st.integers(1, 40), min_size=1, max_size=4).map(tuple)


@given(st.lists(shape, min_size=1, max_size=6), st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_property_erk_follows_the_formula(shapes, sparsity, power):
    masks = {f"l{i}": jnp.ones(s, bool) for i, s in enumerate(shapes)}
    got = distributions.erk(masks, sparsity, power=power)
    sizes = {k: math.prod(m.shape) for k, m in masks.items()}
    raw = {k: (sum(m.shape) / sizes[k]) ** power for k, m in masks.items()}
    density = {k: 1.0 - got[k] for k in masks}
    assert all(0.0 <= got[k] <= 1.0 for k in masks)
    # The model keeps sum(n - floor(n * s)) weights (as RigL and jaxpruner count them): within one weight per leaf
    # of (1 - s) * N.
    kept = sum(density[k] * sizes[k] for k in masks)
    assert kept == pytest.approx(
        sum(n - math.floor(n * sparsity) for n in sizes.values()), abs=1e-6 * sum(sizes.values())
    )
    assert abs(kept - (1 - sparsity) * sum(sizes.values())) <= len(masks)
    sparse = [k for k in masks if density[k] < 1.0 - 1e-12]
    if sparse:
        # Leaves that are not dense have densities proportional to their raw ERK density ...
        ratio = {k: density[k] / raw[k] for k in sparse}
        assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-9)
        # ... and every dense leaf has a raw density at least as large as theirs.
        assert all(raw[k] >= max(raw[j] for j in sparse) - 1e-12 for k in masks if k not in sparse)


def test_erk_power_zero_is_uniform_and_uniform_is_uniform():
    masks = masks_of(a=(8, 16), b=(16, 4), bias=None, empty=(0, 3))
    assert distributions.uniform(masks, 0.7) == {"a": 0.7, "b": 0.7, "bias": None, "empty": 0.0}
    assert distributions.erk(masks, 0.75, power=0.0) == {"a": 0.75, "b": 0.75, "bias": None, "empty": 0.0}
    assert distributions.erk(masks, 0.0) == {"a": 0.0, "b": 0.0, "bias": None, "empty": 0.0}
    assert distributions.erk(masks, 1.0) == {"a": 1.0, "b": 1.0, "bias": None, "empty": 0.0}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: distributions.erk(m, 1.5), ValueError, r"`sparsity` must be in \[0, 1\]"),
        (lambda m: distributions.erk(m, "0.5"), TypeError, "`sparsity` must be a float"),
        (lambda m: distributions.erk(m, 0.5, power=-1.0), ValueError, "`power` must be a finite number >= 0"),
        (lambda m: distributions.uniform({"a": jnp.ones((2, 2))}, 0.5), TypeError, "'a' must be a bool array"),
        (lambda m: distributions.uniform({"a": None}, 0.5), ValueError, "no prunable leaf"),
    ],
)
def test_bad_distribution_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call(masks_of(a=(4, 4)))


def mlp(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "a": jax.random.normal(k[0], (20, 40)),
        "b": jax.random.normal(k[1], (40, 30)),
        "c": jax.random.normal(k[2], (30, 5)),
        "bias": jnp.zeros(5),
    }


def pruned_counts(masks):
    return {k: int((~m).sum()) for k, m in masks.items() if m is not None}


@pytest.mark.parametrize("make", [distributions.uniform, distributions.erk])
def test_prune_with_a_distribution_prunes_each_leaf_to_its_own_target(make):
    params = mlp()
    masks = jp.init_masks(params)
    per_leaf = make(masks, 0.9)
    out = jp.prune(jp.magnitude(params), masks, sparsity=per_leaf, scope="layer")
    expected = {k: round(v * params[k].size) for k, v in per_leaf.items() if v is not None}
    assert pruned_counts(out) == expected
    n = sum(params[k].size for k in expected)
    assert abs(sum(expected.values()) - round(0.9 * n)) <= len(expected)
    # Under jit the per-leaf targets are traced float32 and give the same masks, compiled once.
    jitted = jax.jit(lambda d: jp.prune(jp.magnitude(params), masks, sparsity=d, scope="layer"))
    chex.assert_trees_all_equal(jitted(per_leaf), out)


def test_per_leaf_sparsity_is_checked():
    params = mlp()
    masks = jp.init_masks(params)
    d = distributions.erk(masks, 0.9)
    scores = jp.magnitude(params)
    with pytest.raises(ValueError, match="pass scope='layer'"):
        jp.prune(scores, masks, sparsity=d)
    with pytest.raises(ValueError, match=r"`sparsity` leaf 'a': `sparsity` must be in \[0, 1\]"):
        jp.prune(scores, masks, sparsity={**d, "a": 1.5}, scope="layer")
    with pytest.raises(ValueError, match="`sparsity` leaf 'bias' must be None"):
        jp.prune(scores, masks, sparsity={**d, "bias": 0.5}, scope="layer")
    with pytest.raises(ValueError, match="must have the structure of `masks`"):
        jp.prune(scores, masks, sparsity={"a": 0.5}, scope="layer")
    with pytest.raises(ValueError, match="exactly one of"):
        jp.prune(scores, masks, sparsity=d, amount=0.5, scope="layer")


def test_pruner_scales_a_distribution_over_the_schedule_and_ends_exactly():
    params = mlp()
    pruner = jp.Pruner(schedule=jp.schedules.linear(0.9, rounds=3, every=10), scope="layer", distribution="erk")
    state = pruner.init(params)
    final = distributions.erk(state.masks, 0.9)
    expected = {k: round(v * params[k].size) for k, v in final.items() if v is not None}
    step = jax.jit(chex.assert_max_traces(lambda s, t: pruner.update(s, params, t), n=1))
    totals = []
    for t in range(0, 26, 5):
        state = step(state, t)
        totals.append(sum(pruned_counts(state.masks).values()))
    assert pruned_counts(state.masks) == expected  # each leaf ends exactly at round(d_i * n_i)
    n = sum(params[k].size for k in expected)
    assert totals[0] == pytest.approx(0.3 * n, abs=3)  # the model follows the schedule: 30%, 60%, 90%
    assert totals[2] == pytest.approx(0.6 * n, abs=3)
    assert all(b >= a for a, b in itertools.pairwise(totals))


def test_pruner_distribution_arguments_are_checked():
    with pytest.raises(ValueError, match="pass scope='layer'"):
        jp.Pruner(schedule=0.5, distribution="erk")
    with pytest.raises(ValueError, match=r"`distribution` must be one of \('uniform', 'erk'\) or a callable"):
        jp.Pruner(schedule=0.5, scope="layer", distribution="er")
    with pytest.raises(ValueError, match="give one schedule, not a mapping"):
        jp.Pruner(schedule={"a": 0.5}, scope="layer", distribution="erk")
    pruner = jp.Pruner(schedule=0.5, scope="layer", distribution=lambda masks, s: {"a": s})
    params = mlp()
    with pytest.raises(ValueError, match="must return a pytree of the masks' structure"):
        pruner.update(pruner.init(params), params, 0)
