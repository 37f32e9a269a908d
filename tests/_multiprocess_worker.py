"""The processes of test_multiprocess.py: jaxprune across 2 processes x 4 CPU devices.

python _multiprocess_worker.py run PORT PROCESS_ID DIRECTORY
    one of the two processes of a jax.distributed run on localhost:PORT (4 CPU devices each).
    Prunes, trains and checkpoints params sharded over all 8 devices; process 0 writes what it
    gathered (test code may gather, the library must not) to DIRECTORY/gathered.npz and both
    print a JSON line of what they checked.
python _multiprocess_worker.py check DIRECTORY
    one process with 4 CPU devices, afterwards: computes the single-process answers on the same
    weights and compares them with gathered.npz, then restores the checkpoint onto a 4-device
    mesh and onto one unsharded device; prints a JSON line.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxprune as jp
import jaxprune.checkpoint as jpc
from jaxprune._bits import _jitted, _pack_last_axis, pack_last_axis

SHAPES = {"a": (256, 512), "b": (512, 256), "c": (256, 512)}
# FSDP: a's rows, b's columns over all 8 devices; tensor-parallel: c's rows over "data", columns over "model".
SPECS = {"a": PartitionSpec(("data", "model"), None), "b": PartitionSpec(None, ("data", "model"))}
SPECS["c"] = PartitionSpec("data", "model")
SPARSITY = 0.6
PRUNE_AT = (1, 2)  # the schedule's rounds: the steps where its target rises
STEPS = 4  # the last step checks that the weights pruned in the last round went to 0


def weights():
    rng = np.random.default_rng(0)
    return {
        "a": rng.standard_normal(SHAPES["a"]).astype(np.float32),
        "b": rng.integers(-20, 20, SHAPES["b"]).astype(np.float32),  # many ties: the tie rule must hold across hosts
        "c": rng.standard_normal(SHAPES["c"]).astype(np.float32),
    }


# A selection takes seconds of CPU to compile for 8 devices, in each process, so each kind compiles once:
# global unstructured inside the Pruner's train step, per layer and 2:4 here under jit, whole columns eagerly.
@jax.jit
def prunes(params, masks, s):
    scores = jp.magnitude(params)
    return {
        "layer": jp.prune(scores, masks, sparsity=s, scope="layer"),
        "nm": jp.prune(scores, masks, structure=jp.NM(2, 4)),
    }


def eager_prune(params, masks):
    """Outside jit, with a Python target: the counts are read back to the host (counts.num_pruned)."""
    return jp.prune(jp.magnitude(params), masks, amount=0.25, structure=jp.Structured(axis=-1))


@jax.jit
def global_prune(params, masks, s):
    return jp.prune(jp.magnitude(params), masks, sparsity=s)


PRUNER = jp.Pruner(schedule=jp.schedules.linear(0.5, rounds=len(PRUNE_AT), every=1, begin=PRUNE_AT[0]))
TX = jp.masked_optimizer(optax.adam(1e-2))


def batch():
    rng = np.random.default_rng(1)
    return rng.standard_normal((8, 256)).astype(np.float32), rng.standard_normal((8, 512)).astype(np.float32)


@jax.jit
def train_step(state, t):
    x, y = batch()

    def loss(p):
        q = jp.apply_mask(p, state["pruner"].masks)
        h = jnp.tanh(jnp.tanh(x @ q["a"]) @ q["b"])
        return jnp.mean((h @ q["c"] - y) ** 2)

    params = state["params"]
    updates, opt_state = TX.update(jax.grad(loss)(params), state["opt_state"], params, masks=state["pruner"].masks)
    params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "pruner": PRUNER.update(state["pruner"], params, t)}


def initial_state(params):
    return {"params": params, "opt_state": TX.init(params), "pruner": PRUNER.init(params)}


def flat(tree):
    """{path: leaf} of the arrays of a tree (None leaves dropped)."""
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def collectives(compiled_text):
    """(op, element count) of every cross-device collective in compiled HLO."""
    op = r"(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?"
    found = re.findall(r"= \(?(\w+)\[([\d,]*)\][^=]*? " + op + r"\(", compiled_text)
    return [(name, int(np.prod([int(d) for d in dims.split(",") if d]))) for _, dims, name in found]


START = time.perf_counter()


def mark(what):
    """Progress on stderr, which the test shows when a process fails or hangs."""
    wall = time.perf_counter() - START
    print(f"{wall:6.2f} s wall, {time.process_time():6.2f} s CPU: {what}", file=sys.stderr, flush=True)


def resharded(name, tree, shardings):
    """The leaves of ``{leaf: mask}``-like ``tree`` not laid out as ``shardings`` says (empty when all are)."""
    return [f"{name}/{k}: {x.sharding}" for k, x in tree.items() if not x.sharding.is_equivalent_to(shardings[k], 2)]


def run(port, process_id, directory):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
    from jax.experimental.multihost_utils import process_allgather

    mark("initialized")
    assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    host = weights()
    shardings = {k: NamedSharding(mesh, SPECS[k]) for k in SHAPES}
    params = {k: jax.make_array_from_callback(SHAPES[k], shardings[k], lambda i, k=k: host[k][i]) for k in SHAPES}
    assert not params["a"].is_fully_addressable
    gathered = {}

    def gather(name, tree):
        for path, x in flat(process_allgather(tree, tiled=True)).items():
            gathered[name + path] = np.asarray(x)

    # 1. per-layer and 2:4 prunes under jit, whole columns eagerly (its counts are read back to the host).
    masks = jp.init_masks(params)
    pruned = prunes(params, masks, jnp.float32(SPARSITY))
    pruned["columns"] = eager_prune(params, masks)
    moved = [m for kind, tree in pruned.items() for m in resharded(kind, tree, shardings)]
    gather("pruned", pruned)
    summary_total = jp.summary(pruned["layer"]).total
    prune_hlo = prunes.lower(params, masks, jnp.float32(SPARSITY)).compile().as_text()
    mark("pruned")

    # 2. a jitted train step with a Pruner (global unstructured) and a masked optimizer.
    state = jax.jit(initial_state)(params)
    sparsities, zero_ok = [], []
    for t in range(STEPS):
        before = state["pruner"].masks
        state = train_step(state, t)
        sparsities.append(float(jp.sparsity(state["pruner"].masks)))  # a replicated scalar, read on each host
        zero_ok.append(bool(jax.jit(all_pruned_zero)(state["params"], before)))
        if t == PRUNE_AT[-1]:
            gather("round_params", state["params"])
            gather("round_before", before)
            gather("round_after", state["pruner"].masks)
    targets = [float(PRUNER.targets(t)[0]) for t in range(STEPS)]
    moved += resharded("pruner", state["pruner"].masks, shardings)
    mark("trained")

    # 3. checkpoints: process 0 alone holds the writer lock; each process writes its own shards.
    ckpt_dir = os.path.join(directory, "ckpt")
    with jp.Checkpointer(ckpt_dir) as ckpt:
        lock_errors = lock_checks(ckpt_dir, process_id)
        ckpt.save(STEPS, state)
        restored = ckpt.restore(like=state)
        checksums = [e["checksum"] for e in ckpt.layout()]
        try:
            ckpt.restore_flat()  # leaves span both hosts: it must refuse, not gather
            flat_error = None
        except RuntimeError as e:
            flat_error = str(e)
    mark("saved and restored")
    try:
        jp.to_sparse(params, masks)  # leaves span both hosts: a clear error, before any read
        sparse_error = None
    except ValueError as e:
        sparse_error = str(e)
    same = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.array_equal(a, b), restored, state))
    restored_sharding_kept = all(
        a.sharding.is_equivalent_to(b.sharding, a.ndim)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state))
    )
    mask = state["pruner"].masks["b"]
    packed = pack_last_axis(mask)
    gather("final", state)
    if process_id == 0:
        np.savez(os.path.join(directory, "gathered.npz"), **gathered)
    result = {
        "masks_resharded": moved,
        "summary_total": summary_total,
        "prune_collectives": collectives(prune_hlo),
        "sparsities": sparsities,
        "targets": targets,
        "pruned_weights_zero": zero_ok,
        "lock_errors": lock_errors,
        "restore_flat_error": flat_error,
        "to_sparse_error": sparse_error,
        "restored_same": all(bool(x) for x in same),
        "restored_sharding_kept": restored_sharding_kept,
        "packed_sharding_kept": packed.sharding.is_equivalent_to(mask.sharding, 2),
        "checksums": checksums,
        "checksum_collectives": collectives(jpc._device_mix64.lower(params["b"]).compile().as_text()),
        "pack_collectives": collectives(_jitted(_pack_last_axis, mask.sharding).lower(mask).compile().as_text()),
    }
    print(json.dumps(result), flush=True)
    jax.distributed.shutdown()


def all_pruned_zero(params, masks):
    """Every weight pruned before this step is exactly 0 after it (the masked optimizer's promise)."""
    return jnp.all(jnp.stack([jnp.all(jnp.where(masks[k], True, params[k] == 0)) for k in SHAPES]))


def lock_checks(ckpt_dir, process_id):
    """The errors of a would-be second writer: process 1's own flock, then a second Checkpointer in both."""
    errors = []
    if process_id == 1:  # process 1 holds no lock, but process 0's is held against it too
        try:
            os.close(jpc._lock(Path(ckpt_dir)))
        except RuntimeError as e:
            errors.append(str(e))
    try:
        jp.Checkpointer(ckpt_dir).close()
    except RuntimeError as e:
        errors.append(str(e))
    return errors


def check(directory):
    """The single-process answers, and restores onto 4 devices and onto one."""
    assert jax.process_count() == 1 and jax.device_count() == 4, jax.devices()
    gathered = dict(np.load(os.path.join(directory, "gathered.npz")))
    device = jax.devices()[0]
    params = {k: jax.device_put(v, device) for k, v in weights().items()}
    masks = jp.init_masks(params)
    single = prunes(params, masks, jnp.float32(SPARSITY))
    single["columns"] = eager_prune(params, masks)
    prune_same = {
        kind: all(np.array_equal(gathered[f"pruned['{kind}']['{k}']"], single[kind][k]) for k in SHAPES)
        for kind in single
    }
    # The Pruner's round at the last pruning step, redone on one device from the gathered params.
    round_params = {k: gathered[f"round_params['{k}']"] for k in SHAPES}
    round_before = {k: gathered[f"round_before['{k}']"] for k in SHAPES}
    redone = global_prune(*jax.device_put((round_params, round_before), device), jnp.float32(0.5))
    round_same = all(np.array_equal(gathered[f"round_after['{k}']"], redone[k]) for k in SHAPES)

    template = jax.eval_shape(initial_state, weights())
    expected = {path: gathered["final" + path] for path in flat(template)}
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))

    def on_mesh(path, leaf):
        name = re.search(r"\['(a|b|c)'\]", jax.tree_util.keystr(path))
        spec = SPECS[name.group(1)] if name and leaf.ndim == 2 else PartitionSpec()
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))

    results = {"prune_same": prune_same, "round_same": round_same}
    with jp.Checkpointer(os.path.join(directory, "ckpt"), read_only=True) as ckpt:
        layout = ckpt.layout()
        four = jax.tree_util.tree_map_with_path(on_mesh, template)
        for name, like in (("four_devices", four), ("one_device", template)):
            restored = ckpt.restore(like=like)
            results[name] = all(np.array_equal(np.asarray(x), expected[p]) for p, x in flat(restored).items())
            results[name + "_sharding"] = all(
                x.sharding.is_equivalent_to(w.sharding or jax.sharding.SingleDeviceSharding(device), x.ndim)
                for x, w in zip(jax.tree.leaves(restored), jax.tree.leaves(like))
            )
        by_path = ckpt.restore_flat()
    # The checksums the two processes computed on sharded arrays, recomputed here on host copies.
    stored = [jpc._stored(e["path"], by_path[e["path"]])[1] for e in layout]
    results["checksums_same"] = jpc._checksums(stored) == [e["checksum"] for e in layout]
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        check(sys.argv[2])
