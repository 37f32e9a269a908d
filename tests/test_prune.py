import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxprune as jp


def mlp_params(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "dense_0": {"kernel": jax.random.normal(k[0], (20, 16)), "bias": jnp.zeros(16)},
        "dense_1": {"kernel": jax.random.normal(k[1], (16, 12)) * 3, "bias": jnp.zeros(12)},
        "out": {"kernel": jax.random.normal(k[2], (12, 4)), "bias": jnp.zeros(4)},
    }


def kept(masks):
    return sum(int(m.sum()) for m in jax.tree.leaves(masks))


N = 20 * 16 + 16 * 12 + 12 * 4  # 560 prunable weights


def test_global_sparsity_prunes_exactly_round_s_n_smallest_magnitudes():
    params = mlp_params()
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.7)
    assert N - kept(masks) == round(0.7 * N)
    flat = np.concatenate([np.abs(np.asarray(params[n]["kernel"])).ravel() for n in ("dense_0", "dense_1", "out")])
    m = np.concatenate([np.asarray(masks[n]["kernel"]).ravel() for n in ("dense_0", "dense_1", "out")])
    assert flat[~m].max() < flat[m].min()  # one global threshold
    # The scaled-up dense_1 keeps more of its weights than the others: global scope.
    s = {r.path: r.sparsity for r in jp.summary(masks).rows}
    assert s["dense_1/kernel"] < s["dense_0/kernel"]


def test_layer_scope_prunes_each_leaf_to_the_target():
    params = mlp_params()
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5, scope="layer")
    for r in jp.summary(masks).rows:
        assert r.total - r.kept == round(0.5 * r.total)


def test_sparsity_is_cumulative_and_masks_are_monotone():
    params = mlp_params()
    scores = jp.magnitude(params)
    masks = jp.init_masks(params)
    for s in np.linspace(0.09, 0.9, 10):
        new = jp.prune(scores, masks, sparsity=float(s))
        assert N - kept(new) == round(float(s) * N)
        assert all(bool(jnp.all(n <= o)) for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(masks)))
        masks = new
    # A lower target than already reached changes nothing.
    chex.assert_trees_all_equal(jp.prune(scores, masks, sparsity=0.5), masks)


def test_pruned_weights_stay_pruned_even_if_their_score_becomes_high():
    params = mlp_params()
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.3)
    # Pruned weights now score highest of all; they must stay pruned anyway.
    scores = {
        n: {"kernel": jnp.where(masks[n]["kernel"], jnp.abs(p["kernel"]), 1e9), "bias": p["bias"]}
        for n, p in params.items()
    }
    new = jp.prune(scores, masks, sparsity=0.6)
    assert N - kept(new) == round(0.6 * N)
    assert all(bool(jnp.all(n <= o)) for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(masks)))


def test_amount_is_relative_to_the_unpruned_weights_like_pytorch():
    params = mlp_params()
    scores, masks = jp.magnitude(params), jp.init_masks(params)
    remaining = N
    for _ in range(10):
        masks = jp.prune(scores, masks, amount=0.1)
        remaining -= round(0.1 * remaining)
        assert kept(masks) == remaining
    assert 1 - remaining / N == pytest.approx(1 - 0.9**10, abs=2e-3)
    masks = jp.prune(scores, masks, amount=7)
    assert kept(masks) == remaining - 7


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_same_masks_with_and_without_jit(self):
        params = mlp_params()
        fn = self.variant(lambda s, m: jp.prune(s, m, sparsity=0.55))
        chex.assert_trees_all_equal(
            fn(jp.magnitude(params), jp.init_masks(params)),
            jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.55),
        )

    def test_traced_sparsity_does_not_recompile(self):
        params = mlp_params()
        scores = jp.magnitude(params)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(masks, s):
            return jp.prune(scores, masks, sparsity=s)

        masks = jp.init_masks(params)
        for s in [0.1, 0.25, 0.5, 0.8]:
            masks = step(masks, jnp.float32(s))
            assert N - kept(masks) == round(float(np.float32(s)) * N)


def test_traced_sparsity_is_clipped_and_nan_means_no_pruning():
    params = mlp_params()
    f = jax.jit(lambda s: jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=s))
    assert kept(f(jnp.float32(1.5))) == 0
    assert kept(f(jnp.float32(jnp.nan))) == N


def test_nan_and_inf_scores_have_a_defined_rank():
    params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    scores = {"w": jnp.array([[5.0, jnp.nan, jnp.inf, -jnp.inf], [1.0, 2.0, jnp.nan, 3.0]])}
    masks = jp.prune(scores, jp.init_masks(params), sparsity=0.5)
    # NaN first (both), then -inf, then the lowest real score (1.0).
    np.testing.assert_array_equal(masks["w"], [[True, False, True, False], [False, True, False, True]])


def test_ties_are_broken_by_flat_position():
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}
    masks = jp.init_masks(params, where=lambda p, x: True)
    out = jp.prune(jp.magnitude(params), masks, sparsity=5 / 9)
    np.testing.assert_array_equal(out["a"], [[False, False, False], [False, False, True]])
    np.testing.assert_array_equal(out["b"], [True, True, True])


def test_structured_prunes_whole_output_units_by_l2_norm():
    w = jnp.array([[1.0, 0.1, 3.0, 0.2], [1.0, 0.1, 3.0, 0.3]])
    masks = jp.prune({"k": w}, {"k": jnp.ones_like(w, bool)}, sparsity=0.5, structure=jp.Structured(axis=-1))
    np.testing.assert_array_equal(masks["k"], [[True, False, True, False]] * 2)


def test_structured_groups_prune_lstm_hidden_units_across_all_gates():
    hidden = 4
    w = jnp.ones((4 * hidden, 3)) * jnp.tile(jnp.array([1.0, 5.0, 0.5, 2.0]), 4)[:, None]  # unit 2 weakest
    masks = jp.prune({"w": w}, {"w": jnp.ones_like(w, bool)}, amount=1, structure=jp.Structured(axis=0, groups=4))
    pruned_rows = np.where(~np.asarray(masks["w"]).all(axis=1))[0]
    np.testing.assert_array_equal(pruned_rows, [2, 6, 10, 14])


def test_block_pruning_removes_whole_tiles():
    w = jnp.ones((4, 4)).at[:2, 2:].set(0.1).at[2:, :2].set(0.2)
    masks = jp.prune({"w": w}, {"w": jnp.ones_like(w, bool)}, sparsity=0.5, structure=jp.Block((2, 2)))
    expected = np.ones((4, 4), bool)
    expected[:2, 2:] = False
    expected[2:, :2] = False
    np.testing.assert_array_equal(masks["w"], expected)


def test_nm_keeps_n_of_every_m_and_respects_earlier_pruning():
    w = jax.random.normal(jax.random.key(0), (8, 16))
    m0 = jnp.ones_like(w, bool).at[0, :3].set(False)
    masks = jp.prune({"w": jnp.abs(w)}, {"w": m0}, structure=jp.NM(2, 4))
    groups = np.asarray(masks["w"]).reshape(8, 4, 4).sum(-1)
    assert groups[0, 0] == 1 and (groups.ravel()[1:] == 2).all()
    absw = np.abs(np.asarray(w)).reshape(8, 4, 4)
    keep = np.asarray(masks["w"]).reshape(8, 4, 4)
    for r in range(1, 8):
        for g in range(4):
            assert absw[r, g][keep[r, g]].min() >= absw[r, g][~keep[r, g]].max()


@pytest.mark.parametrize(
    "structure, scope",
    [(None, "global"), (jp.Structured(axis=1), "layer"), (jp.NM(2, 4), "global")],
    ids=["weights", "rows-per-layer", "nm"],
)
@pytest.mark.parametrize("engine", ["sort", "count"])
def test_lazy_magnitude_prunes_exactly_what_the_stored_one_prunes(structure, scope, engine):
    params = mlp_params(3)
    params["dense_1"]["kernel"] = jnp.round(params["dense_1"]["kernel"])  # ties at the threshold
    if engine == "count":  # a group over select._SORT_MAX entries: the lazy score is computed inside each pass
        params["wide"] = {"kernel": jnp.round(4 * jax.random.normal(jax.random.key(4), (512, 260)))}
    masks = jp.init_masks(params)
    target = {} if isinstance(structure, jp.NM) else {"sparsity": 0.6}

    @jax.jit
    def both(p, m):
        lazy = jp.prune(jp.magnitude(p, lazy=True), m, scope=scope, structure=structure, **target)
        return lazy, jp.prune(jp.magnitude(p), m, scope=scope, structure=structure, **target)

    earlier = jax.tree.map(lambda m: m & (jnp.arange(m.size).reshape(m.shape) % 3 > 0), masks)
    for m in (masks, earlier):  # and on top of earlier pruning
        lazy, stored = both(params, m)
        chex.assert_trees_all_equal(lazy, stored)
    if structure is not None or scope != "global" or engine == "count":
        return
    units = jp.mlp_units(["dense_0", "dense_1", "out"], bias=None)
    by_units = jax.jit(
        lambda p, m, lazy: jp.prune_units(jp.magnitude(p, lazy=lazy), m, units, sparsity=0.5), static_argnums=2
    )
    chex.assert_trees_all_equal(by_units(params, masks, True), by_units(params, masks, False))


def test_a_lazy_score_is_a_leaf_not_an_array():
    w = jnp.arange(-3.0, 3.0).reshape(2, 3)
    score = jp.magnitude({"w": w}, lazy=True)["w"]
    assert score.shape == (2, 3) and score.dtype == jnp.float32
    np.testing.assert_array_equal(score.evaluate(), jnp.abs(w))
    with pytest.raises(TypeError):
        score + 1.0  # not an array: no silently wrong arithmetic on the inputs
    with pytest.raises(TypeError):
        jax.tree.map(lambda s: s + 1.0, {"w": score})  # one leaf: tree.map does not reach into its inputs
    with pytest.raises(TypeError, match="not an array"):
        np.asarray(score)  # not a 0-d object array
    with pytest.raises(TypeError, match="`lazy` must be True or False"):
        jp.magnitude({"w": w}, lazy="yes")
    with pytest.raises(TypeError, match="`fn` must be callable"):
        jp.Lazy("abs", (w,))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sparsity": 1.5}, ValueError, r"`sparsity` must be in \[0, 1\]"),
        ({"sparsity": -0.1}, ValueError, r"`sparsity` must be in \[0, 1\]"),
        ({"sparsity": float("nan")}, ValueError, r"`sparsity` must be in \[0, 1\]"),
        ({"sparsity": "0.5"}, TypeError, "`sparsity` must be a float"),
        ({"sparsity": True}, TypeError, "`sparsity` must be a float"),
        ({}, ValueError, "exactly one of `sparsity`"),
        ({"sparsity": 0.5, "amount": 0.5}, ValueError, "exactly one of `sparsity`"),
        ({"amount": "a"}, TypeError, "Invalid type for amount"),
        ({"amount": -1}, ValueError, "non-negative integer"),
        ({"amount": 1.5}, ValueError, r"float in the range \[0, 1\]"),
        ({"amount": 10_000}, ValueError, "should be smaller than the number of parameters to prune=560"),
        ({"sparsity": 0.5, "scope": "model"}, ValueError, "`scope` must be 'global' or 'layer'"),
        ({"sparsity": 0.5, "structure": "rows"}, TypeError, "`structure` must be"),
        ({"sparsity": 0.5, "structure": jp.NM(2, 4)}, ValueError, "pass neither"),
        ({"sparsity": 0.5, "structure": jp.Block((3, 3))}, ValueError, "'dense_0/kernel' of shape \\(20, 16\\)"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, error, match):
    params = mlp_params()
    with pytest.raises(error, match=match):
        jp.prune(jp.magnitude(params), jp.init_masks(params), **kwargs)


def test_mismatched_or_empty_masks_raise():
    params = mlp_params()
    masks = jp.init_masks(params)
    masks["out"]["kernel"] = jnp.ones((4, 12), bool)
    with pytest.raises(ValueError, match="'out/kernel' has shape \\(4, 12\\)"):
        jp.prune(jp.magnitude(params), masks, sparsity=0.5)
    masks["out"]["kernel"] = jnp.ones((12, 4), jnp.int8)
    with pytest.raises(TypeError, match="'out/kernel' must be a bool array"):
        jp.prune(jp.magnitude(params), masks, sparsity=0.5)
    empty = jax.tree.map(lambda _: None, params)
    with pytest.raises(ValueError, match="nothing is prunable"):
        jp.prune(jp.magnitude(params), empty, sparsity=0.5)


# --- properties --------------------------------------------------------------

# Sides from a few sizes (1, a prime, ...): JAX compiles per shape, so fewer distinct shapes keep examples cheap.
side = st.sampled_from([1, 2, 3, 7, 9])
leaf = hnp.arrays(
    np.float32,
    st.tuples(side, side),
    elements=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, -1.0, 3.25]),  # small alphabet: many ties
)


@given(st.lists(leaf, min_size=1, max_size=3), st.floats(0, 1), st.floats(0, 1))
@example([np.ones((2, 3), np.float32), np.zeros((1, 1), np.float32)], 0.0, 1.0)  # 0 keeps all, 1 prunes all
def test_property_exact_count_and_monotone(leaves, s1, s2):
    params = {f"l{i}": x for i, x in enumerate(leaves)}
    n = sum(x.size for x in leaves)
    scores = jp.magnitude(params)
    m1 = jp.prune(scores, jp.init_masks(params), sparsity=s1)
    assert n - kept(m1) == round(s1 * n)
    m2 = jp.prune(scores, m1, sparsity=s2)
    assert n - kept(m2) == max(round(s2 * n), round(s1 * n))
    assert all(bool(jnp.all(b <= a)) for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)))


@given(st.lists(leaf, min_size=1, max_size=3), st.floats(0, 1))
def test_property_deterministic_ties(leaves, s):
    params = {f"l{i}": x for i, x in enumerate(leaves)}
    a = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=s)
    b = jp.prune(jax.tree.map(jnp.array, jp.magnitude(params)), jp.init_masks(params), sparsity=s)
    chex.assert_trees_all_equal(a, b)
    # Rule: among equal scores, earlier flat position is pruned first.
    flat_s = np.concatenate([np.abs(x).ravel() for x in leaves])
    flat_m = np.concatenate([np.asarray(a[f"l{i}"]).ravel() for i in range(len(leaves))])
    for v in np.unique(flat_s):
        tie = flat_m[flat_s == v]
        assert (np.diff(tie.astype(int)) >= 0).all()  # pruned (False) ones come first


@given(leaf, st.floats(0, 1))
def test_property_global_and_layer_agree_on_one_leaf(x, s):
    params = {"w": x}
    g = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=s, scope="global")
    l = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=s, scope="layer")
    chex.assert_trees_all_equal(g, l)


# --- hardening: inputs that used to give wrong results or foreign errors ------


def test_complex_scores_are_refused_not_truncated():
    params = mlp_params()
    scores = jax.tree.map(lambda x: x * (1 + 1j), jp.magnitude(params))
    with pytest.raises(TypeError, match=r"'dense_0/kernel' must be real numbers .* got complex64"):
        jp.prune(scores, jp.init_masks(params), sparsity=0.5)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: jp.Block(shape=4), TypeError, "`shape` must be a non-empty tuple"),
        (lambda: jp.Block(shape=()), TypeError, "`shape` must be a non-empty tuple"),
        (lambda: jp.Block(shape=(4, 0)), ValueError, r"`shape\[1\]` must be a positive int"),
        (lambda: jp.Structured(axis="rows"), TypeError, "`axis` must be an int"),
        (lambda: jp.Structured(groups=0), ValueError, "`groups` must be a positive int"),
        (lambda: jp.NM(2, 0), ValueError, "`m` must be a positive int"),
        (lambda: jp.NM(2.0, 4), TypeError, "`n` must be a non-negative int"),
    ],
)
def test_bad_structure_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


EMPTY_STRUCTURES = [None, jp.Structured(axis=0), jp.Structured(axis=1), jp.Block((2, 2))]


@pytest.mark.parametrize("structure", EMPTY_STRUCTURES)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_zero_size_leaves_take_no_part(structure, scope):
    full = {"a": jnp.arange(1.0, 17.0).reshape(4, 4)}
    params = {**full, "empty_rows": jnp.zeros((0, 4)), "empty_cols": jnp.zeros((4, 0))}
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5, scope=scope, structure=structure)
    alone = jp.prune(jp.magnitude(full), jp.init_masks(full), sparsity=0.5, scope=scope, structure=structure)
    np.testing.assert_array_equal(masks["a"], alone["a"])  # the empty leaves change nothing
    assert masks["empty_rows"].shape == (0, 4) and masks["empty_cols"].shape == (4, 0)
    assert masks["empty_rows"].dtype == bool


def test_zero_size_leaves_with_nm_pruner_units_and_counts():
    params = {"a": jnp.arange(1.0, 13.0).reshape(3, 4), "e": jnp.zeros((0, 4))}
    masks = jp.init_masks(params)
    nm = jp.prune(jp.magnitude(params), masks, structure=jp.NM(2, 4))
    assert int(nm["a"].sum()) == 6 and nm["e"].shape == (0, 4)
    pruner = jp.Pruner(schedule=0.5)
    state = pruner.update(pruner.init(params), params, 0)
    assert int(state.masks["a"].sum()) == 6
    only_empty = {"e": jnp.zeros((0, 4))}
    assert jp.prune(jp.magnitude(only_empty), jp.init_masks(only_empty), sparsity=0.9)["e"].shape == (0, 4)
    assert float(jp.sparsity(jp.init_masks(only_empty))) == 0.0 == jp.summary(jp.init_masks(only_empty)).sparsity
    assert abs(float(jp.sparsity(state.masks)) - 0.5) < 1e-7
    with pytest.raises(ValueError, match="number of parameters to prune=0"):
        jp.prune(jp.magnitude(params), masks, amount=2, scope="layer")  # PyTorch refuses it on the empty leaf too
    assert kept(jp.prune(jp.magnitude(params), masks, amount=2)) == 10  # global: 2 of the 12 weights of "a"


def test_prune_units_after_compact_left_an_empty_layer():
    params = {
        "l0": {"kernel": jax.random.normal(jax.random.key(0), (6, 4)), "bias": jnp.zeros(4)},
        "l1": {"kernel": jax.random.normal(jax.random.key(1), (4, 3))},
    }
    masks = jp.init_masks(params, where=lambda p, x: True)
    units = jp.mlp_units(["l0", "l1"])
    masks = jp.prune_units(jp.magnitude(params), masks, units, sparsity=1.0)
    small, small_masks = jp.compact(params, masks, units)
    assert small["l0"]["kernel"].shape == (6, 0)
    again = jp.prune_units(jp.magnitude(small), small_masks, units, sparsity=0.5)
    assert again["l1"]["kernel"].shape == (0, 3)


@given(
    st.lists(leaf, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)).filter(lambda s: 0 in s), min_size=1, max_size=2),
    st.floats(0, 1),
    st.sampled_from(["global", "layer"]),
)
def test_property_empty_leaves_change_nothing(leaves, empty_shapes, s, scope):
    params = {f"l{i}": x for i, x in enumerate(leaves)}
    with_empty = {**params, **{f"z{i}": np.zeros(shape, np.float32) for i, shape in enumerate(empty_shapes)}}
    alone = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=s, scope=scope)
    mixed = jp.prune(jp.magnitude(with_empty), jp.init_masks(with_empty), sparsity=s, scope=scope)
    chex.assert_trees_all_equal(alone, {k: v for k, v in mixed.items() if k in alone})
    assert all(mixed[f"z{i}"].shape == shape for i, shape in enumerate(empty_shapes))
