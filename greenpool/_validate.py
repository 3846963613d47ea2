"""Argument checks shared by the pool and its adapters.

Every check raises ``TypeError`` (wrong type) or ``ValueError`` (wrong range) with a message that names the
argument and shows the value it was given. Depends on nothing.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["check_int", "check_seconds", "check_callable"]


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) not below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_seconds(name: str, value: Any, *, allow_none: bool = True, allow_zero: bool = True) -> Optional[float]:
    """Return ``value`` as a float number of seconds (finite, not negative), or None where allowed."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r} ({type(value).__name__})")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return seconds


def check_callable(name: str, value: Any, *, allow_none: bool = True) -> Any:
    """Return ``value`` if it is callable (or None where allowed)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r} ({type(value).__name__})")
    return value
