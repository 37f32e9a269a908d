"""Exact k-smallest selection over many arrays at once, without sorting them.

``lowest_k`` marks, in each group of leaves, exactly ``k`` entries with the
lowest scores. Sorting all N scores costs O(N log N) and gathers everything in
one place; instead this searches for the k-th lowest score over its 32-bit
pattern (its *key*, see ``order_keys``), counting instead of sorting:

1. **Bracket.** A strided sample of about ``_SAMPLE`` (65,536) scores per group
   is sorted; the target's rank among the sample's alive entries, plus or
   minus ``_BRACKET_SIGMAS`` binomial standard deviations, gives a bracket of
   keys that holds the threshold with overwhelming probability. One counting
   pass over all scores checks both ends (a wrong bracket only costs passes,
   never a wrong answer).
2. **Probes.** Each further pass counts, for two probe keys inside the
   bracket ``[lo, hi]``, how many scores lie at or below each, and keeps the
   part of the bracket that holds the threshold, until it is a single key.
   Where the counts look locally uniform, the probes are *interpolated*: they
   sit ``_PROBE_SIGMAS`` binomial standard deviations (plus ``_CURVATURE`` of
   the interval, for a density that is not quite flat) either side of the
   linearly interpolated answer, so an interval of m entries shrinks to about
   6 sqrt(m) in one pass. They are used only when that window is narrower than
   ``1 / _NARROW`` of the interval and the previous pass's answer fell between
   its probes; otherwise the pass splits the interval in thirds, so the worst
   case stays within two passes per factor of three.
   Counting is a fused elementwise compare and sum per leaf, so sharded
   leaves are counted where they live and only a few integers cross devices.
   A score may be ``Lazy`` (``fn(*args)``, e.g. ``|w|`` from ``w``): it is
   computed inside each pass instead of being stored once and read back.
3. **Ties.** Entries keyed exactly at the threshold tie; the first ones in
   flat order are taken, found from per-row counts of the tied entries (one
   more pass, run only when a group has more ties than it needs).

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_U32 = jnp.uint32
_MAX = 0xFFFFFFFF
_MASKED, _NAN = 0, 1  # the two lowest keys; every non-NaN float maps above them
_NEG_INF, _POS_INF = 0x007FFFFF, 0xFF800000
_ZERO, _NEG_TINY, _POS_TINY = 0x80000000, 0x7F7FFFFF, 0x80800000  # keys of 0, -FLT_MIN, +FLT_MIN
_ROW = 32  # entries summed per partial count (each byte field holds at most 255)
_SAMPLE = 1 << 16  # sample size per group for the initial bracket
_BRACKET_SIGMAS = 4.0  # bracket half-width, in binomial standard deviations of the sample rank
_PROBE_SIGMAS = 3.0  # interpolated probes' distance from the guess, in binomial standard deviations
_CURVATURE = 0.02  # extra probe margin, as a fraction of the interval (|N(0,1)| varies ~8% over a first bracket)
_NARROW = 6.0  # interpolate only when the probes' window is under 1/_NARROW of the interval
_F32_BELOW_2_32 = 4294967040.0  # largest float32 below 2**32: float offsets clip here before the uint32 cast


class Lazy(NamedTuple):
    """A score leaf that ``lowest_k`` computes elementwise inside each pass, as ``fn(*args)``.

    ``Lazy(jnp.abs, (w,))`` selects by ``|w|`` without writing ``|w|`` out:
    a score computed in the same jitted call would otherwise be stored once
    and read back by every pass (XLA hoists it out of the search loop), and
    for 100M weights that store costs as much as several passes. ``fn`` must
    be elementwise in effect: it is evaluated whole, never on slices.
    """

    fn: Callable[..., jax.Array]
    args: tuple[Any, ...]


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
    packed = sum(p.astype(_U32) << (8 * j) for j, p in enumerate(preds))
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
    """About ``x.size / stride`` entries of ``x``, spread over every axis, flattened."""
    index = []
    left = stride
    for d, n in enumerate(x.shape):
        dims_left = x.ndim - d
        step = min(n, max(1, round(left ** (1.0 / dims_left))))
        if step > 1:
            step |= 1  # odd strides alias less with power-of-two structure
        index.append(slice(None, None, step))
        left = max(1, left // step)
    return x[tuple(index)].reshape(-1)


def _search(
    count_at: Callable[[jax.Array], jax.Array], interval: tuple[jax.Array, ...], k: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Smallest t with count_at(t) >= k, per group, and the counts just below and at it.

    ``interval`` is (lo, hi, count_at(lo - 1), count_at(hi)), uint32[G] each,
    with count_at(lo - 1) < k <= count_at(hi). ``count_at`` maps probes
    uint32[G, 2] to counts uint32[G, 2] and is non-decreasing in t.

    Each pass places two probes. While the counts behave as if the keys were
    spread evenly over [lo, hi] (true of any smooth score distribution once
    the interval is narrow) and the margin leaves less than a third of it, the
    probes sit a few standard deviations either side of the linearly
    interpolated answer, and the interval shrinks from m entries to about
    6 sqrt(m) (or 4% of it, where curvature dominates). After a pass whose
    answer fell outside the probes, the next pass splits [lo, hi] in three
    equal parts, so the worst case stays within two passes per factor of three.
    Returns (t, count_at(t - 1), count_at(t)).
    """
    f32 = jnp.float32

    def body(carry):
        lo, hi, below, upto, guess = carry
        span = hi - lo
        third = span // _U32(3) + _U32(1)
        even = jnp.stack([lo + jnp.minimum(third, span) - _U32(1), lo + jnp.minimum(2 * third, span) - _U32(1)], 1)
        # Interpolated guess of the answer's offset in [0, span], and a margin
        # of _PROBE_SIGMAS binomial standard deviations of the entries in between.
        inside = jnp.maximum((upto - below).astype(f32), 1.0)
        frac = (k - below).astype(f32) / inside
        center = frac * span.astype(f32)
        spread = _PROBE_SIGMAS * jnp.sqrt(frac * (1 - frac) * inside + 1.0) / inside
        margin = span.astype(f32) * (spread + _CURVATURE) + 1.0

        def offset(x):  # float offset -> uint32 in [0, span - 1]; float32 is coarse near 2**32
            return jnp.minimum(jnp.clip(x, 0.0, _F32_BELOW_2_32).astype(_U32), span - _U32(1))

        smart = jnp.stack([lo + offset(center - margin), lo + offset(center + margin)], 1)
        # Interpolate only where it beats the even split: a wide margin (few
        # entries left across many keys) would shrink the interval by only a
        # little each pass.
        narrow = _NARROW * margin < span.astype(f32)
        probes = jnp.where((guess & narrow)[:, None], smart, even)  # all in [lo, hi - 1]
        counts = count_at(probes)
        # Counts grow with the probe, so the probes short of k come first.
        short = jnp.sum(counts < k[:, None], axis=1)
        take = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]  # noqa: E731
        last_short, first_enough = jnp.maximum(short, 1) - 1, jnp.minimum(short, 1)
        active = lo < hi
        raise_lo = active & (short > 0)
        lower_hi = active & (short < 2)
        return (
            jnp.where(raise_lo, take(probes, last_short) + _U32(1), lo),
            jnp.where(lower_hi, take(probes, first_enough), hi),
            jnp.where(raise_lo, take(counts, last_short), below),
            jnp.where(lower_hi, take(counts, first_enough), upto),
            short == 1,  # the answer fell between the probes: keep interpolating
        )

    guess = jnp.ones_like(interval[0], bool)
    lo, _, below, upto, _ = lax.while_loop(lambda c: jnp.any(c[0] < c[1]), body, (*interval, guess))
    return lo, below, upto


def lowest_k(
    scores: Sequence[jax.Array | Lazy], alive: Sequence[jax.Array], groups: Sequence[int], k: jax.Array
) -> list[jax.Array]:
    """Marks exactly ``k[g]`` lowest entries in each group; returns bool arrays shaped like ``scores``.

    Args:
      scores: float arrays, one per leaf, or ``Lazy`` scores computed inside each pass.
      alive: bool arrays of the same shapes; False entries rank lowest of all.
      groups: the group (0..G-1) of each leaf. Leaves of a group compete with
        each other: one group is global selection, one group per leaf is per layer.
      k: int array [G], how many entries to mark per group, 0 <= k[g] <= group size.

    Leaves without entries take no part; a group without entries marks nothing.
    """
    lazy = [s if isinstance(s, Lazy) else Lazy(_identity, (s,)) for s in scores]
    shapes = [jax.eval_shape(s.fn, *s.args).shape for s in lazy]
    if any(math.prod(shape) == 0 for shape in shapes):
        return _skip_empty([_evaluate(s) for s in lazy], alive, groups, k)
    num_groups = int(k.shape[0])
    members: list[list[int]] = [[] for _ in range(num_groups)]
    offsets, sizes = [], [0] * num_groups
    for i, (shape, g) in enumerate(zip(shapes, groups)):
        members[g].append(i)
        offsets.append(sizes[g])
        sizes[g] += math.prod(shape)

    def floats() -> list[jax.Array]:  # evaluated where used, fused into each pass, never stored (see Lazy)
        return [_evaluate(s) for s in lazy]

    k = k.astype(_U32)
    want = jnp.maximum(k, _U32(1))  # k == 0 is masked out at the end

    def by_group(per_leaf: list[jax.Array]) -> jax.Array:
        return jnp.stack([sum((per_leaf[i] for i in m), jnp.zeros_like(per_leaf[0])) for m in members])

    # Entries below every real float: the masked-out ones, then the NaNs.
    special = by_group([count_true([~a, a & jnp.isnan(s)]) for s, a in zip(floats(), alive)])
    masked, below_reals = special[:, 0], special[:, 0] + special[:, 1]

    def count_le(t: jax.Array) -> jax.Array:
        bound = _key_to_float(t)
        # The barrier ties the score's inputs to the probes, so XLA keeps a
        # lazy score inside the pass instead of hoisting (materialising) it.
        args, _ = lax.optimization_barrier(([s.args for s in lazy], t))
        here = [_evaluate(Lazy(s.fn, a)) for s, a in zip(lazy, args)]
        reals = by_group(
            [count_true([a & (s <= bound[g, p]) for p in range(t.shape[1])]) for s, a, g in zip(here, alive, groups)]
        )
        base = jnp.where(t >= _U32(_NAN), below_reals[:, None], masked[:, None])
        return base + jnp.where(t >= _U32(_NEG_INF), reals, _U32(0))

    thresh, below, upto = _search(count_le, _bracket(floats(), alive, members, sizes, masked, want, count_le), want)

    # Entries keyed at the threshold tie; take the first (want - below) of them
    # in flat order. That costs a pass only when some group has excess ties.
    # (Keys are recomputed in each fused pass rather than stored: writing N
    # fresh uint32 costs more than recomputing them.)
    def tied() -> list[jax.Array]:
        return [order_keys(s, a) == thresh[g] for s, a, g in zip(floats(), alive, groups)]

    ends = jnp.asarray(sizes, _U32)
    excess = upto > want
    cut = lax.cond(
        jnp.any(excess),
        lambda: jnp.where(excess, _nth_true(tied(), members, offsets, want - below), ends),
        lambda: ends,
    )
    keys = [order_keys(s, a) for s, a in zip(floats(), alive)]
    indices = [_flat_index(shape, off) for shape, off in zip(shapes, offsets)]
    return [
        ((key < thresh[g]) | ((key == thresh[g]) & (idx < cut[g]))) & (k[g] > 0)
        for key, idx, g in zip(keys, indices, groups)
    ]


def _identity(x: jax.Array) -> jax.Array:
    return x


def _evaluate(score: Lazy) -> jax.Array:
    return score.fn(*score.args).astype(jnp.float32)


def _skip_empty(scores, alive, groups, k) -> list[jax.Array]:
    """``lowest_k`` over the leaves that have entries; empty leaves come back as empty masks."""
    full = [i for i, s in enumerate(scores) if s.size]
    out = [jnp.zeros(s.shape, bool) for s in scores]
    if full:
        used = sorted({groups[i] for i in full})  # groups renumbered 0..G'-1
        marked = lowest_k(
            [scores[i] for i in full],
            [alive[i] for i in full],
            [used.index(groups[i]) for i in full],
            k[jnp.asarray(used)],
        )
        for i, m in zip(full, marked):
            out[i] = m
    return out


def _nth_true(preds: Sequence[jax.Array], members: list[list[int]], offsets: list[int], n: jax.Array) -> jax.Array:
    """Flat position (within its group) just past the n[g]-th True entry of each group.

    Assumes each group has at least n[g] >= 1 True entries. Costs one counting
    pass (True entries per row, i.e. per index of all axes but the last) plus
    work on one row per leaf.
    """
    row_counts = [_row_count(p) for p in preds]
    cuts = []
    for g, m in enumerate(members):
        counts = jnp.concatenate([row_counts[i].reshape(-1) for i in m]).astype(jnp.int32)
        ends = jnp.cumsum(counts)
        row = jnp.searchsorted(ends, n[g].astype(jnp.int32))  # first row whose running count reaches n
        cut = jnp.zeros((), _U32)
        first_row = 0
        for i in m:
            p = preds[i]
            shape = p.shape if p.ndim else (1,)
            rows = math.prod(shape[:-1])
            local = jnp.clip(row - first_row, 0, rows - 1)
            start = jnp.unravel_index(local, shape[:-1]) if len(shape) > 1 else ()
            line = lax.dynamic_slice(p.reshape(shape), (*start, 0), (*(1,) * (len(shape) - 1), shape[-1])).reshape(-1)
            before = jnp.where(row > 0, ends[jnp.maximum(row - 1, 0)], 0)
            pos = jnp.searchsorted(jnp.cumsum(line.astype(jnp.int32)), n[g].astype(jnp.int32) - before)
            here = (row >= first_row) & (row < first_row + rows)
            cut = jnp.where(here, (offsets[i] + local * shape[-1] + pos + 1).astype(_U32), cut)
            first_row += rows
        cuts.append(cut)
    return jnp.stack(cuts)


def _row_count(pred: jax.Array) -> jax.Array:
    """True entries along the last axis (uint32, shape ``pred.shape[:-1]``); narrow sums as in ``count_true``."""
    if pred.ndim == 0:
        return pred.astype(_U32)
    last = pred.shape[-1]
    if last % _ROW or last == 0:
        return jnp.sum(pred, axis=-1, dtype=_U32)
    chunks = jnp.sum(pred.astype(_U32).reshape(*pred.shape[:-1], last // _ROW, _ROW), axis=-1, dtype=_U32)
    # The mask is a no-op (chunks <= 32) that stops XLA from merging the two
    # sums into one wide reduction, which it vectorises poorly on CPU.
    return jnp.sum(chunks & _U32(0xFF), axis=-1, dtype=_U32)


def _bracket(floats, alive, members, sizes, masked, want, count_le):
    """Key interval [lo, hi] per group that holds the threshold, from a sorted sample.

    The threshold is the smallest key t with count_le(t) >= want. The sample's
    quantiles give a guess; one counting pass checks both ends and, where a
    guess missed, falls back to the side of the key range that must hold it.
    The masked-out entries (``masked[g]`` of them, counted exactly) all key
    lowest, so the guess is a quantile of the sample's alive entries alone:
    where most entries are masked out (a sparse mask's active weights), a
    margin sized for the whole sample would be several times too wide.
    """
    los, his = [], []
    for g, m in enumerate(members):
        stride = max(1, sizes[g] // _SAMPLE)
        sample = jnp.sort(jnp.concatenate([order_keys(*_sample_pair(floats[i], alive[i], stride)) for i in m]))
        n = sample.shape[0]
        out = jnp.sum(sample == _U32(_MASKED)).astype(jnp.float32)  # the sorted sample's masked-out head
        alive_sample = n - out
        q = jnp.clip((want[g].astype(jnp.float32) - masked[g]) / jnp.maximum(sizes[g] - masked[g], 1), 0.0, 1.0)
        rank = out + q * alive_sample
        margin = _BRACKET_SIGMAS * jnp.sqrt(alive_sample * q * (1 - q)) + 2.0
        r_lo = jnp.floor(rank - margin).astype(jnp.int32) - 1
        r_hi = jnp.ceil(rank + margin).astype(jnp.int32)
        los.append(jnp.where(r_lo < 0, _U32(0), sample[jnp.clip(r_lo, 0, n - 1)]))
        his.append(jnp.where(r_hi >= n, _U32(_MAX), sample[jnp.clip(r_hi, 0, n - 1)]))
    lo, hi = jnp.stack(los), jnp.stack(his)
    counts = count_le(jnp.stack([lo - _U32(1), hi], axis=1))  # lo - 1 wraps to MAX when lo == 0
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
