import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

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
    table = jp.summary({f"pruner/masks/{k}/kernel": masks[k]["kernel"] for k in ("dense_0", "dense_1")})
    assert out.endswith(str(table) + "\n")  # the table is jp.summary's


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


def one_error_line(capsys):
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("jaxprune: error: ")
    assert "Traceback" not in captured.err
    return captured.err


def test_export_checks_out_before_any_work(checkpoint, tmp_path, capsys):
    directory, _, _ = checkpoint
    (tmp_path / "outdir").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {
        "model": "OUT must be a file name ending in .npz, got",
        "outdir": "is an existing directory",
        "outdir/": "is an existing directory",
        "file/x.npz": f"cannot create {tmp_path / 'file'}: {tmp_path / 'file'} is not a directory",
        "file/sub/x.npz": f"{tmp_path / 'file'} is not a directory",
    }
    for out, message in cases.items():
        assert main(["export", str(directory), f"{tmp_path}/{out}"]) == 2, out
        assert message in one_error_line(capsys), out
    assert sorted(os.listdir(tmp_path)) == ["file", "outdir", "run"] and os.listdir(tmp_path / "outdir") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_export_into_an_unwritable_directory(checkpoint, tmp_path, capsys):
    directory, _, _ = checkpoint
    (tmp_path / "ro").mkdir(mode=0o555)
    assert main(["export", str(directory), str(tmp_path / "ro" / "x.npz")]) == 2
    assert "permission denied" in one_error_line(capsys)


def test_export_reports_the_path_it_wrote_and_creates_parents(checkpoint, tmp_path, capsys):
    directory, _, _ = checkpoint
    target = tmp_path / "a" / "b" / "model.npz"
    assert main(["export", str(directory), str(target)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {target} ({target.stat().st_size:,} bytes)")
    assert os.listdir(target.parent) == ["model.npz"]  # no temporary file left behind


def test_a_failed_export_leaves_nothing_half_written(checkpoint, tmp_path, capsys, monkeypatch):
    directory, _, _ = checkpoint
    target = tmp_path / "model.npz"
    target.write_bytes(b"the previous export")

    def savez(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)
    assert main(["export", str(directory), str(target)]) == 2
    assert f"cannot write {target}: No space left on device" in one_error_line(capsys)
    assert target.read_bytes() == b"the previous export" and sorted(os.listdir(tmp_path)) == ["model.npz", "run"]


def test_damaged_checkpoints_and_bad_steps_are_one_line_errors(checkpoint, tmp_path, capsys):
    directory, _, _ = checkpoint
    for root, _, files in os.walk(directory / "10" / "arrays"):
        for f in files:
            p = Path(root) / f
            if p.stat().st_size > 0 and not f.startswith("_"):
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    assert main(["inspect", str(directory)]) == 2
    err = one_error_line(capsys)
    assert f"checkpoint step 10 in {directory} is damaged or incomplete" in err and len(err) < 300
    assert main(["export", str(directory), str(tmp_path / "x.npz"), "--step", "-1"]) == 2
    assert "no checkpoint for step -1" in one_error_line(capsys)


def test_inspect_works_while_a_training_run_holds_the_directory(checkpoint, capsys):
    directory, _, _ = checkpoint
    with jp.Checkpointer(directory):
        assert main(["inspect", str(directory)]) == 0
    assert "step 10" in capsys.readouterr().out


# Runs `jaxprune <args>` for each argument list, one after another in one fresh Python process (one import of
# jax and torch, not one per command), each with file descriptors 1 and 2 redirected to files of its own: what
# a user's terminal would show, including what C++ code or Python's warnings write. Every warning is shown
# (not once per location), so a warning a command should not print cannot hide behind an earlier one.
_CLI_DRIVER = """
import json, os, sys, traceback, warnings
warnings.simplefilter("always")
from jaxprune.cli import main
results = []
saved = os.dup(1), os.dup(2)
for i, args in enumerate(json.loads(sys.argv[2])):
    paths = [os.path.join(sys.argv[1], f"{i}.{fd}") for fd in (1, 2)]
    files = [open(p, "w+") for p in paths]
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(files[0].fileno(), 1); os.dup2(files[1].fileno(), 2)
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = "raised"
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    results.append([code] + [open(p).read() for p in paths])
with open(os.path.join(sys.argv[1], "results.json"), "w") as f:
    json.dump(results, f)
"""


def run_commands(tmp_path, commands):
    """[(exit code, stdout, stderr)] of ``jaxprune *args`` for each of ``commands``, run in a fresh process."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    scratch = tmp_path / "cli_runs"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_DRIVER, str(scratch), json.dumps(commands)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads((scratch / "results.json").read_text())]


def test_the_command_prints_one_line_and_no_traceback(checkpoint, tmp_path):
    directory, _, _ = checkpoint
    (tmp_path / "file").write_text("x")
    (directory / "10" / "layout" / "metadata").write_text("{damaged")
    cases = [
        (["export", str(directory), str(tmp_path / "file" / "x.npz")], "is not a directory"),
        (["inspect", str(directory)], "is damaged or incomplete"),
    ]
    for (code, out, err), (_, message) in zip(run_commands(tmp_path, [args for args, _ in cases]), cases):
        assert code == 2 and out == "", err
        assert err.count("\n") == 1 and err.startswith("jaxprune: error: "), err
        assert message in err


class _NotAModel:  # what a pickle of an arbitrary object holds
    def __init__(self):
        self.weights = [1.0, 2.0]


def test_import_torch_of_a_file_torch_refuses_prints_only_its_own_line(tmp_path):
    pytest.importorskip("torch")
    files = {
        "object.pkl": pickle.dumps(_NotAModel()),  # the default protocol (> 2): torch.load warns before failing
        "object_p2.pkl": pickle.dumps(_NotAModel(), protocol=2),  # refused as a class torch does not load
        "dict.pkl": pickle.dumps({"weight": [1.0, 2.0]}),
        "garbage.bin": bytes(range(256)) * 8,
        "text.txt": b"hello world, not a model\n",  # the unpickler fails with a KeyError here
        "empty.pt": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    commands = [["import-torch", str(tmp_path / name), str(tmp_path / f"out_{name}")] for name in files]
    for name, (code, out, err) in zip(files, run_commands(tmp_path, commands)):
        path = tmp_path / name
        assert code == 2 and out == "", (name, err)
        assert err.count("\n") == 1 and err.startswith("jaxprune: error: "), (name, err)
        assert str(path) in err and "Traceback" not in err, (name, err)
        assert "Weights only load failed" not in err and "Warning" not in err, (name, err)
        assert not (tmp_path / f"out_{name}").exists()  # nothing written
