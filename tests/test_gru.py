"""jp.gru against PyTorch's nn.GRU (plain and packed), its dropout, its unit sets, and stacks of different widths."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.integrations.flax import GRU_INPUT_KERNELS, GRU_RECURRENT_KERNELS

torch = pytest.importorskip("torch")
from test_rnn import assert_grads_match_torch, from_torch  # noqa: E402


def bake_masks(m, params, masks):
    with torch.no_grad():
        for name in params:
            i, sfx = name.split("_")[1], "_reverse" if name.endswith("reverse") else ""
            for k, attr in (("w_ih", f"weight_ih_l{i}{sfx}"), ("w_hh", f"weight_hh_l{i}{sfx}")):
                getattr(m, attr).mul_(torch.from_numpy(np.asarray(masks[name][k]).astype(np.float32)))


@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "masked", "packed"),
    [
        (1, False, False, False, False),
        (2, True, False, True, False),
        (2, False, True, True, True),
        (2, True, False, True, True),
    ],
)
def test_outputs_states_and_gradients_match_torch_gru(layers, bidirectional, batch_first, masked, packed):
    torch.manual_seed(layers + 2 * bidirectional + 4 * packed)
    m = torch.nn.GRU(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    params = from_torch(m, layers, bidirectional)
    assert params["layer_0"]["w_hh"].shape == (21, 7)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5) if masked else None
    if masked:
        bake_masks(m, params, masks)
    rng = np.random.default_rng(0)
    lengths = np.array([6, 1, 9, 4], np.int64) if packed else np.full(4, 9)  # unsorted; full, a single step
    x = rng.standard_normal((4, 9, 5) if batch_first else (9, 4, 5)).astype(np.float32)
    h0 = rng.standard_normal((layers * (1 + bidirectional), 4, 7)).astype(np.float32)

    xt = torch.from_numpy(x)
    if packed:
        xt = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(lengths), batch_first=batch_first, enforce_sorted=False
        )
    out_t, h_t = m(xt, torch.from_numpy(h0))
    if packed:
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_t, batch_first=batch_first, total_length=9)
    (out_t.pow(2).sum() + h_t.pow(3).sum()).backward()

    def loss(p, x):
        n = jnp.asarray(lengths, jnp.int32) if packed else None
        out, h = jp.gru(p, x, masks=masks, initial_state=jnp.asarray(h0), batch_first=batch_first, lengths=n)
        return jnp.sum(out**2) + jnp.sum(h**3), (out, h)

    (_, (out, h)), (g, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, jnp.asarray(x))
    np.testing.assert_allclose(out, out_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=1e-5)
    assert_grads_match_torch(g, m, masks)
    if packed:  # steps past a sequence's length do not exist: their inputs get no gradient
        past = np.arange(9)[:, None] >= lengths[None, :]
        assert np.all(np.asarray(gx)[past.T if batch_first else past] == 0.0)


def test_init_matches_torch_ranges_and_bad_params_name_the_gru():
    params = jp.init_gru(jax.random.key(0), 4, 16, num_layers=2, bidirectional=True)
    assert params["layer_1"]["w_ih"].shape == (48, 32) and params["layer_1_reverse"]["b_hh"].shape == (48,)
    assert float(jnp.max(jnp.abs(params["layer_0"]["w_hh"]))) <= 16**-0.5
    x = jnp.ones((5, 2, 4))
    with pytest.raises(ValueError, match=r"`params\['layer_0'\]\['w_hh'\]` must be \[3 \* hidden, hidden\] \(GRU\)"):
        jp.gru(jp.init_lstm(jax.random.key(0), 4, 16), x)  # LSTM params given to the GRU
    with pytest.raises(ValueError, match=r"`initial_state` \(h0\) has shape \(2, 2, 16\), expected \(4, 2, 16\)"):
        jp.gru(params, x, initial_state=jnp.zeros((2, 2, 16)))
    with pytest.raises(ValueError, match=r"`initial_state` \(h0\) holds 2 arrays.*h0 alone, not a pair"):
        jp.gru(params, x, initial_state=(jnp.zeros((4, 2, 16)), jnp.zeros((4, 2, 16))))
    with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 5\]"):
        jp.gru(params, x, lengths=np.array([6, 1]))


def test_recurrent_dropout_gradients_with_lengths_match_finite_differences():
    from jax.test_util import check_grads

    params = jp.init_gru(jax.random.key(0), 3, 4)
    x = jax.random.normal(jax.random.key(1), (5, 2, 3))
    h0 = jax.random.normal(jax.random.key(2), (1, 2, 4))
    lengths = jnp.asarray([5, 3], jnp.int32)

    def loss(p, h):  # the custom VJP with a recurrent dropout mask and a held sequence
        out, hn = jp.gru(
            p, x, dropout=jp.RNNDropout(hidden=0.4), key=jax.random.key(3), initial_state=h, lengths=lengths
        )
        return jnp.sum(out**2) + jnp.sum(hn)

    check_grads(loss, (params, h0), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_dropout_is_locked_keyed_and_zoneout_deterministic_is_its_expectation():
    params = jp.init_gru(jax.random.key(0), 8, 16, num_layers=2)
    x = jax.random.normal(jax.random.key(1), (12, 3, 8))
    rates = jp.RNNDropout(input=0.3, hidden=0.3, output=0.3, weight=0.2)
    run = jax.jit(lambda k: jp.gru(params, x, dropout=rates, key=k)[0])
    a, b, c = run(jax.random.key(2)), run(jax.random.key(2)), run(jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    zeros = np.asarray(a == 0)  # output dropout is locked: the same units are zero at every step
    assert zeros.any() and (zeros == zeros[:1]).all()
    plain, _ = jp.gru(params, x)
    np.testing.assert_allclose(jp.gru(params, x, dropout=rates, deterministic=True)[0], plain, atol=1e-6)
    single, one = jp.init_gru(jax.random.key(4), 8, 16), x[:1]  # one step from 0: zoneout's mean is 0.75 h_new
    det, _ = jp.gru(single, one, dropout=jp.RNNDropout(zoneout=0.25), deterministic=True)
    np.testing.assert_allclose(det, 0.75 * jp.gru(single, one)[0], rtol=1e-5, atol=1e-7)


def test_gradients_at_pruned_weights_are_zero_and_step_compiles_once():
    params = jp.init_gru(jax.random.key(0), 8, 16, num_layers=2)
    x = jax.random.normal(jax.random.key(1), (10, 4, 8))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grads(params, masks):
        return jax.grad(lambda p: jnp.sum(jp.gru(p, x, masks=masks)[0] ** 2))(params)

    masks = jp.init_masks(params)
    for s in (0.3, 0.9):
        masks = jp.prune(jp.magnitude(params), masks, sparsity=s)
        g = grads(params, masks)
        for name in params:
            for k in ("w_ih", "w_hh"):
                assert bool(jnp.all(jnp.where(masks[name][k], True, g[name][k] == 0)))


@pytest.mark.parametrize(("init", "run", "unit_sets", "gates"), [
    (jp.init_lstm, jp.lstm, jp.lstm_units, 4),
    (jp.init_gru, jp.gru, jp.gru_units, 3),
])  # fmt: skip
def test_globally_unit_pruned_stack_compacts_to_layers_of_different_widths(init, run, unit_sets, gates):
    params = init(jax.random.key(0), 16, 16, num_layers=3)
    # The last layer feeds no next layer, so its units' norms are smaller; scaled, the layers keep 3-12 units.
    params["layer_2"] = jax.tree.map(lambda w: 1.2 * w, params["layer_2"])
    masks = jp.init_masks(params, where=lambda path, leaf: True)
    units = unit_sets(3)
    masks = jax.jit(lambda s, m: jp.prune_units(s, m, units, sparsity=0.5))(params, masks)  # global: 24 of 48
    rows = np.asarray(masks["layer_1"]["w_hh"]).any(axis=1).reshape(gates, 16)
    assert (rows == rows[:1]).all()  # a unit is pruned in all its gate blocks at once
    small, _ = jp.compact(params, masks, units)
    widths = [small[f"layer_{i}"]["w_hh"].shape[1] for i in range(3)]
    assert len(set(widths)) == 3 and min(widths) > 0 and sum(widths) == 24
    assert small["layer_1"]["w_ih"].shape == (gates * widths[1], widths[0])
    x = jax.random.normal(jax.random.key(1), (7, 3, 16))
    lengths = jnp.asarray([7, 2, 5], jnp.int32)
    kept = jp.kept_units(masks, units)
    # An initial state is a list of per-layer arrays (one stacked array cannot hold the widths); pruned units
    # feed nothing, so the kept units' part of a full initial state gives the masked model's results.
    full0 = [jax.random.normal(jax.random.key(k), (3, 3, 16)) for k in range(gates - 2)]
    parts0 = [[f[i][:, kept[i]] for i in range(3)] for f in full0]
    both = jax.jit(lambda p, s, m=None: run(p, x, masks=m, lengths=lengths, initial_state=s))
    out, states = both(params, tuple(full0) if gates == 4 else full0[0], masks)
    out_small, states_small = both(small, tuple(parts0) if gates == 4 else parts0[0])
    np.testing.assert_allclose(out_small, out[..., kept[2]], atol=1e-6)
    for full, parts in zip(states if gates == 4 else (states,), states_small if gates == 4 else (states_small,)):
        assert isinstance(parts, tuple) and [s.shape for s in parts] == [(3, w) for w in widths]
        for i, s in enumerate(parts):
            np.testing.assert_allclose(s, full[i][:, kept[i]], atol=1e-6)
    stacked = jnp.ones((3, 3, 8))
    with pytest.raises(ValueError, match=r"must be a list of 3 arrays \[batch, hidden\]: the layers have different"):
        run(small, x, initial_state=(stacked, stacked) if gates == 4 else stacked)


def test_flax_gru_cell_patterns_select_input_and_recurrent_kernels():
    nnx_params = nnx.state(nnx.RNN(nnx.GRUCell(4, 8, rngs=nnx.Rngs(0))), nnx.Param)
    model = nn.RNN(nn.GRUCell(8))
    x = jax.random.normal(jax.random.key(0), (2, 6, 4))
    linen_params = model.init(jax.random.key(1), x)["params"]
    for params, inputs, recurrent in [
        (nnx_params, {"dense_i"}, {"dense_h"}),
        (linen_params, {"ir", "iz", "in"}, {"hr", "hz", "hn"}),
    ]:
        for pattern, expected in ((GRU_INPUT_KERNELS, inputs), (GRU_RECURRENT_KERNELS, recurrent)):
            masks = jp.init_masks(params, where=pattern)
            assert {r.path.split("/")[-2] for r in jp.summary(masks).rows} == expected
