"""Run in a subprocess with 8 simulated CPU devices (see test_sharding.py)."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxprune as jp


def main():
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    params = {
        "a": rng.standard_normal((512, 256)).astype(np.float32),
        "b": rng.integers(-20, 20, (256, 512)).astype(np.float32),  # many ties
        "c": rng.standard_normal((64, 96)).astype(np.float32),
    }
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    specs = {
        "a": PartitionSpec("data", "model"),
        "b": PartitionSpec(None, ("data", "model")),
        "c": PartitionSpec("data"),
    }
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    single = {k: jax.device_put(v, jax.devices()[0]) for k, v in params.items()}

    @jax.jit
    def run(params, masks, s):
        masks = jp.prune(jp.magnitude(params), masks, sparsity=s)
        return jp.prune(jp.magnitude(params), masks, sparsity=s + 0.2, scope="layer")

    out = {}
    for name, p in (("sharded", sharded), ("single", single)):
        masks = jp.init_masks(p)
        out[name] = jax.device_get(run(p, masks, jnp.float32(0.6)))
    same = all(np.array_equal(out["sharded"][k], out["single"][k]) for k in params)
    # Whole units, called eagerly: sharded leaves take the XLA path (the host path would gather them).
    units = [[jp.UnitAxis("a", 1), jp.UnitAxis("b", 0)]]
    by_units = {
        name: jp.prune_units(jp.magnitude(p), jp.unit_masks(p, units), units, sparsity=0.5)
        for name, p in (("sharded", sharded), ("single", single))
    }
    units_same = all(np.array_equal(by_units["sharded"][k], by_units["single"][k]) for k in ("a", "b"))
    units_sharding = all(by_units["sharded"][k].sharding == sharded[k].sharding for k in ("a", "b"))
    counts = {k: int((~out["sharded"][k]).sum()) for k in params}
    hlo = run.lower(sharded, jp.init_masks(sharded), jnp.float32(0.6)).compile().as_text()
    # No collective may move a whole leaf: only counts and small samples cross devices.
    op = r"(?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?"
    moved = [
        int(np.prod([int(d) for d in dims.split(",") if d]))
        for dims in re.findall(r"= \w+\[([\d,]*)\]\S* " + op + r"\(", hlo)
    ]
    assert moved, "no collective found: the HLO pattern is stale"
    masks_sharding = jp.init_masks(sharded)["a"].sharding
    temp, params_bytes = scratch_per_device(mesh)
    narrow_ok = narrow_mask_round_trip(mesh)
    print(
        json.dumps(
            {
                "same": same,
                "counts": counts,
                "largest_collective": max(moved),
                "mask_sharding_kept": masks_sharding == sharded["a"].sharding,
                "units_same": units_same,
                "units_sharding_kept": units_sharding,
                "lazy_scratch_per_device": temp,
                "params_per_device": params_bytes,
                "narrow_mask_round_trip": narrow_ok,
            }
        )
    )


def narrow_mask_round_trip(mesh) -> bool:
    """A mask whose last axis is split into shards narrower than a byte (8 columns over 2 devices packs to
    1 byte per row) is saved and restored with its sharding; saving it used to raise XLA's IndivisibleError."""
    import tempfile

    mask = jax.device_put(np.arange(256).reshape(32, 8) % 3 > 0, NamedSharding(mesh, PartitionSpec("data", "model")))
    with tempfile.TemporaryDirectory() as d, jp.Checkpointer(d) as ckpt:
        ckpt.save(0, {"m": mask, "w": jnp.ones((32, 8))})
        back = ckpt.restore({"m": mask, "w": jnp.ones((32, 8))})
    return bool(np.array_equal(back["m"], mask)) and back["m"].sharding == mask.sharding


def scratch_per_device(mesh):
    """Per-device scratch memory of a lazy magnitude prune over FSDP-sharded kernels (compiled, not run)."""
    axes = ("data", "model")
    by_rows = NamedSharding(mesh, PartitionSpec(axes, None))
    by_cols = NamedSharding(mesh, PartitionSpec(None, axes))
    shape = (2048, 4096)
    params = {"rows": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=by_rows)}
    params["cols"] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=by_cols)
    masks = {k: jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=p.sharding) for k, p in params.items()}
    prune = jax.jit(lambda p, m: jp.prune(jp.magnitude(p, lazy=True), m, sparsity=0.9))
    memory = prune.lower(params, masks).compile().memory_analysis()  # of the per-device program
    return memory.temp_size_in_bytes, 2 * 2048 * 4096 * 4 // 8


if __name__ == "__main__":
    sys.exit(main())
