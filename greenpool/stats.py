"""Counters, bucketed histograms and checkout wait percentiles behind ``Pool.get_stats()``.

The pool bumps plain integer attributes on a :class:`Counters` object on its hot path (no locks: one pool
belongs to one gevent hub), appends each checkout's wait to a bounded window (:func:`percentile` turns it
into the p50/p99 figures of a snapshot), and records three durations in cumulative :class:`Histogram`
buckets, which add up across processes (unlike percentiles): the checkout wait, the time to make a
connection, and the time a connection is held (its *usage*). Depends on nothing.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from math import fsum
from typing import Any, Deque, Dict, Iterable, List, Tuple

__all__ = ["BOUNDS_MS", "USAGE_BATCH", "WAIT_WINDOW", "Counters", "Histogram", "HistogramSnapshot", "percentile"]

#: How many of the most recent checkout waits the percentiles are computed over.
WAIT_WINDOW = 10_000

#: Upper bounds (milliseconds, inclusive) of the histogram buckets; one more bucket counts what is above.
#: Fine below a millisecond (a pool's waits and holds mostly are), up to 10 s (a connect timeout).
BOUNDS_MS: Tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
)  # fmt: skip


#: Hold times are appended to a list on the hot path (an append costs a third of a bucket lookup) and folded
#: into the usage histogram by the batch, or when read.
USAGE_BATCH = 1024


#: The bounds in seconds, for :meth:`Histogram.record_seconds`.
BOUNDS_S: Tuple[float, ...] = tuple(bound / 1000.0 for bound in BOUNDS_MS)


class HistogramSnapshot:
    """A histogram's figures at one moment: ``counts[i]`` values were ``<= bounds_ms[i]`` (and above the
    bound before it); the last count is of values above every bound. ``sum_ms`` is their total, ``count``
    their number."""

    __slots__ = ("bounds_ms", "count", "counts", "sum_ms")

    def __init__(self, bounds_ms: Tuple[float, ...], counts: Tuple[int, ...], sum_ms: float) -> None:
        self.bounds_ms = bounds_ms
        self.counts = counts
        self.sum_ms = sum_ms
        self.count = sum(counts)

    def cumulative(self) -> List[int]:
        """Counts of values ``<= bounds_ms[i]``, then of all values (Prometheus' ``le`` buckets)."""
        out: List[int] = []
        total = 0
        for n in self.counts:
            total += n
            out.append(total)
        return out

    def __repr__(self) -> str:
        return f"<HistogramSnapshot count={self.count} sum_ms={self.sum_ms}>"


class Histogram:
    """Bucketed durations (milliseconds) with their sum; :meth:`record` costs one bisect and two adds."""

    __slots__ = ("counts", "sum_ms")

    def __init__(self) -> None:
        self.counts: List[int] = [0] * (len(BOUNDS_MS) + 1)
        self.sum_ms = 0.0

    def record(self, ms: float) -> None:
        self.counts[bisect_left(BOUNDS_MS, ms)] += 1
        self.sum_ms += ms

    def record_seconds(self, values: List[float]) -> None:
        """Record many durations given in seconds (sorted here, then counted per bucket in C)."""
        if not values:
            return
        ordered = sorted(values)
        counts = self.counts
        below = 0
        for i, bound in enumerate(BOUNDS_S):
            upto = bisect_right(ordered, bound, below)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(ordered) - below
        self.sum_ms += fsum(ordered) * 1000.0

    def snapshot(self, extra_zeros: int = 0) -> HistogramSnapshot:
        """The figures now; ``extra_zeros`` values of 0 ms counted but not recorded one by one."""
        counts = list(self.counts)
        counts[0] += extra_zeros
        return HistogramSnapshot(BOUNDS_MS, tuple(counts), round(self.sum_ms, 3))


class Counters:
    """Running totals since the pool was created (or since the last ``pop_stats()``).

    ``events`` carries the pool's listeners (a :class:`greenpool.events.PoolEvents`) from one set of counters
    to the next, so that the pool object needs no attribute of its own for them."""

    __slots__ = (
        "checks_failed",
        "connect_hist",
        "connections_closed",
        "connections_errors",
        "connections_lost",
        "connections_ms",
        "connections_num",
        "events",
        "refused_at_once",
        "requests_errors",
        "requests_num",
        "requests_queued",
        "requests_rejected",
        "requests_timeouts",
        "requests_wait_ms",
        "returns_bad",
        "usage_hist",
        "usage_s",
        "wait_hist",
        "waits_ms",
    )

    def __init__(self, events: Any = None) -> None:
        self.events = events
        self.requests_num = 0
        self.requests_queued = 0
        self.requests_wait_ms = 0.0
        self.requests_errors = 0
        self.requests_timeouts = 0
        self.requests_rejected = 0
        #: Checkouts refused without waiting (``timeout=0``, overload, a deadline too short): not in ``wait``.
        self.refused_at_once = 0
        self.connections_num = 0
        self.connections_ms = 0.0
        self.connections_errors = 0
        self.connections_lost = 0
        self.connections_closed = 0
        self.checks_failed = 0
        self.returns_bad = 0
        self.waits_ms: Deque[float] = deque(maxlen=WAIT_WINDOW)
        #: Queued checkouts' waits (those served at once are counted from the totals, not recorded).
        self.wait_hist = Histogram()
        #: Time to make a connection (successful or not).
        self.connect_hist = Histogram()
        #: Time each connection was held, from checkout to release (``usage_s`` holds the latest, in seconds).
        self.usage_hist = Histogram()
        self.usage_s: List[float] = []

    def fold_usage(self) -> None:
        """Move the hold times gathered in ``usage_s`` into the usage histogram."""
        usage, self.usage_s = self.usage_s, []
        self.usage_hist.record_seconds(usage)

    def snapshot(self) -> Dict[str, float]:
        """Return the totals and the wait percentiles as a plain dict (see ``Pool.get_stats``)."""
        self.fold_usage()
        skip = ("events", "refused_at_once", "waits_ms", "wait_hist", "connect_hist", "usage_hist", "usage_s")
        out: Dict[str, float] = {name: getattr(self, name) for name in self.__slots__ if name not in skip}
        out["requests_wait_ms"] = round(self.requests_wait_ms, 3)
        out["connections_ms"] = round(self.connections_ms, 3)
        out["usage_ms"] = round(self.usage_hist.sum_ms, 3)
        out["returns_num"] = sum(self.usage_hist.counts)
        waits = sorted(self.waits_ms)
        out["wait_p50_ms"] = percentile(waits, 50)
        out["wait_p99_ms"] = percentile(waits, 99)
        out["wait_max_ms"] = round(waits[-1], 3) if waits else 0.0
        return out

    def histograms(self) -> Dict[str, HistogramSnapshot]:
        """``wait`` (every checkout that was not refused at once), ``connect`` and ``usage`` histograms."""
        self.fold_usage()
        served_at_once = self.requests_num - self.requests_queued - self.requests_rejected - self.refused_at_once
        return {
            "wait": self.wait_hist.snapshot(max(0, served_at_once)),
            "connect": self.connect_hist.snapshot(),
            "usage": self.usage_hist.snapshot(),
        }


def percentile(sorted_values: Iterable[float], pct: float) -> float:
    """Return the ``pct`` percentile (nearest rank) of already sorted values, 0.0 when there are none."""
    values = list(sorted_values)
    if not values:
        return 0.0
    rank = max(0, min(len(values) - 1, round(pct / 100.0 * len(values) + 0.5) - 1))
    return round(values[rank], 3)
