"""The coupling graph that ``trace_units`` builds: one node per position of every axis of every array (private).

The walk over the jaxpr gives each axis of each value an array of node ids,
one per position. A rule either *aliases* (an output axis reuses an input's
nodes: transposes, slices, concatenations, the free axes of a matmul),
*unites* (two positions index the same channel: both sides of a contraction,
the operands of an add) or *fixes* (a position that cannot be removed: input
and output axes, spatial axes under a window, anything indexed by data).
Reshapes that merge or split axes add a *product*: position ``p`` of the
flat axis is position ``(i, j, ...)`` of the factors. Which factor carries
the units is decided after the walk, once it is known which factors are
fixed and which reach a leaf (``resolve``); then every position of the flat
axis joins the units of its carrier, and the other factors are fixed.

The connected components are the units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class Product:
    """``flat[p]`` is the position ``np.unravel_index(p, sizes)`` of ``factors``."""

    flat: np.ndarray
    factors: list[np.ndarray]


@dataclass
class Graph:
    count: int = 0
    left: list[np.ndarray] = field(default_factory=list)
    right: list[np.ndarray] = field(default_factory=list)
    fixed: list[np.ndarray] = field(default_factory=list)
    reduced: list[tuple[np.ndarray, str]] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)

    def new(self, n: int, fixed: bool = False) -> np.ndarray:
        ids = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        if fixed:
            self.fixed.append(ids)
        return ids

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is b or not len(a):
            return
        if a.shape != b.shape:
            raise AssertionError(f"coupling axes of sizes {a.shape} and {b.shape}")
        self.left.append(a)
        self.right.append(b)

    def fix(self, nodes: np.ndarray) -> None:
        self.fixed.append(nodes)

    def reduce(self, nodes: np.ndarray, why: str) -> None:
        self.reduced.append((nodes, why))

    def product(self, flat: np.ndarray, factors: list[np.ndarray]) -> None:
        self.products.append(Product(flat, factors))

    def components(self) -> np.ndarray:
        """The component label of every node."""
        if not self.left:
            return np.arange(self.count)
        a, b = np.concatenate(self.left), np.concatenate(self.right)
        adjacency = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(self.count, self.count))
        return connected_components(adjacency, directed=False)[1]

    def flags(self, labels: np.ndarray, nodes: list[np.ndarray]) -> np.ndarray:
        """Per component: does it hold any of ``nodes``."""
        out = np.zeros(labels.max() + 1 if len(labels) else 0, bool)
        if nodes:
            out[labels[np.concatenate(nodes)]] = True
        return out

    def resolve(self, leaf_nodes: list[np.ndarray], inner: bool) -> np.ndarray:
        """Decides every product's carrier (see the module docstring); returns the final component labels.

        A product is decided as soon as at most one factor is free of fixed
        positions, or exactly one free factor reaches a leaf. When none is,
        the first in program order takes its outermost free factor (whole
        attention heads), or its innermost with ``inner`` (head dims).
        """
        pending = list(self.products)
        while pending:
            labels = self.components()
            fixed = self.flags(labels, self.fixed)
            leafy = self.flags(labels, leaf_nodes)
            decided = []
            for p in pending:
                free = [k for k, f in enumerate(p.factors) if not fixed[labels[f]].any()]
                reach = [k for k in free if leafy[labels[p.factors[k]]].any()]
                if len(free) <= 1:
                    decided.append((p, free[0] if free else None))
                elif len(reach) == 1:
                    decided.append((p, reach[0]))
            if not decided:
                p = pending[0]
                free = [k for k, f in enumerate(p.factors) if not fixed[labels[f]].any()]
                choices = [k for k in free if leafy[labels[p.factors[k]]].any()] or free
                decided = [(p, choices[-1] if inner else choices[0])]
            for p, carrier in decided:
                self._apply(p, carrier)
                pending.remove(p)
        return self.components()

    def _apply(self, p: Product, carrier: int | None) -> None:
        if carrier is None:
            self.fix(p.flat)
            return
        sizes = [len(f) for f in p.factors]
        index = np.indices(sizes).reshape(len(sizes), -1)[carrier]
        self.unite(p.flat, p.factors[carrier][index])
        for k, f in enumerate(p.factors):
            if k != carrier:
                self.fix(f)
