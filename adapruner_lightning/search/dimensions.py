"""The conditional search space: each searched dimension with its bound, where it matters and its canonical value.

A dimension is *active* where its condition (:class:`When`) holds on the dimensions before it and on the fixed
values of what is not searched; elsewhere it cannot change the plan (``layer_ramp`` under FLAP's ``standardized``
scope, the calibration subset of a data-free metric ...), so every engine treats it as fixed at its canonical value:
the GP sees that value (for the finished trials and for the point it proposes), TPE asks for it as an optuna
conditional parameter only where it is active, random search does not draw it. :meth:`ConditionalSpace.canonical`
is the one place a point is completed and its inactive dimensions fixed; the table itself is
:meth:`~adapruner_lightning.search.config.SearchSpaceConfig.dimensions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

#: a category list, a ``(low, high)`` float range or a ``(low, high, int)`` integer range (inclusive)
Bound = Union[list, tuple]


@dataclass(frozen=True)
class Below:
    """An allowed range of a :func:`where` test: values below ``limit``."""

    limit: float


@dataclass(frozen=True)
class Test:
    """``dim`` takes one of ``values``, or (``values`` None) a value below ``below``."""

    dim: str
    values: tuple[Any, ...] | None = None
    below: float | None = None

    def holds(self, value: Any) -> np.ndarray:
        """Whether the test holds, for one value or elementwise for an array of values."""
        if self.values is None:
            return np.asarray(value, dtype=float) < self.below
        value = np.asarray(value, dtype=object)
        out = np.zeros(value.shape, dtype=bool)
        for allowed in self.values:
            out |= value == allowed
        return out

    def describe(self) -> str:
        """The test in words (``scope in [layerwise, global]``, ``k < 64``)."""
        if self.values is None:
            return f"{self.dim} < {self.below:g}"
        return f"{self.dim} in [{', '.join(map(str, self.values))}]"


@dataclass(frozen=True)
class When:
    """A condition: it holds where any of its clauses holds, a clause where each of its tests holds."""

    clauses: tuple[tuple[Test, ...], ...]

    def __or__(self, other: When) -> When:
        return When(self.clauses + other.clauses)

    def __and__(self, other: When) -> When:
        return When(tuple(a + b for a in self.clauses for b in other.clauses))

    @property
    def reads(self) -> set[str]:
        """The names the condition reads."""
        return {test.dim for clause in self.clauses for test in clause}

    def holds(self, values: dict[str, Any]) -> np.ndarray:
        """Whether the condition holds on ``values`` (scalars, or arrays of one value per row)."""
        out = np.asarray(False)
        for clause in self.clauses:
            part = np.asarray(True)
            for test in clause:
                part = part & test.holds(values[test.dim])
            out = out | part
        return out

    def describe(self) -> str:
        """The condition in words, clauses joined by ``or``."""
        return " or ".join(" and ".join(t.describe() for t in clause) for clause in self.clauses)


def where(**tests: Any) -> When:
    """A one-clause condition: each keyword names a dimension (or a fixed value) and its allowed values (a tuple)
    or :class:`Below`, e.g. ``where(scope=("layerwise", "global"))``; combine with ``|`` and ``&``."""
    return When((tuple(Test(dim, below=allowed.limit) if isinstance(allowed, Below) else Test(dim, tuple(allowed))
                       for dim, allowed in tests.items()),))


@dataclass(frozen=True)
class Dimension:
    """One searched dimension.

    Args:
        bound: its values (:data:`Bound`).
        canonical: the value it takes where it is inactive (inside ``bound``).
        when: where it is active (None: everywhere).
    """

    bound: Bound
    canonical: Any
    when: When | None = None


def draw(bound: Bound, rng: np.random.RandomState) -> Any:
    """A uniformly random value of ``bound``."""
    if isinstance(bound, list):
        return bound[rng.randint(len(bound))]
    if len(bound) == 3:
        return int(rng.randint(bound[0], bound[1] + 1))
    return float(rng.uniform(bound[0], bound[1]))


@dataclass
class ConditionalSpace:
    """The searched dimensions in order, each condition reading only dimensions before it and ``fixed``.

    Args:
        dims: the table (:meth:`~adapruner_lightning.search.config.SearchSpaceConfig.dimensions`); a category list
            of one value is no dimension and joins ``fixed``.
        fixed: the values of what is not searched that conditions read (scope, metric, reconstruction ...).

    Raises:
        ValueError: a condition reads a name that is neither an earlier dimension nor fixed (a table defect).
    """

    dims: dict[str, Dimension]
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        single = {n: d.bound[0] for n, d in self.dims.items() if isinstance(d.bound, list) and len(d.bound) == 1}
        self.fixed = {**self.fixed, **single}
        self.dims = {n: d for n, d in self.dims.items() if n not in single}
        seen = set(self.fixed)
        for name, dim in self.dims.items():
            unknown = (dim.when.reads if dim.when else set()) - seen
            if unknown:
                raise ValueError(f"the condition of {name} reads {sorted(unknown)}: neither an earlier dimension nor fixed")
            seen.add(name)

    def bounds(self) -> dict[str, Bound]:
        """Every dimension's bound, in order (the engines' format)."""
        return {name: dim.bound for name, dim in self.dims.items()}

    def _walk(self, point: dict[str, Any], fill) -> tuple[dict[str, Any], list[str]]:
        """Complete ``point`` in order: an active dimension keeps its value (``fill(name)`` where it has none), an
        inactive one takes its canonical value; returns the point and its active dimensions."""
        values, out, active = dict(self.fixed), {}, []
        for name, dim in self.dims.items():
            if dim.when is None or bool(dim.when.holds(values)):
                out[name] = point[name] if name in point else fill(name)
                active.append(name)
            else:
                out[name] = dim.canonical
            values[name] = out[name]
        return out, active

    def canonical(self, point: dict[str, Any]) -> dict[str, Any]:
        """``point`` with every dimension, the inactive ones at their canonical value (a missing active one too)."""
        return self._walk(point, lambda name: self.dims[name].canonical)[0]

    def active(self, point: dict[str, Any]) -> list[str]:
        """The dimensions active at ``point``, in order."""
        return self._walk(point, lambda name: self.dims[name].canonical)[1]

    def values(self, point: dict[str, Any]) -> dict[str, Any]:
        """The fixed values and the canonical ``point`` together (what a candidate is decoded from)."""
        return {**self.fixed, **self.canonical(point)}

    def random_point(self, rng: np.random.RandomState, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """A random point: the ``given`` values, every other active dimension drawn uniformly in order (an inactive
        one is not drawn), canonical values elsewhere."""
        return self._walk(given or {}, lambda name: draw(self.dims[name].bound, rng))[0]

    def describe(self) -> dict[str, str]:
        """Each conditional dimension's condition in words (part of the search's problem description)."""
        return {name: dim.when.describe() for name, dim in self.dims.items() if dim.when is not None}
