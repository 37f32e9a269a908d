import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune.cli import main


@pytest.fixture
def checkpoint(tmp_path):
    params = {
        "dense_0": {"kernel": jax.random.normal(jax.random.key(0), (16, 8)), "bias": jnp.ones(8)},
        "dense_1": {"kernel": jax.random.normal(jax.random.key(1), (8, 4)), "bias": jnp.ones(4)},
    }
    pruner = jp.Pruner(schedule=0.75)
    pstate = pruner.update(pruner.init(params), params, 0)
    tx = jp.masked_optimizer(optax.adam(1e-3))
    with jp.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(10, {"params": params, "opt_state": tx.init(params), "pruner": pstate})
    return tmp_path / "run", params, pstate.masks


def test_inspect_prints_the_per_layer_table(checkpoint, capsys):
    directory, _, masks = checkpoint
    assert main(["inspect", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "step 10" in out and "pruner/masks/dense_0/kernel" in out
    total_line = out.strip().splitlines()[-1]
    assert total_line.split()[0] == "total" and "75.00%" in total_line
    row = next(line for line in out.splitlines() if line.startswith("pruner/masks/dense_0/kernel"))
    assert row.split()[2] == str(int(masks["dense_0"]["kernel"].sum()))  # kept


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_export_writes_masked_weights(checkpoint, tmp_path, fmt):
    directory, params, masks = checkpoint
    out = tmp_path / f"model_{fmt}.npz"
    assert main(["export", str(directory), str(out), "--format", fmt]) == 0
    data = np.load(out)
    expected = np.where(masks["dense_0"]["kernel"], params["dense_0"]["kernel"], 0)
    if fmt == "dense":
        np.testing.assert_array_equal(data["dense_0/kernel"], expected)
    else:
        keep = np.unpackbits(data["dense_0/kernel/bits"], count=16 * 8).astype(bool)
        dense = np.zeros(16 * 8, np.float32)
        dense[keep] = data["dense_0/kernel/values"]
        np.testing.assert_array_equal(dense.reshape(tuple(data["dense_0/kernel/shape"])), expected)
    np.testing.assert_array_equal(data["dense_0/bias"], params["dense_0"]["bias"])
    assert not any(k.startswith("opt_state") for k in data.files)


def test_helpful_errors(checkpoint, tmp_path, capsys):
    directory, _, _ = checkpoint
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(["inspect", str(directory), "--step", "3"]) == 2
    assert "steps saved: [10]" in capsys.readouterr().err
    assert main(["export", str(directory), str(tmp_path / "x.npz"), "--prefix", "weights"]) == 2
    assert "top-level names in the checkpoint: ['opt_state', 'params', 'pruner']" in capsys.readouterr().err
