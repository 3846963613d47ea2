"""redis-py's own OpenTelemetry connection metrics recorded for ``GeventPool`` (``greenpool/_redis_metrics.py``).

Runs redis-py's observability (``redis.observability``) with the real OpenTelemetry SDK and an in-memory
metric reader against a real redis-server, and compares what ``GeventPool`` records with what redis-py's
``BlockingConnectionPool`` records for the same work. redis-py reads the process-wide MeterProvider, which
OpenTelemetry lets a process set once: the fixture sets it for this module and turns redis-py's
observability off again at the end. Depends on ``tests/conftest.py``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import pytest
import redis
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.observability import OTelConfig, get_observability_instance
from redis.observability.attributes import get_pool_name
from redis.observability.config import MetricGroup

from greenpool import GeventPool, PoolTimeout, events
from tests.test_redis import server_kwargs

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"


class Points:
    """The data points the reader collected, by metric name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.by_name: Dict[str, List[Any]] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.by_name.setdefault(metric.name, []).extend(metric.data.data_points)

    def of(self, name: str, pool_name: str, **attrs: str) -> List[Any]:
        return [
            p
            for p in self.by_name.get(name, [])
            if p.attributes.get(POOL_NAME) == pool_name and all(p.attributes.get(k) == v for k, v in attrs.items())
        ]

    def count(self, pool_name: str) -> Tuple[int, int]:
        """(idle, used) as recorded in ``db.client.connection.count``."""
        idle = sum(p.value for p in self.of("db.client.connection.count", pool_name) if p.attributes[STATE] == "idle")
        used = sum(p.value for p in self.of("db.client.connection.count", pool_name) if p.attributes[STATE] == "used")
        return idle, used

    def histogram_count(self, name: str, pool_name: str) -> int:
        return sum(p.count for p in self.of(name, pool_name))

    def counter(self, name: str, pool_name: str) -> int:
        return sum(p.value for p in self.of(name, pool_name))


@pytest.fixture(scope="module")
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    yield reader
    # Observability off again for the rest of the session (no telemetry enabled: the recorders go quiet).
    get_observability_instance().init(OTelConfig(enabled_telemetry=[]))


def observe() -> None:
    groups = [MetricGroup.CONNECTION_BASIC, MetricGroup.CONNECTION_ADVANCED, MetricGroup.RESILIENCY]
    get_observability_instance().init(OTelConfig(metric_groups=groups))


def work(pool: Any) -> None:
    """Two commands, then both connections out at once, a checkout that times out, both back."""
    client = redis.Redis(connection_pool=pool)
    client.ping()
    client.ping()
    first = pool.get_connection()
    second = pool.get_connection()
    with pytest.raises(redis.exceptions.ConnectionError, match="No connection available"):
        pool.get_connection()
    pool.release(first)
    pool.release(second)


def test_gevent_pool_records_what_blocking_connection_pool_records(
    reader: InMemoryMetricReader, redis_server: Any
) -> None:
    observe()
    ours = GeventPool(max_connections=2, timeout=0.05, **server_kwargs(redis_server))
    theirs = redis.BlockingConnectionPool(max_connections=2, timeout=0.05, **server_kwargs(redis_server))
    try:
        work(ours)
        work(theirs)
        points = Points(reader)
        for pool in (ours, theirs):
            name = get_pool_name(pool)  # the label joins redis-py's own
            assert points.count(name) == (2, 0), name
            assert points.histogram_count("db.client.connection.create_time", name) == 2, name
            assert points.counter("db.client.connection.timeouts", name) == 1, name
            # Every successful checkout: two commands, two direct ones.
            assert points.histogram_count("db.client.connection.wait_time", name) == 4, name
    finally:
        ours.disconnect()
        theirs.disconnect()


def test_a_pool_made_before_observability_was_enabled_records_too(
    reader: InMemoryMetricReader, redis_server: Any
) -> None:
    get_observability_instance().init(OTelConfig(enabled_telemetry=[]))
    pool = GeventPool(max_connections=2, timeout=0.05, **server_kwargs(redis_server))
    client = redis.Redis(connection_pool=pool)
    client.ping()  # one idle connection, while observability is off
    assert events.listeners(pool, "checkout") == ()  # off: the pool does not even listen
    observe()
    work(pool)
    points = Points(reader)
    name = get_pool_name(pool)
    # The connection made before is counted from the pool's state, not from missed events.
    assert points.count(name) == (2, 0)
    assert points.histogram_count("db.client.connection.create_time", name) == 1  # the one made after
    pool.disconnect()


def test_listeners_survive_reset_and_counts_follow_the_new_pool(
    reader: InMemoryMetricReader, redis_server: Any
) -> None:
    observe()
    pool = GeventPool(max_connections=2, timeout=0.05, **server_kwargs(redis_server))
    seen: List[Any] = []
    events.listen(pool, "checkout", lambda conn, wait: seen.append(conn))
    client = redis.Redis(connection_pool=pool)
    client.ping()
    pool.reset()
    client.ping()
    assert len(seen) == 2
    first, second = pool.get_connection(), pool.get_connection()
    with pytest.raises(PoolTimeout):
        pool.get_connection()
    name = get_pool_name(pool)
    assert Points(reader).count(name) == (0, 2)  # the old pool's idle connection is gone from the counts
    pool.release(first)
    pool.release(second)
    assert Points(reader).count(name) == (2, 0)
    pool.disconnect()
