"""jaxprune.nn.cudnn: the flat cuDNN weight buffer, checked on CPU against jax.experimental.rnn's own reader
(unpack_lstm_weights) and its pure-JAX reference LSTM (lstm_ref); the cuDNN run itself only on a GPU."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import jaxprune as jp
from jaxprune.nn import cudnn
from jaxprune.nn.cudnn import available, pack_lstm_weights

# (input_size, hidden_size, num_layers, bidirectional)
CONFIGS = [(3, 4, 1, False), (2, 3, 2, False), (4, 5, 2, True), (1, 1, 3, True)]


def names(layers, bidirectional):
    return [f"layer_{i}{sfx}" for i in range(layers) for sfx in (["", "_reverse"] if bidirectional else [""])]


def random_masks(params, seed):
    """Random bool masks on every weight and bias (about 40% pruned), one leaf left None."""
    rng = np.random.default_rng(seed)
    masks = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) > 0.4), params)
    masks["layer_0"]["b_hh"] = None  # a leaf that is not prunable passes through unmasked
    return masks


def setup(config, seed=0, masked=True):
    input_size, hidden, layers, bidirectional = config
    params = jp.init_lstm(jax.random.key(seed), input_size, hidden, layers, bidirectional)
    params = jax.tree.map(lambda p: p + 0.5, params)  # no weight is 0 by chance, so the masks' zeros are visible
    return params, (random_masks(params, seed) if masked else None)


@pytest.mark.parametrize(("config", "masked"), list(zip(CONFIGS, [True, False, True, True])))
def test_unpack_gives_back_exactly_the_masked_weights(config, masked):
    input_size, hidden, layers, bidirectional = config
    params, masks = setup(config, masked=masked)
    w = pack_lstm_weights(params, masks)
    assert w.shape == (rnn.get_num_params_in_lstm(input_size, hidden, layers, bidirectional),)
    assert w.dtype == jnp.float32
    expected = jp.apply_mask(params, masks) if masked else params
    unpacked = rnn.unpack_lstm_weights(w, input_size, hidden, layers, bidirectional)
    for k, by_pseudo_layer in zip(("w_ih", "w_hh", "b_ih", "b_hh"), unpacked):
        assert sorted(by_pseudo_layer) == list(range(len(expected)))
        for pseudo, name in enumerate(names(layers, bidirectional)):  # forward i is 2i, reverse i is 2i + 1
            np.testing.assert_array_equal(by_pseudo_layer[pseudo], expected[name][k], err_msg=f"{name}/{k}")
    if masked:
        assert int(jnp.sum(w == 0)) == sum(int(jnp.sum(~m)) for m in jax.tree.leaves(masks))


def test_the_buffer_is_weights_then_biases_in_pytorch_gate_order():
    """The layout spelled out: w_ih⁰ w_hh⁰ w_ih¹ w_hh¹ b_ih⁰ b_hh⁰ b_ih¹ b_hh¹, gates i f g o, rows flattened."""
    params, _ = setup((2, 1, 1, True), masked=False)
    order = [("layer_0", "w_ih"), ("layer_0", "w_hh"), ("layer_0_reverse", "w_ih"), ("layer_0_reverse", "w_hh")]
    order += [("layer_0", "b_ih"), ("layer_0", "b_hh"), ("layer_0_reverse", "b_ih"), ("layer_0_reverse", "b_hh")]
    expected = np.concatenate([np.asarray(params[n][k]).reshape(-1) for n, k in order])
    np.testing.assert_array_equal(pack_lstm_weights(params), expected)


def test_works_under_jit_with_traced_masks():
    params, masks = setup((3, 4, 2, True))
    pack = chex.assert_max_traces(n=1)(pack_lstm_weights)
    jitted = jax.jit(pack)
    np.testing.assert_array_equal(jitted(params, masks), pack_lstm_weights(params, masks))
    _, other = setup((3, 4, 2, True), seed=1)
    np.testing.assert_array_equal(jitted(params, other), pack_lstm_weights(params, other))  # new masks, no retrace


def test_gradient_reaches_params_and_is_zero_at_pruned_weights():
    params, masks = setup((3, 4, 2, True))
    w = jax.random.normal(jax.random.key(3), pack_lstm_weights(params).shape)
    grads = jax.grad(lambda p: jnp.vdot(pack_lstm_weights(p, masks), w))(params)
    kept = pack_lstm_weights(jax.tree.map(jnp.ones_like, params), masks)  # 1 where kept, 0 where pruned
    np.testing.assert_array_equal(pack_lstm_weights(grads), kept * w)


def test_device_weights_are_the_packed_buffer_here_and_miopen_swaps_g_and_o():
    input_size, hidden, layers, bidirectional = config = (3, 4, 2, True)
    params, masks = setup(config)
    masked = jp.apply_mask(params, masks)
    pseudo = [masked[n] for n in names(layers, bidirectional)]
    w = pack_lstm_weights(params, masks)
    np.testing.assert_array_equal(cudnn._device_weights(pseudo), w)  # the non-ROCm branch
    swapped = rnn.swap_lstm_gates(w, input_size, hidden, layers, bidirectional)
    np.testing.assert_array_equal(cudnn._pack(pseudo, cudnn._MIOPEN_GATES), swapped)


def test_backend_choice_and_errors_without_a_gpu():
    params, _ = setup((3, 4, 2, False))
    xs = jnp.ones((5, 2, 3))
    assert available() is (jax.default_backend() == "gpu")
    if not available():
        with pytest.raises(ValueError, match=r"`backend='cudnn'` cannot run this call: cuDNN needs a GPU.*'cpu'"):
            jp.lstm(params, xs, backend="cudnn")
        np.testing.assert_array_equal(jp.lstm(params, xs)[0], jp.lstm(params, xs, backend="scan")[0])  # auto
    with pytest.raises(ValueError, match=r"`backend` must be one of \('auto', 'scan', 'cudnn'\), got 'cuda'"):
        jp.lstm(params, xs, backend="cuda")
    with pytest.raises(ValueError, match=r"layers of different widths \[\[4\], \[2\]\]"):
        small = {"layer_0": params["layer_0"], "layer_1": jp.init_lstm(jax.random.key(1), 4, 2)["layer_0"]}
        pack_lstm_weights(small)
    with pytest.raises(ValueError, match=r"`params\['layer_1'\]\['w_ih'\]` has shape \(16, 3\), expected \(16, 4\)"):
        pack_lstm_weights({"layer_0": params["layer_0"], "layer_1": params["layer_0"]})


def assert_positive(lengths):
    assert (lengths >= 1).all(), lengths


def lstm_ref_as_cudnn(
    x, h0, c0, weights, seq_lengths, input_size, hidden, layers, dropout, bidirectional, precision=None
):
    """Stands in for jax.experimental.rnn.lstm on CPU: the same arguments, read as the cuDNN kernel reads them."""
    assert seq_lengths.dtype == jnp.int32 and dropout == 0.0
    jax.debug.callback(lambda n: assert_positive(np.asarray(n)), seq_lengths)  # a length of 0 never reaches it
    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden, layers, bidirectional)
    return rnn.lstm_ref(x, h0, c0, *unpacked, seq_lengths, input_size, hidden, layers, dropout, bidirectional)


@pytest.fixture
def fake_gpu(monkeypatch):
    """cuDNN's kernel replaced by jax.experimental.rnn's reference, read from the same buffer: a CPU stand-in."""
    monkeypatch.setattr(cudnn, "available", lambda: True)
    monkeypatch.setattr(rnn, "lstm", lstm_ref_as_cudnn)


@pytest.mark.parametrize(("layers", "bidirectional", "batch_first", "between"), [
    (1, False, False, False),
    (2, True, True, True),  # input dropout between the layers: one cuDNN call per layer
])  # fmt: skip
def test_cudnn_backend_around_the_reference_kernel_matches_the_scan(
    fake_gpu, layers, bidirectional, batch_first, between
):
    """Everything jp.lstm does around the kernel (layout, zero states, lengths of 0, dropout, grouping), on CPU."""
    input_size, hidden = 3, 4
    params, masks = setup((input_size, hidden, layers, bidirectional))
    time, batch, states = 6, 4, layers * (2 if bidirectional else 1)
    k = jax.random.split(jax.random.key(10), 3)
    xs = jax.random.normal(k[0], (batch, time, input_size) if batch_first else (time, batch, input_size))
    h0 = jax.random.normal(k[1], (states, batch, hidden))
    c0 = jax.random.normal(k[2], (states, batch, hidden))
    rates = jp.RNNDropout(input=0.3, weight=0.2, output=0.1) if between else None
    configs = [((h0, c0), jnp.array([6, 0, 2, 1], jnp.int32))] + ([(None, None)] if layers == 1 else [])
    for initial_state, lengths in configs:

        def loss(p, backend, initial_state=initial_state, lengths=lengths):
            out, (h, c) = jp.lstm(
                p, xs, masks=masks, initial_state=initial_state, batch_first=batch_first, lengths=lengths,
                dropout=rates, key=jax.random.key(5), backend=backend,
            )  # fmt: skip
            return jnp.sum(out**2) + jnp.sum(h) + jnp.sum(c**2), (out, h, c)

        (_, got), g_got = jax.jit(jax.value_and_grad(lambda p: loss(p, "cudnn"), has_aux=True))(params)
        (_, want), g_want = jax.jit(jax.value_and_grad(lambda p: loss(p, "scan"), has_aux=True))(params)
        for a, b, what in zip(got, want, ("outputs", "h_n", "c_n")):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{what}, lengths={lengths}")
        chex.assert_trees_all_close(g_got, g_want, atol=1e-5, rtol=1e-5)


def test_cudnn_backend_runs_layers_of_different_widths_one_call_each_and_refuses_what_it_cannot(fake_gpu):
    params = jp.init_lstm(jax.random.key(0), 3, 4, num_layers=2)
    params["layer_1"] = jp.init_lstm(jax.random.key(1), 4, 2)["layer_0"]  # layer 1 has 2 units
    xs = jax.random.normal(jax.random.key(2), (5, 2, 3))
    out, (h, c) = jp.lstm(params, xs, backend="cudnn")
    ref, (h_ref, c_ref) = jp.lstm(params, xs, backend="scan")
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert [s.shape for s in h] == [(2, 4), (2, 2)]
    chex.assert_trees_all_close((h, c), (h_ref, c_ref), atol=1e-5)
    for rates, match in [(jp.RNNDropout(hidden=0.2), "no per-step dropout"), (jp.RNNDropout(zoneout=0.1), "zoneout")]:
        with pytest.raises(ValueError, match=f"`backend='cudnn'` cannot run this call: .*{match}"):
            jp.lstm(params, xs, dropout=rates, key=jax.random.key(0), backend="cudnn")
    half = jax.tree.map(lambda p: p.astype(jnp.float16), params)
    with pytest.raises(ValueError, match="float32 only, but the params are float16"):
        jp.lstm(half, xs.astype(jnp.float16), backend="cudnn")


@pytest.mark.skipif(not available(), reason="cuDNN needs a GPU")
@pytest.mark.parametrize(("layers", "bidirectional", "batch_first"), [(1, False, False), (2, True, True)])
def test_cudnn_backend_matches_the_scan_on_gpu(layers, bidirectional, batch_first):
    input_size, hidden = 5, 7
    params, masks = setup((input_size, hidden, layers, bidirectional))
    time, batch, states = 9, 4, layers * (2 if bidirectional else 1)
    k = jax.random.split(jax.random.key(9), 3)
    xs = jax.random.normal(k[0], (batch, time, input_size) if batch_first else (time, batch, input_size))
    h0 = jax.random.normal(k[1], (states, batch, hidden))
    c0 = jax.random.normal(k[2], (states, batch, hidden))
    for lengths in [None, jnp.array([6, 1, 9, 0], jnp.int32)]:

        def loss(p, backend, lengths=lengths):
            out, (h, c) = jp.lstm(
                p, xs, masks=masks, initial_state=(h0, c0), batch_first=batch_first, lengths=lengths, backend=backend
            )
            return jnp.sum(out**2) + jnp.sum(h) + jnp.sum(c**2), (out, h, c)

        with jax.default_matmul_precision("float32"):  # no TF32 in either, so they agree to float32 rounding
            (_, got), g_got = jax.jit(jax.value_and_grad(lambda p: loss(p, "cudnn"), has_aux=True))(params)
            (_, want), g_want = jax.jit(jax.value_and_grad(lambda p: loss(p, "scan"), has_aux=True))(params)
        for a, b, what in zip(got, want, ("outputs", "h_n", "c_n")):
            np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"{what}, lengths={lengths}")
        chex.assert_trees_all_close(g_got, g_want, atol=1e-4, rtol=1e-4)
        chex.assert_trees_all_equal(jp.apply_mask(g_got, masks), g_got)  # zero at pruned weights
