"""Checkpoint format 3: masks packed along their last axis, "mix64" checksums; format 2 still restores.

The multi-process side of both (sharded saves, restores on other meshes) is in test_multiprocess.py.
"""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import xxhash

import jaxprune as jp
import jaxprune.checkpoint as jpc


def mix64_reference(x: np.ndarray) -> str:
    """The checksum as specified, written out in plain Python integers (slow; small arrays only)."""
    mask = 0xFFFFFFFF

    def fmix32(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & mask
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & mask
        return h ^ (h >> 16)

    raw = np.ascontiguousarray(x).reshape(-1)
    size = raw.dtype.itemsize
    words = raw.view(f"uint{8 * size}").astype(np.uint32) if size < 4 else raw.view(np.uint32)
    a = b = 0
    for i, w in enumerate(int(w) for w in words):
        a += fmix32(w ^ ((i * 0x9E3779B1 + 0x3C6EF372) & mask))
        b += fmix32((w * 0x27D4EB2F + i * 0x85EBCA77 + 0x165667B1) & mask)
    return f"mix64:{a & mask:08x}{b & mask:08x}"


ARRAYS = {
    "float32": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
    "bfloat16": np.arange(-7, 6).astype(ml_dtypes.bfloat16),
    "float16": np.linspace(-2, 2, 9).astype(np.float16),
    "int8": np.arange(-4, 7, dtype=np.int8).reshape(1, 11),
    "uint8": np.arange(250, 256, dtype=np.uint8),
    "bool": np.arange(10) % 3 == 0,
    "int32 scalar": np.int32(-5),
    "complex64": (np.arange(4) + 1j * np.arange(4, 8)).astype(np.complex64),
    "uint32 key data": np.asarray(jax.random.key_data(jax.random.key(3))),
}


@pytest.mark.parametrize("name", ARRAYS)
def test_the_checksum_is_the_same_on_the_host_under_jit_and_as_specified(name):
    x = np.asarray(ARRAYS[name])
    expected = mix64_reference(x)
    assert jpc._checksums([x]) == [expected]  # host (NumPy) path
    assert jpc._checksums([jnp.asarray(x)]) == [expected]  # a small device array: fetched, hashed on the host
    a, b = np.asarray(jpc._device_mix64(jnp.asarray(x)))  # the jitted path, as for sharded arrays
    assert f"mix64:{int(a):08x}{int(b):08x}" == expected


def test_large_arrays_are_hashed_under_jit_with_the_same_result():
    x = np.random.default_rng(1).standard_normal(jpc._HOST_WORDS + 3).astype(np.float32)
    host = jpc._host_mix64(x)
    assert jpc._checksums([x]) == jpc._checksums([jnp.asarray(x)]) == [f"mix64:{host[0]:08x}{host[1]:08x}"]


def test_every_single_changed_word_changes_the_checksum():
    # Each lane is a bijection of the word at a given position: one changed word is always caught.
    x = np.random.default_rng(2).integers(0, 2**32, 64, dtype=np.uint32)
    before = jpc._checksums([x])[0]
    rng = np.random.default_rng(3)
    for i in range(x.size):
        y = x.copy()
        y[i] ^= np.uint32(1 << int(rng.integers(32)))
        assert jpc._checksums([y])[0] != before, i
    swapped = x.copy()
    swapped[[3, 40]] = swapped[[40, 3]]  # same words, other places: the position is part of the hash
    assert jpc._checksums([swapped])[0] != before


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 17)])
def test_masks_are_packed_along_their_last_axis_and_come_back_as_bool_arrays(tmp_path, shape):
    rng = np.random.default_rng(4)
    state = {"host": rng.random(shape) < 0.5, "device": jnp.asarray(rng.random(shape) < 0.5)}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        layout = {e["path"]: e for e in ckpt.layout()}
        restored = ckpt.restore(like=state)
    for name, mask in state.items():
        assert layout[name]["packed"] and layout[name]["packing"] == "last_axis"
        assert isinstance(restored[name], jax.Array) and restored[name].dtype == jnp.bool_
        np.testing.assert_array_equal(restored[name], mask)


def test_format_2_checkpoints_restore_and_are_verified(tmp_path):
    # A 1-D mask of 16 entries packs to the same 2 bytes flat (format 2) and along its last axis
    # (format 3), so rewriting the layout turns this save into the format-2 checkpoint of the same state.
    w = np.random.default_rng(5).standard_normal((32, 32)).astype(np.float32)
    state = {"w": w, "mask": np.arange(16) % 3 == 0, "key": jax.random.key(7)}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    layout_file = tmp_path / "1" / "layout" / "metadata"
    meta = json.loads(layout_file.read_text())
    assert meta["format"] == "jaxprune-checkpoint-3"
    stored = {"w": w, "mask": np.packbits(state["mask"]), "key": np.asarray(jax.random.key_data(state["key"]))}
    meta["format"] = "jaxprune-checkpoint-2"
    for entry in meta["leaves"]:
        for new_field in ("packing", "numpy"):
            entry.pop(new_field, None)
        raw = np.ascontiguousarray(stored[entry["path"]]).reshape(-1).view(np.uint8)
        entry["checksum"] = f"xxh3_64:{xxhash.xxh3_64_hexdigest(raw)}"
    layout_file.write_text(json.dumps(meta))
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt:
        restored = ckpt.restore(like=state)
        np.testing.assert_array_equal(restored["w"], w)
        np.testing.assert_array_equal(restored["mask"], state["mask"])
        np.testing.assert_array_equal(jax.random.key_data(restored["key"]), stored["key"])
        np.testing.assert_array_equal(ckpt.restore_flat()["mask"], state["mask"])
    # Changed bytes are caught by the XXH3 checksums of format 2.
    files = [Path(root) / f for root, _, fs in os.walk(tmp_path / "1" / "arrays") for f in fs]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    with jp.Checkpointer(tmp_path, read_only=True) as ckpt, pytest.raises(ValueError, match="leaf 'w' does not match"):
        ckpt.restore(like=state)


def test_leaves_saved_from_numpy_come_back_as_numpy(tmp_path):
    # float64 without x64 exists on the host only; it must not be squeezed through a float32 device array.
    state = {"d": np.arange(5, dtype=np.float64), "n": 3, "w": jnp.ones(3)}
    with jp.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        restored = ckpt.restore(like=state)
    assert isinstance(restored["d"], np.ndarray) and restored["d"].dtype == np.float64
    np.testing.assert_array_equal(restored["d"], state["d"])
    assert isinstance(restored["w"], jax.Array)
