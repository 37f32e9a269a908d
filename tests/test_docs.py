"""The documentation site: it builds with no warning, its API reference covers the public API, and its code runs.

* ``mkdocs build --strict`` succeeds (a broken link, a bad docstring or a missing object is a warning, so an
  error);
* every name of ``jaxprune.__all__``, of ``jaxprune.oneshot.__all__`` and of every module under
  ``jaxprune.integrations`` is rendered in the site's API reference (the anchor id mkdocstrings writes);
* every ```python block of docs/*.md and docs/guides/*.md runs: the blocks of a page in order, in one
  namespace (a page builds on its earlier blocks), in a scratch directory of its own. A block that starts
  with ``>>>`` is a doctest. A line that is only ``...`` (pseudo-code) fails the page.

Everything runs in child processes started together by the first test, so the build and the pages' code
share the cores: the site build, one process for the pages (one jax import; a page's compiles are XLA's,
with its slow optimisation passes off, since the pages' tiny models run in microseconds either way), and one
for each page that needs its own devices. No page's code runs in this process.
"""

from __future__ import annotations

import ast
import doctest
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in [*DOCS.glob("*.md"), *DOCS.glob("guides/*.md")])
# Pages that need a process of their own: the scaling-out guide builds a 2 x 4 mesh of simulated devices,
# which must be set before jax starts. (Its loop reads the loss back every step: on a loaded 2-core machine,
# XLA:CPU's simulated devices can deadlock in a collective when consecutive sharded steps overlap.)
OWN_PROCESS = {"guides/scaling-out.md": "--xla_force_host_platform_device_count=8"}
PAGE_PROCESSES = 2  # the development machine's and CI's cores
TIMEOUT_S = 600  # for each child; the whole file takes about a minute of CPU
REPORT = "@@jaxprune-docs-page@@ "  # marks a child's report lines among what the pages print


# ---------------------------------------------------------------- the pages' code (run in a child)


def python_blocks(page: str) -> list[tuple[int, str]]:
    """The ```python blocks of a page: (line of the block's first code line, code)."""
    text = (DOCS / page).read_text()
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return blocks


def run_block(page: str, line: int, code: str, namespace: dict) -> None:
    """Runs one block in ``namespace``; a traceback names the page and the Markdown line."""
    filename = str(DOCS / page)
    if code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(code, namespace, f"{page}:{line}", filename, line - 1)
        out = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=out.write, clear_globs=False)
        assert runner.failures == 0, f"{page}:{line}: doctest failed\n{out.getvalue()}"
        return
    pseudo = [i for i, ln in enumerate(code.splitlines()) if ln.strip() == "..."]
    assert not pseudo, f"{page}:{line + pseudo[0]}: a line of pseudo-code ('...') in a python block"
    # Padded so that a traceback's line numbers are the Markdown file's.
    exec(compile("\n" * (line - 1) + code, filename, "exec"), namespace)


def run_page(page: str) -> dict:
    namespace = {"__name__": "__docs__"}
    checks = CHECKS.get(page, {})
    for line, code in python_blocks(page):
        run_block(page, line, code, namespace)
        for marker, check in checks.items():
            if marker in code:
                check(namespace)
    return namespace


def check_nnx_train_step(ns: dict) -> None:
    """The Pruner in the NNX train step ends at exactly 90.00% after its ten rounds, and the model learned."""
    jp, pstate = ns["jp"], ns["pstate"]
    assert int(pstate.count) == 10
    summary = jp.summary(pstate.masks)
    assert "90.00%" in str(summary).splitlines()[-1]
    assert summary.total - summary.kept == round(0.9 * summary.total)
    assert float(ns["loss"]) < 1.0


# page -> {text that marks a block: check run on the namespace right after that block}
CHECKS = {"guides/iterative-pruning.md": {"def train_step(params, opt_state, pstate": check_nnx_train_step}}


def child_main(pages: list[str]) -> None:
    """Runs each page in a scratch directory of its own (below the cwd); one report line per page."""
    scratch = Path.cwd()
    for page in pages:
        work = scratch / page.replace("/", "_").removesuffix(".md")
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)  # files a page writes (checkpoints, model.pt) land here
        start = time.perf_counter()
        try:
            run_page(page)
            error = None
        except BaseException:
            error = traceback.format_exc()
        report = {"page": page, "error": error, "seconds": round(time.perf_counter() - start, 1)}
        print(REPORT + json.dumps(report), flush=True)


# ---------------------------------------------------------------- the children


class Child:
    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: str | None = None

    def wait(self) -> str:
        if self.output is None:
            try:
                self.output, _ = self.proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output = self.proc.communicate()[0] + f"\n[killed after {TIMEOUT_S} s]"
        return self.output

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class Children:
    """The site build and the pages' runs, started together."""

    def __init__(self, tmp: Path):
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        self.site = tmp / "site"
        build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(self.site)]
        self.build = Child(build, ROOT, env)
        # The other pages in PAGE_PROCESSES processes, balanced by their lines of code (compiles are most of
        # a page's time, and scale with what it calls).
        shared = [p for p in PAGES if python_blocks(p) and p not in OWN_PROCESS]
        lines = {p: sum(code.count("\n") for _, code in python_blocks(p)) for p in shared}
        split: list[list[str]] = [[] for _ in range(PAGE_PROCESSES)]
        for p in sorted(shared, key=lambda p: -lines[p]):
            min(split, key=lambda g: sum(lines[q] for q in g)).append(p)
        groups = [(g, "") for g in split if g] + [([p], flags) for p, flags in OWN_PROCESS.items()]
        self.runs = {}
        for i, (pages, flags) in enumerate(groups):
            cwd = tmp / f"pages{i}"
            cwd.mkdir()
            xla = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)  # conftest's fast compile
            child = Child([sys.executable, __file__, *pages], cwd, {**env, "XLA_FLAGS": xla})
            self.runs |= dict.fromkeys(pages, child)

    def built(self) -> Path:
        output = self.build.wait()
        assert self.build.proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
        return self.site

    def page(self, page: str) -> dict:
        output = self.runs[page].wait()
        for line in output.splitlines():
            if line.startswith(REPORT) and json.loads(line[len(REPORT) :])["page"] == page:
                return json.loads(line[len(REPORT) :])
        raise AssertionError(f"{page}: its process ended before the page did:\n{output[-5000:]}")

    def stop(self) -> None:
        for child in [self.build, *set(self.runs.values())]:
            child.stop()


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    started = Children(tmp_path_factory.mktemp("docs"))
    yield started
    started.stop()


# ---------------------------------------------------------------- the tests


def test_every_code_block_names_its_language_and_every_guide_has_python():
    for page in PAGES:
        fences = re.findall(r"^```(\S*)", (DOCS / page).read_text(), flags=re.M)
        assert len(fences) % 2 == 0, f"{page}: an unclosed code fence"
        # Opening fences name their language (```python runs; ```bash, ```text are shown); closing ones are bare.
        assert all(fences[::2]) and not any(fences[1::2]), f"{page}: a code block without a language"
        if page.startswith("guides/"):
            assert python_blocks(page), f"{page} has no python block"


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_page_code_runs(page, children):
    report = children.page(page)
    assert report["error"] is None, f"{page}:\n{report['error']}"


def test_site_builds_strict(children):
    site = children.built()
    for page in PAGES:
        html = site / (page.removesuffix(".md") + "/index.html" if page != "index.md" else "index.html")
        assert html.exists(), f"{page} was not built"


def rendered_objects(site_dir: Path) -> set[str]:
    """The dotted paths of every object the API reference renders: the anchor ids mkdocstrings writes.

    (objects.inv is not enough: it also lists members of a rendered module that the page leaves out.)
    """
    ids = set()
    for html in (site_dir / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(jaxprune(?:\.\w+)*)"', html.read_text()))
    return ids


def source(module: str) -> Path:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if path.exists() else ROOT / module.replace(".", "/") / "__init__.py"


def public_names(module: str) -> dict[str, set[str]]:
    """A module's public names, each with the dotted paths it may be documented under.

    With ``__all__``: its names. Without: the names the module defines (def, class, assignment) and the ones
    it imports from a sibling module of its package (re-exports, such as ``integrations.flax`` re-exporting
    ``integrations.flax_units``); never a leading underscore. Read from the source, without importing it.
    """
    tree = ast.parse(source(module).read_text())
    package = module.rsplit(".", 1)[0]
    defined, imported = set(), {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                imported[a.asname or a.name] = f"{node.module}.{a.name}"
    dunder_all = next(
        (
            ast.literal_eval(n.value)
            for n in tree.body
            if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"
        ),
        None,
    )
    if dunder_all is not None:
        names = set(dunder_all)
    else:
        siblings = {n for n, src in imported.items() if src.rsplit(".", 1)[0].startswith(package + ".")}
        names = {n for n in defined | siblings if not n.startswith("_")}
    return {n: {f"{module}.{n}", imported.get(n, f"{module}.{n}")} for n in names if not n.startswith("__")}


def required_api() -> dict[str, set[str]]:
    """{name: the paths it may be rendered under} for everything the API reference must cover."""
    required = {f"jaxprune.{n}": {f"jaxprune.{n}"} for n in public_names("jaxprune")}
    required |= {f"jaxprune.oneshot.{n}": {f"jaxprune.oneshot.{n}"} for n in public_names("jaxprune.oneshot")}
    integrations = source("jaxprune.integrations").parent
    modules = [m.name for m in pkgutil.iter_modules([str(integrations)]) if not m.name.startswith("_")]
    assert {"flax", "flax_units", "torch"} <= set(modules)
    for m in modules:
        module = f"jaxprune.integrations.{m}"
        required[module] = {module}
        required |= {f"{module}.{n}": paths for n, paths in public_names(module).items()}
    return required


def test_the_public_names_are_read_as_python_sees_them():
    import jaxprune
    import jaxprune.oneshot

    assert set(public_names("jaxprune")) == set(jaxprune.__all__)
    assert set(public_names("jaxprune.oneshot")) == set(jaxprune.oneshot.__all__)
    # flax.py has no __all__ and re-exports flax_units.
    flax = public_names("jaxprune.integrations.flax")
    assert {"PrunedTrainState", "nnx_prune_blocks", "LSTM_RECURRENT_KERNELS", "nnx_units"} <= set(flax)
    assert flax["nnx_units"] == {"jaxprune.integrations.flax.nnx_units", "jaxprune.integrations.flax_units.nnx_units"}
    assert not {"Where", "Pruner", "jax", "nnx", "train_state"} & set(flax)
    assert set(public_names("jaxprune.integrations.torch")) == {"KINDS", "from_torch_state_dict", "to_torch_state_dict"}


def test_api_reference_covers_the_public_api(children):
    rendered = rendered_objects(children.built())
    assert {"jaxprune.prune", "jaxprune.oneshot.wanda", "jaxprune.integrations.torch.to_torch_state_dict"} <= rendered
    missing = sorted(name for name, paths in required_api().items() if not paths & rendered)
    assert not missing, f"not in the API reference (add them to a page of docs/api/): {missing}"


if __name__ == "__main__":  # a child: python tests/test_docs.py PAGE... (from a scratch directory)
    child_main(sys.argv[1:])
