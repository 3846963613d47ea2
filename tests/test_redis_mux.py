"""End-to-end tests of ``greenpool.RedisMuxPool`` (``greenpool/redis_mux.py``) with redis-py against real redis-servers.

Ordering and matching of replies under 1000+ greenlets with values from 0 B to 1 MB, an interruption soak,
WATCH/MULTI transactions, pub/sub, MONITOR, BLPOP and both kinds of pipelines while other greenlets hammer
the shared socket, routing of stateful commands to dedicated connections, per-request timeouts,
back-pressure, ``disconnect()``, a server killed mid-flight, and fork safety. The session ``redis_server``
serves most tests (each with its own key prefix); tests that kill or block a server start a private one
(``debug_redis``).
Depends on ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from typing import Any, Dict, Iterator, List

import gevent
import pytest
import redis
from gevent import monkey
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from greenpool.errors import WrongThread
from greenpool.redis_mux import RedisMuxPool
from stress.servers import RedisServer
from tests.test_redis import blocked_clients, wait_until, watched_increments


def make_pool(server: Any, **kwargs: Any) -> RedisMuxPool:
    options: Dict[str, Any] = {"host": server.host, "port": server.port, "max_connections": 10, "timeout": 5}
    if getattr(server, "password", None):
        options["password"] = server.password
    options.update(kwargs)
    return RedisMuxPool(**options)


@pytest.fixture
def prefix() -> str:
    return f"mux:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def pool(redis_server: Any) -> Iterator[RedisMuxPool]:
    mux = make_pool(redis_server)
    yield mux
    mux.disconnect()


@pytest.fixture
def client(pool: RedisMuxPool) -> redis.Redis:
    return redis.StrictRedis(connection_pool=pool)


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


@pytest.fixture
def debug_redis() -> Iterator[RedisServer]:
    """A private server that allows ``DEBUG SLEEP`` (to hold replies back), killed and restarted at will."""
    server = RedisServer(extra=["--enable-debug-command", "yes"])
    with server:
        yield server


# ---------------------------------------------------------------------- basics and routing


def test_plain_commands_share_one_socket(client: redis.Redis, pool: RedisMuxPool, prefix: str) -> None:
    assert client.ping() is True
    assert client.set(prefix + "a", "1") is True
    assert client.get(prefix + "a") == b"1"
    assert client.incr(prefix + "a") == 2
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        client.lpush(prefix + "a", "x")
    stats = pool.get_stats()
    assert stats["mux_requests"] == stats["mux_replies"] == 5
    assert stats["mux_dedicated_checkouts"] == 0
    assert stats["mux_sockets_up"] == 1
    assert stats["pool_size"] == 0


def test_decode_responses_and_never_decode(redis_server: Any, prefix: str) -> None:
    mux = make_pool(redis_server, decode_responses=True)
    try:
        r = redis.StrictRedis(connection_pool=mux)
        r.set(prefix + "s", "héllo")
        r.rpush(prefix + "l", "a", "b")
        assert r.get(prefix + "s") == "héllo"
        assert r.lrange(prefix + "l", 0, -1) == ["a", "b"]
        dumped = r.dump(prefix + "s")  # redis-py reads DUMP with disable_decoding=True
        assert isinstance(dumped, bytes)
        r.restore(prefix + "copy", 0, dumped)
        assert r.get(prefix + "copy") == "héllo"
    finally:
        mux.disconnect()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda r, p: r.blpop([p + "none"], timeout=0.01), id="blpop"),
        pytest.param(lambda r, p: r.xread({p + "stream": "0"}, block=10), id="xread-block"),
        pytest.param(lambda r, p: r.execute_command("SELECT", 0), id="select"),
        pytest.param(lambda r, p: r.client_setname("mux-test"), id="client"),
        pytest.param(lambda r, p: r.wait(0, 10), id="wait"),
    ],
)
def test_stateful_commands_take_a_dedicated_connection(
    client: redis.Redis, pool: RedisMuxPool, prefix: str, command: Any
) -> None:
    command(client, prefix)
    stats = pool.get_stats()
    assert stats["mux_dedicated_checkouts"] == 1
    assert stats["mux_requests"] == 0
    assert stats["in_use"] == 0  # given back on release


def test_xread_without_block_stays_shared(client: redis.Redis, pool: RedisMuxPool, prefix: str) -> None:
    client.xadd(prefix + "stream", {"f": "v"})
    assert len(client.xread({prefix + "stream": "0"})[0][1]) == 1
    assert pool.get_stats()["mux_dedicated_checkouts"] == 0


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_broad_command_set_never_takes_a_dedicated_connection(redis_server: Any, prefix: str, protocol: int) -> None:
    # redis-py reads attributes of the connection on every command and reply (8.2 added _resp2_fallback): any new
    # one that fell through to a dedicated connection would show here, as a checkout or as a RuntimeWarning
    # (an error under the test suite's filterwarnings).
    mux = make_pool(redis_server, protocol=protocol, decode_responses=True)
    r = redis.StrictRedis(connection_pool=mux)
    try:
        k = prefix
        assert r.ping() is True and r.echo("x") == "x"
        assert r.set(k + "s", "1") and r.get(k + "s") == "1" and r.incr(k + "s") == 2 and r.incrbyfloat(k + "s", 0.5)
        assert r.mset({k + "a": "1", k + "b": "2"}) and r.mget([k + "a", k + "b"]) == ["1", "2"]
        assert r.expire(k + "a", 100) and r.ttl(k + "a") > 0 and r.exists(k + "a") == 1 and r.type(k + "a") == "string"
        assert r.hset(k + "h", mapping={"f": "v", "g": "w"}) == 2 and r.hgetall(k + "h") == {"f": "v", "g": "w"}
        assert r.lpush(k + "l", "a", "b") == 2 and r.lrange(k + "l", 0, -1) == ["b", "a"] and r.rpop(k + "l") == "a"
        assert r.sadd(k + "t", "a", "b") == 2 and r.smembers(k + "t") == {"a", "b"}
        assert r.zadd(k + "z", {"a": 1.0, "b": 2.0}) == 2 and r.zrange(k + "z", 0, -1, withscores=True)[0][0] == "a"
        assert r.xadd(k + "x", {"f": "v"}) and len(r.xrange(k + "x")) == 1 and r.xlen(k + "x") == 1
        assert r.pfadd(k + "p", "a") == 1 and r.pfcount(k + "p") == 1
        assert r.eval("return ARGV[1]", 0, "lua") == "lua" and r.scan(0, match=k + "*", count=1000)[1]
        assert r.info("server")["redis_version"] and r.dbsize() >= 1 and r.time()[0] > 0
        assert r.object("encoding", k + "s") and r.memory_usage(k + "s") is not None
        assert r.delete(k + "s", k + "a", k + "b") == 3 and r.get(k + "s") is None
        with pytest.raises(ResponseError):
            r.lpush(k + "h", "not a list")
        with r.pipeline(transaction=False) as pipe:
            assert pipe.set(k + "q", "1").get(k + "q").incr(k + "q").execute() == [True, "1", 2]
        assert mux.get_stats()["mux_dedicated_checkouts"] == 0
    finally:
        mux.disconnect()


def test_connection_attributes_are_served_without_a_dedicated_connection_unless_listed(pool: RedisMuxPool) -> None:
    from greenpool.redis_mux import DEDICATED_ATTRIBUTES

    conn = pool.get_connection()
    try:
        assert conn.encoder is pool._template.encoder and conn.socket_timeout == pool._template.socket_timeout
        assert conn.protocol == pool._template.protocol and not conn.dedicated
        with pytest.raises(AttributeError):
            conn.no_such_attribute  # noqa: B018
        assert pool.get_stats()["mux_dedicated_checkouts"] == 0
        assert conn.get_protocol() == pool._template.get_protocol() and not conn.dedicated
        dedicated = 0
        if hasattr(pool._template, "extract_connection_details"):  # redis-py 8
            assert isinstance(conn.extract_connection_details(), str) and not conn.dedicated
        if hasattr(pool._template, "get_skipped_end_notifications"):  # redis-py 7.4 and newer
            with pytest.warns(RuntimeWarning, match="'get_skipped_end_notifications' is not known to be safe"):
                conn.get_skipped_end_notifications  # noqa: B018
            dedicated += 1
            assert conn.dedicated and pool.get_stats()["mux_dedicated_checkouts"] == dedicated
    finally:
        pool.release(conn)
    conn = pool.get_connection()
    try:
        assert "_sock" in DEDICATED_ATTRIBUTES
        conn._sock  # noqa: B018 - the socket belongs to a connection of the checkout's own
        assert conn.dedicated and pool.get_stats()["mux_dedicated_checkouts"] == dedicated + 1
    finally:
        pool.release(conn)


def test_arguments_are_validated(redis_server: Any) -> None:
    with pytest.raises(ValueError, match="shared_connections must be >= 1, got 0"):
        make_pool(redis_server, shared_connections=0)
    with pytest.raises(TypeError, match="max_in_flight must be an int, got 'x'"):
        make_pool(redis_server, max_in_flight="x")


# ---------------------------------------------------------------------- ordering and matching


def test_from_url_reads_the_mux_settings(redis_server: Any) -> None:
    url = f"redis://{redis_server.host}:{redis_server.port}/0?shared_connections=2&max_in_flight=64&max_connections=3"
    mux = RedisMuxPool.from_url(url)
    try:
        assert isinstance(mux, RedisMuxPool) and mux.max_connections == 3
        r = redis.StrictRedis(connection_pool=mux)
        gevent.joinall([gevent.spawn(r.ping) for _ in range(10)], raise_error=True)
        stats = mux.get_stats()
        assert stats["mux_connects"] == 2 and stats["mux_max_in_flight"] == 64
    finally:
        mux.disconnect()
    with pytest.raises(ValueError, match="max_in_flight"):
        RedisMuxPool.from_url(f"redis://{redis_server.host}:{redis_server.port}?max_in_flight=lots")
    with pytest.raises(ValueError, match="shared_connections"):
        RedisMuxPool.from_url(f"redis://{redis_server.host}:{redis_server.port}?shared_connections=0")


def test_the_old_connections_argument_still_works_with_a_deprecation_warning(redis_server: Any) -> None:
    with pytest.warns(DeprecationWarning, match="'connections' is deprecated, use 'shared_connections'"):
        mux = make_pool(redis_server, connections=2)
    assert mux.shared_connections == 2 and mux.get_stats()["mux_shared_connections"] == 2
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="shared_connections=3, connections=2"):
        make_pool(redis_server, shared_connections=3, connections=2)
    url = f"redis://{redis_server.host}:{redis_server.port}?connections=3"
    with pytest.warns(DeprecationWarning, match="'connections' is deprecated"):
        assert RedisMuxPool.from_url(url).shared_connections == 3


def test_the_shared_sockets_belong_to_one_thread(client: redis.Redis, pool: RedisMuxPool) -> None:
    assert client.ping() is True
    start_new_thread = monkey.get_original("_thread", "start_new_thread")
    outcome: List[BaseException] = []

    def other_thread() -> None:
        try:
            client.ping()
        except BaseException as exc:
            outcome.append(exc)
        try:
            pool.disconnect()
        except BaseException as exc:
            outcome.append(exc)

    start_new_thread(other_thread, ())
    with gevent.Timeout(10):
        while len(outcome) < 2:
            gevent.sleep(0.005)
    assert all(isinstance(exc, WrongThread) for exc in outcome), outcome
    assert "one RedisMuxPool per thread" in str(outcome[0])
    assert client.ping() is True  # untouched in its own thread


def test_replies_match_requests_under_1000_greenlets(redis_server: Any, prefix: str) -> None:
    mux = make_pool(redis_server, shared_connections=2, max_in_flight=256)
    r = redis.StrictRedis(connection_pool=mux)
    rng = random.Random(7)
    sizes = [0, 1, 17, 1000, 65536, 300_000, 1024 * 1024]
    mismatches: List[str] = []

    def worker(i: int) -> None:
        key = f"{prefix}{i}"
        local = random.Random(i)
        for step in range(6):
            size = local.choice(sizes) if local.random() < 0.1 else local.randint(0, 512)
            value = os.urandom(size) + f"|{i}|{step}".encode()
            kind = local.randrange(4)
            if kind == 0:
                r.set(key, value)
                got: Any = r.get(key)
                expected: Any = value
            elif kind == 1:
                pipe = r.pipeline(transaction=False)
                pipe.set(key, value).strlen(key).get(key).echo(f"{i}-{step}")
                got = pipe.execute()
                expected = [True, len(value), value, f"{i}-{step}".encode()]
            elif kind == 2:
                r.delete(key + ":h")
                r.hset(key + ":h", mapping={"v": value, "i": i})
                got = r.hgetall(key + ":h")
                expected = {b"v": value, b"i": str(i).encode()}
            else:
                got = r.echo(value)
                expected = value
            if got != expected:
                mismatches.append(f"greenlet {i} step {step} kind {kind}")

    order = list(range(1200))
    rng.shuffle(order)
    greenlets = [gevent.spawn(worker, i) for i in order]
    gevent.joinall(greenlets, raise_error=True)
    try:
        assert mismatches == []
        stats = mux.get_stats()
        assert stats["mux_dedicated_checkouts"] == 0
        assert stats["mux_requests"] == stats["mux_replies"]
        assert stats["mux_in_flight"] == 0
        assert stats["mux_failed"] == 0
    finally:
        r.delete(*[f"{prefix}{i}" for i in range(1200)], *[f"{prefix}{i}:h" for i in range(1200)])
        mux.disconnect()


#: How many of each outcome the interruption soak wants before it stops (it fails after SOAK_BUDGET seconds).
SOAK_WANT = {"interrupted": 200, "done": 200, "dropped": 20}
SOAK_BUDGET = 30.0


def test_interruption_soak_never_mismatches(redis_server: Any, prefix: str) -> None:
    mux = make_pool(redis_server, max_in_flight=64)
    r = redis.StrictRedis(connection_pool=mux)
    keys = [f"{prefix}{i}" for i in range(50)]
    for i, key in enumerate(keys):
        r.set(key, f"value-{i}" * (i + 1))
    mismatches: List[str] = []
    interrupted = [0]
    done = [0]

    def worker(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(40):
            i = local.randrange(len(keys))
            try:
                with gevent.Timeout(local.choice([0.0001, 0.0005, 0.002, 0.01])):
                    if local.random() < 0.3:
                        pipe = r.pipeline(transaction=False)
                        pipe.get(keys[i]).echo(str(i))
                        got = pipe.execute()
                        if got != [f"value-{i}".encode() * (i + 1), str(i).encode()]:
                            mismatches.append(f"pipeline {i}: {got[:1]!r}")
                    else:
                        value = r.get(keys[i])
                        if value != f"value-{i}".encode() * (i + 1):
                            mismatches.append(f"get {i}: {value!r}")
                done[0] += 1
            except gevent.Timeout:
                interrupted[0] += 1

    killer_rng = random.Random(3)

    def killer(greenlets: List[gevent.Greenlet]) -> None:
        for _ in range(50):
            gevent.sleep(0.002)
            victim = killer_rng.choice(greenlets)
            victim.kill(block=False)

    def reached() -> Dict[str, int]:
        return {"interrupted": interrupted[0], "done": done[0], "dropped": int(mux.get_stats()["mux_dropped"])}

    # Where the timeouts land depends on the machine's speed: run passes until each outcome happened often enough.
    started = time.monotonic()
    passes = 0
    while time.monotonic() - started < SOAK_BUDGET:
        greenlets = [gevent.spawn(worker, passes * 300 + seed) for seed in range(300)]
        everyone = [*greenlets, gevent.spawn(killer, greenlets)]
        gevent.joinall(everyone, timeout=60)
        assert all(g.dead for g in everyone), "a greenlet hung"
        passes += 1
        if all(reached()[what] >= want for what, want in SOAK_WANT.items()):
            break
    try:
        assert mismatches == []
        for i, key in enumerate(keys):  # the socket still serves correct replies afterwards
            assert r.get(key) == f"value-{i}".encode() * (i + 1)
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 0)  # every late reply came and was dropped
        outcome = reached()
        assert all(outcome[what] >= want for what, want in SOAK_WANT.items()), (
            f"{outcome} after {passes} passes in {time.monotonic() - started:.1f} s, wanted {SOAK_WANT}"
        )
    finally:
        r.delete(*keys)
        mux.disconnect()


# ---------------------------------------------------------------------- stateful features under load


@pytest.fixture
def hammer(client: redis.Redis, prefix: str) -> Iterator[List[int]]:
    """Greenlets running plain commands (and checking their replies) for the duration of a test."""
    stop = Event()
    counts = [0, 0]  # ok, mismatches

    def run(i: int) -> None:
        key = f"{prefix}hammer:{i}"
        n = 0
        while not stop.is_set():
            n += 1
            if client.set(key, n) and client.get(key) == str(n).encode():
                counts[0] += 1
            else:
                counts[1] += 1

    greenlets = [gevent.spawn(run, i) for i in range(100)]
    yield counts
    stop.set()
    gevent.joinall(greenlets, raise_error=True)
    assert counts[1] == 0
    assert counts[0] > 0


def test_watch_multi_increments_never_lost(
    client: redis.Redis, pool: RedisMuxPool, prefix: str, hammer: List[int]
) -> None:
    key = prefix + "counter"
    watched_increments(client, key)
    assert client.get(key) == b"500"
    assert pool.get_stats()["mux_dedicated_checkouts"] >= 500


def test_transactional_pipeline_is_atomic(client: redis.Redis, prefix: str, hammer: List[int]) -> None:
    key = prefix + "tx"

    def worker(i: int) -> None:
        pipe = client.pipeline(transaction=True)
        pipe.rpush(key, f"{i}-a").rpush(key, f"{i}-b").lrange(key, -2, -1)
        results = pipe.execute()
        assert results[2] == [f"{i}-a".encode(), f"{i}-b".encode()]

    gevent.joinall([gevent.spawn(worker, i) for i in range(100)], raise_error=True)
    items = client.lrange(key, 0, -1)
    for j in range(0, len(items), 2):  # never interleaved with another transaction
        assert items[j][:-1] == items[j + 1][:-1]
    assert len(items) == 200


def test_pubsub_while_hammered(client: redis.Redis, prefix: str, hammer: List[int]) -> None:
    channel = prefix + "chan"
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    for i in range(20):
        assert client.publish(channel, f"m{i}") == 1
    got = []
    while len(got) < 20:
        message = pubsub.get_message(timeout=5)
        assert message is not None
        got.append(message["data"])
    assert got == [f"m{i}".encode() for i in range(20)]
    pubsub.close()


def test_blpop_while_hammered(client: redis.Redis, prefix: str, hammer: List[int]) -> None:
    key = prefix + "queue"
    assert client.blpop([key], timeout=0.2) is None
    waiter = gevent.spawn(client.blpop, [key], 5)
    wait_until(lambda: blocked_clients(client) >= 1)  # the BLPOP blocks on the server: the push must wake it
    client.rpush(key, "item")
    assert waiter.get(timeout=5) == (key.encode(), b"item")


def test_pipelines_both_kinds_and_lock_and_monitor(client: redis.Redis, pool: RedisMuxPool, prefix: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.set(prefix + "p", 1).incr(prefix + "p").lpush(prefix + "p", "x").get(prefix + "p")
    results = pipe.execute(raise_on_error=False)
    assert results[:2] == [True, 2] and isinstance(results[2], ResponseError) and results[3] == b"2"
    assert pool.get_stats()["mux_dedicated_checkouts"] == 0
    pipe = client.pipeline(transaction=True)
    assert pipe.incr(prefix + "p").incr(prefix + "p").execute() == [3, 4]
    assert pool.get_stats()["mux_dedicated_checkouts"] == 1
    with client.lock(prefix + "lock", timeout=5, blocking_timeout=5):
        assert client.get(prefix + "lock") is not None
    assert client.get(prefix + "lock") is None
    with client.monitor() as monitor:
        client.echo(prefix + "seen")
        for _ in range(10):
            if prefix + "seen" in monitor.next_command()["command"]:
                break
        else:
            pytest.fail("MONITOR did not show the command")


# ---------------------------------------------------------------------- timeouts, back-pressure, failures


def test_socket_timeout_fails_only_waiting_requests(debug_redis: Any) -> None:
    mux = make_pool(debug_redis, socket_timeout=0.3, retry=no_retry())
    r = redis.StrictRedis(connection_pool=mux)
    r.set("k", "v")
    sleeper = gevent.spawn(r.execute_command, "DEBUG", "SLEEP", "1")
    # Sent on the one shared socket: the GET below goes behind it, so the server answers it only after the sleep.
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
    with pytest.raises(RedisTimeoutError):
        r.get("k")
    with pytest.raises(RedisTimeoutError):
        sleeper.get()
    with gevent.Timeout(5):
        while True:  # the server sleeps on: these time out too, until it wakes up
            try:
                value = r.get("k")
                break
            except RedisTimeoutError:
                continue
    assert value == b"v"  # late replies were dropped, never handed to later requests
    assert [r.echo(str(i)) for i in range(20)] == [str(i).encode() for i in range(20)]
    stats = mux.get_stats()
    assert stats["mux_timeouts"] >= 2
    assert stats["mux_dropped"] == stats["mux_timeouts"]
    mux.disconnect()


def test_max_in_flight_bounds_the_queue(redis_server: Any, prefix: str) -> None:
    mux = make_pool(redis_server, max_in_flight=8)
    r = redis.StrictRedis(connection_pool=mux)
    highest = [0]
    stop = Event()

    def sampler() -> None:
        while not stop.is_set():
            highest[0] = max(highest[0], mux._shared.in_flight)
            gevent.sleep(0)

    def worker(i: int) -> None:
        for j in range(5):
            assert r.echo(f"{i}:{j}") == f"{i}:{j}".encode()

    watch = gevent.spawn(sampler)
    gevent.joinall([gevent.spawn(worker, i) for i in range(300)], raise_error=True)
    stop.set()
    watch.join()
    assert 0 < highest[0] <= 8
    assert mux.get_stats()["mux_replies"] == 1500
    mux.disconnect()


def test_disconnect_fails_pending_requests(debug_redis: Any) -> None:
    mux = make_pool(debug_redis, retry=no_retry())
    r = redis.StrictRedis(connection_pool=mux)
    r.ping()
    # The pings queue behind DEBUG SLEEP on the one shared socket: none can be answered before disconnect().
    sleeper = gevent.spawn(r.execute_command, "DEBUG", "SLEEP", "1")
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
    pending = [gevent.spawn(r.ping) for _ in range(50)]
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 51)
    mux.disconnect()
    gevent.joinall([*pending, sleeper], timeout=5)
    assert all(g.ready() for g in [*pending, sleeper])
    assert all(isinstance(g.exception, RedisConnectionError) for g in [*pending, sleeper])
    assert r.ping() is True  # reconnects (and waits for the server to wake up)
    mux.disconnect()


def test_a_command_goes_out_at_once_while_the_server_is_idle(client: redis.Redis, pool: RedisMuxPool) -> None:
    client.ping()
    writes = pool.get_stats()["mux_writes"]
    seen: List[int] = []

    def second() -> None:
        seen.append(int(pool.get_stats()["mux_writes"]) - int(writes))
        client.ping()

    # Both greenlets run in the same loop turn: the first one's command is not held back for a batch.
    gevent.joinall([gevent.spawn(client.ping), gevent.spawn(second)], raise_error=True)
    assert seen == [1]


def test_a_send_failing_in_a_greenlet_fails_every_command_then_reconnects(redis_server: Any) -> None:
    mux = make_pool(redis_server, retry=no_retry())
    r = redis.StrictRedis(connection_pool=mux)
    try:
        r.ping()
        mux._sockets[0].sock.shutdown(socket.SHUT_WR)  # the next send fails (EPIPE) before the EOF is read
        commands = [gevent.spawn(r.ping) for _ in range(20)]
        gevent.joinall(commands, timeout=5)
        assert all(g.dead for g in commands), "commands hang after a failed send"
        assert all(isinstance(g.exception, RedisConnectionError) for g in commands)
        assert "Error while writing to socket" in str(commands[0].exception)
        assert r.ping() is True  # the next command reconnects
        stats = mux.get_stats()
        assert stats["mux_connects"] == 2 and stats["mux_failed"] == 20 and stats["mux_in_flight"] == 0
    finally:
        mux.disconnect()


def test_server_killed_mid_flight_then_recovers(debug_redis: Any) -> None:
    mux = make_pool(debug_redis, retry=no_retry(), socket_connect_timeout=2)
    r = redis.StrictRedis(connection_pool=mux)
    r.set("k", "v")
    r.execute_command("CONFIG", "SET", "save", "")
    sleeper = gevent.spawn(r.execute_command, "DEBUG", "SLEEP", "5")
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
    pending = [gevent.spawn(r.get, "k") for _ in range(200)]  # behind the sleep on the shared socket
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 201)
    debug_redis.kill()
    gevent.joinall([*pending, sleeper], timeout=10)
    assert all(g.ready() for g in [*pending, sleeper])
    assert all(isinstance(g.exception, RedisConnectionError) for g in [*pending, sleeper])
    with pytest.raises(RedisConnectionError):
        r.get("k")
    debug_redis.start()
    assert r.ping() is True
    assert r.set("k", "again") and r.get("k") == b"again"
    assert mux.get_stats()["mux_failed"] >= 201
    mux.disconnect()


def test_fork_child_uses_its_own_socket(client: redis.Redis, pool: RedisMuxPool, prefix: str) -> None:
    client.set(prefix + "f", "parent")
    parent_connects = pool.get_stats()["mux_connects"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            ok = client.get(prefix + "f") == b"parent" and client.set(prefix + "f", "child")
            code = 0 if ok and pool.get_stats()["mux_connects"] == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.get(prefix + "f") == b"child"  # the parent's socket is intact
    assert pool.get_stats()["mux_connects"] == parent_connects
