import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp


def mlp(seed=0, sizes=(10, 32, 24, 3)):
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    return {
        f"dense_{i}": {"kernel": jax.random.normal(k, (a, b)), "bias": jax.random.normal(k, (b,))}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def forward(params, x):
    layers = list(params.values())
    for layer in layers[:-1]:
        x = jax.nn.sigmoid(x @ layer["kernel"] + layer["bias"])  # sigmoid(0) != 0: cutting must still be exact
    return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def everything(path, leaf):
    return True


@pytest.mark.parametrize("fmt", ["bcoo", "bitmap"])
def test_sparse_round_trip_is_exact(fmt):
    params = mlp()
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.9)
    sp = jp.to_sparse(params, masks, format=fmt)
    assert isinstance(sp["dense_0"]["kernel"], jp.Bitmap if fmt == "bitmap" else jax.experimental.sparse.BCOO)
    assert sp["dense_0"]["bias"] is params["dense_0"]["bias"]
    back = jp.to_dense(sp)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(jp.finalize(params, masks))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="`format` must be one of"):
        jp.to_sparse(params, masks, format="csr")


def test_bcoo_stores_exactly_the_kept_entries_without_compiling(caplog):
    w = jnp.asarray([[0.0, 1.0, 2.0, 0.5], [3.0, 0.0, 5.0, -1.0], [7.0, 8.0, 0.0, 9.0]])  # a shape of its own
    mask = jnp.asarray([[True, False, True, False], [False, True, True, False], [True, False, True, True]])
    params, masks = {"w": w, "b": jnp.ones(4)}, {"w": mask, "b": None}
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        sp = jp.to_sparse(params, masks)
    assert not [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    # The mask's kept positions in row-major order, kept zeros (at [0, 0], [1, 1] and [2, 2]) included.
    np.testing.assert_array_equal(sp["w"].indices, np.argwhere(np.asarray(mask)))
    np.testing.assert_array_equal(sp["w"].data, np.asarray(w)[np.asarray(mask)])
    assert sp["w"].indices.dtype == jnp.int32 and sp["w"].nse == int(mask.sum()) and sp["b"] is params["b"]
    np.testing.assert_array_equal(jp.to_dense(sp)["w"], jp.finalize(params, masks)["w"])
    np.testing.assert_allclose(sp["w"] @ jnp.arange(4.0), jp.finalize(params, masks)["w"] @ jnp.arange(4.0))


def test_size_report_at_90_percent():
    params = {"w": jnp.ones((1000, 1000))}
    masks = jp.prune(jp.random(jax.random.key(0), params), jp.init_masks(params), sparsity=0.9)
    r = jp.size_report(params, masks)
    assert r["dense"] == 4_000_000 and r["packed_masks"] == 125_000
    assert r["bitmap"] == 125_000 + 100_000 * 4
    assert r["bcoo"] == 100_000 * 12
    assert r["bitmap"] / r["dense"] < 0.25


def test_prune_units_prunes_each_unit_everywhere_and_compacted_mlp_matches():
    params = mlp()
    masks = jp.init_masks(params, where=everything)
    units = jp.mlp_units(["dense_0", "dense_1", "dense_2"])
    masks = jax.jit(lambda s, m: jp.prune_units(s, m, units, sparsity=0.5, scope="layer"))(params, masks)
    kept = jp.kept_units(masks, units)
    assert [int(k.size) for k in kept] == [16, 12]
    m0 = np.asarray(masks["dense_0"]["kernel"])
    cols = m0.all(axis=0)
    assert (cols | ~m0.any(axis=0)).all()  # each column entirely kept or entirely pruned
    np.testing.assert_array_equal(np.asarray(masks["dense_0"]["bias"]), cols)
    np.testing.assert_array_equal(np.asarray(masks["dense_1"]["kernel"]).any(axis=1), cols)
    small, small_masks = jp.compact(params, masks, units)
    assert small["dense_0"]["kernel"].shape == (10, 16) and small["dense_1"]["kernel"].shape == (16, 12)
    assert small["dense_2"]["kernel"].shape == (12, 3)
    x = jax.random.normal(jax.random.key(5), (7, 10))
    np.testing.assert_allclose(forward(small, x), forward(jp.finalize(params, masks), x), rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(small_masks["dense_0"]["kernel"]))


def test_compacted_two_layer_lstm_matches_the_masked_one():
    params = jp.init_lstm(jax.random.key(0), 6, 16, num_layers=2)
    masks = jp.init_masks(params, where=everything)
    units = jp.lstm_units(2)
    masks = jax.jit(lambda s, m: jp.prune_units(s, m, units, sparsity=0.5, scope="layer"))(params, masks)
    small, _ = jp.compact(params, masks, units)
    assert small["layer_0"]["w_hh"].shape == (32, 8) and small["layer_1"]["w_ih"].shape == (32, 8)
    x = jax.random.normal(jax.random.key(1), (9, 3, 6))
    out, (h, c) = jp.lstm(params, x, masks=masks)
    out_small, (h_small, c_small) = jp.lstm(small, x)
    kept = jp.kept_units(masks, units)[1]
    np.testing.assert_allclose(out_small, out[..., kept], atol=1e-6)
    assert float(jnp.abs(jnp.delete(out, kept, axis=-1)).max()) == 0.0  # pruned units output exactly 0
    np.testing.assert_allclose(h_small[1], h[1][:, kept], atol=1e-6)
    np.testing.assert_allclose(c_small[1], c[1][:, kept], atol=1e-6)


def test_unmasked_entries_are_carried_not_scored():
    # The biases have no mask (init_masks' default): units are scored and masked by their kernels alone,
    # and compact cuts the biases with them.
    params = mlp()
    units = jp.mlp_units(["dense_0", "dense_1", "dense_2"])
    masks = jp.prune_units(jp.magnitude(params), jp.init_masks(params), units, sparsity=0.5, scope="layer")
    assert masks["dense_0"]["bias"] is None
    by_kernels = jp.prune_units(
        jp.magnitude(params), jp.init_masks(params), [[e for e in s if "bias" not in e.path] for s in units],
        sparsity=0.5, scope="layer",
    )  # fmt: skip
    np.testing.assert_array_equal(masks["dense_0"]["kernel"], by_kernels["dense_0"]["kernel"])
    small, small_masks = jp.compact(params, masks, units)
    assert small["dense_0"]["bias"].shape == (16,) and small_masks["dense_0"]["bias"] is None
    x = jax.random.normal(jax.random.key(1), (4, 10))
    cut = {k: {"kernel": v["kernel"], "bias": v["bias"]} for k, v in jp.apply_mask(params, masks).items()}
    np.testing.assert_allclose(forward(small, x), forward(cut, x), atol=1e-5)


def test_unit_errors_are_clear():
    params = mlp()
    only_dense_0 = jp.init_masks(params, where="dense_0")
    units = jp.mlp_units(["dense_0", "dense_1", "dense_2"])
    with pytest.raises(ValueError, match=r"unit set 1 .* has no leaf with a mask"):
        jp.prune_units(jp.magnitude(params), only_dense_0, units, sparsity=0.5)
    with pytest.raises(ValueError, match="no leaf at path 'nope/kernel'"):
        jp.prune_units(
            jp.magnitude(params),
            jp.init_masks(params, where=everything),
            [[jp.UnitAxis("nope/kernel", 0)]],
            sparsity=0.5,
        )
    bad = [[jp.UnitAxis("dense_0/kernel", -1), jp.UnitAxis("dense_0/kernel", 0)]]
    with pytest.raises(ValueError, match="disagree on the number of units"):
        jp.prune_units(jp.magnitude(params), jp.init_masks(params, where=everything), bad, sparsity=0.5)
    with pytest.raises(TypeError, match="`units` must be a list of unit sets"):
        jp.prune_units(jp.magnitude(params), jp.init_masks(params, where=everything), bad[0], sparsity=0.5)
    with pytest.raises(TypeError, match="`layers` must be a list of layer paths"):
        jp.mlp_units("dense")
    with pytest.raises(ValueError, match="`num_layers` must be a positive int"):
        jp.lstm_units(0)


def test_a_bitmap_that_does_not_add_up_raises():
    with pytest.raises(ValueError, match=r"Bitmap.bits must be uint8\[2\] for shape \(3, 3\)"):
        jp.Bitmap(np.zeros(1, np.uint8), np.ones(3, np.float32), (3, 3)).todense()
    with pytest.raises(ValueError, match="3 keep bits set but 2 values"):
        jp.Bitmap(np.array([0b11100000, 0], np.uint8), np.ones(2, np.float32), (3, 3)).todense()
