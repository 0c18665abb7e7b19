"""Argument checks shared by every module: one wording for "not a whole number", "not a fraction", ...

A bad argument fails before any work starts, with a message naming the argument, the value given and what
would be accepted. ``bool`` is refused where a number is expected, since ``True`` is an ``int`` in Python and
would otherwise pass as 1.
"""

from __future__ import annotations

import math

__all__ = ["finite", "is_whole", "whole", "whole_numbers"]


def is_whole(value: object, minimum: int | None = None, maximum: int | None = None) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"from {minimum} to {maximum}"
    if minimum is not None:
        return f"of at least {minimum}"
    if maximum is not None:
        return f"of at most {maximum}"
    return ""


def whole(name: str, value: object, minimum: int | None = None, maximum: int | None = None,
          hint: str = "") -> int:
    """``value`` itself if it is a whole number within the bounds, else a ValueError naming ``name``."""
    if not is_whole(value, minimum, maximum):
        bounds = _bounds(minimum, maximum)
        raise ValueError(f"{name} must be a whole number{' ' + bounds if bounds else ''}, got {value!r}."
                         + (f" {hint}" if hint else ""))
    return value  # type: ignore[return-value]


def whole_numbers(name: str, values: object, minimum: int | None = None, maximum: int | None = None) -> list[int]:
    """Every entry of ``values`` checked with :func:`whole`; the message names the first bad one."""
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{name} must be a list of whole numbers, got {values!r}.") from None
    bad = [v for v in items if not is_whole(v, minimum, maximum)]
    if bad:
        bounds = _bounds(minimum, maximum)
        raise ValueError(f"{name} must hold whole numbers{' ' + bounds if bounds else ''}; {bad[0]!r} is not.")
    return items


def finite(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


