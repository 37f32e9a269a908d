"""The release: one version, an sdist and a wheel that twine accepts, and a wheel that works once installed."""

import ast
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import jaxprune as jp
from jaxprune._version import VERSION
from jaxprune.cli import main

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxprune"


def run(cmd, cwd, timeout=120, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_the_version_is_written_once():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jaxprune._version.VERSION"}
    # setuptools reads the attribute statically, so building needs no jax: a lone literal, no import.
    tree = ast.parse((PACKAGE / "_version.py").read_text())
    assigns = [n for n in tree.body if isinstance(n, ast.Assign)]
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(tree))
    assert [(a.targets[0].id, a.value.value) for a in assigns] == [("VERSION", jp.__version__)]
    assert jp.__version__ == VERSION and VERSION.count(".") == 2


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"jaxprune {jp.__version__}\n"


# What a build of the checkout must not see: caches and outputs (setuptools would skip most of them anyway).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".*_cache", ".hypothesis", ".benchmarks", ".venv", "*.egg-info", "build", "dist", "site", "*_out"
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist, and the wheel built from it (so the sdist must hold everything a build needs)."""
    # Built from a copy, so the build writes nothing into the checkout (its egg-info), whoever else is using it.
    src = tmp_path_factory.mktemp("src") / "jaxprune"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build uses the installed setuptools (the test extra), nothing is downloaded.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], cwd=src)
    (sdist,) = out.glob("jaxprune-*.tar.gz")
    (wheel,) = out.glob("jaxprune-*.whl")
    return sdist, wheel


def test_twine_accepts_both(dist):
    out = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)], cwd=ROOT)
    assert out.count("PASSED") == 2


def test_the_wheel_holds_every_module_and_py_typed(dist):
    _, wheel = dist
    assert wheel.name == f"jaxprune-{jp.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"jaxprune-{jp.__version__}.dist-info/METADATA").decode()
        entry_points = z.read(f"jaxprune-{jp.__version__}.dist-info/entry_points.txt").decode()
    source = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert source - names == set()
    assert "jaxprune/py.typed" in names
    assert {n for n in names if n.startswith("jaxprune/")} == source | {"jaxprune/py.typed"}  # nothing stray
    assert f"\nVersion: {jp.__version__}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata
    assert "jaxprune = jaxprune.cli:main" in entry_points


def test_the_sdist_holds_the_project_files(dist):
    sdist, _ = dist
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.removeprefix(f"{top}/") for n in t.getnames()}
    wanted = {"README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "jaxprune/py.typed", "jaxprune/_version.py"}
    assert wanted - names == set()


def test_the_installed_wheel_runs_the_quickstart(dist, tmp_path):
    _, wheel = dist
    venv = tmp_path / "venv"
    # The system's packages (jax, optax, scikit-learn...) are visible, so installing the wheel downloads nothing;
    # --ignore-installed: the system's editable jaxprune (this checkout) must not count as already there.
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    run([*pip, "--ignore-installed", "--no-compile", "--quiet", str(wheel)], cwd=tmp_path)
    work = tmp_path / "elsewhere"  # outside the checkout, so nothing there can shadow the installed package
    work.mkdir()
    shutil.copy(ROOT / "examples" / "quickstart.py", work)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    script = (
        "import runpy, sys, jaxprune; print('jaxprune', jaxprune.__version__, 'from', jaxprune.__file__); "
        "sys.argv = ['quickstart.py', '--steps', '60', '--rounds', '0.5,0.9']; "
        "runpy.run_path('quickstart.py', run_name='__main__')"
    )
    out = run([str(python), "-c", script], cwd=work, env=env, timeout=180)
    first = out.splitlines()[0].split()
    assert first[:2] == ["jaxprune", jp.__version__]
    installed = Path(first[3]).resolve()
    assert installed.is_relative_to(venv.resolve()) and not installed.is_relative_to(ROOT), installed
    assert "sparsity 90%" in out and "finalized params" in out
    assert run([str(venv / "bin" / "jaxprune"), "--version"], cwd=work, env=env) == f"jaxprune {jp.__version__}\n"
