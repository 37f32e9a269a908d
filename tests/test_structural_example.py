"""examples/structural_pruning.py --quick, end to end (a file of its own: pytest-xdist runs files on two workers,
and test_examples.py is already the longest)."""

import math

import pytest
from test_examples import load


def test_structural_pruning_quick(tmp_path, capsys):
    results = load("structural_pruning").main(["--quick", "--out", str(tmp_path)])
    assert list(results) == ["ResNet", "ViT"]
    # Half the units of every pruned set go: all four ResNet sets; the ViT's head and MLP sets of both blocks.
    assert results["ResNet"]["kept"] == ["8/16", "8/16", "16/32", "16/32"]
    assert results["ViT"]["kept"] == ["2/4", "64/128", "2/4", "64/128"]
    for name, r in results.items():
        dense, masked, small = r["dense"], r["masked"], r["compacted"]
        assert r["max_diff"] < 1e-4, name  # the compacted model computes what the masked one does
        assert masked["accuracy"] > 0.5 and small["accuracy"] > 0.5, name  # chance is 0.1
        assert small["accuracy"] == pytest.approx(masked["accuracy"], abs=0.003), name  # one test image is 0.0022
        assert masked["params"] == dense["params"] and masked["macs"] == dense["macs"], name  # masks save nothing
        assert small["params"] == masked["nonzero_params"], name  # compaction keeps exactly the unpruned weights
        assert all(math.isfinite(row["latency_ms"]) and row["latency_ms"] > 0 for row in (dense, masked, small))
        assert r["curve"][-1][0] == 120 and r["curve"][-1][1] == pytest.approx(masked["accuracy"], abs=0.003)
    # Both convs of a channel halve in the ResNet: about a quarter is left. The ViT keeps its embedding and head.
    for name, low, high in (("ResNet", 0.2, 0.3), ("ViT", 0.45, 0.55)):
        r = results[name]
        for key in ("params", "macs"):
            assert low < r["compacted"][key] / r["dense"][key] < high, (name, key)
    assert (tmp_path / "structural_pruning.png").stat().st_size > 1000
    assert "max |masked - compacted|" in capsys.readouterr().out
