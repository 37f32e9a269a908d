"""The other process in test_checkpoint.py's multi-process tests: python _ckpt_worker.py MODE DIRECTORY.

hold    open DIRECTORY for writing, save step 1, print "holding PID", then wait for stdin to close
resave  in a directory holding steps 10 and 20, try to save step 20 and step 15 again
fail    save step 1, fail a save inside Orbax (a step name too long for the file system), restore
        step 1, then fail the same save again without catching it: the process must exit at once
"""

import os
import sys

import jax.numpy as jnp

import jaxprune as jp


def main(mode, directory):
    state = {"w": jnp.arange(12.0).reshape(3, 4), "mask": jnp.arange(12).reshape(3, 4) % 3 == 0}
    if mode == "hold":
        with jp.Checkpointer(directory) as ckpt:
            ckpt.save(1, state)
            print(f"holding {os.getpid()}", flush=True)
            sys.stdin.read()
    elif mode == "resave":
        with jp.Checkpointer(directory) as ckpt:
            for step in (20, 15):
                try:
                    ckpt.save(step, {"x": jnp.full(3, -1.0)})
                    print(f"SAVED {step}", flush=True)
                except FileExistsError as e:
                    print(f"FileExistsError: {e}", flush=True)
    elif mode == "fail":
        ckpt = jp.Checkpointer(directory)  # not closed: exiting must not wait for anything
        ckpt.save(1, state)
        try:
            ckpt.save(10**300, state)
        except OSError as e:
            print(f"caught {type(e).__name__}", flush=True)
        restored = ckpt.restore(like=state, step=1)
        print(f"restored 1: {bool(jnp.all(restored['w'] == state['w']))}", flush=True)
        ckpt.save(10**300, state)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
