"""The unit-set type: where each unit of a set of coupled units sits, leaf by leaf.

A *unit* is a channel, hidden unit or attention head: a group of entries, in
several leaves at once, that must be removed together for the model to stay
consistent. A *unit set* lists the places of its units as ``UnitAxis``
entries, one per leaf axis. Entry ``j`` of a set is found in each of its
leaves at the positions ``offset + j * stride + sum(i_k * step_k)`` along
``axis``, for ``i_k < count_k`` over ``blocks = ((count_k, step_k), ...)``:

* a Dense output unit: ``UnitAxis("dense/kernel", -1)``, position ``j``;
* an LSTM unit in a ``[4H, in]`` weight: ``groups=4``, positions ``j, H+j, 2H+j, 3H+j``;
* the second part of a concatenation: ``offset=C1``;
* a channel flattened from ``[H, W, C]`` into a Dense input: ``blocks=((H*W, C),)``;
* an attention head in a fused ``[D, heads*head_dim]`` kernel: ``stride=head_dim, blocks=((head_dim, 1),)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxprune._checks import check_int


@dataclass(frozen=True)
class UnitAxis:
    """Where the units of a set sit in one leaf axis (see the module docstring for the positions).

    Args:
      path: the leaf's ``/``-joined path.
      axis: the axis that holds the units (negative counts from the end).
      groups: read the axis as ``groups`` equal blocks and unit ``j`` as entry ``j`` of each
        (LSTM gates); only with the other arguments at their defaults.
      offset: position of unit 0.
      size: how many units; ``None``: the whole axis (divided by ``groups``).
      stride: step from one unit to the next.
      blocks: further ``(count, step)`` pairs: every unit also holds those positions.
    """

    path: str
    axis: int
    groups: int = 1
    offset: int = 0
    size: int | None = None
    stride: int = 1
    blocks: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if not isinstance(self.path, str):
            raise TypeError(f"UnitAxis `path` must be a str, got {type(self.path).__name__} {self.path!r}.")
        check_int("axis", self.axis, minimum=None)
        check_int("groups", self.groups, minimum=1)
        check_int("offset", self.offset, minimum=0)
        check_int("stride", self.stride, minimum=None)
        if self.size is not None:
            check_int("size", self.size, minimum=0)
        blocks = tuple(tuple(b) for b in self.blocks)
        for count, step in blocks:
            check_int("blocks count", count, minimum=1)
            check_int("blocks step", step, minimum=None)
        object.__setattr__(self, "blocks", blocks)
        plain = self.offset == 0 and self.size is None and self.stride == 1 and not blocks
        if self.groups > 1 and not plain:
            raise ValueError("UnitAxis `groups` is shorthand for blocks of a whole axis; use `blocks` with the others.")
        if self.size is None and not plain:
            raise ValueError(f"UnitAxis {self.path!r}: give `size` with `offset`, `stride` or `blocks`.")

    def __repr__(self) -> str:
        parts = [repr(self.path), str(self.axis)]
        defaults = {"groups": 1, "offset": 0, "size": None, "stride": 1, "blocks": ()}
        parts += [f"{k}={getattr(self, k)!r}" for k, d in defaults.items() if getattr(self, k) != d]
        return f"UnitAxis({', '.join(parts)})"

    def is_plain(self) -> bool:
        """Unit ``j`` of every block is entry ``j`` of the whole axis (what ``Structured`` describes)."""
        return self.offset == 0 and self.size is None and self.stride == 1 and not self.blocks

    def num_units(self, length: int) -> int:
        return length // self.groups if self.size is None else self.size

    def positions(self, length: int) -> np.ndarray:
        """``int64[units, per_unit]``: the positions of each unit along an axis of ``length`` entries."""
        if self.size is None:
            n = length // self.groups
            return (np.arange(n)[:, None] + n * np.arange(self.groups)[None, :]).astype(np.int64)
        inner = np.zeros(1, np.int64)
        for count, step in self.blocks:
            inner = (inner[None, :] + step * np.arange(count)[:, None]).reshape(-1)
        return self.offset + self.stride * np.arange(self.size, dtype=np.int64)[:, None] + np.sort(inner)[None, :]

    def check(self, shape: tuple[int, ...], where: str) -> int:
        """Checks this entry against its leaf's shape; returns the axis as a non-negative int."""
        if not shape:
            raise ValueError(f"{where}: leaf {self.path!r} is a scalar; a unit needs an axis.")
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(f"{where}: `axis`={self.axis} is out of range for leaf {self.path!r} of shape {shape}.")
        a = self.axis % len(shape)
        length = shape[a]
        if self.size is None:
            if length % self.groups:
                raise ValueError(
                    f"{where}: leaf {self.path!r} has {length} entries along axis {self.axis}, "
                    f"not divisible by `groups`={self.groups}."
                )
            return a
        pos = self.positions(length)
        if pos.size and (pos.min() < 0 or pos.max() >= length):
            raise ValueError(
                f"{where}: {self!r} reaches position {int(pos.max() if pos.max() >= length else pos.min())}, "
                f"outside the {length} entries of leaf {self.path!r} along axis {self.axis} (shape {shape})."
            )
        if len(np.unique(pos)) != pos.size:
            raise ValueError(f"{where}: {self!r} names some position of leaf {self.path!r} twice.")
        return a


@dataclass(frozen=True)
class UnitSet(Sequence):
    """A set of coupled units: a sequence of ``UnitAxis`` entries, plus what the tracer learned about them.

    ``normalized`` names the operations that reduce over these units
    without a weight on the other side (a LayerNorm's or RMSNorm's statistics
    over the channels): pruning such units is allowed, but the compacted
    model then differs from the masked one, since the statistics count fewer
    channels. Leave them out with ``[s for s in sets if not s.normalized]``.
    """

    entries: tuple[UnitAxis, ...]
    normalized: tuple[str, ...] = ()
    origin: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "entries", tuple(self.entries))
        for e in self.entries:
            if not isinstance(e, UnitAxis):
                raise TypeError(f"a UnitSet holds UnitAxis entries, got {type(e).__name__} {e!r}.")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        return self.entries[i]

    def __iter__(self) -> Iterator[UnitAxis]:
        return iter(self.entries)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.path for e in self.entries))

    def __repr__(self) -> str:
        n = next((e.size for e in self.entries if e.size is not None), None)
        head = f"{n} units: " if n is not None else ""
        flag = f"; normalized by {', '.join(self.normalized)}" if self.normalized else ""
        return f"UnitSet({head}{', '.join(map(repr, self.entries))}{flag})"


def check_sets(units) -> None:
    """``units`` is a list of sets, not one set (a common slip: ``units=sets[0]``)."""
    if isinstance(units, (UnitAxis, UnitSet, str)) or any(isinstance(e, UnitAxis) for e in units):
        raise TypeError("`units` must be a list of unit sets, each a list of UnitAxis: e.g. [[UnitAxis(...), ...]].")


def locate(flat_paths: list[str], shapes: list, units: Sequence[Sequence[UnitAxis]]) -> list[list[tuple[int, int]]]:
    """Each unit set as ``[(leaf index, axis)]``, checked: paths exist, positions fit, entries agree on the count.

    ``shapes`` holds each leaf's shape (``None`` where the leaf has none).
    """
    index = {p: i for i, p in enumerate(flat_paths)}
    check_sets(units)
    located = []
    for s, entries in enumerate(units):
        where = f"unit set {s}"
        if not entries:
            raise ValueError(f"{where} is empty.")
        row, sizes = [], set()
        for e in entries:
            if not isinstance(e, UnitAxis):
                raise TypeError(f"{where} holds {type(e).__name__} {e!r}; unit sets hold UnitAxis entries.")
            if e.path not in index:
                raise ValueError(f"{where}: no leaf at path {e.path!r}; were these units traced from another model?")
            i = index[e.path]
            shape = shapes[i]
            if shape is None:
                raise ValueError(f"{where}: leaf {e.path!r} is not an array.")
            a = e.check(tuple(shape), where)
            sizes.add(e.num_units(shape[a]))
            row.append((i, a))
        if len(sizes) != 1:
            raise ValueError(f"{where}: its entries disagree on the number of units: {sorted(sizes)}.")
        located.append(row)
    return located


def affine(positions: np.ndarray) -> tuple[int, int, tuple[tuple[int, int], ...]] | None:
    """``(offset, stride, blocks)`` that give ``positions`` (``[units, per_unit]``, each row sorted), or None."""
    n, k = positions.shape
    offset = int(positions[0, 0])
    stride = int(positions[1, 0] - positions[0, 0]) if n > 1 else 1
    starts = positions[:, :1]
    if not np.array_equal(starts[:, 0], offset + stride * np.arange(n)):
        return None
    inner = positions[0] - offset
    if not np.array_equal(positions - starts, np.broadcast_to(inner, positions.shape)):
        return None
    blocks: list[tuple[int, int]] = []
    done = 1  # inner[:done] is described by `blocks`
    while done < k:
        step = int(inner[done])
        count = 1
        while (count + 1) * done <= k and np.array_equal(
            inner[count * done : (count + 1) * done], inner[:done] + count * step
        ):
            count += 1
        if k % done or count == 1:
            return None
        blocks.append((count, step))
        done *= count
    pattern = np.zeros(1, np.int64)
    for count, step in blocks:
        pattern = (pattern[None, :] + step * np.arange(count)[:, None]).reshape(-1)
    if not np.array_equal(np.sort(pattern), inner):
        return None
    return offset, stride, tuple(blocks)


def touched_paths(units: Sequence[Sequence[UnitAxis]]) -> list[str]:
    """The leaf paths that the unit sets touch, in first-seen order."""
    return list(dict.fromkeys(e.path for e in itertools.chain.from_iterable(units)))
