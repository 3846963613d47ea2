"""A server restarted while every connection sits idle costs no command, for each of the four pool classes.

Ten connections are opened and left idle, the server is killed with SIGKILL and started again on the same port,
then commands run (ten at once, so every idle connection is taken, then more one by one) with no retry of
any kind: each must succeed. The pools notice the closed sockets while the connections are idle (an event-loop
read watcher for ``GeventPool`` and ``TarantoolPool``, the multiplexers' always-armed readers), not when a
command fails on one. Also here: the same after a server that closes idle clients itself (Redis ``timeout``),
and after a client kill on the server side. Uses the ``fresh_redis`` / ``fresh_tarantool`` fixtures.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from greenpool import GeventPool, RedisMuxPool, TarantoolMux, TarantoolPool
from tests.helpers import wait_until

CONNECTIONS = 10


def record(
    request: pytest.FixtureRequest, scenario: str, backend: str, since: float, errors: List[BaseException]
) -> None:
    """A row for the fault suite's summary table: seconds from the server being back to the commands done."""
    figures = {"scenario": scenario, "backend": backend, "recovery_s": time.monotonic() - since}
    figures.update(lost_writes=0, max_wait_s=None)
    figures["failed_commands"] = len(errors)
    request.node.user_properties.extend(figures.items())


def run_all(work: Callable[[int], Any], n: int) -> List[BaseException]:
    """Run ``work(i)`` in ``n`` greenlets at once; return the exceptions they raised."""
    greenlets = [gevent.spawn(work, i) for i in range(n)]
    gevent.joinall(greenlets, timeout=30)
    assert all(g.dead for g in greenlets), "a command hung"
    return [g.exception for g in greenlets if g.exception is not None]


# ---------------------------------------------------------------------- Redis


def redis_pool(kind: str, server: Any, **extra: Any) -> Any:
    kwargs: Dict[str, Any] = {
        **extra,
        "host": server.host,
        "port": server.port,
        "max_connections": CONNECTIONS,
        "timeout": 5,
        "retry": Retry(NoBackoff(), 0),  # no retry may hide a failed command
        "socket_timeout": 5,
    }
    if kind == "mux":
        return RedisMuxPool(shared_connections=2, **kwargs)
    return GeventPool(**kwargs)


def open_redis_connections(pool: Any, client: redis.Redis) -> None:
    if isinstance(pool, RedisMuxPool):
        assert all(value is True for value in [client.ping() for _ in range(4)])
        assert pool.get_stats()["mux_sockets_up"] == 2
        return
    conns = [pool.get_connection() for _ in range(CONNECTIONS)]
    for conn in conns:
        pool.release(conn)
    assert pool.get_stats()["pool_available"] == CONNECTIONS


@pytest.mark.parametrize("kind", ["GeventPool", "mux"])
def test_redis_restart_while_idle_fails_no_command(kind: str, fresh_redis: Any, request: pytest.FixtureRequest) -> None:
    pool = redis_pool(kind, fresh_redis)
    client = redis.Redis(connection_pool=pool)
    open_redis_connections(pool, client)
    fresh_redis.kill()
    fresh_redis.start()
    back = time.monotonic()
    errors = run_all(lambda i: client.set(f"restart:{i}", i), CONNECTIONS)
    record(request, "restart while idle", "RedisMuxPool" if kind == "mux" else kind, back, errors)
    assert errors == []
    for i in range(3 * CONNECTIONS):
        assert client.get(f"restart:{i % CONNECTIONS}") == str(i % CONNECTIONS).encode()
    stats = pool.get_stats()
    assert stats["in_use"] == 0 and stats["pool_size"] <= CONNECTIONS
    pool.disconnect()


def test_redis_idle_timeout_on_the_server_fails_no_command(fresh_redis: Any, request: pytest.FixtureRequest) -> None:
    # check_after_idle=60: no check by idle time, so only the watcher can notice the closed connections.
    pool = redis_pool("GeventPool", fresh_redis, check_after_idle=60)
    client = redis.Redis(connection_pool=pool)
    open_redis_connections(pool, client)
    admin = redis.Redis(host=fresh_redis.host, port=fresh_redis.port)
    admin.config_set("timeout", 1)  # the server closes clients idle for 1 s (checked about ten times a second)
    try:
        wait_until(lambda: len(admin.client_list()) == 1)  # only admin is left
        closed = time.monotonic()
        errors = run_all(lambda i: client.incr(f"idle-timeout:{i}"), CONNECTIONS)
        record(request, "server idle timeout", "GeventPool", closed, errors)
        assert errors == []
    finally:
        admin.config_set("timeout", 0)
        admin.close()
    # Replaced by a check on checkout (whatever check_after_idle says), not by a failed command.
    assert pool.get_stats()["checks_failed"] >= 1
    pool.disconnect()


# ---------------------------------------------------------------------- Tarantool


def tarantool_client(kind: str, server: Any) -> Any:
    if kind == "mux":
        return TarantoolMux(
            server.host, server.port, server.user, server.password, shared_connections=2, socket_timeout=5
        )
    return TarantoolPool(
        server.host,
        server.port,
        user=server.user,
        password=server.password,
        max_connections=CONNECTIONS,
        timeout=5,
        socket_timeout=5,
    )


@pytest.mark.parametrize("kind", ["TarantoolPool", "mux"])
def test_tarantool_restart_while_idle_fails_no_command(
    kind: str, fresh_tarantool: Any, request: pytest.FixtureRequest
) -> None:
    client = tarantool_client(kind, fresh_tarantool)
    if kind == "mux":
        client.connect()
    else:
        held = [client.acquire() for _ in range(CONNECTIONS)]
        for conn in held:
            client.release(conn)
        assert client.idle == CONNECTIONS
    fresh_tarantool.kill()
    fresh_tarantool.start()
    back = time.monotonic()
    errors = run_all(lambda i: client.replace("tester", (i, "after")), CONNECTIONS)
    record(request, "restart while idle", "TarantoolMux" if kind == "mux" else kind, back, errors)
    assert errors == []
    for i in range(3 * CONNECTIONS):
        assert client.select("tester", i % CONNECTIONS)[0][1] == "after"
    if kind != "mux":
        assert client.in_use == 0 and client.size <= CONNECTIONS
    client.close()
