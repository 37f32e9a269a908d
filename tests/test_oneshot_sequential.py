"""Calibration statistics and layer-by-layer one-shot pruning of an LSTM (jp.oneshot.prune_lstm)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import oneshot


def test_accumulated_batches_equal_one_big_batch():
    x = jax.random.normal(jax.random.key(0), (6, 5, 12))
    stats = oneshot.init_stats(12)
    for part in (x[:2], x[2:3], x[3:]):
        stats = jax.jit(oneshot.accumulate)(stats, part)
    rows = np.asarray(x, np.float64).reshape(-1, 12)
    np.testing.assert_allclose(stats.sq_norms, (rows**2).sum(0), rtol=1e-5)
    np.testing.assert_allclose(stats.hessian, rows.T @ rows, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(oneshot.input_norms(stats), np.linalg.norm(rows, axis=0), rtol=1e-5)
    assert int(stats.tokens) == 30
    assert oneshot.init_stats(12, hessian=False).hessian is None


def test_stats_arguments_are_checked():
    with pytest.raises(ValueError, match="`n_in` must be a positive int"):
        oneshot.init_stats(0)
    with pytest.raises(TypeError, match="`hessian` must be a bool"):
        oneshot.init_stats(4, hessian=1)
    with pytest.raises(ValueError, match="`x` must have the layer's 4 inputs on its last axis"):
        oneshot.accumulate(oneshot.init_stats(4), jnp.ones((3, 5)))
    with pytest.raises(TypeError, match="`x` must be a floating-point array"):
        oneshot.accumulate(oneshot.init_stats(4), jnp.ones((3, 4), jnp.int32))


def test_prune_kernel_dispatches_to_each_method():
    kernel = jax.random.normal(jax.random.key(1), (16, 8))  # Flax layout [in, out]
    x = jax.random.normal(jax.random.key(2), (40, 16)) * jnp.linspace(0.1, 3.0, 16)
    stats = oneshot.accumulate(oneshot.init_stats(16), x)
    k, m = oneshot.prune_kernel(kernel, stats, method="wanda", sparsity=0.5)
    np.testing.assert_array_equal(m, oneshot.wanda(kernel, oneshot.input_norms(stats), sparsity=0.5))
    np.testing.assert_array_equal(k, jnp.where(m, kernel, 0.0))
    k, m = oneshot.prune_kernel(kernel, stats, method="sparsegpt", nm=(2, 4))
    k2, m2 = oneshot.sparsegpt(kernel, stats.hessian, nm=(2, 4))
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_array_equal(k, k2)
    k, m = oneshot.prune_kernel(kernel, None, method="magnitude", sparsity=0.25)
    assert int((~m).sum()) == 32 and float(jnp.abs(kernel)[~m].max()) <= float(jnp.abs(kernel)[m].min())
    _, m = oneshot.prune_kernel(kernel, None, method="magnitude", nm=(2, 4))
    assert (np.asarray(m).reshape(4, 4, 8).sum(axis=1) == 2).all()  # 2 of every 4 inputs of each output
    with pytest.raises(ValueError, match="`method` must be one of"):
        oneshot.prune_kernel(kernel, stats, method="obs", sparsity=0.5)
    with pytest.raises(ValueError, match="needs the layer's input statistics"):
        oneshot.prune_kernel(kernel, None, method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="hessian=True"):
        oneshot.prune_kernel(kernel, oneshot.init_stats(16, hessian=False), method="sparsegpt", sparsity=0.5)


def lstm_setup(bidirectional=True):
    params = jp.init_lstm(jax.random.key(3), input_size=8, hidden_size=12, num_layers=2, bidirectional=bidirectional)
    mix = jax.random.normal(jax.random.key(4), (8, 8))
    batches = [jax.random.normal(jax.random.key(10 + i), (9, 4, 8)) @ mix for i in range(2)]
    return params, batches


def test_prune_lstm_wanda_uses_each_layers_inputs_from_the_pruned_layers_below():
    params, batches = lstm_setup()
    new, masks = oneshot.prune_lstm(params, batches, method="wanda", sparsity=0.5)
    # By hand: layer 0 from the calibration inputs, layer 1 from pruned layer 0's outputs.
    xs = jnp.concatenate(batches, axis=1)
    for layer in range(2):
        one = {"layer_0": params[f"layer_{layer}"], "layer_0_reverse": params[f"layer_{layer}_reverse"]}
        out = jp.lstm(one, xs)[0]
        hh_inputs = [out[:-1, :, :12], out[1:, :, 12:]]
        for d, name in enumerate([f"layer_{layer}", f"layer_{layer}_reverse"]):
            norms_ih = jnp.linalg.norm(xs.reshape(-1, xs.shape[-1]), axis=0)
            norms_hh = jnp.linalg.norm(hh_inputs[d].reshape(-1, 12), axis=0)
            want_ih = oneshot.wanda(params[name]["w_ih"], norms_ih, sparsity=0.5, in_axis=1)
            want_hh = oneshot.wanda(params[name]["w_hh"], norms_hh, sparsity=0.5, in_axis=1)
            np.testing.assert_array_equal(masks[name]["w_ih"], want_ih, err_msg=name)
            np.testing.assert_array_equal(masks[name]["w_hh"], want_hh, err_msg=name)
            assert (np.asarray(masks[name]["w_ih"]).sum(axis=1) == xs.shape[-1] // 2).all()  # per output
            assert masks[name]["b_ih"] is None
        pruned = {"layer_0": new[f"layer_{layer}"], "layer_0_reverse": new[f"layer_{layer}_reverse"]}
        xs = jp.lstm(pruned, xs)[0]
    # Ordinary jaxprune data: zeros baked in already, a summary at 50%.
    jax.tree.map(np.testing.assert_array_equal, jp.finalize(new, masks), new)
    assert "50.00%" in str(jp.summary(masks)).splitlines()[-1]


def test_prune_lstm_sparsegpt_keeps_the_outputs_closest_to_the_dense_model():
    params, batches = lstm_setup(bidirectional=False)
    held_out = jax.random.normal(jax.random.key(30), (9, 4, 8)) @ jax.random.normal(jax.random.key(4), (8, 8))
    dense = jp.lstm(params, held_out)[0]
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        new, masks = oneshot.prune_lstm(params, batches, method=method, sparsity=0.6)
        assert abs(float(jp.sparsity(masks)) - 0.6) < 0.01
        errors[method] = float(jnp.mean((jp.lstm(new, held_out)[0] - dense) ** 2))
    assert errors["sparsegpt"] < errors["magnitude"]
    assert errors["sparsegpt"] < errors["wanda"]


def test_prune_lstm_nm_and_batch_first_and_checks():
    params, batches = lstm_setup(bidirectional=False)
    _, masks = oneshot.prune_lstm(
        params, [jnp.swapaxes(b, 0, 1) for b in batches], method="sparsegpt", nm=(2, 4), batch_first=True
    )
    _, same = oneshot.prune_lstm(params, batches, method="sparsegpt", nm=(2, 4))
    jax.tree.map(np.testing.assert_array_equal, masks, same)
    for name in ("layer_0", "layer_1"):
        for w in ("w_ih", "w_hh"):
            m = np.asarray(masks[name][w])
            assert (m.reshape(m.shape[0], -1, 4).sum(axis=-1) == 2).all()
    with pytest.raises(ValueError, match="`method` must be one of"):
        oneshot.prune_lstm(params, batches, method="obs", sparsity=0.5)
    with pytest.raises(ValueError, match="at least one calibration batch"):
        oneshot.prune_lstm(params, [], sparsity=0.5)
    with pytest.raises(ValueError, match="input"):
        oneshot.prune_lstm(params, [jnp.ones((9, 4, 5))], sparsity=0.5)


def test_prune_lstm_checks_the_target_on_every_input_width_before_any_work():
    params = jp.init_lstm(jax.random.key(0), 8, 6, num_layers=2)  # inputs 8 (layer 0), hidden 6 (w_hh, layer 1)
    with pytest.raises(ValueError, match="6 inputs are not divisible by m=4"):
        oneshot.prune_lstm(params, [jnp.ones((5, 3, 8))], method="wanda", nm=(2, 4))
    with pytest.raises(ValueError, match=r"`sparsity` must be in \[0, 1\]"):
        oneshot.prune_lstm(params, [jnp.ones((5, 3, 8))], method="sparsegpt", sparsity=1.5)


def test_prune_lstm_calibrates_padded_sequences_on_their_real_steps_only():
    params = jp.init_lstm(jax.random.key(5), 8, 12, num_layers=2, bidirectional=True)
    lengths = [9, 4, 6]
    seqs = [jax.random.normal(jax.random.key(20 + i), (n, 1, 8)) for i, n in enumerate(lengths)]
    padded = jnp.concatenate([jnp.pad(s, ((0, 9 - s.shape[0]), (0, 0), (0, 0)), constant_values=50.0) for s in seqs], 1)
    for method in ("wanda", "sparsegpt"):
        _, want = oneshot.prune_lstm(params, seqs, method=method, sparsity=0.5)  # each sequence alone, unpadded
        _, got = oneshot.prune_lstm(params, [padded], method=method, sparsity=0.5, lengths=[jnp.asarray(lengths)])
        jax.tree.map(np.testing.assert_array_equal, got, want)
    with pytest.raises(ValueError, match="one array per batch"):
        oneshot.prune_lstm(params, [padded, padded], method="wanda", sparsity=0.5, lengths=[jnp.asarray(lengths)])
    with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 9\]"):
        oneshot.prune_lstm(params, [padded], method="wanda", sparsity=0.5, lengths=[jnp.asarray([9, 4, 10])])


def test_accumulate_where_counts_only_the_marked_tokens():
    x = jax.random.normal(jax.random.key(0), (4, 3, 5)).at[2:, 1].set(jnp.nan)
    where = jnp.ones((4, 3), bool).at[2:, 1].set(False)
    stats = oneshot.accumulate(oneshot.init_stats(5), x, where)
    rows = np.asarray(x).reshape(-1, 5)[np.asarray(where).reshape(-1)]
    np.testing.assert_allclose(stats.hessian, rows.T @ rows, rtol=1e-5, atol=1e-5)
    assert int(stats.tokens) == 10
    with pytest.raises(ValueError, match="`where` must have x's token shape"):
        oneshot.accumulate(oneshot.init_stats(5), x, where[:, :2])


@pytest.mark.parametrize("method,what", [("sparsegpt", "`hessian` must be finite"), ("wanda", "`input_norms`")])
def test_prune_lstm_names_the_kernel_whose_calibration_inputs_hold_nan(method, what):
    params = jp.init_lstm(jax.random.key(6), 4, 6, num_layers=2)
    x = jax.random.normal(jax.random.key(7), (5, 3, 4))
    with pytest.raises(ValueError, match=f"the calibration `batches` gave layer_0/w_ih statistics .*{what}"):
        oneshot.prune_lstm(params, [x, x.at[2, 1, 3].set(jnp.nan)], method=method, sparsity=0.5)
    with pytest.raises(ValueError, match=f"the calibration `batches` gave layer_0/w_ih statistics .*{what}"):
        oneshot.prune_lstm(params, [x.at[0, 0, 0].set(jnp.inf)], method=method, sparsity=0.5)
    oneshot.prune_lstm(params, [x], method="magnitude", sparsity=0.5)  # magnitude reads no statistics


def test_prune_lstm_names_the_kernel_sparsegpt_cannot_factor():
    # Every input equal to the first and no damping: X^T X is singular (rank 1).
    params = jp.init_lstm(jax.random.key(6), 4, 6)
    x = jnp.repeat(jax.random.normal(jax.random.key(8), (5, 3, 1)), 4, axis=-1)
    with pytest.raises(ValueError, match=r"layer_0/w_ih .*not positive definite after damping.*percdamp=0\.0"):
        oneshot.prune_lstm(params, [x], method="sparsegpt", sparsity=0.5, percdamp=0.0)
    oneshot.prune_lstm(params, [x], method="sparsegpt", sparsity=0.5)  # the default damping makes it definite
