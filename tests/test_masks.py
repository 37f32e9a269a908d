import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp


def make_params():
    return {
        "encoder": {
            "layer_0": {"kernel": jnp.arange(12.0).reshape(3, 4) - 5, "bias": jnp.ones(4)},
            "layer_1": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
        },
        "head": {"kernel": jnp.ones((2, 2)), "scale": jnp.ones(2)},
        "step": jnp.zeros((2, 2), jnp.int32),
    }


def test_init_masks_default_prunes_float_leaves_with_ndim_2():
    masks = jp.init_masks(make_params())
    assert masks["encoder"]["layer_0"]["kernel"].dtype == jnp.bool_
    assert masks["encoder"]["layer_0"]["kernel"].shape == (3, 4)
    assert bool(masks["encoder"]["layer_0"]["kernel"].all())
    assert masks["encoder"]["layer_0"]["bias"] is None
    assert masks["head"]["scale"] is None
    assert masks["step"] is None  # integer leaves are never prunable


def test_init_masks_where_regex_callable_and_prefix():
    params = make_params()
    by_regex = jp.init_masks(params, where=r"encoder/.*/kernel")
    assert by_regex["encoder"]["layer_1"]["kernel"] is not None
    assert by_regex["head"]["kernel"] is None

    by_fn = jp.init_masks(params, where=lambda path, leaf: path.startswith("head"))
    assert by_fn["head"]["kernel"] is not None and by_fn["head"]["scale"] is not None
    assert by_fn["encoder"]["layer_0"]["kernel"] is None

    by_prefix = jp.init_masks(params, where={"encoder": True, "head": False, "step": True})
    assert by_prefix["encoder"]["layer_0"]["bias"] is not None  # True covers the whole subtree
    assert by_prefix["head"]["kernel"] is None
    assert by_prefix["step"] is None


def test_init_masks_errors_name_the_problem():
    params = make_params()
    with pytest.raises(ValueError, match=r"selects no floating-point leaf.*encoder/layer_0/kernel"):
        jp.init_masks(params, where="no_such_layer")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        jp.init_masks(params, where="(")
    with pytest.raises(ValueError, match="prefix"):
        jp.init_masks(params, where={"nope": True})
    with pytest.raises(TypeError, match="bool leaves"):
        jp.init_masks(params, where={"encoder": 1, "head": 0, "step": 0})


def test_init_masks_on_linen_params():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    variables = model.init(jax.random.key(0), jnp.ones((1, 5)))
    masks = jp.init_masks(variables["params"])
    assert masks["layers_0"]["kernel"].shape == (5, 8)
    assert masks["layers_0"]["bias"] is None
    out = model.apply({"params": jp.apply_mask(variables["params"], masks)}, jnp.ones((1, 5)))
    assert out.shape == (1, 3)


def test_init_masks_on_nnx_state_and_merge():
    model = nnx.Sequential(nnx.Linear(5, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = jp.init_masks(params, where=r"layers/0/kernel")
    assert isinstance(masks, nnx.State)
    masks = jp.prune(jp.magnitude(params), masks, sparsity=0.5)
    masked = jp.apply_mask(params, masks)
    merged = nnx.merge(graphdef, masked, rest)
    kernel = merged.layers[0].kernel[...]
    assert int((kernel == 0).sum()) == 20
    assert jp.summary(masks).rows[0].path == "layers/0/kernel"


def test_apply_mask_zeros_pruned_and_passes_none_leaves():
    params = make_params()
    masks = jp.init_masks(params)
    masks["encoder"]["layer_0"]["kernel"] = params["encoder"]["layer_0"]["kernel"] > 0
    out = jp.apply_mask(params, masks)
    k = params["encoder"]["layer_0"]["kernel"]
    np.testing.assert_array_equal(out["encoder"]["layer_0"]["kernel"], jnp.where(k > 0, k, 0))
    assert out["encoder"]["layer_0"]["bias"] is params["encoder"]["layer_0"]["bias"]
    assert out["step"] is params["step"]


def test_apply_mask_does_not_leak_nan_from_pruned_weights():
    params = {"w": jnp.array([[jnp.nan, 1.0], [jnp.inf, 2.0]])}
    masks = {"w": jnp.array([[False, True], [False, True]])}
    np.testing.assert_array_equal(jp.apply_mask(params, masks)["w"], [[0.0, 1.0], [0.0, 2.0]])


class ApplyMaskGradientTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_is_exactly_zero_at_pruned_entries(self):
        params = {"w": jax.random.normal(jax.random.key(0), (6, 5)), "b": jnp.ones(5)}
        masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.6)
        x = jax.random.normal(jax.random.key(1), (7, 6))

        @self.variant
        def grads(params, masks):
            def loss(p):
                p = jp.apply_mask(p, masks)
                return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

            return jax.grad(loss)(params)

        g = grads(params, masks)
        assert bool(jnp.all(jnp.where(masks["w"], True, g["w"] == 0.0)))
        assert bool(jnp.any(g["w"] != 0.0))


def test_apply_mask_under_vmap_and_scan():
    params = {"w": jax.random.normal(jax.random.key(0), (4, 4))}
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    vm = jax.vmap(jp.apply_mask, in_axes=(0, None))(stacked, masks)
    np.testing.assert_array_equal(vm["w"][1], 2 * jp.apply_mask(params, masks)["w"])

    def step(h, x):
        w = jp.apply_mask(params, masks)["w"]
        return jnp.tanh(h @ w + x), None

    h, _ = jax.lax.scan(step, jnp.zeros(4), jnp.ones((3, 4)))
    h_ref = jnp.zeros(4)
    w = jnp.where(masks["w"], params["w"], 0)
    for _ in range(3):
        h_ref = jnp.tanh(h_ref @ w + 1)
    # float32 from two differently compiled programs: agree to float32 rounding, not bit for bit
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)


def test_mask_mismatch_errors_name_the_first_path():
    params = make_params()
    masks = jp.init_masks(params)
    del masks["head"]
    with pytest.raises(ValueError, match="structure"):
        jp.apply_mask(params, masks)
    masks = jp.init_masks(params)
    masks["encoder"]["layer_1"]["kernel"] = jnp.ones((2, 4), bool)
    with pytest.raises(ValueError, match="'encoder/layer_1/kernel' has shape \\(2, 4\\)"):
        jp.apply_mask(params, masks)
    masks["encoder"]["layer_1"]["kernel"] = jnp.ones((4, 2), jnp.float32)
    with pytest.raises(TypeError, match="'encoder/layer_1/kernel' must be a bool array"):
        jp.apply_mask(params, masks)


def test_finalize_keeps_keys_and_dtypes():
    params = {"dense": {"kernel": jnp.ones((3, 3), jnp.bfloat16), "bias": jnp.ones(3)}}
    masks = jp.init_masks(params)
    masks["dense"]["kernel"] = jnp.eye(3, dtype=bool)
    out = jp.finalize(params, masks)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    assert out["dense"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["dense"]["kernel"].astype(jnp.float32), jnp.eye(3))


def test_sparsity_and_summary():
    params = make_params()
    masks = jp.init_masks(params)
    masks["encoder"]["layer_0"]["kernel"] = jnp.zeros((3, 4), bool)  # 12 pruned of 12 + 8 + 4 = 24
    assert float(jp.sparsity(masks)) == pytest.approx(0.5)
    assert float(jax.jit(jp.sparsity)(masks)) == pytest.approx(0.5)
    s = jp.summary(masks)
    assert [r.path for r in s.rows] == ["encoder/layer_0/kernel", "encoder/layer_1/kernel", "head/kernel"]
    assert s.rows[0] == jp.LayerStats("encoder/layer_0/kernel", (3, 4), 0, 12, 1.0)
    assert (s.kept, s.total, s.sparsity) == (12, 24, 0.5)
    text = str(s)
    assert "encoder/layer_0/kernel" in text and "100.00%" in text and "50.00%" in text
    assert text.splitlines()[-1].startswith("total")


def test_sparsity_without_prunable_leaves_raises():
    with pytest.raises(ValueError, match="no prunable leaf"):
        jp.sparsity({"a": None})


def test_pack_unpack_round_trip_is_exact_and_one_bit_per_weight():
    params = {"a": jnp.ones((37, 5)), "b": jnp.ones(3), "c": jnp.ones((2, 3, 4))}
    masks = jp.init_masks(params, where=lambda p, x: p != "b")
    masks = jp.prune(jp.random(jax.random.key(0), params), masks, sparsity=0.37)
    packed = jp.pack_masks(masks)
    assert packed["a"].dtype == jnp.uint8 and packed["a"].shape == ((37 * 5 + 7) // 8,)
    assert packed["b"] is None
    chex.assert_trees_all_equal(jp.unpack_masks(packed, params), masks)
    chex.assert_trees_all_equal(jp.unpack_masks(packed, jax.eval_shape(lambda: params)), masks)


def test_unpack_rejects_wrong_sizes():
    params = {"a": jnp.ones((4, 4))}
    packed = {"a": jnp.zeros(3, jnp.uint8)}
    with pytest.raises(ValueError, match="'a' must be uint8\\[2\\]"):
        jp.unpack_masks(packed, params)


def test_straight_through_masks_forward_zeros_and_pass_the_dense_gradient():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"w": jax.random.normal(k[0], (6, 5)), "b": jnp.ones(5)}
    params["w"] = params["w"].at[0, 0].set(jnp.inf)  # a pruned inf must not leak into the forward pass
    masks = jp.init_masks(params)
    masks["w"] = jax.random.bernoulli(k[1], 0.4, (6, 5)).at[0, 0].set(False)
    x = jax.random.normal(k[2], (3, 6))

    def loss(p, straight_through):
        q = jp.apply_mask(p, masks, straight_through=straight_through)
        return jnp.sum(jnp.tanh(x @ q["w"] + q["b"]) ** 2)

    masked = jp.apply_mask(params, masks)
    chex.assert_trees_all_equal(jp.apply_mask(params, masks, straight_through=True), masked)
    # The gradient of every weight is the dense gradient at the masked weights, pruned ones included ...
    dense = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2))(masked)
    for fn in (jax.grad(loss, argnums=0), jax.jit(jax.grad(loss), static_argnums=1)):
        g = fn(params, True)
        chex.assert_trees_all_close(g, dense, rtol=1e-5, atol=1e-6)  # jitted vs eager float32 rounding
        assert bool(jnp.all(g["w"][~masks["w"]] != 0))
    # ... where the plain mask gives pruned weights exactly zero gradient.
    plain = jax.grad(loss)(params, False)
    assert bool(jnp.all(plain["w"][~masks["w"]] == 0))
    with pytest.raises(TypeError, match="`straight_through` must be a bool"):
        jp.apply_mask(params, masks, straight_through="yes")


def test_masks_are_placed_like_their_params_so_a_jitted_step_compiles_once():
    params = {"a": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}, "b": {"kernel": jnp.ones((3, 5))}}
    masks = jp.init_masks(params)
    # Not committed to a device, like params made by jnp (and NumPy leaves once JAX places them) ...
    assert not any(m.committed for m in jax.tree.leaves(masks))
    assert not jp.init_masks({"w": np.ones((3, 5), np.float32)})["w"].committed
    step = jax.jit(lambda p, m: (jp.apply_mask(p, m), m))
    state = (params, masks)
    for _ in range(3):
        state = step(*state)
    assert step._cache_size() == 1  # the first call's inputs and its outputs take the same program
    # ... and a leaf committed to a device on purpose gets a mask committed there.
    placed = {"w": jax.device_put(jnp.ones((4, 3)), jax.devices()[0])}
    assert jp.init_masks(placed)["w"].committed
