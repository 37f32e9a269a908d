import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune import schedules

HERE = Path(__file__).parent


def same(a, b):
    def eq(x, y):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        return x.dtype == y.dtype and x.shape == y.shape and bool(jnp.all(x == y))

    return jax.tree.structure(a) == jax.tree.structure(b) and all(jax.tree.leaves(jax.tree.map(eq, a, b)))


def mlp(seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "dense_0": {"kernel": jax.random.normal(k[0], (12, 32)), "bias": jnp.zeros(32)},
        "dense_1": {"kernel": jax.random.normal(k[1], (32, 4)), "bias": jnp.zeros(4)},
    }


def test_round_trip_packs_masks_and_keeps_none_keys_and_named_tuples(tmp_path):
    params = mlp()
    pruner = jp.Pruner(schedule=0.7)
    pstate = pruner.update(pruner.init(params), params, 0)
    tx = jp.masked_optimizer(optax.adamw(1e-3))
    state = {"params": params, "opt_state": tx.init(params), "pruner": pstate, "key": jax.random.key(4), "step": 9}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(9, state)
        layout = {e["path"]: e for e in ckpt.layout()}
        restored = ckpt.restore(like=jax.eval_shape(lambda: state))
    assert layout["pruner/masks/dense_0/kernel"]["packed"] and layout["pruner/masks/dense_0/kernel"]["shape"] == [
        12,
        32,
    ]
    assert not layout["params/dense_0/kernel"]["packed"]
    assert isinstance(restored["pruner"], jp.PrunerState)
    assert restored["pruner"].masks["dense_0"]["bias"] is None
    assert restored["pruner"].masks["dense_0"]["kernel"].dtype == jnp.bool_
    assert same(restored, jax.tree.map(jnp.asarray, state))


def test_keeps_the_last_n(tmp_path):
    with jp.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in range(4):
            ckpt.save(step, {"x": jnp.full(3, float(step))})
        assert ckpt.steps() == [2, 3]
        np.testing.assert_array_equal(ckpt.restore(like={"x": jnp.zeros(3)}, step=2)["x"], [2.0, 2.0, 2.0])


def test_restore_into_abstract_nnx_state(tmp_path):
    def make():
        return nnx.Sequential(nnx.Linear(5, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 2, rngs=nnx.Rngs(1)))

    model = make()
    params = nnx.state(model, nnx.Param)
    masks = jp.prune(jp.magnitude(params), jp.init_masks(params), sparsity=0.5)
    abstract = nnx.eval_shape(make)
    like = {"params": nnx.state(abstract, nnx.Param), "masks": jax.eval_shape(lambda: masks)}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, {"params": params, "masks": masks})
        restored = ckpt.restore(like=like)
    fresh = make()
    nnx.update(fresh, restored["params"])
    x = jnp.ones((1, 5))
    np.testing.assert_array_equal(fresh(x), model(x))
    assert same(restored["masks"], masks)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    x = jax.random.normal(jax.random.key(1), (64, 12))
    y = jax.random.normal(jax.random.key(2), (64, 4))
    pruner = jp.Pruner(schedule=schedules.linear(0.8, rounds=4, every=5, begin=2))
    tx = jp.masked_optimizer(optax.adam(1e-2))

    @jax.jit
    def step(state, t):
        params, opt_state, pstate = state["params"], state["opt_state"], state["pruner"]

        def loss(p):
            h = jnp.tanh(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
            return jnp.mean((h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"] - y) ** 2)

        grads = jax.grad(lambda p: loss(jp.apply_mask(p, pstate.masks)))(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=pstate.masks)
        params = optax.apply_updates(params, updates)
        return {"params": params, "opt_state": opt_state, "pruner": pruner.update(pstate, params, t)}

    params = mlp()
    start = {"params": params, "opt_state": tx.init(params), "pruner": pruner.init(params)}
    state = start
    with jp.Checkpointer(tmp_path) as ckpt:
        for t in range(25):
            state = step(state, t)
            if t == 11:  # after the second pruning round
                ckpt.save(t, state)
        resumed = ckpt.restore(like=jax.eval_shape(lambda: start))
    assert int(resumed["pruner"].count) == 2
    for t in range(12, 25):
        resumed = step(resumed, t)
    assert int(state["pruner"].count) == 4
    assert same(resumed, state)


def test_missing_mismatched_and_damaged_checkpoints_raise_clear_errors(tmp_path):
    with jp.Checkpointer(tmp_path / "empty") as empty, pytest.raises(FileNotFoundError, match="no checkpoint in"):
        empty.restore(like={"x": jnp.zeros(2)})
    ckpt = jp.Checkpointer(tmp_path / "run")
    ckpt.save(5, {"w": jnp.ones((4, 4)), "m": jnp.ones((4, 4), bool)})
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 6 .*steps saved: \[5\]"):
        ckpt.restore(like={"w": jnp.ones((4, 4)), "m": jnp.ones((4, 4), bool)}, step=6)
    with pytest.raises(ValueError, match="holds 'm' where `like` has 'mask'"):
        ckpt.restore(like={"w": jnp.ones((4, 4)), "mask": jnp.ones((4, 4), bool)})
    with pytest.raises(ValueError, match=r"leaf 'w' is float32\[4, 4\] but `like` wants float32\[4, 5\]"):
        ckpt.restore(like={"w": jnp.ones((4, 5)), "m": jnp.ones((4, 4), bool)})
    with pytest.raises(ValueError, match="has 2 leaves but `like` has 3"):
        ckpt.restore(like={"w": jnp.ones((4, 4)), "m": jnp.ones((4, 4), bool), "z": jnp.ones(1)})
    # Damage the array files: truncate every data file of the step.
    for root, _, files in os.walk(tmp_path / "run" / "5" / "arrays"):
        for f in files:
            p = Path(root) / f
            if p.stat().st_size > 0 and not f.startswith("_"):
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    ckpt.close()
    with jp.Checkpointer(tmp_path / "run") as again, pytest.raises(ValueError, match="damaged or incomplete"):
        again.restore(like={"w": jnp.ones((4, 4)), "m": jnp.ones((4, 4), bool)})


def test_a_process_killed_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_killed_save.py"), str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            if line.startswith("saving 3"):  # step 2 is complete, step 3 is being written
                time.sleep(0.3)
                break
        else:
            pytest.fail(f"the saving process ended early with code {proc.wait()}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = jp.Checkpointer(tmp_path)
    assert ckpt.steps()[:1] == [1]
    assert 3 not in ckpt.steps() or ckpt.latest_step() == 3  # a finished step 3 is fine, a partial one is not listed
    restored = ckpt.restore(like={"w": jnp.zeros((3, 4)), "mask": jnp.zeros((3, 4), bool)}, step=1)
    np.testing.assert_array_equal(restored["w"], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(restored["mask"], np.arange(12).reshape(3, 4) % 3 == 0)
    latest = ckpt.latest_step()
    like = {"w": jnp.zeros((3000, 3000)), "mask": jnp.zeros((3000, 3000), bool)} if latest > 1 else None
    if like is not None:
        assert ckpt.restore(like=like)["mask"].all()
    ckpt.close()
