"""Counters and checkout wait-time percentiles behind ``Pool.get_stats()``.

The pool bumps plain integer attributes on a :class:`Counters` object on its hot path (no locks: one pool
belongs to one gevent hub) and appends each checkout's wait to a bounded window; :func:`percentile` turns
that window into the p50/p99 figures of a snapshot. Depends on nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Iterable

__all__ = ["Counters", "percentile", "WAIT_WINDOW"]

#: How many of the most recent checkout waits the percentiles are computed over.
WAIT_WINDOW = 10_000


class Counters:
    """Running totals since the pool was created (or since the last ``pop_stats()``)."""

    __slots__ = (
        "checks_failed",
        "connections_closed",
        "connections_errors",
        "connections_lost",
        "connections_ms",
        "connections_num",
        "requests_errors",
        "requests_num",
        "requests_queued",
        "requests_rejected",
        "requests_timeouts",
        "requests_wait_ms",
        "returns_bad",
        "waits_ms",
    )

    def __init__(self) -> None:
        self.requests_num = 0
        self.requests_queued = 0
        self.requests_wait_ms = 0.0
        self.requests_errors = 0
        self.requests_timeouts = 0
        self.requests_rejected = 0
        self.connections_num = 0
        self.connections_ms = 0.0
        self.connections_errors = 0
        self.connections_lost = 0
        self.connections_closed = 0
        self.checks_failed = 0
        self.returns_bad = 0
        self.waits_ms: Deque[float] = deque(maxlen=WAIT_WINDOW)

    def snapshot(self) -> Dict[str, float]:
        """Return the totals and the wait percentiles as a plain dict (see ``Pool.get_stats``)."""
        out: Dict[str, float] = {name: getattr(self, name) for name in self.__slots__ if name != "waits_ms"}
        out["requests_wait_ms"] = round(self.requests_wait_ms, 3)
        out["connections_ms"] = round(self.connections_ms, 3)
        waits = sorted(self.waits_ms)
        out["wait_p50_ms"] = percentile(waits, 50)
        out["wait_p99_ms"] = percentile(waits, 99)
        out["wait_max_ms"] = round(waits[-1], 3) if waits else 0.0
        return out


def percentile(sorted_values: Iterable[float], pct: float) -> float:
    """Return the ``pct`` percentile (nearest rank) of already sorted values, 0.0 when there are none."""
    values = list(sorted_values)
    if not values:
        return 0.0
    rank = max(0, min(len(values) - 1, round(pct / 100.0 * len(values) + 0.5) - 1))
    return round(values[rank], 3)
