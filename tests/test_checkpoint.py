import gc
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
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
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))


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
    ckpt.close()
    like = {"w": jnp.ones((4, 4)), "m": jnp.ones((4, 4), bool)}
    arrays = tmp_path / "run" / "5" / "arrays"
    pristine = tmp_path / "pristine"
    shutil.copytree(arrays, pristine)
    # Damage the data files (TensorStore's), then the per-array metadata (JSON) alone: which of the two a
    # restore reads first is Orbax's business, so each is damaged on its own.
    for damaged, cause in (("data", "tensorstore"), ("array_metadatas", "Expecting value")):
        shutil.rmtree(arrays)
        shutil.copytree(pristine, arrays)
        for root, _, files in os.walk(arrays):
            for f in files:
                p = Path(root) / f
                is_metadata = "array_metadatas" in p.parts
                if p.stat().st_size > 0 and not f.startswith("_") and is_metadata == (damaged == "array_metadatas"):
                    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
        with jp.Checkpointer(tmp_path / "run") as again, pytest.raises(ValueError, match="damaged or incomplete") as e:
            again.restore(like=like)
        # A short message naming the step, the directory and what could not be read; Orbax's ~1 KB of
        # TensorStore spec (or its JSON error) stays in the chained cause.
        message = str(e.value)
        assert len(message) < 300 and "tensorstore_spec" not in message, (damaged, message)
        assert f"step 5 in {tmp_path / 'run'}" in message and re.search(r"leaf '(w|m)'|file 5/arrays/", message)
        assert e.value.__cause__ is not None and cause in str(e.value.__cause__), (damaged, e.value.__cause__)


def test_a_process_killed_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_killed_save.py"), str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True
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
    ckpt = jp.Checkpointer(tmp_path)  # the killed writer's lock went with it
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


def snapshot(directory):
    """Every file and directory under ``directory`` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size, st.st_mtime_ns)
    return out


def run_worker(mode, directory, timeout=60):
    return subprocess.run(
        [sys.executable, str(HERE / "_ckpt_worker.py"), mode, str(directory)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def full(value):
    return {"x": jnp.full(3, float(value))}


LIKE = {"x": jnp.zeros(3)}


def test_saving_at_or_below_a_saved_step_raises_instead_of_keeping_the_old_data(tmp_path):
    with jp.Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        for step in (10, 20, 30):
            ckpt.save(step, full(step))
        ckpt.restore(LIKE, step=10)  # roll back, train on, save again: the steps collide
        for step in (30, 20, 15, np.int64(11)):
            with pytest.raises(FileExistsError, match=rf"step {step} .*steps saved: \[10, 20, 30\].*overwrite=True"):
                ckpt.save(step, full(-1))
        assert ckpt.steps() == [10, 20, 30]
        np.testing.assert_array_equal(ckpt.restore(LIKE, step=20)["x"], [20.0] * 3)
        # overwrite=True drops the abandoned branch (20 and 30) and saves.
        ckpt.save(20, full(-1), overwrite=True)
        assert ckpt.steps() == [10, 20]
        np.testing.assert_array_equal(ckpt.restore(LIKE)["x"], [-1.0] * 3)
        ckpt.save(21, full(21))
    with jp.Checkpointer(tmp_path) as again:  # what Orbax remembers across processes agrees
        assert again.steps() == [10, 20, 21]
        np.testing.assert_array_equal(again.restore(LIKE)["x"], [21.0] * 3)


def test_a_new_process_cannot_silently_skip_a_save(tmp_path):
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(10, full(10))
        ckpt.save(20, full(20))
    result = run_worker("resave", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("FileExistsError") == 2 and "SAVED" not in result.stdout, result.stdout
    assert "steps saved: [10, 20]" in result.stdout
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt:
        np.testing.assert_array_equal(ckpt.restore(LIKE)["x"], [20.0] * 3)


def test_a_save_that_orbax_declines_raises(tmp_path, monkeypatch):
    with jp.Checkpointer(tmp_path) as ckpt:
        monkeypatch.setattr(ckpt._manager, "save", lambda *args, **kwargs: False)
        with pytest.raises(RuntimeError, match="Orbax declined to save checkpoint step 3"):
            ckpt.save(3, full(3))


def test_checksums_catch_changed_bytes(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    state = {"w": w, "mask": w > 0, "key": jax.random.key(3)}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        assert all(re.fullmatch("mix64:[0-9a-f]{16}", e["checksum"]) for e in ckpt.layout())
    # Flip one byte in the middle of the biggest data file: w's values (uncompressible noise).
    files = [Path(root) / f for root, _, fs in os.walk(tmp_path / "1" / "arrays") for f in fs]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt:
        for restore in (lambda: ckpt.restore(jax.eval_shape(lambda: state)), ckpt.restore_flat):
            with pytest.raises(ValueError, match=r"checkpoint step 1 in .*: leaf 'w' does not match its checksum"):
                restore()


def test_a_checkpoint_without_checksums_restores_unverified(tmp_path):
    state = {"w": jnp.arange(6.0), "mask": jnp.arange(6) % 2 == 0}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    layout_file = tmp_path / "1" / "layout" / "metadata"
    meta = json.loads(layout_file.read_text())
    assert meta["format"] == "jaxprune-checkpoint-3"
    meta["format"] = "jaxprune-checkpoint-1"  # as written before checksums existed
    for entry in meta["leaves"]:
        del entry["checksum"]
    layout_file.write_text(json.dumps(meta))
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt:
        assert same(ckpt.restore(like=state), state)


def test_one_writer_per_directory_in_one_process(tmp_path):
    first = jp.Checkpointer(tmp_path)
    first.save(1, full(1))
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(tmp_path))} is already open .*pid {os.getpid()}"):
        jp.Checkpointer(tmp_path)
    assert snapshot(tmp_path) == before
    with jp.Checkpointer(tmp_path, read_only=True) as reader:  # readers take no lock
        np.testing.assert_array_equal(reader.restore(LIKE)["x"], [1.0] * 3)
        with pytest.raises(RuntimeError, match="read_only=True"):
            reader.save(2, full(2))
    first.close()
    first.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        first.save(2, full(2))
    with jp.Checkpointer(tmp_path) as second:
        second.save(2, full(2))
    with jp.Checkpointer(tmp_path) as third:  # the context manager released it
        assert third.steps() == [1, 2]
    dropped = jp.Checkpointer(tmp_path)
    del dropped
    gc.collect()  # a Checkpointer nobody closed releases the lock when it is collected
    jp.Checkpointer(tmp_path).close()


def test_one_writer_per_directory_across_processes(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    with open(tmp_path / "worker.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "_ckpt_worker.py"), "hold", str(directory)],
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    watchdog = threading.Timer(60, proc.kill)  # a stuck worker cannot stall the suite
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line == f"holding {proc.pid}\n", (tmp_path / "worker.err").read_text()[-2000:]
        before = snapshot(directory)
        with pytest.raises(RuntimeError, match=rf"{re.escape(str(directory))} is already open .*pid {proc.pid}"):
            jp.Checkpointer(directory)
        assert snapshot(directory) == before
        # Restoring needs no lock, and the reader leaves the writer's files alone.
        with jp.Checkpointer(directory, read_only=True) as reader:
            assert reader.restore(like={"w": jnp.zeros((3, 4)), "mask": jnp.zeros((3, 4), bool)})["mask"].sum() == 4
        assert snapshot(directory) == before
        proc.send_signal(signal.SIGKILL)  # the OS drops a dead writer's lock
        proc.wait()
        with jp.Checkpointer(directory) as ckpt:
            ckpt.save(2, full(2))
            assert ckpt.steps() == [1, 2]
    finally:
        watchdog.cancel()
        proc.kill()
        proc.communicate()


def test_a_reader_creates_cleans_and_deletes_nothing(tmp_path):
    with jp.Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        for step in range(4):
            ckpt.save(step, full(step))
    stale = tmp_path / "9.orbax-checkpoint-tmp-1234"  # what a writer killed mid-save leaves
    stale.mkdir()
    (stale / "junk").write_bytes(b"x")
    before = snapshot(tmp_path)
    with jp.Checkpointer(tmp_path, max_to_keep=1, read_only=True) as reader:
        assert reader.steps() == [0, 1, 2, 3] and reader.latest_step() == 3
        reader.layout(1)
        reader.restore(LIKE, step=2)
        reader.restore_flat()
    assert snapshot(tmp_path) == before
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        jp.Checkpointer(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_a_failed_save_raises_a_clear_error_and_keeps_the_earlier_steps(tmp_path):
    directory = tmp_path / "run"
    with jp.Checkpointer(directory) as ckpt:
        ckpt.save(1, full(1))
        # A step name too long for the file system: Orbax's own failure path.
        with pytest.raises(OSError, match=rf"could not save checkpoint step 1000+ in {re.escape(str(directory))} "):
            ckpt.save(10**300, full(2))
        assert ckpt.steps() == [1]
        # The directory replaced by a file: caught before Orbax starts.
        directory.rename(tmp_path / "moved")
        directory.write_text("in the way")
        with pytest.raises(FileNotFoundError, match=rf"cannot save checkpoint step 2: {re.escape(str(directory))}"):
            ckpt.save(2, full(2))
        directory.unlink()
        (tmp_path / "moved").rename(directory)
        np.testing.assert_array_equal(ckpt.restore(LIKE)["x"], [1.0] * 3)
        ckpt.save(2, full(2))  # the Checkpointer still works
        assert ckpt.steps() == [1, 2]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        jp.Checkpointer(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match=rf"cannot create the checkpoint directory .*{tmp_path / 'file'}/sub"):
        jp.Checkpointer(tmp_path / "file" / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_save_into_a_read_only_directory_raises(tmp_path):
    with jp.Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, full(1))
        os.chmod(tmp_path / "run", 0o555)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                ckpt.save(2, full(2))
        finally:
            os.chmod(tmp_path / "run", 0o755)
        assert ckpt.steps() == [1]


def test_a_failed_save_lets_the_process_exit_at_once(tmp_path):
    start = time.monotonic()
    result = run_worker("fail", tmp_path)  # before the fix: Orbax's threads held the exit for 5 minutes
    assert result.returncode == 1, result.stderr[-2000:]
    assert "caught OSError" in result.stdout and "restored 1: True" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("OSError: [Errno 36] could not save checkpoint step 1000")
    assert "TimeoutError" not in result.stderr
    assert time.monotonic() - start < 45


@pytest.mark.parametrize(("step", "error"), [(2.7, TypeError), (True, TypeError), ("3", TypeError), (-1, ValueError)])
def test_steps_must_be_non_negative_ints(tmp_path, step, error):
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(np.int64(3), full(3))  # NumPy ints are fine
        for call in (
            lambda: ckpt.save(step, full(0)),
            lambda: ckpt.restore(LIKE, step=step),
            lambda: ckpt.restore_flat(step),
            lambda: ckpt.layout(step),
        ):
            with pytest.raises(error, match="`step` must be"):
                call()
        assert ckpt.steps() == [3]


def test_leaves_and_arguments_are_checked_before_anything_is_written(tmp_path):
    with jp.Checkpointer(tmp_path) as ckpt:
        for bad, path in [({"a": {"name": "abc"}}, "a/name"), ({"o": object()}, "o"), ({"s": np.array(["a"])}, "s")]:
            with pytest.raises(TypeError, match=rf"`state` leaf '{path}' must be an array or a number"):
                ckpt.save(1, {"w": jnp.ones(2), **bad})
        for empty in (None, {}, {"a": None}):
            with pytest.raises(ValueError, match="`state` has no array or number in it"):
                ckpt.save(1, empty)
        assert ckpt.steps() == []
    with pytest.raises(TypeError, match=r"`directory` must be a str or os\.PathLike"):
        jp.Checkpointer(None)
    for bad, error in [(0, ValueError), (2.5, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="`max_to_keep`"):
            jp.Checkpointer(tmp_path / "other", max_to_keep=bad)
    assert not (tmp_path / "other").exists()


def test_save_without_waiting_lands_on_close(tmp_path):
    ckpt = jp.Checkpointer(tmp_path)
    ckpt.save(1, full(1), wait=False)
    ckpt.close()
    with jp.Checkpointer(tmp_path, read_only=True) as reader:
        np.testing.assert_array_equal(reader.restore(LIKE)["x"], [1.0] * 3)


def test_a_failed_restore_leaves_no_event_loop_noise(tmp_path, monkeypatch, caplog):
    # Orbax closes its event loop when one read fails; TensorStore's other reads then report
    # RuntimeError('Event loop is closed') to sys.unraisablehook (pytest's warning) later on, the garbage
    # collector's closing of an unfinished read coroutine reports there too, and a read task that failed
    # unobserved is logged by asyncio ("Task exception was never retrieved", with TensorStore's spec).
    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    caplog.set_level(logging.ERROR, logger="asyncio")
    state = {f"w{i}": jnp.full(16, float(i)) for i in range(32)}  # many reads in flight when one fails
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    for root, _, files in os.walk(tmp_path / "1" / "arrays"):
        for f in files:
            p = Path(root) / f
            if p.stat().st_size > 0 and not f.startswith("_"):
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt:
        for _ in range(20):  # the race is won often, not always
            with pytest.raises(ValueError, match="damaged or incomplete"):
                ckpt.restore_flat()
    time.sleep(0.5)  # the abandoned reads finish in the background
    gc.collect()
    assert [str(r.exc_value) for r in reports] == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def orbax_function(source: str, name: str):
    """A function defined in a file of Orbax's (for the filters' test)."""
    namespace: dict = {}
    exec(compile(source, "/site-packages/orbax/checkpoint/_src/serialization/serialization.py", "exec"), namespace)
    return namespace[name]


def test_the_abandoned_read_filters_drop_only_orbaxs_abandoned_reads(monkeypatch, caplog):
    from jaxprune.checkpoint.checkpointer import _ignore_abandoned_reads

    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    _ignore_abandoned_reads()
    _ignore_abandoned_reads()  # once each: the hook is not wrapped twice, the filter not added twice
    assert len(logging.getLogger("asyncio").filters) == 1 and sys.unraisablehook.previous == reports.append

    # sys.unraisablehook: an Orbax coroutine closed by the garbage collector (its GeneratorExit turned into an
    # Exception by Orbax) and the closed loop's RuntimeError are dropped; any other coroutine or cause passes.
    orbax_read = orbax_function("async def _read(): pass", "_read")
    namespace: dict = {}
    exec("async def mine(): pass", namespace)

    def report(coroutine, cause):
        exc = Exception("Encountered error while reading array index")
        exc.__cause__ = cause
        return types.SimpleNamespace(exc_value=exc, object=coroutine)

    coroutines = [orbax_read(), namespace["mine"](), orbax_read()]
    for coroutine, cause in zip(coroutines, [GeneratorExit(), GeneratorExit(), ValueError("disk")]):
        sys.unraisablehook(report(coroutine, cause))
        coroutine.close()
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None))
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("something else"), object=None))
    assert [(r.object.__name__ if r.object else None, type(r.exc_value.__cause__).__name__) for r in reports] == [
        ("mine", "GeneratorExit"),
        ("_read", "ValueError"),
        (None, "NoneType"),
    ]

    # asyncio's "... exception was never retrieved": dropped for a TensorStore error, a task whose coroutine is
    # Orbax's, or an exception raised through Orbax's code; kept for anything else, and other records kept.
    def raised_in(function):
        try:
            function()
        except ValueError as e:
            return e

    through_orbax = raised_in(orbax_function("def load():\n    raise ValueError('bad json')", "load"))
    tensorstore = ValueError("DATA_LOSS: Error opening \"zarr\" driver [tensorstore_spec='{}']")
    orbax_task = "future: <Task finished coro=<Store.read() done, defined at /x/orbax/checkpoint/_src/m.py:9>>"
    asyncio_log = logging.getLogger("asyncio")
    for exc, future in [
        (tensorstore, "future: <Future finished>"),
        (ValueError("bad json"), orbax_task),
        (through_orbax, "future: <Future finished>"),
        (ValueError("mine"), "future: <Future finished>"),
    ]:
        asyncio_log.error(f"Future exception was never retrieved\n{future}", exc_info=(ValueError, exc, None))
    asyncio_log.error("Unhandled exception in event loop", exc_info=(ValueError, tensorstore, None))
    logged = [(r.getMessage().splitlines()[0], str(r.exc_info[1])) for r in caplog.records if r.name == "asyncio"]
    assert logged == [
        ("Future exception was never retrieved", "mine"),
        ("Unhandled exception in event loop", str(tensorstore)),
    ]
