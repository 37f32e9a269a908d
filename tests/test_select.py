"""The selection engine against a sort-based NumPy reference, including NaN, inf, -0, subnormals and ties."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxprune.counts import round_mul
from jaxprune.select import _SORT_MAX as SORT_MAX
from jaxprune.select import Lazy, count_true, lowest_k

TINY = np.finfo(np.float32).tiny
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, TINY, -TINY, 2.5], np.float32)


def reference(scores, alive, groups, k):
    """Sort by (masked-out first, NaN next, then value with subnormals as 0, then flat position)."""
    out = [None] * len(scores)
    for g in sorted(set(groups)):
        idx = [i for i, gg in enumerate(groups) if gg == g]
        s = np.concatenate([np.asarray(scores[i], np.float32).ravel() for i in idx])
        a = np.concatenate([np.asarray(alive[i]).ravel() for i in idx])
        cls = np.where(~a, 0, np.where(np.isnan(s), 1, 2))
        val = np.where((cls == 2) & (np.abs(s) >= TINY), s, 0.0)
        order = np.lexsort((np.arange(s.size), val, cls))
        sel = np.zeros(s.size, bool)
        sel[order[: k[g]]] = True
        start = 0
        for i in idx:
            n = np.asarray(scores[i]).size
            out[i] = sel[start : start + n].reshape(np.shape(scores[i]))
            start += n
    return out


select = jax.jit(lowest_k, static_argnums=2, static_argnames="method")


def check(scores, alive, groups, k):
    """Both engines against the reference: counting (any size) and sorting (what small groups get)."""
    args = [jnp.asarray(s) for s in scores], [jnp.asarray(a) for a in alive], tuple(groups), jnp.asarray(k)
    want = reference(scores, alive, groups, k)
    for method in ("count", "sort"):
        for g, r in zip(select(*args, method=method), want):
            np.testing.assert_array_equal(np.asarray(g), r, err_msg=method)


def test_auto_sorts_small_groups_and_counts_large_ones():
    def primitives(sizes, groups):
        scores, alive = [jnp.zeros(n) for n in sizes], [jnp.ones(n, bool) for n in sizes]
        k = jnp.ones(max(groups) + 1, jnp.int32)
        return {e.primitive.name for e in jax.make_jaxpr(lambda s: lowest_k(s, alive, groups, k))(scores).eqns}

    assert "while" not in primitives([SORT_MAX, 5], (0, 1))
    assert "while" in primitives([SORT_MAX + 1, 5], (0, 1))  # one large group: every group is counted
    assert "while" in primitives([SORT_MAX, 1], (0, 0))
    with pytest.raises(ValueError, match="`method` must be 'auto', 'count' or 'sort', got 'heap'"):
        lowest_k([jnp.zeros(3)], [jnp.ones(3, bool)], (0,), jnp.ones(1, jnp.int32), method="heap")


def test_random_leaves_against_reference():
    rng = np.random.default_rng(0)
    for trial in range(6):  # each trial is new shapes, so a new compilation
        shapes = [(int(rng.integers(1, 200)), int(rng.integers(1, 300))) for _ in range(int(rng.integers(1, 4)))]
        kind = trial % 3
        if kind == 0:
            scores = [rng.integers(-3, 4, s).astype(np.float32) for s in shapes]  # heavy ties
        elif kind == 1:
            scores = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        else:
            scores = [rng.choice(SPECIALS, s) for s in shapes]
        alive = [rng.random(s) > 0.2 for s in shapes]
        total = sum(int(np.prod(s)) for s in shapes)
        check(scores, alive, [0] * len(shapes), [int(rng.integers(0, total + 1))])


def test_large_leaf_uses_the_sampled_bracket_and_stays_exact():
    # Over 2**16 entries per group: the bracket comes from a sample.
    rng = np.random.default_rng(1)
    scores = [rng.standard_normal((300, 512)).astype(np.float32), rng.integers(0, 50, (64, 1000)).astype(np.float32)]
    alive = [rng.random(s.shape) > 0.1 for s in scores]
    for k in [0, 1, 12345, 100000, 217600 - 1, 217600]:
        check(scores, alive, [0, 0], [k])


def test_mostly_masked_out_large_groups_stay_exact():
    # A sparse mask's active weights (RigL's drop step): 5% alive, so the sampled bracket is taken among the
    # alive sample entries only. Per-leaf groups, k reaching into the alive entries and at both ends.
    rng = np.random.default_rng(5)
    scores = [
        rng.standard_normal((256, 320)).astype(np.float32),
        np.abs(rng.standard_normal((300, 300))).astype(np.float32),
    ]
    alive = [rng.random(s.shape) < 0.05 for s in scores]
    masked = [int((~a).sum()) for a in alive]
    for extra in [0, 1, 37, 400, int(alive[0].sum())]:
        check(scores, alive, [0, 1], [masked[0] + extra, masked[1] + min(extra, int(alive[1].sum()))])


def test_lazy_scores_select_what_the_computed_scores_select():
    rng = np.random.default_rng(6)
    w = [rng.integers(-4, 5, (300, 400)).astype(np.float32), rng.standard_normal((50, 7)).astype(np.float32)]
    alive = [rng.random(x.shape) > 0.3 for x in w]
    k = jnp.asarray([60000, 100], jnp.uint32)
    for method in ("count", "sort"):
        scores = lambda w: [Lazy(lambda x: -jnp.abs(x), (x,)) for x in w]  # noqa: E731
        lazy = jax.jit(lambda w, a: lowest_k(scores(w), a, (0, 1), k, method=method))(w, alive)  # noqa: B023
        for got, want in zip(lazy, reference([-np.abs(x) for x in w], alive, [0, 1], k)):
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=method)


def test_per_group_selection():
    rng = np.random.default_rng(2)
    scores = [rng.integers(0, 5, (10, 7)).astype(np.float32), rng.standard_normal((3, 33)).astype(np.float32)]
    alive = [np.ones(s.shape, bool) for s in scores]
    check(scores, alive, [0, 1], [17, 99])
    check(scores, alive, [1, 0], [0, 5])


def test_odd_shapes_scalars_and_vectors():
    rng = np.random.default_rng(3)
    scores = [
        np.float32(0.5),
        rng.standard_normal(1000).astype(np.float32),
        rng.standard_normal((3, 5, 7)).astype(np.float32),
    ]
    alive = [np.bool_(True), rng.random(1000) > 0.5, rng.random((3, 5, 7)) > 0.5]
    check(scores, alive, [0, 0, 0], [300])


@given(
    # Sides from a few sizes: JAX compiles per shape, so fewer distinct shapes keep examples cheap.
    hnp.arrays(
        np.float32,
        st.lists(st.sampled_from([1, 2, 5, 12]), min_size=1, max_size=3).map(tuple),
        elements=st.sampled_from(SPECIALS),
    ),
    st.data(),
)
def test_property_matches_reference(scores, data):
    alive = data.draw(hnp.arrays(np.bool_, scores.shape))
    k = data.draw(st.integers(0, scores.size))
    check([scores], [alive], [0], [k])


def test_count_true_matches_numpy_for_every_path():
    rng = np.random.default_rng(4)
    for shape in [(64, 96), (5, 300), (7, 200), (1,), (0, 4), (3, 0)]:
        preds = [rng.random(shape) > p for p in (0.1, 0.5, 0.9)]
        got = np.asarray(jax.jit(count_true)([jnp.asarray(p) for p in preds]))
        np.testing.assert_array_equal(got, [p.sum() for p in preds])


@given(st.floats(0, 1, width=32), st.integers(0, 2**31 - 1))
def test_round_mul_is_exact_round_half_even(s, n):
    expected = round(Fraction(float(np.float32(s))) * n)
    assert int(round_mul(jnp.float32(s), jnp.uint32(n))) == expected


def test_round_mul_halves_go_to_even():
    n = np.arange(40, dtype=np.uint32)
    got = np.asarray(round_mul(jnp.full(40, 0.5, jnp.float32), jnp.asarray(n)))
    np.testing.assert_array_equal(got, [round(Fraction(int(v), 2)) for v in n])
