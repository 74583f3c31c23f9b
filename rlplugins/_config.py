"""The config toolkit: one set of checks and one "did you mean" for every config dataclass and flag parser.

Every check raises an error whose message starts with ``owner.field`` (or the bare field/flag name when ``owner``
is empty), says what was expected and what was given. Wrong types raise ``ConfigTypeError``, out-of-range or
unknown values ``ValueError``; ``ConfigTypeError`` and ``UnknownFieldError`` are both ``TypeError`` and
``ValueError``, so ``except`` clauses written for either keep working.

This module imports the standard library only: the core configs, the adapters' flag/kwargs parsers and the
kernels' scalar checks can all use it without adding a dependency.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any, Iterable, Mapping, TypeVar

__all__ = [
    "ConfigMixin",
    "ConfigTypeError",
    "UnknownFieldError",
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_range",
    "did_you_mean",
    "suggest",
    "suggest_field_names",
    "unknown_field_error",
]

C = TypeVar("C", bound="ConfigMixin")


class ConfigTypeError(TypeError, ValueError):
    """A config value of the wrong type (both a TypeError and a ValueError, see the module docstring)."""


class UnknownFieldError(TypeError, ValueError):
    """A misspelt config field or option. Both a TypeError (what a dataclass constructor raises for an unexpected
    keyword) and a ValueError (what mapping and flag parsers raise)."""


def _qual(owner: str, field: str) -> str:
    return f"{owner}.{field}" if owner else field


# ----------------------------------------------------------------------------------------------- misspellings


def suggest(name: object, candidates: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``name`` (difflib ratio >= ``cutoff``), or None."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: object, candidates: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``" Did you mean 'x'?"`` for the closest candidate, or ``""``: appended to an error message."""
    close = suggest(name, candidates, cutoff=cutoff)
    return f" Did you mean {close!r}?" if close else ""


def unknown_field_error(owner: str, key: object, names: Iterable[str]) -> UnknownFieldError:
    """The one "did you mean" message of every config: constructors, ``.replace``, mappings and CLI flags."""
    names = list(names)
    return UnknownFieldError(
        f"{owner} has no field {key!r}.{did_you_mean(key, names)} Valid fields: {', '.join(names) or '(none)'}"
    )


# ------------------------------------------------------------------------------------------------------ checks


def check_number(
    owner: str,
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
) -> Any:
    """``value`` unchanged if it is a finite real number (not a bool) in the given range; raise otherwise.

    ``low``/``high`` of None mean unbounded; the message states the interval, e.g. ``must be in (0, inf), got 0``.
    """
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        none = " or None" if allow_none else ""
        raise ConfigTypeError(f"{_qual(owner, field)} must be a number{none}, got {type(value).__name__} {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        raise ValueError(f"{_qual(owner, field)} must be finite, got an int of {len(str(abs(value)))} digits "
                         f"(beyond the float range)") from None
    if not finite:
        raise ValueError(f"{_qual(owner, field)} must be finite, got {value!r}")
    lo_ok = low is None or (value >= low if low_inclusive else value > low)
    hi_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (lo_ok and hi_ok):
        raise ValueError(f"{_qual(owner, field)} must be {_interval(low, high, low_inclusive, high_inclusive)}, "
                         f"got {value!r}")
    return value


def _interval(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    lb = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
    hb = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
    return f"in {lb}, {hb}"


def check_range(owner: str, field: str, value: Any, **bounds: Any) -> None:
    """``check_number`` without a return value (the name the loss configs used first)."""
    check_number(owner, field, value, **bounds)


def check_int(
    owner: str,
    field: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    allow_none: bool = False,
) -> Any:
    """``value`` unchanged if it is an int (not a bool) in ``[low, high]``; raise otherwise."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        none = " or None" if allow_none else ""
        raise ConfigTypeError(f"{_qual(owner, field)} must be an int{none}, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        none = "None or " if allow_none else ""
        raise ValueError(f"{_qual(owner, field)} must be {none}an int {_interval(low, high, True, True)}, "
                         f"got {value!r}")
    return value


def check_bool(owner: str, field: str, value: Any) -> bool:
    """``value`` if it is a bool (0/1, "true" and None are rejected: a typo must not flip a switch)."""
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{_qual(owner, field)} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(owner: str, field: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``; otherwise a ValueError listing them, with the closest one."""
    choices = tuple(choices)
    if value in choices:
        return value
    hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
    raise ValueError(f"{_qual(owner, field)} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint and '.'}{hint}")


# ------------------------------------------------------------------------------------------ config dataclasses


def _reject_unknown(klass: type, kwargs: Mapping[str, Any]) -> None:
    names = [f.name for f in dataclasses.fields(klass) if f.init]
    for key in kwargs:
        if key not in names:
            raise unknown_field_error(klass.__name__, key, names)


class ConfigMixin:
    """Base of the config dataclasses: unknown keywords get "did you mean", plus ``from_mapping`` / ``to_dict``.

    ``__new__`` checks keyword arguments against ``dataclasses.fields`` of the class actually being built, so
    every subclass, ``dataclasses.replace`` and ``.replace`` raise ``UnknownFieldError`` naming the closest field
    instead of Python's bare "unexpected keyword argument". Subclasses validate in ``__post_init__``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            _reject_unknown(cls, kwargs)
        return object.__new__(cls)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping (framework kwargs, a parsed YAML block); an unknown key raises and suggests the
        closest field name. A list given for a field whose default is a tuple becomes a tuple (YAML has no
        tuples, and a frozen config must stay hashable)."""
        if not isinstance(values, Mapping):
            raise ConfigTypeError(f"{cls.__name__}.from_mapping needs a mapping, got {type(values).__name__}")
        _reject_unknown(cls, values)
        kwargs = dict(values)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if isinstance(f.default, tuple) and isinstance(kwargs.get(f.name), list):
                kwargs[f.name] = tuple(kwargs[f.name])
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def suggest_field_names(cls: type) -> type:
    """Class decorator giving a dataclass that does not derive from ``ConfigMixin`` the same "did you mean" on
    unknown keywords (for classes whose bases are fixed by a framework)."""

    def __new__(klass: type, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            _reject_unknown(klass, kwargs)
        return object.__new__(klass)

    cls.__new__ = __new__  # type: ignore[method-assign]
    return cls
