"""Parameter checks with one message shape.

Example message: ``The 'rank' parameter of DDLR must be an int >= 1. Got -3 instead.``
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

from compactnn.errors import ConfigError, UnknownNameError

__all__ = [
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
    "raise_unknown",
]


def _fail(name: str, owner: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(
        f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead."
    )


def check_int(
    value: Any, name: str, owner: str, *, min_value: int | None = None, max_value: int | None = None
) -> int:
    """Validate an integer parameter (bools are rejected)."""
    bounds = []
    if min_value is not None:
        bounds.append(f">= {min_value}")
    if max_value is not None:
        bounds.append(f"<= {max_value}")
    expected = "an int" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, owner, expected, value)
    if (min_value is not None and value < min_value) or (
        max_value is not None and value > max_value
    ):
        raise _fail(name, owner, expected, value)
    return int(value)


def check_float(
    value: Any,
    name: str,
    owner: str,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Validate a finite real parameter within optional bounds."""
    bounds = []
    if min_value is not None:
        bounds.append(f"{'>=' if min_inclusive else '>'} {min_value}")
    if max_value is not None:
        bounds.append(f"{'<=' if max_inclusive else '<'} {max_value}")
    expected = "a finite float" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, owner, expected, value)
    v = float(value)
    if not math.isfinite(v):
        raise _fail(name, owner, expected, value)
    if min_value is not None and (v < min_value or (not min_inclusive and v == min_value)):
        raise _fail(name, owner, expected, value)
    if max_value is not None and (v > max_value or (not max_inclusive and v == max_value)):
        raise _fail(name, owner, expected, value)
    return v


def check_bool(value: Any, name: str, owner: str) -> bool:
    """Validate a boolean parameter."""
    if not isinstance(value, bool):
        raise _fail(name, owner, "a bool", value)
    return value


def check_choice(value: Any, name: str, owner: str, choices: Collection[str]) -> str:
    """Validate a string parameter against a fixed set of choices."""
    if not isinstance(value, str) or value not in choices:
        raise _fail(name, owner, "one of " + ", ".join(repr(c) for c in sorted(choices)), value)
    return value


def raise_unknown(kind: str, name: Any, known: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the error for an unknown registry name (caller raises it)."""
    known_list = ", ".join(sorted(known))
    msg = f"Unknown {kind} {name!r}. Known {kind}s: {known_list}."
    if hint:
        msg += " " + hint
    return UnknownNameError(msg)
