"""Parameter checks with one message shape.

Example message: ``The 'rank' parameter of DDLR must be an int >= 1. Got -3 instead.``
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from compactnn.errors import ConfigError, UnknownNameError

__all__ = [
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
    "check_text",
    "check_names",
    "check_per_layer",
    "check_shape",
    "Rule",
    "parameter_error",
    "raise_unknown",
    "rule",
    "validate_options",
]

Rule = Callable[[Any, str, str], Any]
"""A declarative check ``rule(value, name, owner) -> normalised value`` (see :func:`rule`)."""


def parameter_error(name: str, owner: str, expected: str, value: Any) -> ConfigError:
    """The error of parameter ``name`` of ``owner`` whose ``value`` is not ``expected`` (e.g.
    ``"an int >= 1"``), in the one message shape (the caller raises it)."""
    return ConfigError(
        f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead."
    )


def _expected(kind: str, low: Any, high: Any, low_op: str = ">=", high_op: str = "<=") -> str:
    """What a number check expects: ``kind`` and its bounds (``None``: unbounded), e.g.
    ``"an int >= 1 and <= 8"``."""
    bounds = []
    if low is not None:
        bounds.append(f"{low_op} {low}")
    if high is not None:
        bounds.append(f"{high_op} {high}")
    return kind + (" " + " and ".join(bounds) if bounds else "")


def check_int(
    value: Any, name: str, owner: str, *, min_value: int | None = None, max_value: int | None = None
) -> int:
    """Validate an integer parameter (bools are rejected)."""
    expected = _expected("an int", min_value, max_value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise parameter_error(name, owner, expected, value)
    if (min_value is not None and value < min_value) or (
        max_value is not None and value > max_value
    ):
        raise parameter_error(name, owner, expected, value)
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
    expected = _expected(
        "a finite float",
        min_value,
        max_value,
        ">=" if min_inclusive else ">",
        "<=" if max_inclusive else "<",
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise parameter_error(name, owner, expected, value)
    v = float(value)
    if not math.isfinite(v):
        raise parameter_error(name, owner, expected, value)
    if min_value is not None and (v < min_value or (not min_inclusive and v == min_value)):
        raise parameter_error(name, owner, expected, value)
    if max_value is not None and (v > max_value or (not max_inclusive and v == max_value)):
        raise parameter_error(name, owner, expected, value)
    return v


def check_text(value: Any, name: str, owner: str, *, expected: str = "a non-empty str") -> str:
    """Validate a non-empty string parameter (``expected`` says what it names, for the
    message)."""
    if not isinstance(value, str) or not value:
        raise parameter_error(name, owner, expected, value)
    return value


def check_bool(value: Any, name: str, owner: str) -> bool:
    """Validate a boolean parameter."""
    if not isinstance(value, bool):
        raise parameter_error(name, owner, "a bool", value)
    return value


def check_names(value: Any, name: str, owner: str) -> tuple[str, ...]:
    """Validate a non-empty sequence of distinct dotted layer names (one str = one name)."""
    names = (value,) if isinstance(value, str) else value
    if (
        not isinstance(names, (list, tuple))
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise parameter_error(
            name, owner, "a non-empty sequence of distinct dotted layer names", value
        )
    return tuple(names)


def check_shape(value: Any, name: str, owner: str) -> tuple[int, ...]:
    """Validate a per-sample input shape: a non-empty sequence of ints >= 1 (not a string)."""
    expected = "a sequence of ints >= 1 such as (1, 28, 28)"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise parameter_error(name, owner, expected, value)
    dims = tuple(value)
    if not dims or not all(
        not isinstance(d, bool) and isinstance(d, numbers.Integral) and d >= 1 for d in dims
    ):
        raise parameter_error(name, owner, expected, value)
    return tuple(int(d) for d in dims)


def check_per_layer(
    value: Any,
    name: str,
    owner: str,
    check: Callable[..., Any] = check_float,
    *,
    forms: Collection[str] = ("one", "list", "dict"),
    **bounds: Any,
) -> Any:
    """Validate a per-layer option: one value for every layer (``"one"``), a list with one
    value per layer (``"list"``, returned as a tuple) or a mapping ``{layer name: value}``
    (``"dict"``, returned as a dict), among the accepted ``forms``.

    Every value is checked by ``check`` (:func:`check_float` or :func:`check_int`) with
    ``bounds``, under the name ``name[i]`` / ``name['layer']``. The number of values can only
    be compared with the layers at run time.
    """
    kind = "an int" if check is check_int else "a float"
    wording = {
        "one": kind,
        "list": "a list with one value per layer",
        "dict": "a dict layer -> value",
    }
    parts = [wording[f] for f in wording if f in forms]
    expected = parts[-1] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    form = (
        "dict"
        if isinstance(value, Mapping)
        else "list"
        if isinstance(value, (list, tuple))
        else "one"
    )
    if form not in forms:
        raise parameter_error(name, owner, expected, value)
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise parameter_error(name, owner, "a mapping {layer name (str): value}", value)
            out[key] = check(v, f"{name}[{key!r}]", owner, **bounds)
        return out
    if isinstance(value, (list, tuple)):
        return tuple(check(v, f"{name}[{i}]", owner, **bounds) for i, v in enumerate(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise parameter_error(name, owner, expected, value)
    return check(value, name, owner, **bounds)


def rule(check: Callable[..., Any], /, *, optional: bool = False, **kwargs: Any) -> Rule:
    """A declarative option check: ``check(value, name, owner, **kwargs)``.

    Args:
        check: one of the ``check_*`` functions of this module.
        optional: ``None`` is accepted (and kept).
        kwargs: the bounds / choices passed to ``check``.

    Example::

        RULES = {"rho": rule(check_float, min_value=0.0, min_inclusive=False),
                 "layers": rule(check_names, optional=True)}
    """

    def run(value: Any, name: str, owner: str) -> Any:
        if value is None and optional:
            return None
        return check(value, name, owner, **kwargs)

    return run


def validate_options(obj: Any, owner: str, rules: Mapping[str, Rule]) -> None:
    """Apply a table ``{option: rule}`` to the attributes of ``obj`` (a frozen dataclass),
    storing each normalised value back (e.g. a list of per-layer values becomes a tuple).

    Raises:
        ConfigError: from the first rule that fails, in the table's order.
    """
    for name, check in rules.items():
        object.__setattr__(obj, name, check(getattr(obj, name), name, owner))


def check_choice(value: Any, name: str, owner: str, choices: Collection[str]) -> str:
    """Validate a string parameter against a fixed set of choices."""
    if not isinstance(value, str) or value not in choices:
        raise parameter_error(
            name, owner, "one of " + ", ".join(repr(c) for c in sorted(choices)), value
        )
    return value


def raise_unknown(kind: str, name: Any, known: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the error for an unknown registry name (caller raises it)."""
    known_list = ", ".join(sorted(known))
    msg = f"Unknown {kind} {name!r}. Known {kind}s: {known_list}."
    if hint:
        msg += " " + hint
    return UnknownNameError(msg)
