"""End-to-end tests of ``greenpool.GeventPool`` (``greenpool/redis.py``) with redis-py against real redis-servers.

The session ``redis_server`` serves most tests (each test uses its own key prefix); tests that kill a server,
set a password or count server-wide statistics start a private one (``fresh_redis`` or ``RedisServer``).
Commands, pub/sub and pipelines run with hiredis and the pure-Python parser, over RESP2 and RESP3. TLS lives in
``test_redis_tls.py``, the interruption soak in ``test_redis_soak.py``. Depends on ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional

import gevent
import pytest
import redis
from gevent.event import Event
from redis._parsers import _HiredisParser, _RESP2Parser, _RESP3Parser
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError
from redis.retry import Retry

import greenpool
from greenpool import GeventPool, PoolClosed, PoolTimeout, TooManyWaiting
from greenpool.redis import RedisPoolClosed, RedisPoolTimeout, RedisTooManyWaiting
from stress.servers import RedisServer

PARSERS = [pytest.param(_HiredisParser, id="hiredis"), pytest.param(_RESP2Parser, id="python")]
REDIS_PY = tuple(int(part) for part in redis.__version__.split(".")[:2])
#: redis-py before 6.2 fails these with its own BlockingConnectionPool the same way (its bugs, fixed in 6.2).
REDIS_PY_BEFORE_6_2_BUG = pytest.mark.skipif(
    REDIS_PY < (6, 2), reason="redis-py before 6.2 fails this with its own pools the same way"
)
PROTOCOLS = [pytest.param(2, id="resp2"), pytest.param(3, id="resp3")]


def server_kwargs(server: Any) -> Dict[str, Any]:
    """Connection arguments for a server fixture (an external one may need credentials)."""
    kwargs: Dict[str, Any] = {"host": server.host, "port": server.port}
    if getattr(server, "password", None):
        kwargs["password"] = server.password
    if getattr(server, "user", None):
        kwargs["username"] = server.user
    return kwargs


@pytest.fixture
def make_pool(redis_server: Any) -> Iterator[Callable[..., GeventPool]]:
    """Build pools on the session server; disconnect them all afterwards."""
    pools: List[GeventPool] = []

    def make(**kwargs: Any) -> GeventPool:
        pool = GeventPool(**{**server_kwargs(redis_server), **kwargs})
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.disconnect()


@pytest.fixture
def prefix() -> str:
    return f"greenpool-test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def admin(redis_server: Any) -> Iterator[redis.Redis]:
    """A plain redis-py client (its own pool) for setting things up and looking behind the pool's back."""
    client = redis.Redis(**server_kwargs(redis_server))
    yield client
    client.close()


def client_id(conn: Any) -> int:
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def connected(conn: Any) -> bool:
    """Whether a redis-py connection has a socket (``is_connected`` exists only from redis-py 8 on)."""
    return conn._sock is not None


def stats(pool: GeventPool) -> Dict[str, Any]:
    return pool.get_stats()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (yielding to other greenlets) until it is true; fail after ``timeout`` seconds."""
    with gevent.Timeout(timeout, AssertionError(f"condition not met within {timeout} s")):
        while not predicate():
            gevent.sleep(0.001)


def blocked_clients(admin: redis.Redis) -> int:
    return int(admin.info("clients")["blocked_clients"])


# ---------------------------------------------------------------------- the contract


def test_drop_in_for_blocking_connection_pool(make_pool: Callable[..., GeventPool]) -> None:
    assert greenpool.GeventPool is GeventPool
    pool = make_pool()
    assert isinstance(pool, redis.ConnectionPool)
    # BlockingConnectionPool's defaults.
    assert pool.max_connections == 50
    assert pool.timeout == 20
    assert pool.connection_class is Connection
    # None and 0 mean redis-py's own default, whatever the version says it is (ConnectionPool's: before
    # redis-py 8, BlockingConnectionPool(max_connections=None) fills a queue of 2**31 slots and never returns).
    for empty in (None, 0):
        expected = redis.ConnectionPool(max_connections=empty).max_connections
        assert GeventPool(max_connections=empty).max_connections == expected
    # Positional arguments in BlockingConnectionPool's order.
    positional = GeventPool(7, 3, Connection, None, host="127.0.0.1")
    assert (positional.max_connections, positional.timeout) == (7, 3)
    assert issubclass(RedisPoolTimeout, PoolTimeout) and issubclass(RedisPoolTimeout, redis.ConnectionError)
    assert issubclass(RedisPoolClosed, PoolClosed) and issubclass(RedisPoolClosed, redis.ConnectionError)
    assert issubclass(RedisTooManyWaiting, TooManyWaiting) and issubclass(RedisTooManyWaiting, redis.ConnectionError)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("parser_class", PARSERS)
def test_commands_and_pipelines(
    make_pool: Callable[..., GeventPool], prefix: str, parser_class: Any, protocol: int
) -> None:
    pool = make_pool(max_connections=4, timeout=5, parser_class=parser_class, protocol=protocol, decode_responses=True)
    r = redis.StrictRedis(connection_pool=pool)
    assert pool.get_protocol() == protocol
    conn = pool.get_connection()
    expected_parser = _RESP3Parser if (parser_class is _RESP2Parser and protocol == 3) else parser_class
    assert type(conn._parser) is expected_parser
    pool.release(conn)
    assert int(r.client_info()["resp"]) == protocol

    assert r.set(prefix + "s", "v") is True
    assert r.get(prefix + "s") == "v"
    assert r.incr(prefix + "n", 5) == 5
    r.hset(prefix + "h", mapping={"a": "1", "b": "2"})
    assert r.hgetall(prefix + "h") == {"a": "1", "b": "2"}
    r.rpush(prefix + "l", "x", "y", "z")
    assert r.lrange(prefix + "l", 0, -1) == ["x", "y", "z"]
    assert r.get(prefix + "missing") is None

    with r.pipeline(transaction=True) as pipe:
        pipe.incr(prefix + "t").incr(prefix + "t").get(prefix + "t")
        assert pipe.execute() == [1, 2, "2"]
    with r.pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.set(f"{prefix}p{i}", i)
        pipe.mget([f"{prefix}p{i}" for i in range(50)])
        results = pipe.execute()
    assert results[:50] == [True] * 50
    assert results[50] == [str(i) for i in range(50)]
    # A server error in a pipeline is reported and leaves the connection reusable.
    with r.pipeline(transaction=False) as pipe:
        pipe.set(prefix + "e", "x").incr(prefix + "e")
        with pytest.raises(ResponseError):
            pipe.execute()
    with pytest.raises(ResponseError):
        r.incr(prefix + "e")
    assert r.ping() is True
    r.delete(*r.keys(prefix + "*"))
    assert stats(pool)["in_use"] == 0
    assert stats(pool)["connections_lost"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("parser_class", PARSERS)
def test_pubsub(make_pool: Callable[..., GeventPool], prefix: str, parser_class: Any, protocol: int) -> None:
    if REDIS_PY < (6, 2) and parser_class is _RESP2Parser and protocol == 3:
        pytest.skip(
            "redis-py before 6.2: its pure-Python RESP3 parser never returns the subscribe reply (own pools too)"
        )
    pool = make_pool(max_connections=3, timeout=5, parser_class=parser_class, protocol=protocol)
    r = redis.Redis(connection_pool=pool)
    pubsub = r.pubsub()
    pubsub.subscribe(prefix + "ch")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    assert stats(pool)["in_use"] == 1  # the pub/sub connection is held while subscribed

    def publish() -> int:
        return int(r.publish(prefix + "ch", "hello"))

    publisher = gevent.spawn(publish)
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert publisher.get(timeout=5) == 1
    assert message is not None and message["data"] == b"hello"
    pubsub.close()
    assert stats(pool)["in_use"] == 0  # returned on close()
    assert r.ping() is True


def watched_increments(client: redis.Redis, key: str, greenlets: int = 50, rounds: int = 10) -> None:
    """``greenlets`` greenlets each add 1 to ``key`` ``rounds`` times in WATCH/MULTI transactions."""
    client.set(key, 0)

    def increment(pipe: Any) -> None:
        value = int(pipe.get(key))
        pipe.multi()
        pipe.set(key, value + 1)

    def worker() -> None:
        for _ in range(rounds):
            client.transaction(increment, key)

    gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)], raise_error=True, timeout=60)


def test_watch_multi_increments_are_never_lost(make_pool: Callable[..., GeventPool], prefix: str) -> None:
    pool = make_pool(max_connections=10, timeout=10)
    r = redis.Redis(connection_pool=pool)
    key = prefix + "counter"
    watched_increments(r, key)
    assert int(r.get(key)) == 500
    assert stats(pool)["in_use"] == 0
    r.delete(key)


def test_lock_serialises_greenlets(make_pool: Callable[..., GeventPool], prefix: str) -> None:
    pool = make_pool(max_connections=5, timeout=10)
    r = redis.Redis(connection_pool=pool)
    key = prefix + "unsafe"
    r.set(key, 0)

    def worker() -> None:
        for _ in range(5):
            with r.lock(prefix + "lock", timeout=10, blocking_timeout=30, sleep=0.001):
                value = int(r.get(key))
                gevent.sleep(0)  # let the others try to barge in
                r.set(key, value + 1)

    gevent.joinall([gevent.spawn(worker) for _ in range(20)], raise_error=True, timeout=60)
    assert int(r.get(key)) == 100
    r.delete(key)


def test_register_script_reloads_after_flush(make_pool: Callable[..., GeventPool], prefix: str) -> None:
    pool = make_pool(max_connections=2)
    r = redis.Redis(connection_pool=pool)
    add = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert add(keys=[prefix + "k"], args=[3]) == 3
    r.script_flush()
    assert add(keys=[prefix + "k"], args=[4]) == 7  # NOSCRIPT, then loaded again by redis-py
    r.delete(prefix + "k")


def test_blpop_waits_while_other_greenlets_run(
    make_pool: Callable[..., GeventPool], admin: redis.Redis, prefix: str
) -> None:
    pool = make_pool(max_connections=5, timeout=5)
    r = redis.Redis(connection_pool=pool)
    done = Event()
    pings = [0]

    def pinger() -> None:
        while not done.is_set():
            r.ping()
            pings[0] += 1

    pingers = [gevent.spawn(pinger) for _ in range(3)]
    try:
        # BLPOP's own timeout expires: nothing to pop.
        assert r.blpop([prefix + "empty"], timeout=0.3) is None
        assert pings[0] > 0  # the others kept running meanwhile

        # A value pushed by another greenlet, once BLPOP blocks, wakes it up.
        def push() -> None:
            wait_until(lambda: blocked_clients(admin) >= 1)
            r.rpush(prefix + "q", "item")

        pusher = gevent.spawn(push)
        assert r.blpop([prefix + "q"], timeout=5) == (prefix.encode() + b"q", b"item")
        pusher.get(timeout=5)
    finally:
        done.set()
        gevent.joinall(pingers, raise_error=True, timeout=10)
    assert stats(pool)["in_use"] == 0


def test_many_greenlets_share_few_connections(make_pool: Callable[..., GeventPool], prefix: str) -> None:
    pool = make_pool(max_connections=10, timeout=30)
    r = redis.Redis(connection_pool=pool)
    sizes: List[int] = []
    done = Event()

    def sampler() -> None:
        while not done.wait(0.002):
            sizes.append(int(stats(pool)["pool_size"]))

    def worker(i: int) -> None:
        assert r.set(f"{prefix}{i}", i) is True
        assert r.get(f"{prefix}{i}") == str(i).encode()

    watcher = gevent.spawn(sampler)
    workers = [gevent.spawn(worker, i) for i in range(1000)]
    gevent.joinall(workers, raise_error=True, timeout=60)
    done.set()
    watcher.join(timeout=5)
    assert all(w.successful() for w in workers)
    final = stats(pool)
    assert sizes and max(sizes) <= 10
    assert final["pool_size"] <= 10
    assert final["in_use"] == 0
    assert final["requests_timeouts"] == 0
    r.delete(*[f"{prefix}{i}" for i in range(1000)])


def test_client_name_and_resp3(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(client_name="x", protocol=3)
    r = redis.Redis(connection_pool=pool)
    assert r.client_getname() == b"x"
    assert r.client_info()["resp"] == "3"


def health_check_pings(pool: Any, server: RedisServer) -> int:
    """PINGs the server saw when a connection idle past ``health_check_interval`` was found dead."""
    r = redis.Redis(connection_pool=pool)
    admin = redis.Redis(host=server.host, port=server.port)

    def pings() -> int:
        return int(admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))

    try:
        assert r.set("k", "v") is True
        conn = pool.get_connection()  # the one connection, the one the next command takes too
        pool.release(conn)
        assert conn.health_check_interval == 1
        before = pings()
        assert r.get("k") == b"v"  # within the interval: no health check
        assert pings() == before
        # The server drops the idle connection; then the interval elapses.
        admin.client_kill_filter(_id=client_id(conn))
        conn.next_health_check = 0
        assert r.get("k") == b"v"  # the health check found it dead and reconnected
        return pings() - before
    finally:
        admin.close()
        pool.disconnect()


def test_health_check_interval(fresh_redis: RedisServer) -> None:
    kwargs = {"host": fresh_redis.host, "port": fresh_redis.port, "health_check_interval": 1}
    ours = GeventPool(retry=Retry(NoBackoff(), 1), check_after_idle=None, **kwargs)
    theirs = redis.BlockingConnectionPool(retry=Retry(NoBackoff(), 1), **kwargs)
    pings = health_check_pings(ours, fresh_redis)
    assert pings >= 1
    theirs_pings = health_check_pings(theirs, fresh_redis)
    if REDIS_PY >= (6, 0):  # redis-py 5's pool polls the socket on checkout and reconnects before any PING
        assert pings == theirs_pings  # as many as redis-py's own pool sends
    assert stats(ours)["in_use"] == 0


# ---------------------------------------------------------------------- lifecycle


def test_disconnect(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=3)
    held = [pool.get_connection() for _ in range(3)]
    ids = [client_id(conn) for conn in held]
    pool.release(held[0])
    pool.release(held[1])
    pool.disconnect(inuse_connections=False)
    assert not connected(held[0]) and not connected(held[1])
    assert connected(held[2])  # checked out: left alone
    pool.disconnect()
    assert not connected(held[2])
    pool.release(held[2])
    # The same connection objects reconnect on their next checkout.
    again = [pool.get_connection() for _ in range(3)]
    assert {id(c) for c in again} == {id(c) for c in held}
    assert not set(ids) & {client_id(conn) for conn in again}
    for conn in again:
        pool.release(conn)
    assert stats(pool)["pool_size"] == 3


def test_close_keeps_the_pool_usable(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=2)
    with redis.Redis.from_pool(pool) as r:
        assert r.ping() is True
    (conn,) = pool._get_free_connections()
    assert not connected(conn)  # Redis.close() closed the pool: idle connections disconnected
    with pool:
        assert redis.Redis(connection_pool=pool).ping() is True
    assert redis.Redis(connection_pool=pool).ping() is True


def test_reset(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=1, timeout=5)
    held = pool.get_connection()
    waiter = gevent.spawn(pool.get_connection)
    wait_until(lambda: stats(pool)["requests_waiting"] == 1)
    pool.reset()
    with pytest.raises(RedisPoolClosed):
        waiter.get(timeout=5)
    assert stats(pool)["pool_size"] == 0
    pool.release(held)  # checked out before reset(): disconnected, not taken in
    assert not connected(held)
    assert stats(pool)["pool_size"] == 0
    assert redis.Redis(connection_pool=pool).ping() is True
    assert pool._get_free_connections() != [held]


def test_fork(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=2)
    r = redis.Redis(connection_pool=pool)
    parent_id = r.client_id()
    held = pool.get_connection()
    held_id = client_id(held)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 10
        try:
            pool.release(held)  # the parent's: accepted silently, left alone
            fresh = stats(pool)["pool_size"] == 0
            child_id = r.client_id()
            code = 0 if fresh and child_id not in (parent_id, held_id) and r.ping() else 11
        except BaseException:
            code = 12
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # The parent's connections were not touched by the child.
    assert client_id(held) == held_id
    pool.release(held)
    assert r.client_id() in (parent_id, held_id)
    assert stats(pool)["in_use"] == 0


def test_server_restart(fresh_redis: RedisServer) -> None:
    pool = GeventPool(host=fresh_redis.host, port=fresh_redis.port, max_connections=3, timeout=5)
    r = redis.Redis(connection_pool=pool)
    held = [pool.get_connection() for _ in range(3)]
    for conn in held:
        pool.release(conn)
    assert r.set("k", "before") is True
    fresh_redis.kill()
    fresh_redis.start()
    # The idle connections' sockets were watched by the event loop: the server closing them was noticed, and
    # each is checked (and replaced) on its next checkout, so no command fails.
    for _ in range(3):
        assert r.set("k", "after") is True
    # Every connection, checked out at the same time, works again.
    conns = [pool.get_connection() for _ in range(3)]
    for conn in conns:
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG")
    for conn in conns:
        pool.release(conn)
    assert r.get("k") == b"after"
    assert stats(pool)["in_use"] == 0
    pool.disconnect()


def test_server_restart_with_retry_is_transparent(fresh_redis: RedisServer) -> None:
    pool = GeventPool(host=fresh_redis.host, port=fresh_redis.port, max_connections=2, retry=Retry(NoBackoff(), 1))
    r = redis.Redis(connection_pool=pool)
    assert r.set("k", "v") is True
    fresh_redis.kill()
    fresh_redis.start()
    assert r.set("k", "w") is True
    assert r.get("k") == b"w"
    pool.disconnect()


def test_idle_check_replaces_a_dead_connection(make_pool: Callable[..., GeventPool], admin: redis.Redis) -> None:
    pool = make_pool(max_connections=2, check_after_idle=0)
    r = redis.Redis(connection_pool=pool)
    assert r.ping() is True
    (conn,) = pool._get_free_connections()
    admin.client_kill_filter(_id=client_id(conn))
    assert r.ping() is True  # polled on checkout, found closed, replaced: no error reaches the caller
    assert stats(pool)["checks_failed"] == 1
    assert pool._get_free_connections() != [conn]


def test_min_connections_prewarm(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=4, min_connections=2)
    pool.prewarm()
    free = pool._get_free_connections()
    assert len(free) == 2 and all(connected(conn) for conn in free)
    assert stats(pool)["pool_min"] == 2


def test_introspection_used_by_redis_py(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=3)
    a, b = pool.get_connection(), pool.get_connection()
    pool.release(a)
    assert pool._get_free_connections() == [a]
    assert pool._get_in_use_connections() == {b}
    if hasattr(redis.ConnectionPool, "get_connection_count"):  # redis-py >= 8
        counts = [count for count, _ in pool.get_connection_count()]
        assert counts == [1, 1]
    assert pool.owns_connection(b)
    with pool._get_pool_lock():
        pass
    pool.release(b)


def test_set_retry_and_re_auth(make_pool: Callable[..., GeventPool], admin: redis.Redis, prefix: str) -> None:
    user, password = prefix.replace(":", "-") + "user", "s3cret-" + uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=["+" + password], keys=["*"], commands=["+@all"])
    try:
        pool = make_pool(max_connections=3)
        r = redis.Redis(connection_pool=pool)
        idle, busy = pool.get_connection(), pool.get_connection()
        pool.release(idle)
        retry = Retry(NoBackoff(), 2)
        r.set_retry(retry)
        assert pool.connection_kwargs["retry"] is retry
        assert idle.retry is retry and busy.retry is retry

        class Token:
            def try_get(self, key: str) -> str:
                return user

            def get_value(self) -> str:
                return password

        pool.re_auth_callback(Token())
        assert not connected(idle)  # idle: reconnects with the pool's credentials when next used
        pool.release(busy)  # in use: authenticates again with the new token as it is released
        assert pool._get_free_connections()[-1] is busy
        assert connected(busy)
        busy.send_command("ACL", "WHOAMI")
        assert busy.read_response() == user.encode()
    finally:
        admin.acl_deluser(user)


# ---------------------------------------------------------------------- authentication and secrets


def test_acl_user(make_pool: Callable[..., GeventPool], admin: redis.Redis, prefix: str) -> None:
    user, password = prefix.replace(":", "-") + "acl", "pw-" + uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=["+" + password], keys=["*"], commands=["+@all"])
    try:
        pool = make_pool(username=user, password=password, max_connections=2)
        r = redis.Redis(connection_pool=pool)
        assert r.acl_whoami() in (user, user.encode())
        bad = make_pool(username=user, password="wrong-" + password, max_connections=2)
        with pytest.raises(AuthenticationError) as info:
            redis.Redis(connection_pool=bad).ping()
        assert password not in str(info.value)
        assert stats(bad)["pool_size"] == 0 and stats(bad)["in_use"] == 0  # the slot was freed
        assert password not in repr(pool) and password not in str(stats(pool))
    finally:
        admin.acl_deluser(user)


def test_requirepass_secrets_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + uuid.uuid4().hex
    server = RedisServer(password=password)
    caplog.set_level(logging.DEBUG)
    with server:
        pool = GeventPool(
            host=server.host, port=server.port, password=password, max_connections=1, timeout=0.05, leak_threshold=0.05
        )
        r = redis.Redis(connection_pool=pool)
        assert r.ping() is True
        held = pool.get_connection()
        with pytest.raises(RedisPoolTimeout) as timeout_info:
            r.ping()
        wait_until(lambda: any("checked out for more than" in rec.getMessage() for rec in caplog.records))
        pool.release(held)
        wrong = GeventPool(host=server.host, port=server.port, password="x" + password)
        with pytest.raises(AuthenticationError) as auth_info:
            redis.Redis(connection_pool=wrong).ping()
        nopass = GeventPool.from_url(f"redis://{server.host}:{server.port}/0")
        with pytest.raises(AuthenticationError):
            redis.Redis(connection_pool=nopass).ping()
        url_pool = GeventPool.from_url(server.url + "?max_connections=2")
        assert redis.Redis(connection_pool=url_pool).ping() is True
        for p in (pool, wrong, url_pool):
            assert password not in repr(p)
            assert password not in str(p.get_stats())
        assert password not in str(timeout_info.value)
        assert password not in str(auth_info.value)
        assert all(password not in record.getMessage() for record in caplog.records)
        assert all(password not in (record.exc_text or "") for record in caplog.records)
        for p in (pool, wrong, nopass, url_pool):
            p.disconnect()


# ---------------------------------------------------------------------- checkout errors


def test_checkout_timeout(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=1, timeout=0.2)
    held = pool.get_connection()
    start = gevent.get_hub().loop.now()
    with pytest.raises(PoolTimeout) as info:
        pool.get_connection()
    gevent.get_hub().loop.update_now()
    assert gevent.get_hub().loop.now() - start >= 0.19
    assert isinstance(info.value, redis.exceptions.ConnectionError)
    assert str(info.value).startswith("No connection available.")
    # Through the client, existing `except redis.ConnectionError` code catches it.
    with pytest.raises(redis.ConnectionError, match=r"^No connection available\."):
        redis.Redis(connection_pool=pool).ping()
    pool.release(held)
    assert redis.Redis(connection_pool=pool).ping() is True
    assert stats(pool)["requests_timeouts"] == 2


def test_max_waiting(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=1, timeout=5, max_waiting=1)
    held = pool.get_connection()
    waiter = gevent.spawn(pool.get_connection)
    wait_until(lambda: stats(pool)["requests_waiting"] == 1)
    with pytest.raises(RedisTooManyWaiting, match=r"^No connection available\."):
        pool.get_connection()
    pool.release(held)
    pool.release(waiter.get(timeout=5))
    assert stats(pool)["in_use"] == 0


def test_idle_stack_is_gevents_whatever_queue_class(make_pool: Callable[..., GeventPool]) -> None:
    import queue

    import gevent.queue

    pool = make_pool(queue_class=queue.LifoQueue)
    assert isinstance(pool._pool._idle, gevent.queue.LifoQueue)


IMPORT_ORDER_SCRIPT = """
import sys
if sys.argv[1] == "redis-first":
    import redis
    from gevent import monkey; monkey.patch_all()
else:
    from gevent import monkey; monkey.patch_all()
    import redis
import gevent, gevent.queue
from greenpool import GeventPool
pool = GeventPool(host=sys.argv[2], port=int(sys.argv[3]), max_connections=3, timeout=10)
r = redis.Redis(connection_pool=pool)
gevent.joinall([gevent.spawn(lambda: [r.ping() for _ in range(20)]) for _ in range(30)], raise_error=True)
assert isinstance(pool._pool._idle, gevent.queue.LifoQueue)
assert pool.get_stats()["pool_size"] <= 3 and pool.get_stats()["in_use"] == 0
print("ok")
"""


@pytest.mark.parametrize("order", ["redis-first", "gevent-first"])
def test_import_order_does_not_matter(redis_server: Any, order: str) -> None:
    import subprocess
    import sys

    if getattr(redis_server, "password", None):
        pytest.skip("the subprocess connects without credentials")
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER_SCRIPT, order, redis_server.host, str(redis_server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_deprecated_get_connection_arguments_are_silent(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = pool.get_connection("GET", "key", some_option=1)
        pool.release(conn)
    assert caught == []


# ---------------------------------------------------------------------- interruption


def test_release_during_interruption_discards(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=2)
    conn = pool.get_connection()
    # A reply is pending on the connection when the holder is interrupted: it must never be reused.
    with pytest.raises(gevent.Timeout):
        try:
            conn.send_command("PING")
            raise gevent.Timeout()
        finally:
            pool.release(conn)
    assert stats(pool)["pool_size"] == 0 and stats(pool)["in_use"] == 0
    assert not connected(conn)
    assert conn not in pool._get_free_connections()
    # An ordinary exception (e.g. a server error reply) leaves the connection reusable.
    conn = pool.get_connection()
    with pytest.raises(ValueError):
        try:
            raise ValueError("application error")
        finally:
            pool.release(conn)
    assert pool._get_free_connections() == [conn] and connected(conn)


def test_killed_and_timed_out_commands_free_their_slot(
    make_pool: Callable[..., GeventPool], admin: redis.Redis, prefix: str
) -> None:
    pool = make_pool(max_connections=1, timeout=5)
    r = redis.Redis(connection_pool=pool)
    blocked = gevent.spawn(r.blpop, [prefix + "never"], 10)
    wait_until(lambda: blocked_clients(admin) >= 1)  # blocked in BLPOP, waiting for its reply
    assert stats(pool)["in_use"] == 1
    blocked.kill(timeout=5)  # GreenletExit inside read_response
    assert stats(pool)["in_use"] == 0 and stats(pool)["pool_size"] == 0
    # Connected first, so that the timeout below lands in the read however slow the machine, not in the connect
    # (an interrupted connect frees its slot too, but counts as a connection error, not as a lost connection).
    assert r.ping() is True
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            r.blpop([prefix + "never"], 10)
    assert stats(pool)["in_use"] == 0 and stats(pool)["pool_size"] == 0
    assert stats(pool)["connections_lost"] == 2
    r.rpush(prefix + "q", "x")
    assert r.lpop(prefix + "q") == b"x"  # the next reply is its own, not a late one


# ---------------------------------------------------------------------- foreign and double releases


def test_release_of_foreign_connections(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=2)
    other = make_pool(max_connections=2)
    mine = pool.get_connection()
    pool.release(mine)
    before = dict(stats(pool))
    theirs = other.get_connection()
    pool.release(theirs)  # another pool's: disconnected, silently
    assert not connected(theirs)
    stranger = pool.make_connection()
    stranger.connect()
    stranger.pid = os.getpid() + 1  # from another process
    pool.release(stranger)
    assert not connected(stranger)
    after = dict(stats(pool))
    for key in ("pool_size", "pool_available", "in_use", "connections_closed", "returns_bad"):
        assert after[key] == before[key], key
    assert pool._get_free_connections() == [mine] and connected(mine)
    other.release(theirs)
    assert stats(other)["in_use"] == 0
    # A connection checked out here whose pid changed is closed, never taken back.
    conn = pool.get_connection()
    conn.pid = os.getpid() + 1
    pool.release(conn)
    assert conn not in pool._get_free_connections() and stats(pool)["in_use"] == 0


def test_double_release_is_harmless(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=2)
    conn = pool.get_connection()
    pool.release(conn)
    pool.release(conn)  # idle already: ignored, not disconnected
    assert connected(conn)
    assert pool._get_free_connections() == [conn]
    assert stats(pool)["in_use"] == 0 and stats(pool)["pool_size"] == 1
    assert redis.Redis(connection_pool=pool).ping() is True


# ---------------------------------------------------------------------- URLs, unix sockets, caching


def test_from_url(redis_server: Any) -> None:
    url = f"redis://{redis_server.host}:{redis_server.port}/2?max_connections=7&timeout=1.5"
    url += "&min_connections=1&check_after_idle=0.5&max_idle=30&max_waiting=100&name=orders"
    pool = GeventPool.from_url(
        url, **{k: v for k, v in server_kwargs(redis_server).items() if k not in ("host", "port")}
    )
    assert (pool.max_connections, pool.timeout) == (7, 1.5)
    assert pool.connection_kwargs["db"] == 2
    s = stats(pool)
    assert (s["name"], s["pool_min"], s["pool_max"]) == ("orders", 1, 7)
    r = redis.Redis(connection_pool=pool)
    assert int(r.client_info()["db"]) == 2
    pool.disconnect()
    with pytest.raises(ValueError, match="min_connections"):
        GeventPool.from_url("redis://localhost?min_connections=many")
    assert GeventPool.from_url("rediss://localhost:1").connection_class is SSLConnection
    assert GeventPool(ssl=True).connection_class is SSLConnection


def test_unix_socket(redis_server: Any) -> None:
    path: Optional[str] = getattr(redis_server, "unix_path", None)
    if path is None:
        pytest.skip("the external redis server has no known unix socket")
    pool = GeventPool(connection_class=UnixDomainSocketConnection, path=path, max_connections=2)
    assert redis.Redis(connection_pool=pool).ping() is True
    url_pool = GeventPool.from_url(f"unix://{path}?max_connections=3&timeout=1")
    assert url_pool.connection_class is UnixDomainSocketConnection and url_pool.max_connections == 3
    assert redis.Redis(connection_pool=url_pool).ping() is True
    assert stats(url_pool)["name"] == f"redis {path}/0"
    pool.disconnect()
    url_pool.disconnect()


@REDIS_PY_BEFORE_6_2_BUG  # with hiredis installed, redis-py before 6.2 cannot enable the cache on any pool
def test_client_side_cache(make_pool: Callable[..., GeventPool], admin: redis.Redis, prefix: str) -> None:
    from redis.cache import CacheConfig

    pool = make_pool(protocol=3, cache_config=CacheConfig(), max_connections=2)
    assert pool.cache is not None
    r = redis.Redis(connection_pool=pool)
    version = tuple(int(x) for x in admin.info("server")["redis_version"].split(".")[:2])
    if version < (7, 4):
        # redis-py refuses the server when connecting; the pool frees the slot.
        with pytest.raises(redis.ConnectionError, match=r"7\.4"):
            r.ping()
        assert stats(pool)["pool_size"] == 0 and stats(pool)["in_use"] == 0
        return
    admin.set(prefix + "c", "1")
    assert r.get(prefix + "c") == b"1"
    assert r.get(prefix + "c") == b"1"
    assert pool.cache.size >= 1
    admin.set(prefix + "c", "2")  # the server invalidates the cached entry
    wait_until(lambda: r.get(prefix + "c") == b"2")
    admin.delete(prefix + "c")


# ---------------------------------------------------------------------- bad arguments

BAD_ARGUMENTS = [
    ("timeout", "1", TypeError),
    ("timeout", -1, ValueError),
    ("timeout", float("nan"), ValueError),
    ("timeout", float("inf"), ValueError),
    ("connection_class", "Connection", TypeError),
    ("queue_class", 42, TypeError),
    ("min_connections", -1, ValueError),
    ("min_connections", "2", TypeError),
    ("min_connections", 51, ValueError),
    ("check_after_idle", -0.5, ValueError),
    ("check_after_idle", "1", TypeError),
    ("max_lifetime", 0, ValueError),
    ("max_lifetime", "1h", TypeError),
    ("max_idle", -1, ValueError),
    ("leak_threshold", 0, ValueError),
    ("leak_threshold", [], TypeError),
    ("max_waiting", -1, ValueError),
    ("max_waiting", 1.0, TypeError),
    ("name", 42, TypeError),
]


@pytest.mark.parametrize(("argument", "value", "error"), BAD_ARGUMENTS)
def test_bad_arguments(argument: str, value: Any, error: type) -> None:
    with pytest.raises(error) as info:
        GeventPool(**{argument: value})
    assert argument in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


@pytest.mark.parametrize("value", ["10", -1, 2.5])
def test_bad_max_connections_fails_as_in_redis_py(value: Any) -> None:
    with pytest.raises(ValueError) as theirs:
        redis.BlockingConnectionPool(max_connections=value)
    with pytest.raises(ValueError) as ours:
        GeventPool(max_connections=value)
    assert str(ours.value) == str(theirs.value) == '"max_connections" must be a positive integer'


def test_ssl_with_a_non_tls_connection_class() -> None:
    with pytest.raises(ValueError, match="connection_class"):
        GeventPool(ssl=True, connection_class=UnixDomainSocketConnection)


def test_timeout_setter(make_pool: Callable[..., GeventPool]) -> None:
    pool = make_pool(max_connections=1, timeout=5)
    pool.timeout = 0
    held = pool.get_connection()
    with pytest.raises(RedisPoolTimeout):
        pool.get_connection()
    pool.release(held)
    with pytest.raises(ValueError, match="timeout"):
        pool.timeout = -1
