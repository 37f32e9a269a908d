import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def on_8_devices(script):
    """Runs a worker script in a process with 8 simulated CPU devices; returns the JSON it printed last."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE / script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_global_prune_on_params_sharded_over_8_devices_matches_one_device():
    result = on_8_devices("_sharded_prune.py")
    assert result["same"], result
    total = 512 * 256 + 256 * 512 + 64 * 96
    assert sum(result["counts"].values()) >= round(0.6 * total)
    assert result["mask_sharding_kept"]
    assert result["units_same"] and result["units_sharding_kept"], result  # prune_units, called eagerly
    assert result["narrow_mask_round_trip"], result  # a checkpoint of a mask sharded finer than a byte
    # Only per-leaf counts and the ~65k-entry sample may be gathered, never a whole leaf.
    assert result["largest_collective"] < 256 * 512, result
    # A lazy |w| is never stored: per device, scratch is a fraction of the device's own weights (partial
    # counts, the sample), where a stored |w| alone would take all of them.
    assert result["lazy_scratch_per_device"] < result["params_per_device"] / 4, result


def test_oneshot_on_kernels_sharded_over_8_devices_matches_one_device():
    result = on_8_devices("_sharded_oneshot.py")
    n_out, kernel_bytes, hessian_bytes = (result.pop(k) for k in ("n_out", "kernel_bytes", "hessian_bytes"))
    for name, case in result.items():
        assert case["same_mask"] and case["kept_sharding"], (name, case)
        if name.startswith("wanda_in"):
            # Inputs sharded: each output's counts are summed across devices ([out] per bisection pass), but no
            # shard of the kernel moves.
            assert case["largest_collective"] <= n_out, (name, case)
        else:
            # Outputs sharded: every output is pruned on its own device; at most a few scalars cross.
            assert case["largest_collective"] <= 8, (name, case)
    for name in ("sparsegpt_out_50", "sparsegpt_out_24", "sparsegpt_out_torch_50"):
        case = result[name]
        assert case["max_kernel_diff"] <= 1e-5, (name, case)
        # Per device: an eighth of what one device needs for the whole kernel, plus the replicated Hessian
        # and its Cholesky factor; holding the kernel whole would cost over 4x the kernel.
        assert case["bytes_per_device_sharded"] <= case["bytes_single_device"] / 8 + 4 * hessian_bytes, (name, case)
        assert case["bytes_per_device_sharded"] < kernel_bytes, (name, case)
