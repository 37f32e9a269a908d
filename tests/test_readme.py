"""The README's code block marked "# runnable" runs as written and does what its comments say.

The guides' code blocks (the NNX train step with a Pruner among them) are run by tests/test_docs.py.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

README = Path(__file__).parent.parent / "README.md"


def runnable_blocks():
    text = README.read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith("# runnable")]


def test_readme_quick_start_prunes_exactly_90_percent_and_zeroes_pruned_gradients(capsys):
    blocks = runnable_blocks()
    assert len(blocks) == 1, "the README keeps one runnable block: its quick start"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    jp, masks, grads, params = namespace["jp"], namespace["masks"], namespace["grads"], namespace["params"]

    # Exactly round(0.9 * 1280) = 1152 of the two kernels' weights pruned, the biases not prunable.
    summary = jp.summary(masks)
    assert (summary.kept, summary.total) == (128, 1280)
    assert "90.00%" in capsys.readouterr().out.splitlines()[-1]
    assert masks["hidden"]["bias"] is None and masks["out"]["bias"] is None

    # The gradient through apply_mask is exactly 0 at pruned weights, and not zero everywhere else.
    for layer in ("hidden", "out"):
        keep, g = np.asarray(masks[layer]["kernel"]), np.asarray(grads[layer]["kernel"])
        assert np.all(g[~keep] == 0.0) and np.any(g[keep] != 0.0)

    # finalize: the same tree, pruned weights exactly 0.0, kept ones untouched.
    assert jax.tree.structure(params) == jax.tree.structure(namespace["grads"])
    for layer in ("hidden", "out"):
        keep = np.asarray(masks[layer]["kernel"])
        w = np.asarray(params[layer]["kernel"])
        assert np.all(w[~keep] == 0.0) and np.all(w[keep] != 0.0)
    assert jnp.array_equal(params["hidden"]["bias"], jnp.zeros(64))
