"""Exact k-smallest selection over many arrays at once, by counting instead of sorting them.

``lowest_k`` marks, in each group of leaves, exactly ``k`` entries with the
lowest scores. Sorting all N scores costs O(N log N) and gathers everything in
one place; instead this searches for the k-th lowest score over its 32-bit
pattern (its *key*, see ``order_keys``), counting instead of sorting:

1. **Bracket.** A strided sample of about ``_SAMPLE`` (65,536) scores per group
   is sorted; the target's rank in the sample (among its alive entries where
   the caller gives ``num_alive``), plus or minus ``_BRACKET_SIGMAS`` binomial
   standard deviations, gives a bracket of keys that holds the threshold with
   overwhelming probability. One counting pass over all scores checks both
   ends and counts the masked-out and NaN entries (a wrong bracket only costs
   passes, never a wrong answer).
2. **Probes.** Each further pass counts, for four probe keys inside the
   bracket ``[lo, hi]``, how many scores lie at or below each, and keeps the
   part of the bracket that holds the threshold, until it is a single key.
   Where the counts look locally uniform, the probes are *interpolated*: they
   sit at -3, -1, 1 and 3 binomial standard deviations (``_PROBE_SIGMAS`` for
   the outer ones, plus a curvature margin for a density that is not quite
   flat) around the linearly interpolated answer, so an interval of m entries
   shrinks to about 2 sqrt(m) in one pass. They are used only when that
   window is narrower than ``1 / _NARROW`` of the interval and the previous
   pass's answer fell between its probes; otherwise the pass splits the
   interval in five, so the worst case stays within two passes per factor of
   five. On 100.7M normal weights pruned to 90%: the bracket, 4 search passes,
   1 for ties, and the one that writes the masks.
   Counting is a fused elementwise compare and sum per leaf (four predicates
   packed in one word), so sharded leaves are counted where they live and
   only a few integers cross devices.
   A score may be ``Lazy`` (``fn(*args)``, e.g. ``|w|`` from ``w``): it is
   computed inside each pass instead of being stored once and read back.
3. **Ties.** Entries keyed exactly at the threshold tie; the first ones in
   flat order are taken, found from the tied entries packed as bits, 32 to
   a word (one more pass, run only when a group has more ties than it
   needs).

Groups of at most ``_SORT_MAX`` (131,071) entries, whose bracket sample would
be the whole group, are instead sorted whole (``method="sort"``; ``"auto"``
picks it when every group is that small): the k-th sorted key is the
threshold and a running count takes the ties. It gives the same marks, runs
as fast at these sizes, and compiles to a program several times smaller,
which is most of what a small model's first prune costs. (On sharded leaves
such a group is gathered to sort it: at most 512 KB.)

Order (lowest first, i.e. selected first):
  masked-out  <  NaN  <  -inf  <  negative  <  0  <  positive  <  +inf,
where 0 takes in -0.0 and the float32 subnormals (|x| < 1.18e-38), which CPUs
and GPUs flush to zero in arithmetic anyway, so every platform agrees;
among equal keys, the entry earlier in flat order (leaves in ``jax.tree``
flatten order, then row-major position within a leaf) is selected first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._lazy import Lazy

Method = Literal["auto", "count", "sort"]

_U32 = jnp.uint32
_MAX = 0xFFFFFFFF
_MASKED, _NAN = 0, 1  # the two lowest keys; every non-NaN float maps above them
_NEG_INF, _POS_INF = 0x007FFFFF, 0xFF800000
_ZERO, _NEG_TINY, _POS_TINY = 0x80000000, 0x7F7FFFFF, 0x80800000  # keys of 0, -FLT_MIN, +FLT_MIN
_ROW = 32  # entries summed per partial count (each byte field holds at most 255)
_SAMPLE = 1 << 16  # sample size per group for the initial bracket
_BRACKET_SIGMAS = 4.0  # bracket half-width, in binomial standard deviations of the sample rank
_PROBE_SIGMAS = 3.0  # interpolated probes' distance from the guess, in binomial standard deviations
_CURVATURE = 0.02  # extra probe margin, as a fraction of the first interval (|N(0,1)| varies ~8% over a bracket)
_PROBES = 4  # probes per counting pass: count_true packs four predicates into one pass over memory
_NARROW = 6.0  # interpolate only when the probes' window is under 1/_NARROW of the interval
_SORT_MAX = 2 * _SAMPLE - 1  # groups up to this size are sorted whole: the bracket's sample would be all of them
_F32_BELOW_2_32 = 4294967040.0  # largest float32 below 2**32: float offsets clip here before the uint32 cast


def order_keys(scores: jax.Array, alive: jax.Array) -> jax.Array:
    """Maps scores to uint32 keys whose unsigned order is the selection order above."""
    # Bit operations only: float compares would depend on the platform's
    # flushing of subnormals.
    u = lax.bitcast_convert_type(scores.astype(jnp.float32), _U32)
    magnitude = u & _U32(0x7FFFFFFF)
    # Flip negatives entirely and set the sign bit of positives: unsigned order
    # is then float order, and -inf lands at 0x007FFFFF, leaving 0 and 1 free.
    key = jnp.where((u >> 31) == 1, ~u, u | _U32(_ZERO))
    key = jnp.where(magnitude < _U32(0x00800000), _U32(_ZERO), key)
    key = jnp.where(magnitude > _U32(0x7F800000), _U32(_NAN), key)
    return jnp.where(alive, key, _U32(_MASKED))


def order_keys_host(scores: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """``order_keys`` in NumPy, for selections small enough to run on the host (a model's units)."""
    u = np.ascontiguousarray(scores, np.float32).view(np.uint32)
    magnitude = u & np.uint32(0x7FFFFFFF)
    key = np.where((u >> 31) == 1, ~u, u | np.uint32(_ZERO))
    key = np.where(magnitude < 0x00800000, np.uint32(_ZERO), key)
    key = np.where(magnitude > 0x7F800000, np.uint32(_NAN), key)
    return np.where(alive, key, np.uint32(_MASKED)).astype(np.uint32)


def lowest_k_host(scores: list[np.ndarray], alive: list[np.ndarray], groups: Sequence[int], k) -> list[np.ndarray]:
    """``lowest_k`` on the host for 1-D NumPy arrays: the same order, ties taken first in flat order."""
    marked = [np.zeros(len(s), bool) for s in scores]
    for g in sorted(set(groups)):
        members = [i for i, gi in enumerate(groups) if gi == g]
        keys = np.concatenate([order_keys_host(scores[i], alive[i]) for i in members])
        chosen = np.zeros(len(keys), bool)
        chosen[np.argsort(keys, kind="stable")[: int(k[g])]] = True
        for i, part in zip(members, np.split(chosen, np.cumsum([len(scores[i]) for i in members])[:-1])):
            marked[i] = part
    return marked


def _key_to_float(key: jax.Array) -> jax.Array:
    """A float bound b with ``score <= b`` exactly when ``order_keys(score) <= key``, for real scores.

    Only meaningful for keys >= the key of -inf. Keys above +inf's are NaN bit
    patterns and clamp to +inf. Keys of subnormals and -0.0 are never produced
    (those scores key as 0): below zero the bound is -FLT_MIN, and from zero up
    to +FLT_MIN it is the largest subnormal, which holds whether or not the
    platform flushes subnormals to zero in the compare.
    """
    key = jnp.clip(key, _U32(_NEG_INF), _U32(_POS_INF))
    key = jnp.where((key > _U32(_NEG_TINY)) & (key < _U32(_ZERO)), _U32(_NEG_TINY), key)
    key = jnp.where((key >= _U32(_ZERO)) & (key < _U32(_POS_TINY)), _U32(_POS_TINY - 1), key)
    u = jnp.where(key >= _U32(_ZERO), key & _U32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(u, jnp.float32)


def count_true(preds: Sequence[jax.Array]) -> jax.Array:
    """Counts the True entries of each bool array (all one shape); returns uint32[len(preds)].

    Up to four predicates are packed into the bytes of one uint32 and summed in
    rows of 32 entries, so one pass over memory counts all of them; XLA
    vectorises this narrow unsigned sum far better than separate int32 sums.
    """
    shape = preds[0].shape
    last = shape[-1] if shape else 1
    if len(preds) > 4 or last == 0 or not (last % _ROW == 0 or last <= 255):
        return jnp.stack([jnp.sum(p, dtype=_U32) for p in preds])
    packed = sum((p.astype(_U32) << (8 * j) for j, p in enumerate(preds)), start=_U32(0))
    width = _ROW if last % _ROW == 0 else last
    rows = jnp.sum(packed.reshape(*shape[:-1], last // width, width), axis=-1, dtype=_U32)
    return jnp.stack([jnp.sum((rows >> (8 * j)) & _U32(255), dtype=_U32) for j in range(len(preds))])


def _flat_index(shape: tuple[int, ...], offset: int) -> jax.Array:
    """Row-major flat position of every entry, plus ``offset``, as uint32."""
    idx = jnp.full(shape, offset, _U32)
    stride = 1
    for d in reversed(range(len(shape))):
        idx = idx + lax.broadcasted_iota(_U32, shape, d) * _U32(stride)
        stride *= shape[d]
    return idx


def _strided_sample(x: jax.Array, stride: int) -> jax.Array:
    """About ``x.size / stride`` entries of ``x``, spread over every axis, flattened.

    The step along each axis is a power of two that divides the axis, so on a
    leaf sharded along it into equal power-of-two-aligned shards (as meshes
    shard) every device samples its own shard: an odd step would make XLA
    gather the whole leaf first. (A step in phase with a power-of-two pattern,
    e.g. an N:M mask, biases the sample; that costs passes, never exactness.)
    """
    index = []
    left = stride
    for d, n in enumerate(x.shape):
        dims_left = x.ndim - d
        want = min(n, max(1, round(left ** (1.0 / dims_left))))
        step = 1
        while step * 2 <= want and n % (step * 2) == 0:
            step *= 2
        index.append(slice(None, None, step))
        left = max(1, left // step)
    return x[tuple(index)].reshape(-1)


def _search(
    count_at: Callable[[jax.Array], jax.Array], interval: tuple[jax.Array, ...], k: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Smallest t with count_at(t) >= k, per group, and the counts just below and at it.

    ``interval`` is (lo, hi, count_at(lo - 1), count_at(hi)), uint32[G] each,
    with count_at(lo - 1) < k <= count_at(hi). ``count_at`` maps probes
    uint32[G, _PROBES] to counts uint32[G, _PROBES] and is non-decreasing in t.

    Each pass places four probes. While the counts behave as if the keys were
    spread evenly over [lo, hi] (true of any smooth score distribution once
    the interval is narrow) and the margin leaves less than a sixth of it, the
    probes sit at -3, -1, 1 and 3 binomial standard deviations (plus a
    curvature margin) around the linearly interpolated answer, so an interval
    of m entries shrinks to about 2 sqrt(m) in one pass. The curvature margin
    starts at ``_CURVATURE`` of the first interval and shrinks with the
    interval, since a smooth density's departure from linear does. After a
    pass whose answer fell outside the probes, the next pass splits [lo, hi]
    in five equal parts, so the worst case stays within two passes per factor
    of five.
    Returns (t, count_at(t - 1), count_at(t), passes).
    """
    f32 = jnp.float32
    spots = jnp.asarray([-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0], f32)  # of the margin: the outer probes at 3 sigma

    def body(carry):
        lo, hi, below, upto, guess, curvature, passes = carry
        span = hi - lo
        step = span // _U32(_PROBES + 1) + _U32(1)
        parts = jnp.arange(1, _PROBES + 1, dtype=_U32)
        even = lo[:, None] + jnp.minimum(step[:, None] * parts, span[:, None]) - _U32(1)
        # Interpolated guess of the answer's offset in [0, span], and a margin
        # of _PROBE_SIGMAS binomial standard deviations of the entries in between.
        inside = jnp.maximum((upto - below).astype(f32), 1.0)
        frac = (k - below).astype(f32) / inside
        center = frac * span.astype(f32)
        spread = _PROBE_SIGMAS * jnp.sqrt(frac * (1 - frac) * inside + 1.0) / inside
        margin = span.astype(f32) * (spread + curvature) + 1.0

        def offset(x):  # float offset -> uint32 in [0, span - 1]; float32 is coarse near 2**32
            return jnp.minimum(jnp.clip(x, 0.0, _F32_BELOW_2_32).astype(_U32), span[:, None] - _U32(1))

        smart = lo[:, None] + offset(center[:, None] + margin[:, None] * spots)
        # Interpolate only where it beats the even split: a wide margin (few
        # entries left across many keys) would shrink the interval by only a
        # little each pass.
        narrow = _NARROW * margin < span.astype(f32)
        probes = jnp.where((guess & narrow)[:, None], smart, even)  # ascending, all in [lo, hi - 1]
        counts = count_at(probes)
        # Counts grow with the probe, so the probes short of k come first.
        short = jnp.sum(counts < k[:, None], axis=1)
        take = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]  # noqa: E731
        last_short, first_enough = jnp.maximum(short, 1) - 1, jnp.minimum(short, _PROBES - 1)
        active = lo < hi
        raise_lo = active & (short > 0)
        lower_hi = active & (short < _PROBES)
        new = (
            jnp.where(raise_lo, take(probes, last_short) + _U32(1), lo),
            jnp.where(lower_hi, take(probes, first_enough), hi),
            jnp.where(raise_lo, take(counts, last_short), below),
            jnp.where(lower_hi, take(counts, first_enough), upto),
        )
        shrunk = jnp.maximum((new[3] - new[2]).astype(f32), 1.0) / inside
        # The answer fell between the outer probes: keep interpolating.
        return (*new, (short > 0) & (short < _PROBES), curvature * jnp.minimum(shrunk, 1.0), passes + 1)

    guess = jnp.ones_like(interval[0], bool)
    curvature = jnp.full(interval[0].shape, _CURVATURE, f32)
    carry = (*interval, guess, curvature, jnp.int32(0))
    lo, _, below, upto, _, _, passes = lax.while_loop(lambda c: jnp.any(c[0] < c[1]), body, carry)
    return lo, below, upto, passes


@overload
def lowest_k(
    scores: Sequence[jax.Array | Lazy],
    alive: Sequence[jax.Array],
    groups: Sequence[int],
    k: jax.Array,
    *,
    num_alive: jax.Array | None = None,
    with_passes: Literal[False] = False,
    method: Method = "auto",
) -> list[jax.Array]: ...


@overload
def lowest_k(
    scores: Sequence[jax.Array | Lazy],
    alive: Sequence[jax.Array],
    groups: Sequence[int],
    k: jax.Array,
    *,
    num_alive: jax.Array | None = None,
    with_passes: Literal[True],
    method: Method = "auto",
) -> tuple[list[jax.Array], jax.Array]: ...


def lowest_k(
    scores: Sequence[jax.Array | Lazy],
    alive: Sequence[jax.Array],
    groups: Sequence[int],
    k: jax.Array,
    *,
    num_alive: jax.Array | None = None,
    with_passes: bool = False,
    method: Method = "auto",
) -> list[jax.Array] | tuple[list[jax.Array], jax.Array]:
    """Marks exactly ``k[g]`` lowest entries in each group; returns bool arrays shaped like ``scores``.

    Args:
      scores: float arrays, one per leaf, or ``Lazy`` scores computed inside each pass.
      alive: bool arrays of the same shapes; False entries rank lowest of all.
      groups: the group (0..G-1) of each leaf. Leaves of a group compete with
        each other: one group is global selection, one group per leaf is per layer.
      k: int array [G], how many entries to mark per group, 0 <= k[g] <= group size.
      num_alive: int array [G], the True entries of ``alive`` per group, where
        the caller knows them: the first guess is then taken among the alive
        entries alone (tighter where most are masked out). Only a guess
        depends on it; the result is exact either way.
      with_passes: also return the number of passes over the scores (int32):
        the bracket's, the search's, the ties' when run, and the final one
        that writes the marks (2 when sorting: the sort and the marks).
      method: ``"count"`` searches by counting; ``"sort"`` sorts each group's
        keys whole; ``"auto"`` sorts when every group has at most
        ``_SORT_MAX`` entries, where the bracket's sample would be the whole
        group anyway, so counting passes would only add work. Both give the
        same marks; sorting compiles to a program several times smaller
        (about 0.1 s instead of 0.6 s for a new model's shapes on CPU).

    Leaves without entries take no part; a group without entries marks nothing.
    """
    if method not in ("auto", "count", "sort"):
        raise ValueError(f"`method` must be 'auto', 'count' or 'sort', got {method!r}.")
    lazy = [s if isinstance(s, Lazy) else Lazy(_identity, (s,)) for s in scores]
    shapes = [jax.eval_shape(s.fn, *s.args).shape for s in lazy]
    if any(math.prod(shape) == 0 for shape in shapes):
        marked, passes = _skip_empty([_evaluate(s) for s in lazy], alive, groups, k, method)
        return (marked, passes) if with_passes else marked
    num_groups = int(k.shape[0])
    members: list[list[int]] = [[] for _ in range(num_groups)]
    offsets, sizes = [], [0] * num_groups
    for i, (shape, g) in enumerate(zip(shapes, groups)):
        members[g].append(i)
        offsets.append(sizes[g])
        sizes[g] += math.prod(shape)
    if method == "sort" or (method == "auto" and max(sizes) <= _SORT_MAX):
        marked = _sort_select([_evaluate(s) for s in lazy], alive, members, shapes, k)
        return (marked, jnp.int32(2)) if with_passes else marked

    def floats() -> list[jax.Array]:  # evaluated where used, fused into each pass, never stored (see Lazy)
        return [_evaluate(s) for s in lazy]

    k = k.astype(_U32)
    want = jnp.maximum(k, _U32(1))  # k == 0 is masked out at the end

    def by_group(per_leaf: list[jax.Array]) -> jax.Array:
        return jnp.stack([sum((per_leaf[i] for i in m), jnp.zeros_like(per_leaf[0])) for m in members])

    def count_pass(t: jax.Array, special: bool) -> jax.Array:
        """One pass: per group, the alive real scores keyed <= each probe of ``t`` [G, P]; with
        ``special`` first also the masked-out and the NaN entries (the keys below every real)."""
        bound = _key_to_float(t)
        # The barrier ties the score's inputs to the probes, so XLA keeps a
        # lazy score inside the pass instead of hoisting (materialising) it.
        args, _ = lax.optimization_barrier(([s.args for s in lazy], t))
        here = [_evaluate(Lazy(s.fn, a)) for s, a in zip(lazy, args)]
        preds = [
            ([~a, a & jnp.isnan(s)] if special else []) + [a & (s <= bound[g, p]) for p in range(t.shape[1])]
            for s, a, g in zip(here, alive, groups)
        ]
        return by_group([count_true(p) for p in preds])

    def with_base(t: jax.Array, reals: jax.Array, masked: jax.Array, below_reals: jax.Array) -> jax.Array:
        base = jnp.where(t >= _U32(_NAN), below_reals[:, None], masked[:, None])
        return base + jnp.where(t >= _U32(_NEG_INF), reals, _U32(0))

    ends = _bracket_guess(floats(), alive, members, sizes, num_alive, want)
    counts = count_pass(ends, special=True)  # the bracket's ends and the special entries, in one pass
    masked, below_reals = counts[:, 0], counts[:, 0] + counts[:, 1]
    interval = _bracket(ends, with_base(ends, counts[:, 2:], masked, below_reals), want, sizes)

    def count_le(t: jax.Array) -> jax.Array:
        return with_base(t, count_pass(t, special=False), masked, below_reals)

    thresh, below, upto, search_passes = _search(count_le, interval, want)

    # Entries keyed at the threshold tie; take the first (want - below) of them
    # in flat order. That costs a pass only when some group has excess ties.
    # (Keys are recomputed in each fused pass rather than stored: writing N
    # fresh uint32 costs more than recomputing them.)
    def tied() -> list[jax.Array]:
        return [order_keys(s, a) == thresh[g] for s, a, g in zip(floats(), alive, groups)]

    group_ends = jnp.asarray(sizes, _U32)
    excess = upto > want
    cut = lax.cond(
        jnp.any(excess),
        lambda: jnp.where(excess, _nth_true(tied(), members, offsets, want - below), group_ends),
        lambda: group_ends,
    )
    keys = [order_keys(s, a) for s, a in zip(floats(), alive)]
    indices = [_flat_index(shape, off) for shape, off in zip(shapes, offsets)]
    marked = [
        ((key < thresh[g]) | ((key == thresh[g]) & (idx < cut[g]))) & (k[g] > 0)
        for key, idx, g in zip(keys, indices, groups)
    ]
    if not with_passes:
        return marked
    return marked, 2 + search_passes + jnp.any(excess).astype(jnp.int32)  # the ties' one pass when run


def _sort_select(floats: list[jax.Array], alive, members: list[list[int]], shapes, k: jax.Array) -> list[jax.Array]:
    """``lowest_k`` by sorting each group's keys: the k-th lowest key is the threshold, and of the entries
    keyed at it the first ones in flat order are taken (a running count over the group's flat order)."""
    keys = [order_keys(s, a).reshape(-1) for s, a in zip(floats, alive)]
    marked: dict[int, jax.Array] = {}  # every leaf is in exactly one group
    for g, m in enumerate(members):
        if not m:
            continue
        flat = jnp.concatenate([keys[i] for i in m])
        thresh = jnp.sort(flat)[jnp.maximum(k[g], 1) - 1]
        below, tied = flat < thresh, flat == thresh
        need = k[g].astype(_U32) - jnp.sum(below, dtype=_U32)
        chosen = (below | (tied & (jnp.cumsum(tied, dtype=_U32) <= need))) & (k[g] > 0)
        for i, part in zip(m, jnp.split(chosen, np.cumsum([keys[i].size for i in m])[:-1].tolist())):
            marked[i] = part.reshape(shapes[i])
    return [marked[i] for i in range(len(shapes))]


def _identity(x: jax.Array) -> jax.Array:
    return x


def _evaluate(score: Lazy) -> jax.Array:
    return score.fn(*score.args).astype(jnp.float32)


def _skip_empty(scores, alive, groups, k, method: Method) -> tuple[list[jax.Array], jax.Array]:
    """``lowest_k`` over the leaves that have entries, and its passes; empty leaves come back as empty masks."""
    full = [i for i, s in enumerate(scores) if s.size]
    out = [jnp.zeros(s.shape, bool) for s in scores]
    passes = jnp.int32(0)
    if full:
        used = sorted({groups[i] for i in full})  # groups renumbered 0..G'-1
        marked, passes = lowest_k(
            [scores[i] for i in full],
            [alive[i] for i in full],
            [used.index(groups[i]) for i in full],
            k[jnp.asarray(used)],
            with_passes=True,
            method=method,
        )
        for i, m in zip(full, marked):
            out[i] = m
    return out, passes


def _nth_true(preds: Sequence[jax.Array], members: list[list[int]], offsets: list[int], n: jax.Array) -> jax.Array:
    """Flat position (within its group) just past the n[g]-th True entry of each group.

    Assumes each group has at least n[g] >= 1 True entries. One pass packs
    each run of 32 entries along the last axis into the bits of a uint32
    (``_run_bits``); everything after works on those words, 1/32 of the
    entries: their counts give the row holding the cut, a masked sum over the
    rows picks that row's words out (a sharded leaf does it where it lives,
    where a dynamic slice at a traced row would make XLA gather the whole
    array onto every device), and the cut's word and bit follow.
    """
    words = [_run_bits(p) for p in preds]  # [rows, runs] each
    cuts = []
    for g, m in enumerate(members):
        counts = jnp.concatenate([jnp.sum(lax.population_count(words[i]), axis=-1) for i in m]).astype(jnp.int32)
        ends = jnp.cumsum(counts)
        row = jnp.searchsorted(ends, n[g].astype(jnp.int32))  # first row whose running count reaches n
        need = n[g].astype(jnp.int32) - jnp.where(row > 0, ends[jnp.maximum(row - 1, 0)], 0)  # >= 1 in that row
        cut, first_row = jnp.zeros((), _U32), 0
        for i in m:
            w = words[i]
            local = jnp.clip(row - first_row, 0, w.shape[0] - 1)
            at_row = lax.broadcasted_iota(jnp.int32, w.shape, 0) == local
            line = jnp.sum(jnp.where(at_row, w, _U32(0)), axis=0, dtype=_U32)  # the row's words
            run_ends = jnp.cumsum(lax.population_count(line).astype(jnp.int32))
            run = jnp.searchsorted(run_ends, need)  # the word holding the cut, then its bit
            bit_ends = jnp.cumsum((line[jnp.minimum(run, line.size - 1)] >> jnp.arange(_ROW, dtype=_U32)) & _U32(1))
            bit = jnp.searchsorted(bit_ends.astype(jnp.int32), need - jnp.where(run > 0, run_ends[run - 1], 0))
            last = preds[i].shape[-1] if preds[i].ndim else 1
            position = offsets[i] + local * last + run * _ROW + bit + 1
            here = (row >= first_row) & (row < first_row + w.shape[0])
            cut = jnp.where(here, position.astype(_U32), cut)
            first_row += w.shape[0]
        cuts.append(cut)
    return jnp.stack(cuts)


def _run_bits(pred: jax.Array) -> jax.Array:
    """``uint32[rows, ceil(last / 32)]``: bit j of a row's word h is its entry ``32 * h + j``.

    Rows are the indices of all axes but the last.

    A sum of distinct powers of two over each run of 32, which XLA vectorises
    as well as ``count_true``'s narrow sums (one pass; a running sum or a
    min over positions is several times slower on CPU).
    """
    pred = pred.reshape(-1, pred.shape[-1] if pred.ndim else 1)
    pad = -pred.shape[-1] % _ROW
    if pad:
        pred = jnp.pad(pred, ((0, 0), (0, pad)))
    powers = _U32(1) << jnp.arange(_ROW, dtype=_U32)  # a constant: XLA vectorises it, not an iota
    runs = pred.astype(_U32).reshape(pred.shape[0], pred.shape[1] // _ROW, _ROW)
    return jnp.sum(runs * powers, axis=-1, dtype=_U32)


def _bracket_guess(floats, alive, members, sizes, num_alive, want) -> jax.Array:
    """Keys [lo - 1, hi] per group (uint32[G, 2]) that likely hold the threshold, from a sorted sample.

    The threshold is the smallest key t with count_le(t) >= want. The
    sample's quantile gives a guess, with a margin of ``_BRACKET_SIGMAS``
    binomial standard deviations of the sample rank. The masked-out entries
    all key lowest, so where their number is known (``num_alive``) the guess
    is a quantile of the sample's alive entries alone: where most entries are
    masked out (a sparse mask's active weights), a margin sized for the whole
    sample would be several times too wide.
    """
    los, his = [], []
    for g, m in enumerate(members):
        stride = max(1, sizes[g] // _SAMPLE)
        sample = jnp.sort(jnp.concatenate([order_keys(*_sample_pair(floats[i], alive[i], stride)) for i in m]))
        n = sample.shape[0]
        out: float | jax.Array  # the sample's masked-out entries and its alive ones: traced when there is a mask
        alive_sample: float | jax.Array
        if num_alive is None:
            out, alive_sample, q = 0.0, float(n), want[g].astype(jnp.float32) / sizes[g]
        else:
            masked = sizes[g] - num_alive[g].astype(jnp.float32)
            out = jnp.sum(sample == _U32(_MASKED)).astype(jnp.float32)  # the sorted sample's masked-out head
            alive_sample = n - out
            q = jnp.clip((want[g].astype(jnp.float32) - masked) / jnp.maximum(sizes[g] - masked, 1), 0.0, 1.0)
        rank = out + q * alive_sample
        margin = _BRACKET_SIGMAS * jnp.sqrt(alive_sample * q * (1 - q)) + 2.0
        r_lo = jnp.floor(rank - margin).astype(jnp.int32) - 1
        r_hi = jnp.ceil(rank + margin).astype(jnp.int32)
        los.append(jnp.where(r_lo < 0, _U32(0), sample[jnp.clip(r_lo, 0, n - 1)]))
        his.append(jnp.where(r_hi >= n, _U32(_MAX), sample[jnp.clip(r_hi, 0, n - 1)]))
    return jnp.stack([jnp.stack(los) - _U32(1), jnp.stack(his)], axis=1)  # lo - 1 wraps to MAX when lo == 0


def _bracket(ends: jax.Array, counts: jax.Array, want: jax.Array, sizes: list[int]) -> tuple[jax.Array, ...]:
    """The search's start ``(lo, hi, count below lo, count up to hi)`` from the guessed ends' counts.

    Where a guess missed, falls back to the side of the key range that must
    hold the threshold (a wrong guess only costs passes, never a wrong answer).
    """
    lo, hi = ends[:, 0] + _U32(1), ends[:, 1]
    at_lo = jnp.where(lo > 0, counts[:, 0], _U32(0))  # count below lo
    at_hi = counts[:, 1]
    too_high = at_lo >= want  # the threshold lies below lo
    too_low = at_hi < want  # the threshold lies above hi
    zero, size = jnp.zeros_like(lo), jnp.asarray(sizes, _U32)
    return (
        jnp.where(too_high, zero, jnp.where(too_low, hi + _U32(1), lo)),
        jnp.where(too_high, lo - _U32(1), jnp.where(too_low, _U32(_MAX), hi)),
        jnp.where(too_high, zero, jnp.where(too_low, at_hi, at_lo)),
        jnp.where(too_high, at_lo, jnp.where(too_low, size, at_hi)),
    )


def _sample_pair(s: jax.Array, a: jax.Array, stride: int) -> tuple[jax.Array, jax.Array]:
    return _strided_sample(s, stride), _strided_sample(a, stride)
