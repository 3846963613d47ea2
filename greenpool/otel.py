"""``greenpool.otel``: OpenTelemetry metrics for greenpool's pools (``pip install greenpool[otel]``).

``greenpool.otel.instrument(pool)`` publishes the pool through the global ``MeterProvider`` (or the one
given), on the meter ``greenpool``, with the attributes ``db.client.connection.pool.name`` (the pool's name)
and ``db.system.name`` (``redis`` or ``tarantool``). Names follow the OpenTelemetry semantic conventions
for database client connection pools where one exists:

- ``db.client.connection.count`` (``db.client.connection.state``: ``idle`` / ``used``),
  ``db.client.connection.max``, ``db.client.connection.idle.min``, ``db.client.connection.pending_requests``,
  ``db.client.connection.timeouts``: read from ``get_stats()`` when the metrics are collected;
- ``db.client.connection.create_time`` (seconds): recorded as each connection is made;
- ``db.client.connection.wait_time`` and ``db.client.connection.use_time`` (seconds): recorded at each
  checkout and release, only with ``histograms=True``. The OpenTelemetry SDK's ``record()`` runs twice per
  checkout then, which cut the seed scenario's throughput (5000 greenlets, 10 connections, PING) to 0.57x
  in ``python -m stress.bench_obs``; without them, the running totals ``greenpool.checkout.wait_time.total`` and
  ``greenpool.connection.use_time.total`` (seconds) with ``greenpool.connection.returns`` give the averages
  at no cost per checkout, and the Prometheus collector (:mod:`greenpool.prometheus`) the buckets;
- ``greenpool.*`` running totals (checkouts, errors, connections made, lost, closed, queue mode switches)
  and the multiplexers' ``greenpool.mux.*`` figures.

Every figure is cumulative, so the processes of a gunicorn app add up. Works with every pool class
(``Pool``, ``GeventPool``, ``RedisMuxPool``, ``TarantoolPool``, ``TarantoolMux``): it reads
``get_stats()``, ``get_histograms()`` and the pool events (:mod:`greenpool.events`) where the pool has them.
If redis-py's own observability is on as well, ``GeventPool`` also reports redis-py's connection metrics
under redis-py's meter and pool name (see ``greenpool/_redis_metrics.py``): pick one of the two per
dashboard, or they count the same connections twice.

Depends on ``opentelemetry-api`` (>= 1.23), ``greenpool._export`` and ``greenpool.events``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from greenpool import __version__, events
from greenpool._export import FIGURES, pool_name, read, system_of
from greenpool.stats import BOUNDS_MS, HistogramSnapshot

__all__ = ["PoolMetrics", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
SYSTEM = "db.system.name"

#: Histogram bucket bounds in seconds (the stats' own, so the buckets of both agree).
BOUNDS_S = [bound / 1000.0 for bound in BOUNDS_MS]


class _Watched:
    """One pool, its attributes and its last snapshot."""

    __slots__ = ("attrs", "listeners", "ref", "snapshot")

    def __init__(self, pool: Any) -> None:
        self.ref = weakref.ref(pool)
        attrs: Dict[str, str] = {POOL_NAME: pool_name(pool)}
        system = system_of(pool)
        if system is not None:
            attrs[SYSTEM] = system
        self.attrs = attrs
        self.listeners: List[Tuple[str, Callable[..., Any]]] = []
        self.snapshot: Tuple[Dict[str, Any], Dict[str, HistogramSnapshot]] = ({}, {})


class PoolMetrics:
    """The instruments, and the pools they report on (held weakly: a collected pool stops reporting).

    ``meter_provider``: where to create the instruments (default: the global one, as set by
    ``opentelemetry.metrics.set_meter_provider``). ``histograms``: also record ``wait_time`` and
    ``use_time`` at each checkout and release (costly, see the module docstring).
    """

    def __init__(self, *pools: Any, meter_provider: Any = None, histograms: bool = False) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("greenpool", __version__)
        self._pools: Dict[int, _Watched] = {}
        self._histograms = bool(histograms)
        # One get_stats() per pool and collection, shared by every instrument: a collection calls each
        # callback once, so a callback called a second time means a new collection.
        self._served: Set[int] = set()
        self._observers = 0
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._observe_count],
            "{connection}",
            "The number of connections that are currently in the state described by the state attribute.",
        )
        for figure in FIGURES:
            create = meter.create_observable_counter if figure.counter else meter.create_observable_up_down_counter
            create(figure.otel, [self._observer(figure.key, figure.scale)], figure.unit, figure.help)
        for key, name, help in (
            ("requests_wait_ms", "greenpool.checkout.wait_time.total", "Time checkouts spent waiting, in total."),
            ("usage_ms", "greenpool.connection.use_time.total", "Time connections were held, in total."),
        ):
            meter.create_observable_counter(name, [self._observer(key, 0.001)], "s", help)
        meter.create_observable_counter(
            "greenpool.connection.returns", [self._observer("returns_num", 1.0)], "{connection}", "Releases."
        )
        self._create_time = meter.create_histogram(
            "db.client.connection.create_time",
            "s",
            "The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=BOUNDS_S,
        )
        self._wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            "s",
            "The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=BOUNDS_S,
        )
        self._use_time = meter.create_histogram(
            "db.client.connection.use_time",
            "s",
            "The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=BOUNDS_S,
        )
        for pool in pools:
            self.add(pool)

    def add(self, pool: Any) -> None:
        """Report on ``pool`` too; never blocks. Raises ``TypeError`` for an object without ``get_stats()``."""
        if not callable(getattr(pool, "get_stats", None)):
            raise TypeError(f"pool must have get_stats() (a greenpool pool), got {pool!r}")
        if id(pool) in self._pools:
            return
        watched = _Watched(pool)
        attrs = watched.attrs
        wanted: List[Tuple[str, Callable[..., Any]]] = []
        record_create = self._create_time.record
        wanted.append(("connect", lambda conn, seconds: record_create(seconds, attrs)))
        if self._histograms:
            record_wait, record_use = self._wait_time.record, self._use_time.record
            wanted.append(("checkout", lambda conn, wait: record_wait(wait, attrs)))
            wanted.append(("checkin", lambda conn, held: record_use(held, attrs)))
        try:
            for event, fn in wanted:
                events.listen(pool, event, fn)
                watched.listeners.append((event, fn))
        except TypeError:
            pass  # a pool without events (a multiplexer): its figures come from get_stats() alone
        self._pools[id(pool)] = watched
        weakref.finalize(pool, self._pools.pop, id(pool), None)

    def remove(self, pool: Any) -> None:
        """Stop reporting on ``pool`` (nothing happens if it was not reported on); never blocks."""
        watched = self._pools.pop(id(pool), None)
        if watched is None:
            return
        for event, fn in watched.listeners:
            if fn in events.listeners(pool, event):
                events.remove(pool, event, fn)

    # ------------------------------------------------------------------ collection

    def _snapshots(self, observer: int) -> List[Tuple[_Watched, Dict[str, Any]]]:
        if not self._served or observer in self._served:
            self._served = set()
            for watched in list(self._pools.values()):
                pool = watched.ref()
                if pool is not None:
                    watched.snapshot = read(pool)
        self._served.add(observer)
        return [(watched, watched.snapshot[0]) for watched in list(self._pools.values())]

    def _observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        out: List[Observation] = []
        for watched, stats in self._snapshots(-1):
            if "pool_available" in stats and "in_use" in stats:
                out.append(Observation(stats["pool_available"], {**watched.attrs, STATE: "idle"}))
                out.append(Observation(stats["in_use"], {**watched.attrs, STATE: "used"}))
        return out

    def _observer(self, key: str, scale: float) -> Callable[[CallbackOptions], Iterable[Observation]]:
        index = self._observers
        self._observers += 1

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out: List[Observation] = []
            for watched, stats in self._snapshots(index):
                value = stats.get(key)
                if isinstance(value, (int, float)):
                    out.append(Observation(value * scale, watched.attrs))
            return out

        return observe


def instrument(*pools: Any, meter_provider: Optional[Any] = None, histograms: bool = False) -> PoolMetrics:
    """Publish ``pools`` as OpenTelemetry metrics (see the module docstring); return the :class:`PoolMetrics`,
    whose :meth:`~PoolMetrics.add` publishes more pools on the same instruments. Never blocks."""
    return PoolMetrics(*pools, meter_provider=meter_provider, histograms=histograms)
