"""``greenpool.deadline``: a request deadline that the pools can see.

``with greenpool.deadline(0.1):`` works as ``with gevent.Timeout(0.1):`` does (``gevent.Timeout`` is raised in
the block when the time is up) and also records, for the current greenlet, when the budget ends. The pools read
it: a checkout whose remaining budget cannot cover half the expected wait fails at once with the pool's timeout
error, and a hand-off skips a waiter whose budget has run out, so that no slot is taken and no connection is
handed to a greenlet about to be interrupted. Deadlines nest; an inner one never extends an outer one.
Depends on ``greenpool._green`` (the gevent seam) and ``greenpool._validate``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Dict, Optional, Type

from greenpool._green import Timeout, getcurrent, monotonic
from greenpool._validate import check_seconds

__all__ = ["BUDGETS", "deadline", "remaining"]

#: greenlet -> the monotonic time its innermost deadline ends. Empty when no deadline is in force, so a pool
#: pays one truthiness test per contended checkout for the feature.
BUDGETS: Dict[Any, float] = {}


class deadline:
    """Bound the enclosed block to ``seconds`` and let the pools see the budget.

    ``seconds`` is a number >= 0 (``None`` is not accepted: use no deadline; ``0`` has already run out). Entering arms a
    ``gevent.Timeout`` (``exception`` is raised instead of it when given, as ``gevent.Timeout`` does) for the
    remaining time, which is the lesser of ``seconds`` and what is left of an enclosing deadline. Leaving
    cancels it and restores the enclosing deadline. Never blocks.

    Raises ``gevent.Timeout`` (or ``exception``) inside the block when the time is up; a pool checkout inside
    it raises the pool's own timeout error (a :class:`greenpool.PoolTimeout`) at once when the remaining budget
    cannot cover half the expected wait.
    """

    __slots__ = ("_greenlet", "_outer", "_timer", "at", "exception", "seconds")

    def __init__(self, seconds: float, exception: Optional[BaseException] = None) -> None:
        self.seconds: float = check_seconds("seconds", seconds, allow_none=False)  # type: ignore[assignment]
        self.exception = exception
        self.at = 0.0
        self._timer: Any = None
        self._greenlet: Any = None
        self._outer: Optional[float] = None

    def __enter__(self) -> deadline:
        if self._timer is not None:
            raise RuntimeError("a greenpool.deadline cannot be entered twice; make a new one")
        greenlet = getcurrent()
        now = monotonic()
        at = now + self.seconds
        outer = BUDGETS.get(greenlet)
        if outer is not None and outer < at:
            at = outer
        self.at = at
        self._greenlet = greenlet
        self._outer = outer
        self._timer = Timeout(max(at - now, 0.0), self.exception)
        BUDGETS[greenlet] = at
        self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._timer.close()
        if self._outer is None:
            BUDGETS.pop(self._greenlet, None)
        else:
            BUDGETS[self._greenlet] = self._outer
        self._greenlet = None

    def remaining(self) -> float:
        """Seconds left before this deadline (0.0 once it has passed)."""
        return max(self.at - monotonic(), 0.0)

    def __repr__(self) -> str:
        return f"<greenpool.deadline {self.seconds:g} s>"


def remaining() -> Optional[float]:
    """Seconds left in the current greenlet's innermost :class:`deadline`, or ``None`` outside any."""
    at = BUDGETS.get(getcurrent()) if BUDGETS else None
    return None if at is None else max(at - monotonic(), 0.0)
