"""The interpreter that ``trace_units`` runs over a jaxpr: values as arrays of graph nodes, one rule per primitive.

``Walker.walk`` interprets a jaxpr over ``Value``s (an array of graph nodes
per axis, plus the leaves the value was computed from) the way JAX's own
interpreters do: ``RULES`` maps each primitive's name to a small rule
(``rules.py`` fills it). A primitive without a rule is never guessed at: the
walk raises, naming it and the leaves it reaches, or (``unknown="exclude"``)
fixes every axis it touches, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jax.extend import core as jcore

from jaxprune.structural.graph import Graph

Axes = list[np.ndarray]


@dataclass(frozen=True)
class Value:
    axes: tuple[np.ndarray, ...]
    leaves: frozenset[int]  # which leaves of the traced tree it is computed from, for messages
    data: bool = False  # computed from the model's inputs (an activation), not from the leaves alone


class Walker:
    """One walk: the graph, the leaf paths for messages, and what to do with a primitive that has no rule."""

    def __init__(self, graph: Graph, paths: list[str], unknown: str, whole_heads: bool = True):
        self.g, self.paths, self.unknown, self.whole_heads = graph, paths, unknown, whole_heads
        self.warned: set[str] = set()
        self.unknowns: list[tuple[str, list[np.ndarray]]] = []  # (primitive, the nodes it fixed)

    def fresh(self, shape, fixed: bool = False) -> tuple[np.ndarray, ...]:
        return tuple(self.g.new(int(n), fixed) for n in shape)

    def walk(self, jaxpr: jcore.Jaxpr, consts: list[Value], args: list[Value]) -> list[Value]:
        env: dict = {}
        for v, x in zip(jaxpr.constvars, consts):
            env[v] = x
        for v, x in zip(jaxpr.invars, args):
            env[v] = x

        def read(x):
            if isinstance(x, jcore.Literal):
                return Value(self.fresh(np.shape(x.val), fixed=True), frozenset())
            return env[x]

        for eqn in jaxpr.eqns:
            ins = [read(x) for x in eqn.invars]
            leaves = frozenset().union(*(x.leaves for x in ins))
            data = any(x.data for x in ins)
            rule = RULES.get(eqn.primitive.name)
            outs = rule(self, eqn, ins) if rule is not None else self.no_rule(eqn, ins, leaves)
            for v, axes in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = Value(tuple(axes), leaves, data)
        return [read(x) for x in jaxpr.outvars]

    def closed(self, closed: jcore.ClosedJaxpr, args: list[Value]) -> list[Value]:
        """Walks a closed jaxpr: its constants were captured at their traced sizes, so their axes are fixed."""
        consts = [Value(self.fresh(np.shape(c), fixed=True), frozenset()) for c in closed.consts]
        return self.walk(closed.jaxpr, consts, args)

    def no_rule(self, eqn, ins: list[Value], leaves: frozenset[int]) -> list[Axes]:
        """Fixes every axis a primitive without a rule touches; raises first if it reads a leaf and
        ``unknown="error"``. Where it reads none (an op on a dropout mask), ``check_unknown`` looks,
        once the units are known, whether what it fixed reached one."""
        name = eqn.primitive.name
        if leaves and self.unknown == "error":
            raise self.unknown_error(name, leaves)
        touched = [a for x in ins for a in x.axes]
        outs = [list(self.fresh(v.aval.shape, fixed=True)) for v in eqn.outvars]
        for a in touched:
            self.g.fix(a)
        self.unknowns.append((name, [*touched, *(a for o in outs for a in o)]))
        return outs

    def unknown_error(self, name: str, leaves) -> ValueError:
        return ValueError(
            f"trace_units has no rule for the primitive {name!r}, which reaches leaves {self.names(leaves)}; "
            "rather than guess how it couples their axes it stops. Pass unknown='exclude' to keep every axis "
            "it touches out of all unit sets, or add a rule to jaxprune.structural.rules.RULES."
        )

    def names(self, leaves) -> str:
        leaves = sorted(leaves)
        return ", ".join(repr(self.paths[i]) for i in leaves[:5]) + (", ..." if len(leaves) > 5 else "")

    def check_unknown(self, labels: np.ndarray, leaf_vals: list[Value]) -> None:
        """Raises (``unknown="error"``) or warns, naming the primitive, where a primitive without a rule
        fixed positions coupled with a leaf's."""
        if not self.unknowns:
            return
        owner: dict[int, set[int]] = {}  # graph label -> the leaves it reaches
        for i, v in enumerate(leaf_vals):
            for a in v.axes:
                for c in np.unique(labels[a]):
                    owner.setdefault(int(c), set()).add(i)
        for name, nodes in self.unknowns:
            reached = set().union(*(owner.get(int(c), set()) for a in nodes for c in np.unique(labels[a])))
            if not reached or name in self.warned:
                continue
            if self.unknown == "error":
                raise self.unknown_error(name, reached)
            self.warned.add(name)
            warnings.warn(
                f"trace_units: no rule for the primitive {name!r}; the axes it touches, coupled with leaves "
                f"{self.names(reached)}, are kept out of every unit set.",
                stacklevel=4,
            )


Rule = Callable[[Walker, object, list[Value]], list[Axes]]
RULES: dict[str, Rule] = {}


def rule(*names: str):
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn

    return register
