"""Tests of ``greenpool.GeventSentinelPool`` against a real master, replica and 3 sentinels
(``redis_sentinel_set`` fixture of ``conftest.py``, built by ``stress/topologies.py``): ``master_for`` /
``slave_for`` with the pool, ``SENTINEL FAILOVER`` under load (0 errors, every acknowledged write on the new
master, no connection left on the old one, one sentinel query in flight at a time), and the shared discovery
on a fake sentinel manager.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import gevent
import gevent.event
import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

import greenpool
from greenpool.redis_sentinel import GeventSentinelMuxPool, GeventSentinelPool, SentinelDiscovery
from tests import helpers


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """:func:`tests.helpers.wait_until`, with this file's longer default (fail-overs take seconds)."""
    helpers.wait_until(predicate, timeout)


def sentinel_for(servers: Any) -> Sentinel:
    return Sentinel(servers.sentinel_addresses, sentinel_kwargs={"socket_timeout": 1.0})


def test_master_for_and_slave_for_take_the_pool_class(redis_sentinel_set: Any) -> None:
    servers = redis_sentinel_set
    sentinel = sentinel_for(servers)
    master = sentinel.master_for("mymaster", connection_pool_class=GeventSentinelPool, max_connections=5, timeout=1)
    replica = sentinel.slave_for("mymaster", connection_pool_class=GeventSentinelPool, max_connections=5, timeout=1)
    try:
        assert isinstance(master.connection_pool, GeventSentinelPool)
        master.set("k", "v")
        assert master.execute_command("ROLE")[0] == b"master"
        assert replica.execute_command("ROLE")[0] == b"slave"
        master.execute_command("WAIT", 1, 5000)
        assert replica.get("k") == b"v"
        stats = master.connection_pool.get_stats()
        assert stats["master"] == f"127.0.0.1:{servers.master.port}"
        assert stats["pool_max"] == 5 and stats["sentinel_queries"] >= 1
    finally:
        master.close()
        replica.close()
        sentinel.close()


@pytest.mark.parametrize("pool_class", [GeventSentinelPool, GeventSentinelMuxPool], ids=["pool", "mux"])
def test_sentinel_failover_under_load_no_errors_and_no_connection_left_on_the_old_master(
    redis_sentinel_set: Any, pool_class: Any
) -> None:
    servers = redis_sentinel_set
    old = (servers.master.host, servers.master.port)
    sentinel = sentinel_for(servers)
    in_flight = [0, 0]  # now, most at once
    discover = sentinel.discover_master

    def counted_discover(service: str) -> Any:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            return discover(service)
        finally:
            in_flight[0] -= 1

    sentinel.discover_master = counted_discover  # type: ignore[method-assign]
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 20)
    client = sentinel.master_for(
        "mymaster",
        connection_pool_class=pool_class,
        max_connections=10,
        timeout=10,
        retry=retry,
        socket_timeout=2.0,
    )
    stop = gevent.event.Event()
    errors: List[BaseException] = []
    acked: Dict[str, str] = {}

    def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            key, value = f"k{w}:{n}", f"v{w}:{n}"
            try:
                client.set(key, value)
                if client.execute_command("WAIT", 1, 1000) >= 1:
                    acked[key] = value
            except Exception as exc:  # every error is a failure of the test
                errors.append(exc)
                return
            n += 1

    try:
        greenlets = [gevent.spawn(worker, w) for w in range(30)]
        wait_until(lambda: len(acked) >= 100 or bool(errors))
        new = servers.failover()
        assert tuple(new) != old
        wait_until(lambda: client.connection_pool.master_address == tuple(new) or bool(errors))
        before = len(acked)
        # The sentinels turn the old master into a replica of the new one some 10 s after the failover; only
        # then can WAIT acknowledge writes again.
        wait_until(lambda: len(acked) >= before + 100 or bool(errors), timeout=40)
        stop.set()
        gevent.joinall(greenlets, timeout=15)
        assert all(g.dead for g in greenlets)
        assert errors == [], [(type(e).__mro__, str(e)) for e in errors[:3]]
        pool = client.connection_pool
        assert in_flight[1] == 1  # one discovery at a time
        for conn in pool._pool.idle_connections():
            assert not conn.is_connected or (conn.host, conn.port) == tuple(new)
        if pool_class is GeventSentinelMuxPool:  # the plain commands went over the shared sockets
            assert pool.get_stats()["mux_requests"] > len(acked)
        check = redis.Redis(*new, decode_responses=True)
        try:
            keys = list(acked)
            values = check.mget(keys)
            assert [k for k, v in zip(keys, values) if v != acked[k]] == []
        finally:
            check.close()
    finally:
        stop.set()
        client.close()
        sentinel.close()


class FakeManager:
    """A sentinel manager whose answer takes a while and can change."""

    def __init__(self) -> None:
        self.address = ("127.0.0.1", 1111)
        self.calls = 0
        self.gate = gevent.event.Event()

    def discover_master(self, service: str) -> Any:
        self.calls += 1
        self.gate.wait(5)
        return self.address

    def discover_slaves(self, service: str) -> Any:
        return []


def test_concurrent_callers_share_one_discovery() -> None:
    manager = FakeManager()
    discovery = SentinelDiscovery(manager, "svc", ttl=10.0, timeout=5.0)
    greenlets = [gevent.spawn(discovery.master) for _ in range(20)]
    wait_until(lambda: manager.calls == 1 and discovery.shared == 19)
    manager.gate.set()
    gevent.joinall(greenlets, timeout=5)
    assert [g.value for g in greenlets] == [("127.0.0.1", 1111)] * 20
    assert manager.calls == 1
    assert discovery.master() == ("127.0.0.1", 1111) and manager.calls == 1  # cached within the ttl
    changed: List[Any] = []
    discovery.on_master_change = changed.append
    manager.address = ("127.0.0.1", 2222)
    discovery.invalidate(("127.0.0.1", 9999))  # not the cached address: kept
    assert discovery.master() == ("127.0.0.1", 1111)
    discovery.invalidate(("127.0.0.1", 1111))
    assert discovery.master() == ("127.0.0.1", 2222)
    assert changed == [("127.0.0.1", 2222)] and discovery.changes == 1


def test_a_discovery_that_does_not_end_in_time_fails_every_waiter() -> None:
    manager = FakeManager()
    discovery = SentinelDiscovery(manager, "svc", ttl=10.0, timeout=0.2)
    greenlets = [gevent.spawn(discovery.master) for _ in range(5)]
    gevent.joinall(greenlets, timeout=5)
    assert all(isinstance(g.exception, MasterNotFoundError) for g in greenlets)
    assert manager.calls == 1 and discovery.failures == 1


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="service_name"):
        GeventSentinelPool(None, FakeManager())
    with pytest.raises(TypeError, match="sentinel_manager"):
        GeventSentinelPool("svc", object())
    with pytest.raises(ValueError, match="discovery_ttl"):
        GeventSentinelPool("svc", FakeManager(), discovery_ttl=-1)
    pool = GeventSentinelPool("svc", FakeManager(), password="sekret-pw")
    assert "sekret-pw" not in repr(pool) and "sekret-pw" not in repr(pool.get_stats())
    assert greenpool.GeventSentinelPool is GeventSentinelPool


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_harness_sentinel_scenario_runs_and_checks(tmp_path: Any, replicas: int) -> None:
    import json

    out = tmp_path / "sentinel.json"
    argv = ["sentinel", "--greenlets", "20", "--duration", "3", "--pools", "greenpool", "--check", "--json"]
    helpers.run_harness([*argv, str(out), "--replicas", str(replicas)])
    [run] = json.loads(out.read_text())["results"]["greenpool"]
    assert run["ok"] > 0 and run["wrong_replies"] == 0 and run["errors"] == 0
    assert 0 < run["acked"] <= run["ok"]
    if replicas == 1:
        # Writes a replica confirmed (SET and WAIT on one connection), every one on the master the sentinels name.
        # (With two, the other replica confirms writes on the old master until the sentinels move it: --check
        # does not count those, and neither does this test.)
        assert run["lost_acked"] == 0
