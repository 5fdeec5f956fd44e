"""Shared configuration vocabulary: the validators every typed config uses in ``__post_init__``, and the one
form of a deprecated name (:func:`deprecated`, :func:`renamed`).

Each raises :class:`~adapruner_lightning.errors.ConfigError` naming the field, the value given and what is
allowed. The configs themselves live with the layer they configure: ``core.config.PruningConfig`` (it checks
metric names against core's registry), ``search.config.SearchConfig``, ``lightning.recovery.RecoveryConfig``.
"""

from __future__ import annotations

import warnings
from typing import Any, get_args

from adapruner_lightning.errors import ConfigError


def check_choice(what: str, value: str, allowed: "list[str] | tuple[str, ...] | dict") -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a :class:`ConfigError` listing them."""
    names = sorted(allowed)
    if value not in allowed:
        raise ConfigError(what, value, f"one of {names}")
    return value


def check_literal(what: str, value: str, literal: Any) -> str:
    """:func:`check_choice` against the values of a ``Literal`` type (each choice list is written once, as the
    ``Literal`` a config field is annotated with; jsonargparse reads the same type for the CLI's choices)."""
    return check_choice(what, value, get_args(literal))


def check_fraction(what: str, value: float, *, closed_low: bool = False) -> float:
    """Return ``value`` if it lies in (0, 1) (or [0, 1) with ``closed_low``), else raise :class:`ConfigError`."""
    low_ok = value >= 0 if closed_low else value > 0
    if not (isinstance(value, (int, float)) and low_ok and value < 1):
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ConfigError(what, value, f"a fraction in {interval}", hint="e.g. 0.2 removes 20% of the parameters")
    return float(value)


def check_positive(what: str, value: Any) -> int:
    """Return ``value`` if it is a positive integer, else raise :class:`ConfigError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(what, value, "a positive integer")
    return value


def check_non_negative(what: str, value: Any) -> int:
    """Return ``value`` if it is a non-negative integer, else raise :class:`ConfigError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(what, value, "a non-negative integer")
    return value


def deprecated(old: str, new: str, *, stacklevel: int = 2) -> None:
    """Warn that ``old`` is a deprecated name of ``new``: a :class:`DeprecationWarning` ``"<old> is deprecated: use
    <new>"`` (the CLI shows these on stderr), attributed ``stacklevel`` frames above the caller."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=stacklevel + 1)


def renamed(old: str, old_value: Any, new: str, new_value: Any, *, stacklevel: int = 2) -> Any:
    """The value of an option given under its ``new`` name or its deprecated ``old`` one (None: not given).

    Returns ``new_value``, or ``old_value`` with a :func:`deprecated` warning when only ``old`` was given.

    Raises:
        ConfigError: both names given.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ConfigError(old, old_value, f"left out: {new} is given", hint=f"{old} is the deprecated name of {new}")
    deprecated(old, new, stacklevel=stacklevel + 1)
    return old_value
