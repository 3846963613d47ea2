"""Rate-limited logging for events that come in bursts (checkout timeouts under overload).

:class:`RateLimited` lets one record through per ``interval`` seconds and counts the ones it held back, so
the next record says how many were suppressed. Depends on the standard library only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimited"]


class RateLimited:
    """Log through ``logger`` at most once per ``interval`` seconds; the rest are counted, not lost."""

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -interval
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at ``level`` unless a record went out less than ``interval`` seconds ago."""
        if not self._logger.isEnabledFor(level):
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            msg += " (%d similar messages suppressed in the last %.0f s)"
            args = (*args, suppressed, self._interval)
        self._logger.log(level, msg, *args)
