"""jp.lstm(lengths=...) against PyTorch's pack_padded_sequence -> nn.LSTM -> pad_packed_sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

torch = pytest.importorskip("torch")
from test_rnn import assert_grads_match_torch, from_torch  # noqa: E402

pack = torch.nn.utils.rnn.pack_padded_sequence
unpack = torch.nn.utils.rnn.pad_packed_sequence


def torch_run(m, x, lengths, h0, c0, batch_first):
    packed = pack(torch.from_numpy(x), torch.from_numpy(lengths), batch_first=batch_first, enforce_sorted=False)
    out, (h, c) = m(packed, (torch.from_numpy(h0), torch.from_numpy(c0)))
    out, _ = unpack(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    return out, h, c


@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "masked"),
    [(1, False, False, False), (2, False, True, True), (2, True, False, True), (1, True, True, False)],
)
def test_outputs_states_and_gradients_match_packed_torch_lstm(layers, bidirectional, batch_first, masked):
    torch.manual_seed(layers + 2 * bidirectional)
    m = torch.nn.LSTM(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    params = from_torch(m, layers, bidirectional)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5) if masked else None
    if masked:
        with torch.no_grad():
            for name in params:
                i, sfx = name.split("_")[1], "_reverse" if name.endswith("reverse") else ""
                for k, attr in (("w_ih", f"weight_ih_l{i}{sfx}"), ("w_hh", f"weight_hh_l{i}{sfx}")):
                    getattr(m, attr).mul_(torch.from_numpy(np.asarray(masks[name][k]).astype(np.float32)))
    rng = np.random.default_rng(0)
    lengths = np.array([6, 1, 9, 4], np.int64)  # unsorted; one full-length, one of a single step
    shape = (4, 9, 5) if batch_first else (9, 4, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    states = (layers * (1 + bidirectional), 4, 7)
    h0 = rng.standard_normal(states).astype(np.float32)
    c0 = rng.standard_normal(states).astype(np.float32)

    out_t, h_t, c_t = torch_run(m, x, lengths, h0, c0, batch_first)
    (out_t.pow(2).sum() + h_t.sum() + c_t.pow(2).sum()).backward()

    def loss(p, x):
        out, (h, c) = jp.lstm(
            p, x, masks=masks, initial_state=(jnp.asarray(h0), jnp.asarray(c0)), batch_first=batch_first,
            lengths=jnp.asarray(lengths, jnp.int32),
        )  # fmt: skip
        return jnp.sum(out**2) + jnp.sum(h) + jnp.sum(c**2), (out, h, c)

    (_, (out, h, c)), (g, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, jnp.asarray(x))
    np.testing.assert_allclose(out, out_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(c, c_t.detach().numpy(), atol=1e-5)
    assert_grads_match_torch(g, m, masks)
    # Steps past a sequence's length do not exist: their inputs get no gradient and change nothing.
    past = np.arange(9)[:, None] >= lengths[None, :]
    past = past.T if batch_first else past
    assert np.all(np.asarray(gx)[past] == 0.0)
    noisy = np.where(past[..., None], 100.0, x).astype(np.float32)
    _, (out2, _, _) = loss(params, jnp.asarray(noisy))
    np.testing.assert_array_equal(out2, out)


def test_zoneout_and_full_lengths_agree_with_no_lengths():
    params = jp.init_lstm(jax.random.key(0), 4, 6, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (7, 3, 4))
    full = jnp.full((3,), 7, jnp.int32)
    for dropout in (None, jp.RNNDropout(zoneout=0.3)):
        a = jp.lstm(params, xs, dropout=dropout, deterministic=True)
        b = jp.lstm(params, xs, dropout=dropout, deterministic=True, lengths=full)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), a, b)
    # With zoneout (its own scan) a short sequence is held past its end too: outputs 0, states from its last step.
    short = jnp.asarray([7, 3, 5], jnp.int32)
    out, (h, _) = jp.lstm(params, xs, dropout=jp.RNNDropout(zoneout=0.3), deterministic=True, lengths=short)
    cut, (h_cut, _) = jp.lstm(params, xs[:3, 1:2], dropout=jp.RNNDropout(zoneout=0.3), deterministic=True)
    assert bool(jnp.all(out[3:, 1] == 0.0))
    np.testing.assert_allclose(out[:3, 1:2], cut, atol=1e-6)
    np.testing.assert_allclose(h[:, 1:2], h_cut, atol=1e-6)


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        (np.array([3, 2]), ValueError, r"`lengths` must have shape \(3,\)"),
        (np.array([3.0, 2.0, 1.0]), TypeError, "`lengths` must be an int array"),
        (np.array([3, -1, 1]), ValueError, r"`lengths` must be in \[0, 5\].*lengths\[1\] = -1"),
        (np.array([3, 6, 1]), ValueError, r"`lengths` must be in \[0, 5\].*lengths\[1\] = 6"),
        ([3, 2, 1], TypeError, "`lengths` must be an int array"),
    ],
)
def test_bad_lengths_raise_clear_errors(lengths, error, match):
    params = jp.init_lstm(jax.random.key(0), 4, 6)
    with pytest.raises(error, match=match):
        jp.lstm(params, jnp.ones((5, 3, 4)), lengths=lengths)
