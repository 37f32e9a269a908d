"""Run in a subprocess with 8 simulated CPU devices (see test_sharding.py): Wanda and SparseGPT on sharded kernels.

Every case prunes the same kernel twice, sharded over the 8 devices and on one
device, and reports whether the results agree, whether the outputs keep the
kernel's sharding, the largest collective in the compiled program (elements)
and, for SparseGPT, the compiled program's per-device memory.
"""

import json
import re
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxprune as jp

N_IN, N_OUT = 128, 2048  # a kernel 16x the Hessian, so that holding it whole would show in the memory

_COLLECTIVE = r"(?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?"


def _largest_collective(hlo: str) -> int:
    """The most elements any one collective of the compiled HLO moves (0 when there is none)."""
    shapes = re.findall(r"= \w+\[([\d,]*)\]\S* " + _COLLECTIVE + r"\(", hlo)
    return max((int(np.prod([int(d) for d in dims.split(",") if d])) for dims in shapes), default=0)


def _footprint(compiled) -> int:
    """Bytes the compiled program needs on one device: its arguments, outputs and temporaries."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def _both(fn, kernel, stat, sharding):
    """Compiles and runs ``fn(kernel, stat)`` on one device and with the kernel sharded."""
    out = {}
    for name, where in (("single", jax.devices()[0]), ("sharded", sharding)):
        args = (jax.device_put(kernel, where), stat)  # the statistic goes where jit puts it: replicated
        compiled = jax.jit(fn).lower(*args).compile()
        out[name] = (compiled, compiled(*args))
    return out


def _kept_sharding(arrays, sharding) -> bool:
    return all(a.sharding.is_equivalent_to(sharding, 2) for a in jax.tree.leaves(arrays))


def wanda_case(mesh, spec, in_axis, target):
    rng = np.random.default_rng(1)
    shape = (N_IN, N_OUT) if in_axis == 0 else (N_OUT, N_IN)
    # Few distinct scores, so that ties straddle every output's cut and the tie rule crosses shards.
    kernel = rng.integers(-4, 5, shape).astype(np.float32)
    norms = rng.integers(1, 3, N_IN).astype(np.float32)
    sharding = NamedSharding(mesh, spec)
    runs = _both(lambda w, n: jp.oneshot.wanda(w, n, in_axis=in_axis, **target), kernel, norms, sharding)
    single, sharded = runs["single"][1], runs["sharded"][1]
    return {
        "same_mask": bool(np.array_equal(jax.device_get(single), jax.device_get(sharded))),
        "kept_sharding": _kept_sharding(sharded, sharding),
        "largest_collective": _largest_collective(runs["sharded"][0].as_text()),
    }


def sparsegpt_case(mesh, spec, in_axis, target):
    rng = np.random.default_rng(2)
    shape = (N_IN, N_OUT) if in_axis == 0 else (N_OUT, N_IN)
    kernel = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((4 * N_IN, N_IN)).astype(np.float32) * rng.lognormal(0, 1, N_IN).astype(np.float32)
    sharding = NamedSharding(mesh, spec)
    # blocksize 32: four blocks in two groups, so the trailing updates between blocks and groups both run.
    runs = _both(
        lambda w, h: jp.oneshot.sparsegpt(w, h, blocksize=32, in_axis=in_axis, **target), kernel, x.T @ x, sharding
    )
    (k1, m1), (k8, m8) = (jax.device_get(runs[name][1]) for name in ("single", "sharded"))
    return {
        "same_mask": bool(np.array_equal(m1, m8)),
        "bit_identical_kernel": bool(np.array_equal(k1, k8)),
        "max_kernel_diff": float(np.max(np.abs(k1 - k8)) / np.max(np.abs(kernel))),
        "kept_sharding": _kept_sharding(runs["sharded"][1], sharding),
        "largest_collective": _largest_collective(runs["sharded"][0].as_text()),
        "bytes_per_device_sharded": _footprint(runs["sharded"][0]),
        "bytes_single_device": _footprint(runs["single"][0]),
    }


def main():
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    by_out, by_in = PartitionSpec(None, "d"), PartitionSpec("d", None)  # for Flax's [in, out]
    half, two_four = {"sparsity": 0.5}, {"nm": (2, 4)}
    result = {
        "wanda_out_50": wanda_case(mesh, by_out, 0, half),
        "wanda_out_24": wanda_case(mesh, by_out, 0, two_four),
        "wanda_in_50": wanda_case(mesh, by_in, 0, half),  # FSDP: the inputs sharded
        "wanda_in_24": wanda_case(mesh, by_in, 0, two_four),
        "sparsegpt_out_50": sparsegpt_case(mesh, by_out, 0, half),
        "sparsegpt_out_24": sparsegpt_case(mesh, by_out, 0, two_four),
        "sparsegpt_out_torch_50": sparsegpt_case(mesh, by_in, 1, half),  # PyTorch's [out, in], rows = outputs
        "n_out": N_OUT,
        "kernel_bytes": N_IN * N_OUT * 4,
        "hessian_bytes": N_IN * N_IN * 4,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
