"""Saves step 1, then starts a large step-2 save and waits to be killed (see test_checkpoint.py)."""

import sys

import jax
import jax.numpy as jnp

import jaxprune as jp


def main(directory):
    ckpt = jp.Checkpointer(directory)
    small = {"w": jnp.arange(12.0).reshape(3, 4), "mask": jnp.arange(12).reshape(3, 4) % 3 == 0}
    ckpt.save(1, small)
    print("saved 1", flush=True)
    big = {"w": jax.random.normal(jax.random.key(0), (3000, 3000)), "mask": jnp.ones((3000, 3000), bool)}
    for step in range(2, 1000):  # keeps writing until the parent kills it
        print(f"saving {step}", flush=True)
        ckpt.save(step, big)


if __name__ == "__main__":
    main(sys.argv[1])
