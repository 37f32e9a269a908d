"""Methods that change masks during training, all with one protocol (optax style).

A method is an object with

    state = method.init(params, key=None)
    state = method.update(state, params, step, grads=None, key=None)

where ``state`` is a ``NamedTuple`` with a ``.masks`` field (a mask pytree);
everything else in it is arrays, so the state goes through ``jit``, ``scan``
and ``jp.Checkpointer`` as it is. ``update`` is called every step inside the
jitted train step and decides itself (under ``lax.cond``) whether this step
changes anything, so the loop compiles once. A new method is one new module
here and one line in ``jaxprune/__init__.py``.

* ``pruner.Pruner``: gradual pruning on a schedule; masks only lose entries.
* ``sparse_training.StaticSparse``: masks drawn once at ``init`` with a
  per-layer distribution, never changed (sparse training's baseline).
* ``sparse_training.SET`` and ``sparse_training.RigL``: connections move:
  every ``every`` steps each layer drops its smallest active weights and
  regrows as many (at random, or by the largest dense gradient), conserving
  each layer's count exactly.
* ``straight_through.StraightThrough``: masks recomputed from the dense
  weights at the scheduled target on every update, trained through with
  straight-through gradients; pruned weights can come back.
"""
