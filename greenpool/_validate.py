"""Argument checks shared by the pool and its adapters.

Every check raises ``TypeError`` (wrong type) or ``ValueError`` (wrong range) with a message that names the
argument and shows the value it was given. Depends on nothing.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "check_address",
    "check_callable",
    "check_choice",
    "check_credentials",
    "check_int",
    "check_name",
    "check_seconds",
    "check_sizes",
    "deprecated_name",
    "merge_synonym",
]


def check_int(name: str, value: Any, *, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) not below ``minimum`` (nor above ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
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


def check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices`` (strings)."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r} ({type(value).__name__})"
        )
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_callable(name: str, value: Any, *, allow_none: bool = True) -> Any:
    """Return ``value`` if it is callable (or None where allowed)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r} ({type(value).__name__})")
    return value


def check_sizes(
    min_size: Any, max_size: Any, *, min_name: str = "min_connections", max_name: str = "max_connections"
) -> Tuple[int, int]:
    """Return ``(min_size, max_size)``: ints, ``max_size >= 1`` and ``min_size <= max_size``."""
    max_size = check_int(max_name, max_size, minimum=1)
    min_size = check_int(min_name, min_size)
    if min_size > max_size:
        raise ValueError(f"{min_name} must be <= {max_name}, got {min_name}={min_size!r}, {max_name}={max_size!r}")
    return min_size, max_size


def check_name(value: Any) -> Optional[str]:
    """Return ``value`` if it is a str or None (a pool's ``name``)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"name must be a str or None, got {value!r} ({type(value).__name__})")
    return value


def check_credentials(user: Any, password: Any) -> None:
    """Check a user name and a password; the message never shows the password's value."""
    if user is not None and (not isinstance(user, str) or not user):
        raise TypeError(f"user must be a non-empty str or None, got {user!r} ({type(user).__name__})")
    if password is not None and not isinstance(password, str):
        raise TypeError(f"password must be a str or None, got a {type(password).__name__}")
    if password is not None and user is None:
        raise ValueError("password was given without user: a password without a user is ignored by the server")


def check_address(host: Any, port: Any) -> None:
    """A TCP address (``host`` a non-empty str, ``port`` in 1..65535) or, with ``host=None``, a unix socket path
    in ``port``; ``TypeError``/``ValueError`` otherwise."""
    if host is None:
        if not isinstance(port, str) or not port:
            raise TypeError(f"port must be a unix socket path (str) when host is None, got {port!r}")
        return
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str (or None for a unix socket), got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {port!r} ({type(port).__name__})")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port!r}")


def deprecated_name(
    old: str, new: str, old_value: Any, new_value: Any, new_default: Any, *, stacklevel: int = 3
) -> Any:
    """Return the value of a renamed argument: ``new_value``, or ``old_value`` (with a ``DeprecationWarning``)
    when the caller still spells it ``old``. ``old_value is None`` means "not given". Giving both, with
    ``new_value`` other than its default and different from ``old_value``, raises ``TypeError``."""
    if old_value is None:
        return new_value
    warnings.warn(f"{old!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=stacklevel)
    if new_value != new_default and new_value != old_value:
        raise TypeError(f"give {new!r} or {old!r}, not both: got {new}={new_value!r}, {old}={old_value!r}")
    return old_value


def merge_synonym(kwargs: Dict[str, Any], name: str, synonym: str) -> None:
    """Move ``kwargs[synonym]`` to ``kwargs[name]`` (two accepted spellings of one setting, in place).

    Both given with different values raises ``TypeError`` naming both; both with the same value is fine.
    """
    if synonym not in kwargs:
        return
    value = kwargs.pop(synonym)
    if name in kwargs and kwargs[name] != value:
        raise TypeError(
            f"{name!r} and {synonym!r} are two names for one setting; got {name}={kwargs[name]!r}, {synonym}={value!r}"
        )
    kwargs[name] = value
