"""Overload against real servers: request deadlines through every pool class, and a soak of random deadlines.

Each test asserts invariants only (no reply handed to the wrong caller, no leaked slot, every checkout answered
by a connection or the pool's error), never figures that depend on the machine's speed; the goodput figures live
in the harness (``python -m stress overload``). Uses the session ``redis_server`` / ``tarantool_server``.
"""

from __future__ import annotations

import random
import uuid
from typing import Any, Dict, List

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import greenpool
from greenpool import GeventPool, PoolTimeout, RedisMuxPool, TarantoolMux, TarantoolPool
from tests.test_redis import server_kwargs


def redis_pool(kind: str, server: Any, **kw: Any) -> Any:
    kw.setdefault("max_connections", 4)
    kw.setdefault("timeout", 5)
    cls = RedisMuxPool if kind == "mux" else GeventPool
    return cls(retry=Retry(NoBackoff(), 0), **server_kwargs(server), **kw)


@pytest.mark.parametrize("kind", ["GeventPool", "mux"])
def test_deadline_works_through_redis_py(kind: str, redis_server: Any) -> None:
    pool = redis_pool(kind, redis_server)
    r = redis.Redis(connection_pool=pool)
    key = f"deadline:{uuid.uuid4().hex[:8]}"
    with greenpool.deadline(5):
        assert r.set(key, "v") is True
        with greenpool.deadline(5):
            assert r.get(key) == b"v"
    with pytest.raises(gevent.Timeout):
        with greenpool.deadline(0.05):
            r.blpop([key + ":never"], 5)  # a blocking command cut by the deadline
    # The interrupted connection was discarded: the next command gets its own reply.
    assert r.get(key) == b"v"
    r.delete(key)
    stats = pool.get_stats()
    assert stats["in_use"] == 0
    pool.disconnect()


def test_deadline_sheds_a_redis_checkout_that_cannot_be_served_in_time(redis_server: Any) -> None:
    pool = redis_pool("GeventPool", redis_server, max_connections=1)
    # Checkouts that hold the connection 50 ms teach the pool how long a turn takes (on a slow machine, longer).
    for _ in range(3):
        conn = pool.get_connection()
        gevent.sleep(0.05)
        pool.release(conn)
    held = pool.get_connection()
    queued = [gevent.spawn(pool.get_connection) for _ in range(3)]
    gevent.sleep(0)
    assert pool.get_stats()["requests_waiting"] == 3
    with greenpool.deadline(0.01):
        with pytest.raises(PoolTimeout) as info:
            pool.get_connection()
    assert isinstance(info.value, redis.ConnectionError)  # what redis-py callers already catch
    stats = pool.get_stats()
    assert stats["requests_shed"] == 1 and stats["pool_size"] == 1 and stats["requests_waiting"] == 3
    pool.release(held)
    for g in queued:
        pool.release(g.get(timeout=5))
    assert pool.get_stats()["in_use"] == 0
    pool.disconnect()


@pytest.mark.parametrize("kind", ["TarantoolPool", "mux"])
def test_deadline_works_through_tarantool(kind: str, tarantool_server: Any) -> None:
    s = tarantool_server
    if kind == "mux":
        client: Any = TarantoolMux(s.host, s.port, s.user, s.password, socket_timeout=5)
    else:
        client = TarantoolPool(s.host, s.port, user=s.user, password=s.password, max_connections=2, timeout=5)
    with greenpool.deadline(5):
        assert client.call("add", 1, 2).data == [3]
    with pytest.raises(gevent.Timeout):
        with greenpool.deadline(0.05):
            client.eval("require('fiber').sleep(5)")
    assert client.call("add", 2, 2).data == [4]  # the late reply never reaches this request
    if kind != "mux":
        assert client.in_use == 0
    client.close()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["adaptive", "fifo"])
@pytest.mark.parametrize("how", ["gevent.Timeout", "deadline"])
def test_random_deadline_soak_never_mixes_replies_or_leaks(redis_server: Any, policy: str, how: str) -> None:
    # 100 greenlets x 60 GETs through 8 connections, each GET under a random deadline of 0.05-30 ms.
    pool = redis_pool("GeventPool", redis_server, max_connections=8, queue_policy=policy, driver_info=None)
    r = redis.Redis(connection_pool=pool)
    prefix = f"soak:{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{i}" for i in range(100)]
    for i, key in enumerate(keys):
        r.set(key, i)
    counts: Dict[str, int] = {"ok": 0, "timeout": 0, "pool": 0}
    mismatches: List[str] = []

    def run(i: int) -> None:
        rng = random.Random(i)
        for _ in range(60):
            seconds = rng.uniform(0.00005, 0.03)
            try:
                with gevent.Timeout(seconds) if how == "gevent.Timeout" else greenpool.deadline(seconds):
                    got = r.get(keys[i])
                if got != str(i).encode():
                    mismatches.append(f"{keys[i]}: {got!r}")
                counts["ok"] += 1
            except gevent.Timeout:
                counts["timeout"] += 1
            except PoolTimeout:
                counts["pool"] += 1

    greenlets = [gevent.spawn(run, i) for i in range(100)]
    gevent.joinall(greenlets, timeout=120)
    assert all(g.dead for g in greenlets), "a greenlet hung"
    assert [g.exception for g in greenlets if g.exception is not None] == []
    stats = pool.get_stats()
    r.delete(*keys)
    assert mismatches == []
    assert sum(counts.values()) == 100 * 60  # every GET answered: a reply, its deadline, or the pool's error
    assert stats["in_use"] == 0 and stats["requests_waiting"] == 0 and stats["pool_handing_over"] == 0
    assert stats["pool_size"] <= 8
    # Every pool error was a refusal (for a deadline, or of a newcomer while the queue was LIFO), none a timeout
    # (a waiter refused as its deadline fired sees the deadline: the count of refusals may be higher).
    assert counts["pool"] <= stats["requests_shed"] and stats["requests_timeouts"] == 0
    pool.disconnect()
