"""Structural pruning: unit sets traced from the jaxpr, pruned whole, and cut out (jp.trace_units, compact).

Every model of the zoo (tests/structural_zoo.py) must give exactly its expected sets (none split,
none merged), and its compacted params must compute the masked model's outputs.
"""

import functools
import itertools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structural_zoo import ZOO

import jaxprune as jp


def _paths_shapes(params):
    return {"/".join(str(k.key) for k in kp): np.shape(v) for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def _as_pairs(sets, params):
    shapes = _paths_shapes(params)
    return sorted(sorted({(e.path, e.axis % len(shapes[e.path])) for e in s}) for s in sets)


def _max_diff(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_sets_are_exact_and_compaction_equals_masking(name):
    model = ZOO[name]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x)
    assert _as_pairs(sets, params) == sorted(sorted(s) for s in model.expected)
    # Prune half of each set that no normalisation reduces over; the others stay whole.
    prunable = [s for s in sets if not s.normalized]
    assert {"vit_heads": 1, "gpt2_fused_qkv": 1}.get(name, 0) == len(sets) - len(prunable)
    masks = jp.prune_units(jp.magnitude(params), jp.unit_masks(params, sets), prunable, sparsity=0.5, scope="layer")
    small, _ = jp.compact(params, masks, sets)
    for s, kept in zip(prunable, jp.kept_units(masks, prunable)):
        n = s[0].num_units(_paths_shapes(params)[s[0].path][s[0].axis])
        assert len(kept) == n - round(0.5 * n)
    apply = jax.jit(model.apply)  # two compiles, where eager calls would compile every op at two sizes
    assert _max_diff(apply(small, x), apply(jp.apply_mask(params, masks), x)) < 1e-5
    assert sum(np.size(v) for v in jax.tree.leaves(small)) < sum(np.size(v) for v in jax.tree.leaves(params))


def _axes(sets):
    return [sorted((e.path, e.axis % 2 if "w_" in e.path else e.axis, e.groups) for e in s) for s in sets]


def test_traced_sets_equal_the_hand_written_ones():
    mlp = ZOO["mlp"]
    params = mlp.init(jax.random.key(0))
    traced = jp.trace_units(mlp.apply, params, mlp.x())
    layers = ["dense_0", "dense_1", "dense_2"]
    hand = [[jp.UnitAxis(e.path, e.axis % 2, e.groups) for e in s] for s in jp.mlp_units(layers)]
    assert sorted(map(sorted, _axes(traced))) == sorted(map(sorted, _axes(hand)))
    for name, sets_of in (("lstm_head", jp.lstm_units), ("gru_head", jp.gru_units)):
        model = ZOO[name]
        params = model.init(jax.random.key(0))
        traced = jp.trace_units(model.apply, params, model.x())
        prefix = name.split("_")[0] + "/"
        hand = sets_of(2, prefix)
        hand[-1] = [*hand[-1], jp.UnitAxis("head/kernel", 0)]  # the last layer feeds the head
        assert sorted(_axes(traced)) == sorted(_axes(hand))


def test_head_dims_on_request():
    model = ZOO["gpt2_fused_qkv"]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x, heads="dims")
    c_attn = [s for s in sets if any(e.path == "h/attn/c_attn/kernel" and e.axis == 1 for e in s)]
    assert len(c_attn) == 2  # q.k dims (position i of every head), v.o dims
    qk = next(s for s in c_attn if len(s) == 2)
    vo = next(s for s in c_attn if len(s) == 3)
    assert qk.normalized == ("dot_general of two activations",)  # a softmax scale from head_dim would change
    assert not vo.normalized
    width = params["h"]["attn"]["c_proj"]["kernel"].shape[0]
    positions = qk[1].positions(3 * width)  # c_attn/kernel: dim i of each head, in q and in k
    np.testing.assert_array_equal(positions[0], [0, 4, 8, 12, 16, 20])
    # Cutting v.o dims needs a model that reads head_dim from its kernels' shapes ([in, heads, head_dim]).
    model = ZOO["vit_heads"]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x, heads="dims")
    vo = next(s for s in sets if any(e.path == "block/attn/value/kernel" and e.axis == 2 for e in s))
    masks = jp.prune_units(jp.magnitude(params), jp.unit_masks(params, sets), [vo], sparsity=0.5)
    small, _ = jp.compact(params, masks, sets)
    assert small["block"]["attn"]["out"]["kernel"].shape == (3, 2, 8)
    assert _max_diff(model.apply(small, x), model.apply(jp.apply_mask(params, masks), x)) < 1e-5


def _inverse_model(p, x):
    return x @ jnp.linalg.inv(p["w"] @ p["w"].T + jnp.eye(p["w"].shape[0])) @ p["v"]


def test_a_primitive_without_a_rule_is_never_guessed():
    params = {"w": jnp.ones((3, 4)), "v": jnp.ones((3, 2))}
    x = jnp.ones((5, 3))
    with pytest.raises(ValueError, match=r"no rule for the primitive 'lu', which reaches leaves 'w'"):
        jp.trace_units(_inverse_model, params, x)
    with pytest.warns(UserWarning, match=r"no rule for the primitive"):
        sets = jp.trace_units(_inverse_model, params, x, unknown="exclude")
    # w's rows meet the inverse and are kept out; its columns only meet each other in w @ w.T: prunable.
    assert _as_pairs(sets, params) == [[("w", 1)]]

    # A primitive that reads no leaf (here: on an input) but whose result meets a leaf's channels.
    def mixed(p, x, y):
        return (x @ p["a"]) @ jnp.linalg.inv(y) @ p["b"]

    params, y = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}, jnp.eye(4)
    with pytest.raises(ValueError, match=r"primitive '(lu|custom_linear_solve)', which reaches leaves 'a', 'b'"):
        jp.trace_units(mixed, params, x, y)
    warning = r"primitive '(lu|custom_linear_solve)'; the axes it touches, coupled with leaves 'a', 'b'"
    with pytest.warns(UserWarning, match=warning):
        assert jp.trace_units(mixed, params, x, y, unknown="exclude") == []


def test_bad_inputs_are_named():
    model = ZOO["mlp"]
    params, x = model.init(jax.random.key(0)), model.x()
    with pytest.raises(ValueError, match="`fn` could not be traced"):
        jp.trace_units(model.apply, params, jnp.ones((2, 3)))  # wrong input width
    with pytest.raises(ValueError, match=r"never reads the leaves 'extra/kernel'"):
        jp.trace_units(model.apply, {**params, "extra": {"kernel": jnp.ones((2, 2))}}, x)
    with pytest.raises(ValueError, match="never reads the leaves 'dense_0/bias'"):
        jp.trace_units(lambda p, x: model.apply(params, x) + p["dense_0"]["kernel"].sum(), params, x)
    with pytest.raises(TypeError, match="`fn` must be callable"):
        jp.trace_units("model", params, x)
    with pytest.raises(ValueError, match="`unknown` must be one of"):
        jp.trace_units(model.apply, params, x, unknown="skip")
    with pytest.raises(ValueError, match="`heads` must be one of"):
        jp.trace_units(model.apply, params, x, heads="all")
    sets = jp.trace_units(model.apply, params, x)
    other = ZOO["cnn_bn"].init(jax.random.key(0))
    with pytest.raises(ValueError, match="no leaf at path 'dense_0/bias'; were these units traced from another"):
        jp.prune_units(jp.magnitude(other), jp.init_masks(other), sets, sparsity=0.5)
    narrow = jax.tree.map(lambda a: a[..., :2] if a.ndim == 1 else a[:, :2], params)
    with pytest.raises(ValueError, match=r"unit set 0: its entries disagree on the number of units: \[2, 16\]"):
        jp.prune_units(jp.magnitude(narrow), jp.unit_masks(narrow, sets), sets, sparsity=0.5)
    with pytest.raises(TypeError, match="`units` must be a list of unit sets"):
        jp.prune_units(jp.magnitude(params), jp.unit_masks(params, sets), sets[0], sparsity=0.5)


def test_prune_units_jits_once_across_targets():
    model = ZOO["resnet_basic"]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x)
    masks = jp.unit_masks(params, sets)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, masks, sparsity):
        return jp.prune_units(jp.magnitude(params, lazy=True), masks, sets, sparsity=sparsity)

    total = sum(s[0].num_units(_paths_shapes(params)[s[0].path][s[0].axis]) for s in sets)
    previous = masks
    for target in (0.25, 0.5):
        masks = step(params, masks, jnp.float32(target))
        kept = jp.kept_units(masks, sets)
        assert total - sum(len(k) for k in kept) == round(target * total)  # exact global count
        for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(previous)):
            assert not np.any(np.asarray(a) & ~np.asarray(b))  # monotone
        previous = masks


def test_round_to_exclude_and_taylor_scores():
    model = ZOO["cnn_bn"]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x)  # 8 and 16 channels
    masks = jp.unit_masks(params, sets, where="kernel|scale|bias")
    rounded = jp.prune_units(jp.magnitude(params), masks, sets, sparsity=0.3, scope="layer", round_to=4)
    # 8 - round(2.4) = 6 kept: 4 and 8 are as near, the higher is taken; 16 - round(4.8) = 11 -> 12.
    assert [len(k) for k in jp.kept_units(rounded, sets)] == [8, 12]
    in_xla = jax.jit(lambda p, m: jp.prune_units(jp.magnitude(p), m, sets, sparsity=0.3, scope="layer", round_to=4))
    chex.assert_trees_all_equal(in_xla(params, masks), rounded)
    with pytest.raises(ValueError, match="`ord` must be a positive number"):
        jp.prune_units(jp.magnitude(params), masks, sets, sparsity=0.5, ord=0)
    left = jp.prune_units(jp.magnitude(params), masks, sets, sparsity=0.5, scope="layer", exclude=["head/*"])
    assert [len(k) for k in jp.kept_units(left, sets)] == [4, 16]
    with pytest.raises(TypeError, match="`exclude` must be a list of path patterns"):
        jp.prune_units(jp.magnitude(params), masks, sets, sparsity=0.5, exclude="head/*")
    # Taylor: |w * dL/dw| summed over each unit's entries (ord=1), as Torch-Pruning's TaylorImportance.
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)
    taylor = jp.prune_units(jp.saliency(params, grads), masks, sets[:1], amount=3, ord=1)
    unit = sets[0]
    by_hand = np.zeros(8)
    for e in unit:
        if jax.tree.map(lambda m: m, masks)[e.path.split("/")[0]][e.path.split("/")[1]] is None:
            continue
        leaf = params[e.path.split("/")[0]][e.path.split("/")[1]]
        grad = grads[e.path.split("/")[0]][e.path.split("/")[1]]
        by_hand += np.abs(np.moveaxis(np.asarray(leaf * grad), e.axis, 0)).reshape(8, -1).sum(1)
    pruned = set(range(8)) - set(np.asarray(jp.kept_units(taylor, sets[:1])[0]).tolist())
    assert pruned == set(np.argsort(by_hand)[:3].tolist())


def test_compact_keeps_abstract_leaves_abstract():
    model = ZOO["densenet_concat"]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x)
    masks = jp.prune_units(jp.magnitude(params), jp.unit_masks(params, sets), sets, sparsity=0.5)
    kept = jp.kept_units(masks, sets)
    small, _ = jp.compact(params, masks, sets)
    abstract = jax.eval_shape(lambda: params)
    from jaxprune.structural.compaction import cut

    template = cut(abstract, sets, kept)
    assert jax.tree.map(jnp.shape, template) == jax.tree.map(jnp.shape, small)
    # conv_b reads the concatenation: both sources' cuts land in its input axis, in order.
    sources = [k for s, k in zip(sets, kept) if any(e.path == "conv_b/kernel" and e.axis == 2 for e in s)]
    assert len(sources) == 2 and small["conv_b"]["kernel"].shape[2] == sum(len(k) for k in sources)


def test_no_warning_for_known_models():
    model = ZOO["vit_heads"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jp.trace_units(model.apply, model.init(jax.random.key(0)), model.x())


def test_gradual_structural_pruning_in_a_jitted_loop_then_one_compaction():
    import optax

    model = ZOO["cnn_bn"]
    params, x = model.init(jax.random.key(0)), model.x()
    sets = jp.trace_units(model.apply, params, x)
    pruner = jp.Pruner(schedule=jp.schedules.linear(0.5, rounds=2, every=3), units=sets, scope="layer")
    state = pruner.init(params)
    opt = jp.masked_optimizer(optax.sgd(0.05))
    opt_state = opt.init(params)
    target = jax.random.normal(jax.random.key(1), (x.shape[0], 5))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, state, i):
        grads = jax.grad(lambda p: jnp.mean((model.apply(p, x) - target) ** 2))(params)
        state = pruner.update(state, params, i)
        updates, opt_state = opt.update(grads, opt_state, params, masks=state.masks)
        return jp.apply_mask(optax.apply_updates(params, updates), state.masks), opt_state, state

    kept = []
    for i in range(8):
        params, opt_state, state = step(params, opt_state, state, i)
        kept.append([len(k) for k in jp.kept_units(state.masks, sets)])
    assert kept[:3] == [[6, 12]] * 3 and kept[3:] == [[4, 8]] * 5  # 25% of each set at step 0, 50% at step 3
    small, _ = jp.compact(params, state.masks, sets)
    assert _max_diff(model.apply(small, x), model.apply(params, x)) < 1e-5  # pruned weights stayed exactly 0
    with pytest.raises(ValueError, match="with `units`, give one schedule"):
        jp.Pruner(schedule={"conv": 0.5}, units=sets)


def _np_mlp(p, x):
    for name in ("l0", "l1"):
        x = np.maximum(x @ np.asarray(p[name]["kernel"]) + np.asarray(p[name]["bias"]), 0)
    return x @ np.asarray(p["l2"]["kernel"])


def _jnp_mlp(p, x):
    for name in ("l0", "l1"):
        x = jax.nn.relu(x @ p[name]["kernel"] + p[name]["bias"])
    return x @ p["l2"]["kernel"]


@given(
    widths=st.tuples(st.sampled_from([1, 2, 5]), st.sampled_from([1, 2, 5])),  # few shapes: XLA compiles per shape
    seed=st.integers(0, 2**16),
    sparsity=st.floats(0.0, 1.0),
    scope=st.sampled_from(["global", "layer"]),
)
@settings(max_examples=10)
def test_unit_pruning_properties(widths, seed, sparsity, scope):
    """Exact counts; the host (NumPy) and XLA selections agree, ties included; compaction equals masking."""
    rng = np.random.default_rng(seed)
    sizes = (3, *widths, 2)
    # Small integer weights: many units tie, and ties must break the same way on both paths.
    params = {
        f"l{i}": {"kernel": rng.integers(-2, 3, (a, b)).astype(np.float32), "bias": np.ones(b, np.float32)}
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }
    del params["l2"]["bias"]
    x = rng.normal(size=(4, 3)).astype(np.float32)
    sets = jp.trace_units(_jnp_mlp, params, x)
    assert _as_pairs(sets, params) == [
        [("l0/bias", 0), ("l0/kernel", 1), ("l1/kernel", 0)],
        [("l1/bias", 0), ("l1/kernel", 1), ("l2/kernel", 0)],
    ]
    masks = jp.unit_masks(params, sets)
    host = jp.prune_units(jp.magnitude(params), masks, sets, sparsity=sparsity, scope=scope)
    traced = _jitted_prune(scope)(params, masks, tuple(sets), jnp.float32(sparsity))
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(traced)):
        np.testing.assert_array_equal(a, b)
    kept = [len(k) for k in jp.kept_units(host, sets)]
    if scope == "global":
        assert sum(widths) - sum(kept) == round(np.float32(sparsity) * sum(widths))
    else:
        assert [w - k for w, k in zip(widths, kept)] == [round(np.float32(sparsity) * w) for w in widths]
    small, _ = jp.compact(params, host, sets)
    np.testing.assert_allclose(_np_mlp(small, x), _np_mlp(jp.apply_mask(params, host), x), atol=1e-5)


@functools.cache
def _jitted_prune(scope):
    return jax.jit(
        lambda p, m, sets, s: jp.prune_units(jp.magnitude(p), m, sets, sparsity=s, scope=scope), static_argnums=2
    )


def test_a_broadcast_size_one_axis_is_no_unit():
    # A learned position table [1, T, D] added to every example: its first axis is repeated, not a channel.
    def model(p, x):
        h = jax.nn.relu(x @ p["embed"] + p["pos"])
        return h.mean(1) @ p["head"]

    params = {"embed": jnp.ones((4, 8)), "pos": jnp.ones((1, 5, 8)), "head": jnp.ones((8, 3))}
    sets = jp.trace_units(model, params, jnp.ones((2, 5, 4)))
    assert _as_pairs(sets, params) == [[("embed", 1), ("head", 0), ("pos", 2)]]
    # Sets that no mask covers are kept whole by compact.
    masks = jp.init_masks(params, where="head")
    masks = jp.prune_units(jp.magnitude(params), masks, sets, sparsity=0.5)
    small, _ = jp.compact(params, masks, sets)
    assert small["pos"].shape == (1, 5, 4)
    no_masks = jax.tree.map(lambda _: None, params)
    small, _ = jp.compact(params, no_masks, sets)
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, params)


def test_prune_units_and_compact_keep_each_leaf_committed_or_not():
    k = jax.random.split(jax.random.key(0), 2)
    params = {
        "l0": {"kernel": jax.random.normal(k[0], (6, 4)), "bias": jnp.zeros(4)},
        "l1": {"kernel": jax.device_put(jax.random.normal(k[1], (4, 3)), jax.devices()[0])},
    }
    units = jp.mlp_units(["l0", "l1"])
    masks = jp.prune_units(jp.magnitude(params), jp.init_masks(params), units, sparsity=0.5)
    assert [m.committed for m in (masks["l0"]["kernel"], masks["l1"]["kernel"])] == [False, True]
    small, small_masks = jp.compact(params, masks, units)
    assert [x.committed for x in (small["l0"]["kernel"], small["l0"]["bias"], small["l1"]["kernel"])] == [
        False,
        False,
        True,
    ]
    assert small["l0"]["kernel"].shape == (6, 2) and not small_masks["l0"]["kernel"].committed
