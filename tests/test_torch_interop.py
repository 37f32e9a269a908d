"""jaxprune.integrations.torch: PyTorch state_dicts (plain and pruned) in and out, number for number."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune.cli import main  # noqa: E402
from jaxprune.integrations.torch import from_torch_state_dict, to_torch_state_dict  # noqa: E402

LAYOUT = {"fc": "linear", "emb": "embedding"}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(32, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, tokens):  # tokens [T, B]
        hs, _ = self.lstm(self.emb(tokens))
        hs, _ = self.gru(hs)
        return self.fc(hs[-1])


def jax_forward(params, masks, tokens):
    p = jp.apply_mask(params, masks)
    hs, _ = jp.lstm(params["lstm"], p["emb"]["embedding"][tokens], masks=masks["lstm"])
    hs, _ = jp.gru(params["gru"], hs, masks=masks["gru"])
    return hs[-1] @ p["fc"]["kernel"] + p["fc"]["bias"]


def weights(model):
    """(module, name) of every weight matrix, pruned (named X_orig then) or not."""
    modules = (model.emb, model.lstm, model.gru, model.fc)
    return [(m, n.removesuffix("_orig")) for m in modules for n, _ in m.named_parameters() if "weight" in n]


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = Model()
    targets = weights(model)
    for _ in range(10):  # the forum workflow: ten rounds of 10% of what is left
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.1)
    tokens = torch.randint(0, 20, (7, 3))
    with torch.no_grad():
        expected = model(tokens)
    return model, tokens, expected


def test_import_pruned_model_matches_pytorch(pruned):
    model, tokens, expected = pruned
    sd = model.state_dict()
    assert "lstm.weight_hh_l1_reverse_orig" in sd and "lstm.weight_hh_l1_reverse" not in sd
    params, masks = from_torch_state_dict(sd, layout=LAYOUT)
    assert set(params["lstm"]) == {"layer_0", "layer_0_reverse", "layer_1", "layer_1_reverse"}
    # masks: bool, identical to PyTorch's buffers; params: the unmasked _orig values, Flax layouts on request
    np.testing.assert_array_equal(masks["lstm"]["layer_1_reverse"]["w_hh"], sd["lstm.weight_hh_l1_reverse_mask"].bool())
    np.testing.assert_array_equal(params["lstm"]["layer_1_reverse"]["w_hh"], sd["lstm.weight_hh_l1_reverse_orig"])
    np.testing.assert_array_equal(masks["gru"]["layer_0"]["w_ih"], sd["gru.weight_ih_l0_mask"].bool())
    np.testing.assert_array_equal(masks["fc"]["kernel"], sd["fc.weight_mask"].bool().T)
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight_orig"].T)
    np.testing.assert_array_equal(masks["emb"]["embedding"], sd["emb.weight_mask"].bool())
    assert masks["lstm"]["layer_0"]["b_ih"] is None and masks["fc"]["bias"] is None  # not pruned: not prunable
    assert float(jp.sparsity(masks)) == pytest.approx(1 - 0.9**10, abs=1e-3)
    assert all(m.dtype == bool for m in jax.tree.leaves(masks))
    # outputs, layer by layer and whole
    xs = torch.randn(7, 3, 8)
    with torch.no_grad():
        ref, (h_n, c_n) = model.lstm(xs)
    out, (h, c) = jp.lstm(params["lstm"], xs.numpy(), masks=masks["lstm"])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(c, c_n, atol=1e-5)
    with torch.no_grad():
        ref, h_n = model.gru(ref)
    out, h = jp.gru(params["gru"], out, masks=masks["gru"])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(h, h_n, atol=1e-5)
    np.testing.assert_allclose(jax_forward(params, masks, tokens.numpy()), expected, atol=1e-5)


def test_export_loads_strictly_into_fresh_models(pruned):
    model, tokens, expected = pruned
    sd = model.state_dict()
    params, masks = from_torch_state_dict(sd, layout=LAYOUT)

    plain = to_torch_state_dict(params, masks, layout=LAYOUT)  # zeros baked in, PyTorch's names
    fresh = Model()
    fresh.load_state_dict(plain, strict=True)
    for module, name in weights(model):
        assert torch.equal(plain[f"{_prefix(model, module)}.{name}"], getattr(module, name))  # = orig * mask
    with torch.no_grad():
        assert torch.equal(fresh(tokens), expected)

    again = to_torch_state_dict(params, masks, pruned_form=True, layout=LAYOUT)
    assert set(again) == set(sd)
    for key, t in sd.items():  # the exact inverse: every tensor, dtype included
        assert again[key].dtype == t.dtype and torch.equal(again[key], t), key
    fresh = Model()
    for module, name in weights(fresh):
        prune.identity(module, name)
    fresh.load_state_dict(again, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(tokens), expected)
    prune.global_unstructured(weights(fresh), pruning_method=prune.L1Unstructured, amount=0.1)  # pruning goes on
    kept = sum(int(getattr(m, n + "_mask").sum()) for m, n in weights(fresh))
    assert kept == round(int(jp.summary(masks).kept) * 0.9)  # 10% of what was left, as after an 11th round


def _prefix(model, module):
    return next(n for n, m in model.named_modules() if m is module)


def test_plain_numpy_state_dict_keeps_torch_layout_by_default():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 4), nn.Embedding(5, 4), nn.LSTM(4, 3))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}  # no tensors needed to import
    params, masks = from_torch_state_dict(sd)
    assert set(params) == {"0", "1", "2"}
    assert params["0"]["weight"].shape == (4, 6)  # Linear vs Embedding is not inferred: kept as in PyTorch
    assert params["1"]["weight"].shape == (5, 4)
    assert set(params["2"]["layer_0"]) == {"w_ih", "w_hh", "b_ih", "b_hh"}  # LSTM inferred from its names
    assert all(m is None for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None))
    all_true = jp.init_masks(params)  # to prune an unpruned model: every weight matrix prunable
    assert all_true["0"]["weight"].all() and all_true["0"]["bias"] is None
    back = to_torch_state_dict(params, masks)
    assert list(back) == list(sd)
    assert all(np.array_equal(back[k].numpy(), v) for k, v in sd.items())


def test_root_rnn_conv_and_layernorm():
    torch.manual_seed(2)
    gru = nn.GRU(4, 6, num_layers=2)
    params, _ = from_torch_state_dict(gru.state_dict())
    assert set(params) == {"layer_0", "layer_1"}  # the state_dict of an nn.GRU itself: jp.init_gru's layout
    xs = torch.randn(5, 2, 4)
    with torch.no_grad():
        np.testing.assert_allclose(jp.gru(params, xs.numpy())[0], gru(xs)[0], atol=1e-5)
    nn.GRU(4, 6, num_layers=2).load_state_dict(to_torch_state_dict(params), strict=True)  # and back from the root

    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.LayerNorm(8))
    prune.ln_structured(net[0], "weight", amount=0.5, n=2, dim=0)  # whole output channels
    sd = net.state_dict()
    layout = {"0": "conv2d", "1": "layernorm"}
    params, masks = from_torch_state_dict(sd, layout=layout)
    assert params["0"]["kernel"].shape == (3, 3, 3, 8) and set(params["1"]) == {"scale", "bias"}
    assert masks["0"]["kernel"].shape == (3, 3, 3, 8) and masks["0"]["kernel"].all(axis=(0, 1, 2)).sum() == 4
    x = torch.randn(2, 3, 9, 9)
    kernel = jp.apply_mask(params, masks)["0"]["kernel"]
    y = (
        jax.lax.conv_general_dilated(
            x.numpy().transpose(0, 2, 3, 1), kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + params["0"]["bias"]
    )
    with torch.no_grad():
        np.testing.assert_allclose(y, net[0](x).permute(0, 2, 3, 1), atol=1e-5)
    back = to_torch_state_dict(params, masks, pruned_form=True)  # conv and layernorm inferred from the names
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def test_bfloat16_and_unrelated_mask_buffers_round_trip():
    sd = {
        "fc.weight": torch.randn(3, 4, dtype=torch.bfloat16),
        "attn.causal_mask": torch.ones(4, 4, dtype=torch.bool).tril(),  # a buffer named *_mask, no _orig: kept
    }
    params, masks = from_torch_state_dict(sd)
    assert params["fc"]["weight"].dtype == jnp.bfloat16 and masks["attn"]["causal_mask"] is None
    assert params["attn"]["causal_mask"].dtype == bool
    back = to_torch_state_dict(params, masks)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in sd.items())
    out = jnp.asarray(params["fc"]["weight"])  # jax takes them as they are
    assert out.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "sd, layout, error, words",
    [
        ({"fc.weight_orig": np.ones((2, 2))}, None, ValueError, ["'fc.weight_orig'", "'fc.weight_mask'"]),
        (
            {"fc.weight_orig": np.ones((2, 2)), "fc.weight_mask": np.full((2, 2), 0.5)},
            None,
            ValueError,
            ["'fc.weight_mask'", "only 0 and 1", "0.5"],
        ),
        (
            {"fc.weight_orig": np.ones((2, 2)), "fc.weight_mask": np.ones((2, 3))},
            None,
            ValueError,
            ["'fc.weight_mask'", "(2, 3)", "(2, 2)"],
        ),
        (
            {"fc.weight_orig": np.ones(2), "fc.weight_mask": np.ones(2), "fc.weight": np.ones(2)},
            None,
            ValueError,
            ["'fc.weight'", "'fc.weight_orig'"],
        ),
        ({"fc.weight": np.ones((2, 2))}, {"fc": "dense"}, ValueError, ["layout['fc']", "'dense'", "linear"]),
        ({"fc.weight": np.ones((2, 2))}, {"fx": "linear"}, ValueError, ["'fx'", "['fc']"]),
        (
            {"emb.weight": np.ones((2, 2)), "emb.extra": np.ones(2)},
            {"emb": "embedding"},
            ValueError,
            ["'emb.extra'", "'embedding'"],
        ),
        ({"fc.weight": np.ones((2, 2, 1))}, {"fc": "linear"}, ValueError, ["'fc.weight'", "2 dims"]),
        ({"fc.weight": [1.0, 2.0]}, None, TypeError, ["'fc.weight'", "list"]),
    ],
)
def test_bad_inputs_name_the_key(sd, layout, error, words):
    with pytest.raises(error) as info:
        from_torch_state_dict(sd, layout=layout)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "module, words",
    [
        (nn.RNN(3, 4), ["nn.RNN", "'weight_hh_l0'", "layout={'': \"torch\"}"]),
        (nn.LSTM(3, 4, proj_size=2), ["'weight_hr_l0'", "proj_size"]),
        (nn.LSTM(3, 4, bias=False), ["b_ih", "bias=False"]),
    ],
)
def test_unsupported_recurrent_modules_raise(module, words):
    with pytest.raises(ValueError) as info:
        from_torch_state_dict(module.state_dict())
    assert all(w in str(info.value) for w in words), str(info.value)


def test_export_checks_masks_and_layout():
    params = {"fc": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    with pytest.raises(ValueError, match="fc/kernel"):
        to_torch_state_dict(params, {"fc": {"kernel": np.ones((3, 2), bool), "bias": None}})
    with pytest.raises(TypeError, match="fc/kernel"):
        to_torch_state_dict(params, {"fc": {"kernel": np.ones((2, 3), np.float32), "bias": None}})
    with pytest.raises(ValueError, match="'nope'"):
        to_torch_state_dict(params, layout={"fc": "nope"})
    with pytest.raises(ValueError, match=r"\['x'\]"):
        to_torch_state_dict(params, layout={"x": "linear"})
    out = to_torch_state_dict(params, layout={"fc": "torch"})  # a module that happens to call a leaf "kernel"
    assert out["fc.kernel"].shape == (2, 3)
    assert to_torch_state_dict(params)["fc.weight"].shape == (3, 2)


def test_cli_import_torch_then_inspect(pruned, tmp_path, capsys):
    model, _, _ = pruned
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    args = ["import-torch", str(path), str(tmp_path / "ckpt"), "--layout", "fc=linear", "--layout", "emb=embedding"]
    assert main(args) == 0
    assert "12 with masks" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "masks/lstm/layer_1_reverse/w_hh" in out and "masks/fc/kernel" in out
    assert out.strip().splitlines()[-1].split()[-1] == "65.13%"
    with jp.Checkpointer(tmp_path / "ckpt", read_only=True) as ckpt:
        flat = ckpt.restore_flat()
    np.testing.assert_array_equal(flat["params/fc/kernel"], model.fc.weight_orig.detach().T)
    np.testing.assert_array_equal(flat["masks/fc/kernel"], model.fc.weight_mask.bool().T)


def test_cli_import_torch_errors(pruned, tmp_path, capsys):
    model, _, _ = pruned
    torch.save(model, tmp_path / "whole.pt")
    (tmp_path / "notes.txt").write_text("not a PyTorch file")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "nested.pt")
    cases = [
        (["whole.pt", "a"], "a whole nn.Module?"),
        (["nested.pt", "b"], "pass --key NAME"),
        (["nested.pt", "c", "--key", "model"], "--key 'model' is not in"),
        (["nested.pt", "d", "--key", "state_dict", "--layout", "fc=conv2d"], "state_dict['fc.weight']"),
        (["nested.pt", "e", "--key", "state_dict", "--layout", "fc"], "PREFIX=KIND"),
        (["missing.pt", "f"], "no such file"),
        (["notes.txt", "g"], "cannot read"),
    ]
    for (model_file, outdir, *rest), words in cases:
        assert main(["import-torch", str(tmp_path / model_file), str(tmp_path / outdir), *rest]) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxprune: error: ") and err.count("\n") == 1 and words in err, err
        assert not (tmp_path / outdir).exists()  # nothing written on failure
    assert main(["import-torch", str(tmp_path / "nested.pt"), str(tmp_path), "--key", "state_dict"]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_importing_needs_no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError now
    sd = {"fc.weight_orig": np.ones((2, 3), np.float32), "fc.weight_mask": np.eye(2, 3, dtype=np.float32)}
    params, masks = from_torch_state_dict(sd, layout={"fc": "linear"})
    np.testing.assert_array_equal(masks["fc"]["kernel"], np.eye(3, 2, dtype=bool))
    with pytest.raises(ImportError, match="install PyTorch"):
        to_torch_state_dict(params, masks)
