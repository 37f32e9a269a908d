"""Every example's --quick configuration, end to end."""

import importlib.util
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
    history = load("char_lstm").main(["--quick", "--out", str(tmp_path)])
    sparsities = [s for s, _ in history]
    assert sparsities[0] == 0.0 and sparsities[-1] == pytest.approx(0.9, abs=1e-4)
    assert all(b > a for a, b in pairwise(sparsities))
    assert all(math.isfinite(b) and b < 8.0 for _, b in history)  # below 8 bits/char: it learned something
    assert (tmp_path / "char_lstm.png").stat().st_size > 1000
    assert any((tmp_path / "checkpoints").iterdir())
    out = capsys.readouterr().out
    assert "bits/char" in out and "total" in out


def test_quickstart(capsys):
    load("quickstart").main(["--steps", "60", "--rounds", "0.5,0.9"])
    out = capsys.readouterr().out
    assert "sparsity 90%" in out and "finalized params" in out
