"""``greenpool.prometheus``: a ``prometheus_client`` collector for greenpool's pools.

Install with ``pip install greenpool[prometheus]``.

``REGISTRY.register(PoolCollector(pool))`` publishes, for each pool, labelled ``pool="<name>"``:

- ``greenpool_connections{state="idle"|"used"}`` and the other gauges (``greenpool_connections_max``,
  ``greenpool_connections_min``, ``greenpool_pending_requests``, the multiplexers' ``greenpool_mux_*``);
- cumulative counters (``greenpool_checkouts_total``, ``greenpool_checkout_timeouts_total``,
  ``greenpool_connections_created_total``, ...);
- cumulative histograms, in seconds: ``greenpool_checkout_wait_seconds``,
  ``greenpool_connection_create_seconds``, ``greenpool_connection_use_seconds`` (how long connections are
  held), and the multiplexers' ``greenpool_mux_reply_seconds`` (per send on a shared socket, until its replies
  had arrived).

Counters and histogram buckets add up across processes (``sum by (pool, le) (rate(..._bucket[5m]))`` over
every gunicorn worker), unlike percentiles. The collector reads the pools when scraped (``get_stats()`` and
``get_histograms()``): nothing runs per checkout. ``pop_stats()`` on a pool starts its totals over, which
Prometheus sees as a counter reset.

Depends on ``prometheus_client`` and ``greenpool._export``; works with any pool class (``Pool``,
``GeventPool``, ``RedisMuxPool``, ``TarantoolPool``, ``TarantoolMux``).
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Iterable, Iterator, List, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from greenpool._export import FIGURES, HISTOGRAMS, pool_name, read

__all__ = ["PoolCollector"]


class PoolCollector(Collector):
    """Collects the figures of the pools given (and of those :meth:`add` adds) at each scrape.

    Pools are held weakly: a pool that is garbage-collected disappears from the output. ``collect()`` never
    blocks (it reads counters); it runs in the scraping thread, which gevent-patched code runs as a greenlet.
    """

    def __init__(self, *pools: Any) -> None:
        self._pools: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        for pool in pools:
            self.add(pool)

    def add(self, pool: Any) -> None:
        """Collect ``pool`` too. Raises ``TypeError`` for an object without ``get_stats()``."""
        if not callable(getattr(pool, "get_stats", None)):
            raise TypeError(f"pool must have get_stats() (a greenpool pool), got {pool!r}")
        self._pools[id(pool)] = pool

    def remove(self, pool: Any) -> None:
        """Stop collecting ``pool`` (nothing happens if it was not collected)."""
        self._pools.pop(id(pool), None)

    def describe(self) -> Iterable[Metric]:
        # Registering must not read the pools (prometheus_client calls collect() when describe() is missing).
        return []

    def collect(self) -> Iterator[Metric]:
        pools = list(self._pools.values())
        read_pools = [(pool_name(pool), *read(pool)) for pool in pools]
        connections = GaugeMetricFamily(
            "greenpool_connections", "Open connections, by state: idle or used.", labels=["pool", "state"]
        )
        families: Dict[str, Union[CounterMetricFamily, GaugeMetricFamily]] = {}
        histograms: Dict[str, HistogramMetricFamily] = {}
        for name, stats, hists in read_pools:
            if "in_use" in stats and "pool_available" in stats:
                connections.add_metric([name, "idle"], float(stats["pool_available"]))
                connections.add_metric([name, "used"], float(stats["in_use"]))
            for figure in FIGURES:
                value = stats.get(figure.key)
                if not isinstance(value, (int, float)):
                    continue
                family = families.get(figure.key)
                if family is None:
                    kind = CounterMetricFamily if figure.counter else GaugeMetricFamily
                    family = families[figure.key] = kind(figure.prometheus, figure.help, labels=["pool"])
                family.add_metric([name], float(value) * figure.scale)
            for hist_figure in HISTOGRAMS:
                snapshot = hists.get(hist_figure.key)
                if snapshot is None:
                    continue
                hist = histograms.get(hist_figure.key)
                if hist is None:
                    hist = histograms[hist_figure.key] = HistogramMetricFamily(
                        hist_figure.prometheus, hist_figure.help, labels=["pool"]
                    )
                cumulative = snapshot.cumulative()
                buckets: List[Any] = [
                    (_le(bound / 1000.0), float(count)) for bound, count in zip(snapshot.bounds_ms, cumulative)
                ]
                buckets.append(("+Inf", float(cumulative[-1])))
                hist.add_metric([name], buckets, snapshot.sum_ms / 1000.0)
        if connections.samples:
            yield connections
        yield from families.values()
        yield from histograms.values()


def _le(seconds: float) -> str:
    """A bucket bound as Prometheus writes it (``0.0001``, ``0.5``, ``10.0``)."""
    return repr(round(seconds, 6))
