"""Checksums of a checkpoint's stored arrays: format 3's ``mix64``, computed where the data lives; format 2's XXH3."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xxhash
from jax import lax

HOST_WORDS = 1 << 14  # arrays up to this many words are checksummed with NumPy: no compile, and as fast there


def _fmix32(h: Any, u32: Any) -> Any:
    """MurmurHash3's finaliser: a bijection of uint32 in which every input bit flips each output bit ~1/2 the time."""
    h = h ^ (h >> 16)
    h = h * u32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * u32(0xC2B2AE35)
    return h ^ (h >> 16)


def _mix_lanes(words: Any, index: Any, u32: Any) -> tuple[Any, Any]:
    """Two independently keyed hashes of each word and its flat position; each is a bijection of the word."""
    a = _fmix32(words ^ (index * u32(0x9E3779B1) + u32(0x3C6EF372)), u32)
    b = _fmix32(words * u32(0x27D4EB2F) + (index * u32(0x85EBCA77) + u32(0x165667B1)), u32)
    return a, b


def _host_words(x: np.ndarray) -> np.ndarray:
    """The array's bytes as uint32 words, one per element of 1 or 2 bytes, several per wider one, row-major."""
    x = np.ascontiguousarray(x)
    size = x.dtype.itemsize
    if size < 4:
        return x.view(f"uint{8 * size}").astype(np.uint32)
    return x.view(np.uint32)  # little-endian words, as on every platform JAX runs on


def _device_words(x: jax.Array) -> jax.Array:
    """``_host_words`` under jit: the same words (the wider types split on a new last axis), wherever x lives."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([x.real, x.imag], axis=-1)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size < 4:
        return lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
    return lax.bitcast_convert_type(x, jnp.uint32)


def host_mix64(x: np.ndarray) -> tuple[int, int]:
    words = _host_words(x).reshape(-1)
    a, b = _mix_lanes(words, np.arange(words.size, dtype=np.uint32), np.uint32)
    return int(np.sum(a, dtype=np.uint32)), int(np.sum(b, dtype=np.uint32))


@jax.jit
def device_mix64(x: jax.Array) -> jax.Array:
    words = _device_words(x)
    index = jnp.zeros(words.shape, jnp.uint32)  # row-major flat position, modulo 2**32
    stride = 1
    for d in reversed(range(words.ndim)):
        index = index + lax.broadcasted_iota(jnp.uint32, words.shape, d) * jnp.uint32(stride % 2**32)
        stride *= words.shape[d]
    a, b = _mix_lanes(words, index, jnp.uint32)
    # One reduction with two outputs: XLA fuses it into one pass (two jnp.sum calls take ~10x longer on CPU).
    zero = jnp.uint32(0)
    sums = lax.reduce((a, b), (zero, zero), lambda x, y: (x[0] + y[0], x[1] + y[1]), tuple(range(words.ndim)))
    return jnp.stack(sums)


def mix64_checksums(arrays: list[Any]) -> list[str]:
    """The checksum of each array: ``"mix64:<16 hex digits>"``, the same however the array is sharded.

    Each 32-bit word of the array's row-major bytes is hashed together with
    its flat position by two differently keyed murmur3 finalisers (``_fmix32``),
    and each lane is summed with wrap-around over the whole array. A sum does
    not care about order, so every device hashes its own shard and only each
    device's two partial sums cross devices: nothing is gathered, and any
    sharding, any mesh and the host give the same 64 bits. Each lane is a
    bijection of the word at a given position, so any single changed word is
    always caught; other damage is missed with a chance of about 2**-64. It
    guards against damage, not against tampering. Small fully-addressable
    arrays are hashed on the host (NumPy; no compile), the rest under jit
    (~10 GB/s on one CPU core: ~1.5 ms for a 16 MB leaf).
    """
    sums: list[Any] = []
    for x in arrays:
        if isinstance(x, (np.ndarray, np.generic)) or (x.is_fully_addressable and x.size <= HOST_WORDS):
            x = np.asarray(x)
            sums.append(host_mix64(x) if x.size <= HOST_WORDS else device_mix64(_host_words(x)))
        else:
            sums.append(device_mix64(x))  # dispatched now and read below, so the arrays are hashed in parallel
    # A device result is replicated on every device, so each process reads it from its own.
    return [f"mix64:{int(a):08x}{int(b):08x}" for a, b in map(np.asarray, sums)]


def xxh3_checksums(arrays: list[Any]) -> list[str]:
    """Format 2's checksums: XXH3 (64-bit) of each array's bytes on the host, ``"xxh3_64:<16 hex digits>"``.

    Needs every array whole on this host; ``Checkpointer._read`` raises before a
    multi-process restore would get here.
    """
    raw = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in arrays]  # also empty and bf16 arrays
    return [f"xxh3_64:{xxhash.xxh3_64_hexdigest(b.data)}" for b in raw]  # .data: the bytes as a memoryview
