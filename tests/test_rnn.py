import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune._tree import leaves_with_paths
from jaxprune.integrations.flax import LSTM_INPUT_KERNELS, LSTM_RECURRENT_KERNELS

torch = pytest.importorskip("torch")


def from_torch(m, layers, bidirectional):
    params = {}
    for i in range(layers):
        for sfx, name in [("", f"layer_{i}"), ("_reverse", f"layer_{i}_reverse")][: 2 if bidirectional else 1]:
            params[name] = {
                "w_ih": getattr(m, f"weight_ih_l{i}{sfx}"),
                "w_hh": getattr(m, f"weight_hh_l{i}{sfx}"),
                "b_ih": getattr(m, f"bias_ih_l{i}{sfx}"),
                "b_hh": getattr(m, f"bias_hh_l{i}{sfx}"),
            }
    return jax.tree.map(lambda t: jnp.asarray(t.detach().numpy()), params)


def assert_grads_match_torch(g, m, masks=None):
    """jaxprune's gradients ``g`` against the torch module ``m``'s ``.grad``, masked where ``masks`` prune."""
    for name in g:
        i, sfx = name.split("_")[1], "_reverse" if name.endswith("reverse") else ""
        for k, attr in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
            ref = getattr(m, f"{attr}_l{i}{sfx}").grad.numpy()
            if masks is not None and masks[name][k] is not None:
                ref = ref * np.asarray(masks[name][k])  # torch's grad at a masked weight is not masked
            np.testing.assert_allclose(g[name][k], ref, atol=1e-4, rtol=1e-4, err_msg=f"{name}/{k}")


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, False), (2, True)])
def test_matches_torch_lstm_with_pruning_masks(layers, bidirectional):
    torch.manual_seed(layers)
    m = torch.nn.LSTM(6, 8, num_layers=layers, bidirectional=bidirectional)
    params = from_torch(m, layers, bidirectional)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.6)
    with torch.no_grad():  # the same masks, baked into the torch weights
        for name in params:
            i, sfx = name.split("_")[1], "_reverse" if name.endswith("reverse") else ""
            for k, attr in (("w_ih", f"weight_ih_l{i}{sfx}"), ("w_hh", f"weight_hh_l{i}{sfx}")):
                getattr(m, attr).mul_(torch.from_numpy(np.asarray(masks[name][k]).astype(np.float32)))
    x = np.random.default_rng(0).standard_normal((11, 3, 6)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((layers * (1 + bidirectional), 3, 8)).astype(np.float32)
    c0 = np.random.default_rng(2).standard_normal(h0.shape).astype(np.float32)
    out_t, (h_t, c_t) = m(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    out, (h, c) = jax.jit(jp.lstm)(
        params, jnp.asarray(x), masks=masks, initial_state=(jnp.asarray(h0), jnp.asarray(c0))
    )
    np.testing.assert_allclose(out, out_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(c, c_t.detach().numpy(), atol=1e-5)


def test_batch_first_and_init_matches_torch_ranges():
    params = jp.init_lstm(jax.random.key(0), 4, 16, num_layers=2, bidirectional=True)
    assert params["layer_1"]["w_ih"].shape == (64, 32)
    assert float(jnp.max(jnp.abs(params["layer_0"]["w_hh"]))) <= 16**-0.5
    x = jax.random.normal(jax.random.key(1), (5, 7, 4))
    a, _ = jp.lstm(params, x, batch_first=True)
    b, _ = jp.lstm(params, jnp.swapaxes(x, 0, 1))
    np.testing.assert_allclose(a, jnp.swapaxes(b, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="`hidden_size` must be a positive int"):
        jp.init_lstm(jax.random.key(0), 4, 0)


def test_gradients_at_pruned_weights_are_zero_and_step_compiles_once_across_mask_changes():
    params = jp.init_lstm(jax.random.key(0), 8, 16, num_layers=2)
    x = jax.random.normal(jax.random.key(1), (10, 4, 8))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grads(params, masks):
        return jax.grad(lambda p: jnp.sum(jp.lstm(p, x, masks=masks)[0] ** 2))(params)

    masks = jp.init_masks(params)
    for s in (0.3, 0.6, 0.9):
        masks = jp.prune(jp.magnitude(params), masks, sparsity=s)
        g = grads(params, masks)
        for name in params:
            for k in ("w_ih", "w_hh"):
                assert bool(jnp.all(jnp.where(masks[name][k], True, g[name][k] == 0)))
        assert bool(jnp.any(g["layer_0"]["w_hh"] != 0))


def test_structured_pruning_of_hidden_units_across_gates():
    params = jp.init_lstm(jax.random.key(0), 4, 8)
    masks = jp.init_masks(params, where="w_hh")
    masks = jp.prune(jp.magnitude(params), masks, amount=3, structure=jp.Structured(axis=0, groups=4))
    rows = np.asarray(masks["layer_0"]["w_hh"]).all(axis=1).reshape(4, 8)
    assert (rows == rows[:1]).all() and int((~rows[0]).sum()) == 3  # the same 3 units in every gate


def test_variational_dropout_locks_masks_and_is_keyed():
    params = jp.init_lstm(jax.random.key(0), 8, 16, num_layers=2)
    x = jax.random.normal(jax.random.key(1), (12, 3, 8))
    rates = jp.RNNDropout(input=0.3, hidden=0.3, output=0.3, weight=0.2, zoneout=0.1)
    run = jax.jit(lambda k: jp.lstm(params, x, dropout=rates, key=k)[0])
    a, b, c = run(jax.random.key(2)), run(jax.random.key(2)), run(jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Output dropout is locked: the same units are zero at every timestep.
    # (Without zoneout here: units that zone out at step 0 keep the zero initial state.)
    locked = jp.lstm(params, x, dropout=rates._replace(zoneout=0.0), key=jax.random.key(2))[0]
    zeros = np.asarray(locked == 0)
    assert zeros.any() and (zeros == zeros[:1]).all()
    plain, _ = jp.lstm(params, x)
    det, _ = jp.lstm(
        params, x, dropout=jp.RNNDropout(input=0.3, hidden=0.3, output=0.3, weight=0.2), deterministic=True
    )
    np.testing.assert_allclose(det, plain, atol=1e-6)
    with pytest.raises(TypeError, match=r"`key` is required.*a PRNG key is one jax\.random\.key"):
        jp.lstm(params, x, dropout=rates)
    with pytest.raises(ValueError, match=r"`dropout\.hidden` must be in"):
        jp.lstm(params, x, dropout=jp.RNNDropout(hidden=1.0), key=jax.random.key(0))


def test_zoneout_deterministic_is_the_expectation_of_the_state_update():
    params = jp.init_lstm(jax.random.key(0), 3, 5)
    x = jax.random.normal(jax.random.key(1), (1, 2, 3))  # one step from a zero state: h = (1 - rate) * h_new
    plain, _ = jp.lstm(params, x)
    det, _ = jp.lstm(params, x, dropout=jp.RNNDropout(zoneout=0.25), deterministic=True)
    np.testing.assert_allclose(det, 0.75 * plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cell", ["LSTMCell", "OptimizedLSTMCell"])
def test_prune_recurrent_kernels_of_nnx_cells_under_rnn(cell):
    rnn = nnx.RNN(getattr(nnx, cell)(4, 8, rngs=nnx.Rngs(0)))
    params = nnx.state(rnn, nnx.Param)
    masks = jp.init_masks(params, where=LSTM_RECURRENT_KERNELS)
    masks = jp.prune(jp.magnitude(params), masks, sparsity=0.5)
    paths = [r.path for r in jp.summary(masks).rows]
    assert paths and all(p.split("/")[-2] in ("hi", "hf", "hg", "ho", "dense_h") for p in paths)
    x = jax.random.normal(jax.random.key(0), (2, 6, 4))

    @nnx.jit
    def grads(model, masks):
        def loss(model):
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            return jnp.sum(nnx.merge(graphdef, jp.apply_mask(params, masks), rest)(x) ** 2)

        return nnx.grad(loss)(model)

    g = grads(rnn, masks)
    for (path, gl), (_, ml) in zip(leaves_with_paths(g)[0], leaves_with_paths(masks)[0]):
        if ml is not None:
            assert bool(jnp.all(jnp.where(ml, True, gl == 0))), path
            assert bool(jnp.any(gl != 0)), path
    inputs = jp.init_masks(params, where=LSTM_INPUT_KERNELS)
    assert all(r.path.split("/")[-2] in ("ii", "if_", "ig", "io", "dense_i") for r in jp.summary(inputs).rows)


@pytest.mark.parametrize("cell", ["LSTMCell", "OptimizedLSTMCell"])
def test_prune_linen_cells_under_rnn(cell):
    model = nn.RNN(getattr(nn, cell)(8))
    x = jax.random.normal(jax.random.key(0), (2, 6, 4))
    params = model.init(jax.random.key(1), x)["params"]
    masks = jp.init_masks(params, where=LSTM_INPUT_KERNELS)
    masks = jp.prune(jp.magnitude(params), masks, sparsity=0.75)
    assert {r.path.split("/")[-2] for r in jp.summary(masks).rows} == {"ii", "if", "ig", "io"}
    out = jax.jit(lambda p, m: model.apply({"params": jp.apply_mask(p, m)}, x))(params, masks)
    ref = model.apply({"params": jp.finalize(params, masks)}, x)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_gradients_match_torch_autograd():
    torch.manual_seed(7)
    m = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True)
    params = from_torch(m, 2, True)
    x = np.random.default_rng(3).standard_normal((8, 4, 5)).astype(np.float32)
    out_t, (h_t, c_t) = m(torch.from_numpy(x))
    (out_t.pow(2).sum() + h_t.sum() + c_t.pow(2).sum()).backward()

    def loss(p):
        out, (h, c) = jp.lstm(p, jnp.asarray(x))
        return jnp.sum(out**2) + jnp.sum(h) + jnp.sum(c**2)

    assert_grads_match_torch(jax.jit(jax.grad(loss))(params), m)


def test_recurrent_dropout_gradients_match_finite_differences():
    from jax.test_util import check_grads

    params = jp.init_lstm(jax.random.key(0), 3, 4)
    x = jax.random.normal(jax.random.key(1), (5, 2, 3))
    h0 = jax.random.normal(jax.random.key(2), (1, 2, 4))

    def loss(p, h):
        out, (_, cn) = jp.lstm(
            p, x, dropout=jp.RNNDropout(hidden=0.4), key=jax.random.key(3), initial_state=(h, jnp.zeros_like(h))
        )
        return jnp.sum(out**2) + jnp.sum(cn)

    check_grads(loss, (params, h0), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


# Bad inputs: each raises jaxprune's own error, naming the argument, before any work.
# Only shapes and dtypes are read, so nothing here compiles an LSTM.

P2 = jp.init_lstm(jax.random.key(0), 6, 8, num_layers=2)  # 2 layers, 1 direction, input 6, hidden 8
X = jnp.zeros((5, 3, 6))  # [time, batch, input]
H = jnp.zeros((2, 3, 8))  # [layers * directions, batch, hidden]


def with_leaf(layer, name, value):
    params = {n: dict(p) for n, p in P2.items()}
    if value is None:
        del params[layer][name]
    else:
        params[layer][name] = value
    return params


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"initial_state": (H[:1], H[:1])}, ValueError, r"`initial_state\[0\]` \(h0\) has shape \(1, 3, 8\), expected"),
        ({"initial_state": (H, H[..., :7])}, ValueError, r"`initial_state\[1\]` \(c0\) has shape \(2, 3, 7\)"),
        ({"initial_state": (H, H), "batch_first": True}, ValueError, r"`initial_state\[0\]`.*batch 5"),
        ({"initial_state": jnp.stack([H, H])}, TypeError, "`initial_state` must be a pair"),
        ({"initial_state": (H,)}, TypeError, "`initial_state` must be a pair"),
        ({"initial_state": (H.astype(jnp.bfloat16), H)}, TypeError, r"`initial_state\[0\]` is bfloat16"),
        ({"xs": X[0]}, ValueError, r"`xs` must be 3-D \[time, batch, input\], got shape \(3, 6\)"),
        ({"xs": X[None]}, ValueError, "`xs` must be 3-D"),
        ({"xs": X[..., :5]}, ValueError, "`xs` has input size 5"),
        ({"xs": X[:0]}, ValueError, "`xs` has no timesteps"),
        ({"xs": jnp.swapaxes(X, 0, 1)[:, :0], "batch_first": True}, ValueError, "`xs` has no timesteps"),
        ({"xs": X.astype(jnp.int32)}, TypeError, "`xs` must be a floating-point array"),
        ({"xs": X.astype(jnp.bfloat16)}, TypeError, r"`xs` is bfloat16 but the LSTM params are float32; cast"),
        ({"params": with_leaf("layer_0", "w_ih", None)}, ValueError, r"`params\['layer_0'\]` must hold exactly"),
        ({"params": with_leaf("layer_1", "b_hh", None)}, ValueError, r"`params\['layer_1'\]` must hold exactly"),
        ({"params": with_leaf("layer_1", "w_hr", H)}, ValueError, r"`params\['layer_1'\]` must hold exactly"),
        ({"params": with_leaf("layer_1", "w_ih", jnp.zeros((32, 9)))}, ValueError, r"`params\['layer_1'\]\['w_ih'\]`"),
        ({"params": with_leaf("layer_1", "w_hh", jnp.zeros((8, 32)))}, ValueError, r"`params\['layer_1'\]\['w_hh'\]`"),
        ({"params": with_leaf("layer_1", "b_ih", jnp.zeros(8))}, ValueError, r"`params\['layer_1'\]\['b_ih'\]`"),
        ({"params": with_leaf("layer_0", "w_hh", jnp.zeros((32, 9)))}, ValueError, r"`params\['layer_0'\]\['w_hh'\]`"),
        ({"params": with_leaf("layer_0", "w_ih", jnp.zeros(32))}, ValueError, r"`params\['layer_0'\]\['w_ih'\]`"),
        ({"params": with_leaf("layer_1", "b_ih", jnp.zeros(32, jnp.bfloat16))}, TypeError, "share one dtype"),
        ({"params": with_leaf("layer_1", "b_ih", [0.0] * 32)}, TypeError, r"`params\['layer_1'\]\['b_ih'\]` must be"),
        ({"params": {"layer_1": P2["layer_1"]}}, ValueError, "`params` must hold layer_0"),
        ({"params": {}}, ValueError, "`params` must hold layer_0"),
        ({"masks": jp.init_masks(jp.init_lstm(jax.random.key(0), 6, 4, num_layers=2))}, ValueError, "`masks` leaf"),
        ({"masks": jax.tree.map(lambda m: m.astype(jnp.float32), jp.init_masks(P2))}, TypeError, "`masks` leaf"),
        ({"dropout": 0.2, "key": jax.random.key(0)}, TypeError, "`dropout` must be a jp.RNNDropout"),
    ],
)
def test_bad_lstm_inputs_raise_clear_errors(kwargs, error, match):
    kwargs = {"params": P2, "xs": X, **kwargs}
    with pytest.raises(error, match=match):
        jp.lstm(kwargs.pop("params"), kwargs.pop("xs"), **kwargs)


BAD_KEYS = [None, 0, jax.random.split(jax.random.key(0), 2), jnp.zeros(3, jnp.uint32), jnp.zeros(2, jnp.int32)]


@pytest.mark.parametrize("bad", BAD_KEYS, ids=["None", "int", "batch", "uint32[3]", "int32[2]"])
def test_bad_keys_raise_one_type_error(bad):
    rates = jp.RNNDropout(input=0.2)
    with pytest.raises(TypeError, match=r"`key`.*a PRNG key is one jax\.random\.key"):
        jp.lstm(P2, X, dropout=rates, key=bad)
    if bad is not None:  # a key given where none is needed is still checked
        with pytest.raises(TypeError, match="`key` must be"):
            jp.lstm(P2, X, key=bad)
    with pytest.raises(TypeError, match="`key` must be"):
        jp.init_lstm(bad, 6, 8)


def test_lstm_checks_run_under_jit_and_init_checks_ints():
    with pytest.raises(ValueError, match="`xs` has input size 5"):
        jax.jit(lambda x: jp.lstm(P2, x))(X[..., :5])
    with pytest.raises(ValueError, match=r"`initial_state\[0\]`"):
        jax.jit(lambda h: jp.lstm(P2, X, initial_state=(h, h)))(H[:1])
    with pytest.raises(TypeError, match="`key` must be"):
        jax.jit(lambda k: jp.lstm(P2, X, key=k))(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(TypeError, match=r"`num_layers` must be a positive int, got float 2\.0"):
        jp.init_lstm(jax.random.key(0), 6, 8, num_layers=2.0)
    with pytest.raises(TypeError, match="`bidirectional` must be a bool"):
        jp.init_lstm(jax.random.key(0), 6, 8, bidirectional="yes")
    with pytest.raises(ValueError, match=r"`dropout\.zoneout` must be in \[0, 1\]"):
        jp.lstm(P2, X, dropout=jp.RNNDropout(zoneout=1.5), key=jax.random.key(0))
    # A legacy uint32[2] key and NumPy ints are fine.
    assert jp.init_lstm(jax.random.PRNGKey(0), np.int64(6), 8)["layer_0"]["w_ih"].shape == (32, 6)


def test_dropout_rates_can_be_traced():
    # RNNDropout is a pytree, so jit traces its rates; tracing alone shows no rate is used as a Python bool.
    rates = jp.RNNDropout(input=0.3, hidden=0.3, output=0.3, weight=0.2, zoneout=0.1)
    out = jax.eval_shape(lambda r: jp.lstm(P2, X, dropout=r, key=jax.random.key(2))[0], rates)
    assert out.shape == (5, 3, 8)
    with pytest.raises(TypeError, match="`key` is required"):  # a traced rate may be non-zero
        jax.eval_shape(lambda r: jp.lstm(P2, X, dropout=r), rates)
