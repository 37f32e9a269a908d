"""Saves steps 1 and 2, then starts a large step-3 save and waits to be killed (see test_checkpoint.py)."""

import sys
import time

import jax
import jax.numpy as jnp

import jaxprune as jp


def main(directory):
    ckpt = jp.Checkpointer(directory)
    small = {"w": jnp.arange(12.0).reshape(3, 4), "mask": jnp.arange(12).reshape(3, 4) % 3 == 0}
    ckpt.save(1, small)
    print("saved 1", flush=True)
    big = {"w": jax.random.normal(jax.random.key(0), (3000, 3000)), "mask": jnp.ones((3000, 3000), bool)}
    print("saving 2", flush=True)
    ckpt.save(2, big)
    # Step 3 is large (about 0.2 GB), so the parent's kill, 0.3 s after this line, lands while it is written.
    # No step after it: a fast disk would otherwise get to step 4 first, and max_to_keep=3 would drop step 1.
    huge = {"w": jax.random.normal(jax.random.key(1), (6000, 6000)), "mask": jnp.ones((6000, 6000), bool)}
    print("saving 3", flush=True)
    ckpt.save(3, huge)
    time.sleep(600)  # waits to be killed


if __name__ == "__main__":
    main(sys.argv[1])
