"""The README's code blocks marked "# runnable" run as written."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def runnable_blocks():
    text = README.read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith("# runnable")]


def test_readme_nnx_train_step_runs_and_reaches_exactly_90_percent(capsys):
    blocks = runnable_blocks()
    assert blocks, "no runnable block in the README"
    for block in blocks:
        namespace = {}
        exec(compile(block, str(README), "exec"), namespace)
        if "pstate" in namespace:
            jp = namespace["jp"]
            assert int(namespace["pstate"].count) == 10
            assert "90.00%" in str(jp.summary(namespace["pstate"].masks)).splitlines()[-1]
            assert float(namespace["loss"]) < 1.0
