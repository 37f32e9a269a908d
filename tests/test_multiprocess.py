"""jaxprune across processes: 2 processes x 4 CPU devices with jax.distributed, then one process to check.

The workers are tests/_multiprocess_worker.py: params sharded FSDP-style and tensor-parallel over
all 8 devices; global, per-layer, structured and N:M prunes compared with one device's answer; a
jitted train step with a Pruner and a masked optimizer; a checkpoint saved by both processes and
restored on the same mesh, on 4 devices and on one.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TIMEOUT = 240  # seconds for the whole run: a stuck collective must not stall the suite


def env(devices):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    out = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_pair(directory):
    """Runs both processes of the distributed run; returns their JSON results, or fails with their stderr."""
    port = free_port()
    outs = [open(directory / f"process_{i}.out", "w+") for i in range(2)]
    errs = [open(directory / f"process_{i}.err", "w+") for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_multiprocess_worker.py"), "run", str(port), str(i), str(directory)],
            env=env(4),
            stdout=outs[i],
            stderr=errs[i],
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + TIMEOUT
    try:
        # A process that fails leaves the other waiting in a collective: stop at the first failure.
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:  # also on failure or timeout: no process outlives the test
            p.kill()
            p.wait()
    logs = []
    for f in outs + errs:
        f.seek(0)
        logs.append(f.read())
        f.close()
    report = "".join(
        f"\n--- process {i} (exit {procs[i].returncode}) stderr ---\n{logs[2 + i][-3000:]}" for i in range(2)
    )
    assert all(p.returncode == 0 for p in procs), f"the processes failed or ran past {TIMEOUT} s{report}"
    return [json.loads(out.strip().splitlines()[-1]) for out in logs[:2]]


def run_check(directory):
    proc = subprocess.run(
        [sys.executable, str(HERE / "_multiprocess_worker.py"), "check", str(directory)],
        env=env(4),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multiprocess")
    pair = run_pair(directory)
    return {"pair": pair, "check": run_check(directory), "directory": directory}


N = 3 * 256 * 512  # prunable weights


def test_prune_across_processes_matches_one_device_and_keeps_the_sharding(results):
    assert results["check"]["prune_same"] == {k: True for k in ("layer", "nm", "columns")}
    for r in results["pair"]:
        assert r["masks_resharded"] == [] and r["summary_total"] == N
        # Only counts, single rows and the bracket's sample (<= 65,536 keys per group) cross devices.
        moved = [size for _, size in r["prune_collectives"]]
        assert moved and max(moved) < 256 * 512, r["prune_collectives"]


def test_a_pruner_train_step_across_processes_follows_its_schedule(results):
    for r in results["pair"]:
        # Pruned at steps 1 and 2; the sparsity reached is exactly the schedule's at every step.
        assert 0 == r["targets"][0] < r["targets"][1] < r["targets"][2] == r["targets"][3], r["targets"]
        assert [round(s * N) for s in r["sparsities"]] == [round(t * N) for t in r["targets"]]
        assert all(r["pruned_weights_zero"])
    assert results["check"]["round_same"]  # the round at step 2 is the one-device prune of the same params


def test_checkpoints_across_processes_restore_on_any_mesh(results):
    pair, check = results["pair"], results["check"]
    for r in pair:
        assert r["restored_same"] and r["restored_sharding_kept"] and r["packed_sharding_kept"]
        assert "use restore(like=...)" in r["restore_flat_error"]
        assert "'a' spans other processes' devices; gather it first" in r["to_sparse_error"]
        # The checksum moves only each device's two partial sums between devices; the mask packing nothing.
        assert all(size <= 8 for _, size in r["checksum_collectives"]), r["checksum_collectives"]
        assert r["pack_collectives"] == [], r["pack_collectives"]
    assert pair[0]["checksums"] == pair[1]["checksums"]
    assert check["checksums_same"]  # sharded over 2 processes or whole on one host: the same 64 bits
    assert check["four_devices"] and check["four_devices_sharding"]
    assert check["one_device"] and check["one_device_sharding"]


def test_each_process_writes_its_own_shards(results):
    arrays = results["directory"] / "ckpt" / "4" / "arrays"
    written = [
        sum(f.stat().st_size for f in (arrays / f"ocdbt.process_{i}").rglob("*") if f.is_file()) for i in range(2)
    ]
    # params, Adam's two moments and the packed masks: ~4.6 MB, half from each process, none gathered to one.
    assert min(written) > 0.4 * sum(written), written


def test_one_writer_per_directory_across_the_processes_of_a_run(results):
    holder, other = results["pair"]
    # Process 0 holds the lock: a second Checkpointer fails there naming it, and in process 1 too.
    assert len(holder["lock_errors"]) == 1 and "already open for writing" in holder["lock_errors"][0]
    assert "(this process)" in holder["lock_errors"][0]
    assert len(other["lock_errors"]) == 2, other["lock_errors"]
    assert "already open for writing" in other["lock_errors"][0]  # its own flock meets process 0's
    assert "process 0 of this run could not take the writer lock" in other["lock_errors"][1]
