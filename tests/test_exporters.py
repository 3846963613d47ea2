"""The exporters, with the real libraries: ``greenpool.prometheus`` (a scrape of the collector's text output,
parsed back by ``prometheus_client``'s own parser) and ``greenpool.otel`` (the OpenTelemetry SDK with an
in-memory metric reader), on every pool class against real servers: ``GeventPool``, ``RedisMuxPool``,
``TarantoolPool``, and the core ``Pool`` with fake connections. Depends on ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from greenpool import GeventPool, Pool, PoolTimeout, TarantoolPool
from greenpool.otel import instrument
from greenpool.prometheus import PoolCollector
from greenpool.redis_mux import RedisMuxPool
from greenpool.stats import BOUNDS_MS
from stress.servers import RedisServer
from tests.test_redis import server_kwargs


class Conn:
    def close(self) -> None:
        pass


def scrape(*pools: Any) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Register a collector of ``pools`` in a new registry, scrape its text output, parse it back."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(*pools))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def busy_core_pool() -> Pool[Conn]:
    """A pool of one connection: two checkouts served, one timed out, the connection idle again."""
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=0, name="core")
    for _ in range(2):
        pool.release(pool.acquire())
    conn = pool.acquire()
    with pytest.raises(PoolTimeout):
        pool.acquire()
    pool.release(conn)
    return pool


# ---------------------------------------------------------------------- Prometheus


def test_prometheus_scrape_of_the_core_pool() -> None:
    pool = busy_core_pool()
    samples = scrape(pool)
    labels = (("pool", "core"),)
    assert samples[("greenpool_connections", (("pool", "core"), ("state", "idle")))] == 1.0
    assert samples[("greenpool_connections", (("pool", "core"), ("state", "used")))] == 0.0
    assert samples[("greenpool_connections_max", labels)] == 1.0
    assert samples[("greenpool_checkouts_total", labels)] == 4.0
    assert samples[("greenpool_checkout_timeouts_total", labels)] == 1.0
    assert samples[("greenpool_connections_created_total", labels)] == 1.0
    # Cumulative histograms: every release counted, the +Inf bucket equals _count.
    assert samples[("greenpool_connection_use_seconds_count", labels)] == 3.0
    assert samples[("greenpool_connection_use_seconds_bucket", (("le", "+Inf"), ("pool", "core")))] == 3.0
    # Three served at once (0 s); the one refused at once (timeout=0, nothing idle) did not wait: not counted.
    assert samples[("greenpool_checkout_wait_seconds_count", labels)] == 3.0
    smallest = repr(BOUNDS_MS[0] / 1000.0)
    assert samples[("greenpool_checkout_wait_seconds_bucket", (("le", smallest), ("pool", "core")))] == 3.0


def test_prometheus_collects_redis_mux_and_tarantool_pools(redis_server: Any, tarantool_server: Any) -> None:
    gevent_pool = GeventPool(max_connections=2, name="cache", **server_kwargs(redis_server))
    mux = RedisMuxPool(max_connections=2, name="mux", **server_kwargs(redis_server))
    tnt = TarantoolPool(
        tarantool_server.host, tarantool_server.port, tarantool_server.user, tarantool_server.password, name="tnt"
    )
    try:
        for client in (redis.Redis(connection_pool=gevent_pool), redis.Redis(connection_pool=mux)):
            client.ping()
            client.ping()
        tnt.ping()
        samples = scrape(gevent_pool, mux, tnt)
        for name in ("cache", "tnt"):
            assert samples[("greenpool_connections", (("pool", name), ("state", "idle")))] == 1.0, name
            assert samples[("greenpool_connections_created_total", (("pool", name),))] == 1.0, name
            assert samples[("greenpool_connection_create_seconds_count", (("pool", name),))] == 1.0, name
        assert samples[("greenpool_checkouts_total", (("pool", "cache"),))] == 2.0
        # The multiplexer's shared-socket figures come from its mux_* keys.
        assert samples[("greenpool_mux_requests_total", (("pool", "mux"),))] >= 2.0
        assert ("greenpool_mux_sockets_up", (("pool", "mux"),)) in samples
        # Its reply times: one value per send on the shared socket (two PINGs one after the other: two sends).
        assert samples[("greenpool_mux_reply_seconds_count", (("pool", "mux"),))] == 2.0
        assert samples[("greenpool_mux_reply_seconds_sum", (("pool", "mux"),))] > 0.0
        assert ("greenpool_mux_reply_seconds_count", (("pool", "cache"),)) not in samples
    finally:
        gevent_pool.disconnect()
        mux.disconnect()
        tnt.close()


def test_prometheus_collector_refuses_what_is_not_a_pool() -> None:
    with pytest.raises(TypeError, match="pool must have get_stats"):
        PoolCollector(object())


# ---------------------------------------------------------------------- OpenTelemetry


@pytest.fixture
def reader() -> Iterator[Tuple[InMemoryMetricReader, MeterProvider]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> Dict[str, List[Any]]:
    out: Dict[str, List[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            assert scope.scope.name == "greenpool"
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def value(found: Dict[str, List[Any]], name: str, pool: str, **attrs: str) -> Any:
    matches = [
        p
        for p in found[name]
        if p.attributes["db.client.connection.pool.name"] == pool
        and all(p.attributes.get(k) == v for k, v in attrs.items())
    ]
    assert len(matches) == 1, (name, pool, attrs, found[name])
    return matches[0]


def test_otel_semantic_convention_metrics_for_the_core_pool(reader: Any) -> None:
    reader, provider = reader
    pool = busy_core_pool()
    instrument(pool, meter_provider=provider)
    found = points(reader)
    assert value(found, "db.client.connection.count", "core", **{"db.client.connection.state": "idle"}).value == 1
    assert value(found, "db.client.connection.count", "core", **{"db.client.connection.state": "used"}).value == 0
    assert value(found, "db.client.connection.max", "core").value == 1
    assert value(found, "db.client.connection.timeouts", "core").value == 1
    assert value(found, "greenpool.checkouts", "core").value == 4
    assert value(found, "greenpool.connection.returns", "core").value == 3
    assert "db.system.name" not in value(found, "db.client.connection.max", "core").attributes
    # Without histograms=True nothing is recorded per checkout.
    assert "db.client.connection.use_time" not in found
    # A second collection reads the pool afresh.
    pool.release(pool.acquire())
    assert value(points(reader), "greenpool.checkouts", "core").value == 5


def test_otel_histograms_and_every_pool_class(reader: Any, redis_server: Any, tarantool_server: Any) -> None:
    reader, provider = reader
    gevent_pool = GeventPool(max_connections=2, name="cache", **server_kwargs(redis_server))
    mux = RedisMuxPool(max_connections=2, name="mux", **server_kwargs(redis_server))
    tnt = TarantoolPool(
        tarantool_server.host, tarantool_server.port, tarantool_server.user, tarantool_server.password, name="tnt"
    )
    metrics = instrument(gevent_pool, tnt, meter_provider=provider, histograms=True)
    metrics.add(mux)
    try:
        client = redis.Redis(connection_pool=gevent_pool)
        client.ping()
        client.ping()
        redis.Redis(connection_pool=mux).ping()
        tnt.ping()
        found = points(reader)
        cache = value(found, "db.client.connection.count", "cache", **{"db.client.connection.state": "idle"})
        assert cache.value == 1 and cache.attributes["db.system.name"] == "redis"
        assert value(found, "db.client.connection.create_time", "cache").count == 1
        assert value(found, "db.client.connection.wait_time", "cache").count == 2
        assert value(found, "db.client.connection.use_time", "cache").count == 2
        tnt_idle = value(found, "db.client.connection.count", "tnt", **{"db.client.connection.state": "idle"})
        assert tnt_idle.value == 1 and tnt_idle.attributes["db.system.name"] == "tarantool"
        assert value(found, "db.client.connection.use_time", "tnt").count == 1
        assert value(found, "db.client.connection.create_time", "tnt").explicit_bounds[0] == BOUNDS_MS[0] / 1000
        assert value(found, "greenpool.mux.requests", "mux").value >= 1
        metrics.remove(tnt)
        tnt.ping()
        assert value(points(reader), "db.client.connection.use_time", "tnt").count == 1  # no longer recorded
    finally:
        gevent_pool.disconnect()
        mux.disconnect()
        tnt.close()


# ---------------------------------------------------------------------- no secrets


def test_no_password_in_scrapes_metrics_or_logs(reader: Any, caplog: pytest.LogCaptureFixture) -> None:
    reader, provider = reader
    secret = "s3cret-pa55"
    with RedisServer(password=secret) as server:
        pool = GeventPool.from_url(f"redis://:{secret}@{server.host}:{server.port}/0", max_connections=1, timeout=0)
        instrument(pool, meter_provider=provider)
        caplog.set_level(logging.DEBUG, logger="greenpool")
        try:
            conn = pool.get_connection()
            with pytest.raises(PoolTimeout):
                pool.get_connection()
            pool.release(conn)
            pool.disconnect()
            redis.Redis(connection_pool=pool).ping()  # reconnects an idle connection: logged
            text = generate_latest_of(pool)
            assert f'pool="redis {server.host}:{server.port}/0"' in text
            assert secret not in text
            assert secret not in repr(points(reader))
            messages = " ".join(r.getMessage() for r in caplog.records)
            assert "checkout timed out" in messages and "reconnecting an idle connection" in messages
            assert secret not in messages
        finally:
            pool.disconnect()


def generate_latest_of(pool: Any) -> str:
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool))
    return generate_latest(registry).decode()
