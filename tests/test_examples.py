"""Every example's --quick configuration, end to end."""

import importlib.util
import json
import math
import sys
from itertools import pairwise
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_char_lstm_quick(tmp_path, capsys):
    r = load("char_lstm").main(["--quick", "--out", str(tmp_path)])
    steps, sparsities, pruned, dense = zip(*(tuple(h.values()) for h in r["history"]))
    # Quick schedule: 30 dense steps, rounds at steps 30, 40, 50, then fine-tuning at 90% until step 69.
    assert r["prune_steps"] == [30, 40, 50] and r["total_steps"] == steps[-1] == 70
    assert r["prune_steps"][-1] < r["total_steps"] - 10  # the schedule ends early enough to recover
    assert r["pruned_weights"] == round(0.9 * r["prunable_weights"])  # exactly 90% at the end
    assert sparsities[0] == 0.0 and sparsities[-1] == pytest.approx(0.9, abs=1e-4)
    assert all(b >= a for a, b in pairwise(sparsities))
    assert sparsities.count(sparsities[-1]) >= 2  # evaluated while fine-tuning at 90%: the masks stay fixed
    assert all(b > a for a, b in pairwise(steps))
    assert pruned[0] == dense[0]  # the dense baseline forks from the model at the start of pruning
    assert all(math.isfinite(b) and b < 8.0 for b in pruned + dense)  # below 8 bits/char: it learned something
    assert r["dense_bpc"] == dense[-1] and r["cost_bpc"] == pytest.approx(pruned[-1] - dense[-1])
    assert json.loads((tmp_path / "results.json").read_text())["pruned_weights"] == r["pruned_weights"]
    assert (tmp_path / "char_lstm.png").stat().st_size > 1000
    assert any((tmp_path / "checkpoints").iterdir())
    out = capsys.readouterr().out
    assert "bits/char" in out and "total" in out


def test_quickstart(capsys):
    load("quickstart").main(["--steps", "60", "--rounds", "0.5,0.9"])
    out = capsys.readouterr().out
    assert "sparsity 90%" in out and "finalized params" in out


def test_flax_nnx_quick():
    accuracy, sparsity = load("flax_nnx").main(["--quick"])
    assert sparsity == pytest.approx(0.9, abs=1e-4) and accuracy > 0.5


def test_flax_linen_quick():
    accuracy, sparsity = load("flax_linen").main(["--quick"])
    assert sparsity == pytest.approx(0.9, abs=1e-4) and accuracy > 0.5


def test_mc_dropout_quick(tmp_path):
    r = load("mc_dropout").main(["--quick", "--samples", "20", "--out", str(tmp_path)])
    assert r["accuracy"] > 0.8
    assert r["entropy_wrong"] > r["entropy_correct"]  # wrong predictions are the uncertain ones
    assert r["accuracy_most_certain_80"] >= r["accuracy"]
    assert (tmp_path / "mc_dropout.png").stat().st_size > 1000


def test_lottery_ticket_quick(tmp_path):
    rows = load("lottery_ticket").main(["--quick", "--out", str(tmp_path)])
    remaining = [r[0] for r in rows]
    # Per-layer protocol: 20% of hidden weights and 10% of output weights per round.
    assert remaining[0] == 1.0
    assert remaining[-1] == pytest.approx((49_200 * 0.8**3 + 1_000 * 0.9**3) / 50_200, abs=1e-4)
    assert all(b < a for a, b in pairwise(remaining))
    assert all(0.0 < r[1] <= 1.0 and 0.0 < r[2] <= 1.0 for r in rows)
    assert (tmp_path / "lottery_ticket.png").stat().st_size > 1000


def test_torch_migration_quick(capsys):
    r = load("torch_migration").main(["--quick"])
    assert r["amount_sparsity"] == pytest.approx(1 - 0.9**10, abs=2e-3)
    assert r["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert r["same_as_torch"] is True  # torch is in the test extras
    assert r["imported_masks_identical"] is True and r["export_identical"] is True
    assert r["import_max_diff"] < 1e-5
    assert r["checkpoint_bytes"] < 0.6 * r["torch_pruned_bytes"]  # packed bits vs weight_orig + float mask
    assert "Why 65.1%" in capsys.readouterr().out


def test_sparse_training_quick(tmp_path, capsys):
    results = load("sparse_training").main(["--quick", "--out", str(tmp_path)])
    assert list(results) == ["dense", "static", "SET", "RigL", "gradual"]
    assert [run["sparsity"] for run in results["dense"]["runs"]] == [0.0]
    for name in ("static", "SET", "RigL", "gradual"):
        assert [run["sparsity"] for run in results[name]["runs"]] == [pytest.approx(0.9, abs=1e-3)], name
    for name, r in results.items():
        assert math.isfinite(r["accuracy"]) and r["accuracy"] > 0.5, name  # chance is 0.1; quick gives > 0.9
        assert r["steps"] == [100, 200, 300] and r["curve"][-1] == r["accuracy"]
    # SET and RigL moved connections; static masks never change; gradual pruning only removes.
    assert results["SET"]["moved"] > 0 and results["RigL"]["moved"] > 0
    assert results["SET"]["mask_updates"] > 0 and results["RigL"]["mask_updates"] > 0
    assert results["static"]["moved"] == results["gradual"]["moved"] == 0
    assert (tmp_path / "sparse_training.png").stat().st_size > 1000
    assert (tmp_path / "results.json").exists()
    assert "connections grown" in capsys.readouterr().out


def test_transformer_oneshot_quick(tmp_path, capsys):
    results = load("transformer_oneshot").main(["--quick", "--out", str(tmp_path)])
    assert set(results) == {"dense", "magnitude 2:4", "wanda 2:4", "sparsegpt 2:4"}
    for name, r in results.items():
        assert math.isfinite(r["transformer"]) and math.isfinite(r["lstm"])
        if name != "dense":  # 2:4 is exactly half of every pruned kernel
            assert r["sparsity"] == 0.5 and r["lstm_sparsity"] == 0.5
    assert (tmp_path / "transformer_oneshot.png").exists()
    assert "validation bits per character" in capsys.readouterr().out
