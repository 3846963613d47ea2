"""Connect faults: a new connection that is not ready in time fails at the connect bound, for every pool class.

Each of ``GeventPool``, ``RedisMuxPool``, ``TarantoolPool`` and ``TarantoolMux`` meets a peer that accepts and
never answers (``tests.proxy.Proxy`` black-holing), a real server stopped with SIGSTOP, and a listener whose accept
queue is full (the SYN is dropped: the TCP connect itself hangs). The first checkout or command must fail with the
class's connect timeout (a ``greenpool.ConnectTimeout`` and the client's own error), naming the server and the stage
and never the password, no earlier than the bound and well before a hang; it must leave no slot taken and no socket
open; the next one must work once the fault is gone. Each scenario adds a row to the fault summary table
(``tests/conftest.py``). The bounds are short (0.5 s); the upper limits are generous for a busy machine.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Tuple

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from tarantool.error import NetworkError

from greenpool import ConnectTimeout, GeventPool, RedisMuxPool, TarantoolMux, TarantoolPool
from greenpool.redis import RedisConnectTimeout
from greenpool.tarantool import TarantoolConnectTimeout
from greenpool.tarantool_mux import MuxConnectionError, MuxConnectTimeout
from stress.servers import RedisServer, TarantoolServer, _Server
from tests.proxy import Proxy

BOUND = 0.5
#: How late a failure may come on a busy machine (the point is that it comes at all).
SLACK = 2.0
REDIS_PASSWORD = "c0nnect-S3cret-redis"


# ---------------------------------------------------------------------- the four classes


class Kind:
    """How to build one pool class for a server, make its first checkout or command, and read its state."""

    name = ""
    backend = ""
    error: Any = None
    client_error: Any = None
    stage = ""  # what a silent peer leaves unfinished
    password = ""

    def make(self, host: str, port: int, bound: float = BOUND, **kw: Any) -> Any:
        raise NotImplementedError

    def first(self, obj: Any) -> None:
        raise NotImplementedError

    def idle(self, obj: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def close(self, obj: Any) -> None:
        raise NotImplementedError


class GeventPoolKind(Kind):
    name, backend = "GeventPool", "redis"
    error, client_error = RedisConnectTimeout, RedisTimeoutError
    stage, password = "handshake", REDIS_PASSWORD

    def make(self, host: str, port: int, bound: float = BOUND, **kw: Any) -> Any:
        kw.setdefault("socket_connect_timeout", bound)
        return GeventPool(
            host=host,
            port=port,
            password=REDIS_PASSWORD,
            max_connections=2,
            timeout=1,
            retry=Retry(NoBackoff(), 0),
            **kw,
        )

    def first(self, obj: Any) -> None:
        obj.release(obj.get_connection())  # a checkout; a working one is released at once
        assert redis.Redis(connection_pool=obj).ping() is True

    def idle(self, obj: Any) -> Dict[str, Any]:
        stats = obj.get_stats()
        return {"size": stats["pool_size"], "in_use": stats["in_use"]}

    def close(self, obj: Any) -> None:
        obj.disconnect()


class RedisMuxPoolKind(GeventPoolKind):
    name = "RedisMuxPool"

    def make(self, host: str, port: int, bound: float = BOUND, **kw: Any) -> Any:
        kw.setdefault("socket_connect_timeout", bound)
        return RedisMuxPool(host=host, port=port, password=REDIS_PASSWORD, timeout=1, retry=Retry(NoBackoff(), 0), **kw)

    def first(self, obj: Any) -> None:
        assert redis.Redis(connection_pool=obj).ping() is True  # through the shared socket

    def idle(self, obj: Any) -> Dict[str, Any]:
        stats = obj.get_stats()
        return {
            "size": stats["pool_size"],
            "in_use": stats["in_use"],
            "sockets_up": stats["mux_sockets_up"],
            "in_flight": stats["mux_in_flight"],
        }


class TarantoolPoolKind(Kind):
    name, backend = "TarantoolPool", "tarantool"
    error, client_error = TarantoolConnectTimeout, NetworkError
    stage, password = "greeting", TarantoolServer.password

    def make(self, host: str, port: int, bound: float = BOUND, **kw: Any) -> Any:
        kw.setdefault("connection_timeout", bound)
        user, password = TarantoolServer.user, TarantoolServer.password
        return TarantoolPool(host, port, user=user, password=password, max_connections=2, timeout=1, **kw)

    def first(self, obj: Any) -> None:
        obj.ping()

    def idle(self, obj: Any) -> Dict[str, Any]:
        return {"size": obj.size, "in_use": obj.in_use}

    def close(self, obj: Any) -> None:
        obj.close()


class TarantoolMuxKind(TarantoolPoolKind):
    name = "TarantoolMux"
    error, client_error = MuxConnectTimeout, MuxConnectionError

    def make(self, host: str, port: int, bound: float = BOUND, **kw: Any) -> Any:
        user, password = TarantoolServer.user, TarantoolServer.password
        return TarantoolMux(host, port, user=user, password=password, connect_timeout=bound, socket_timeout=5)

    def idle(self, obj: Any) -> Dict[str, Any]:
        stats = obj.get_stats()
        return {"size": stats["mux_sockets_up"], "in_use": stats["mux_in_flight"]}


KINDS = [GeventPoolKind(), RedisMuxPoolKind(), TarantoolPoolKind(), TarantoolMuxKind()]
IDS = [f"{kind.backend}-{kind.name}" for kind in KINDS]
IDLE = {"size": 0, "in_use": 0, "sockets_up": 0, "in_flight": 0}


@pytest.fixture(params=KINDS, ids=IDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def tarantool_private() -> Iterator[TarantoolServer]:
    with TarantoolServer() as server:
        yield server


@pytest.fixture
def server(kind: Kind, request: pytest.FixtureRequest) -> _Server:
    """A private server of the kind's backend (private: the SIGSTOP tests stop it)."""
    name = "redis_with_password" if kind.backend == "redis" else "tarantool_private"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def syn_black_hole() -> Iterator[Tuple[str, int]]:
    """An address whose TCP connect hangs: a listener that never accepts, its accept queue already full."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        with socket.create_connection(address, timeout=5):  # fills the queue; the next SYN is dropped
            yield address


# ---------------------------------------------------------------------- helpers


def record(request: pytest.FixtureRequest, kind: Kind, **figures: Any) -> None:
    request.node.user_properties.append(("backend", kind.name))
    for key, value in figures.items():
        request.node.user_properties.append((key, value))


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@contextmanager
def stopped(server: _Server) -> Iterator[None]:
    """SIGSTOP the server (its kernel still completes TCP handshakes), SIGCONT it on the way out, whatever happens."""
    assert server.proc is not None
    pid = server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while proc_state(pid) != "T":
            assert time.monotonic() < deadline, "the server did not stop"
            gevent.sleep(0.005)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def fail_first(kind: Kind, obj: Any) -> Tuple[BaseException, float]:
    """Make the first checkout or command, which must fail; return what it raised and how long it took."""
    start = time.monotonic()
    with gevent.Timeout(BOUND + SLACK + 10):  # a hang fails this test, not the whole run
        try:
            kind.first(obj)
        except Exception as exc:
            return exc, time.monotonic() - start
    raise AssertionError(f"{kind.name}: the first checkout worked")


def check_connect_timeout(kind: Kind, obj: Any, address: str, stage: str) -> Tuple[float, str]:
    """The first checkout fails at the bound with the class's connect timeout, leaving no slot taken and no
    socket open (no ResourceWarning once collected); return how long it took and the error message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        exc, elapsed = fail_first(kind, obj)
        assert isinstance(exc, kind.error), repr(exc)
        assert isinstance(exc, ConnectTimeout) and isinstance(exc, kind.client_error)
        message = str(exc)
        del exc
        collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    assert "connecting timed out" in message and f"stage: {stage}" in message, message
    assert address in message, message
    assert kind.password not in message
    assert BOUND - 0.1 <= elapsed <= BOUND + SLACK, (elapsed, message)
    state = kind.idle(obj)
    assert state == {key: IDLE[key] for key in state}, state
    return elapsed, message


def collect() -> None:
    """Let the hub run its pending callbacks (they may hold the last references), then collect the cycles an
    exception's traceback makes, so that a socket left unclosed warns now, in the test that left it."""
    for _ in range(2):
        gevent.sleep(0)
        gc.collect()


def time_to_work(kind: Kind, obj: Any) -> float:
    """Seconds until the next checkout and command work (the fault is gone)."""
    start = time.monotonic()
    with gevent.Timeout(30):
        kind.first(obj)
    return time.monotonic() - start


# ---------------------------------------------------------------------- scenarios


def test_a_peer_that_never_answers_fails_the_first_checkout_at_the_connect_bound(
    kind: Kind, server: _Server, request: pytest.FixtureRequest
) -> None:
    with Proxy(server.host, server.port) as proxy:
        proxy.blackhole = True  # accepts, reads, never writes a byte
        obj = kind.make(proxy.host, proxy.port)
        try:
            elapsed, _ = check_connect_timeout(kind, obj, f"{proxy.host}:{proxy.port}", kind.stage)
            proxy.heal()
            recovery = time_to_work(kind, obj)
            record(request, kind, scenario="connect: silent peer", recovery_s=recovery, max_wait_s=elapsed)
        finally:
            kind.close(obj)


def test_a_stopped_server_fails_the_first_checkout_at_the_connect_bound(
    kind: Kind, server: _Server, request: pytest.FixtureRequest
) -> None:
    obj = kind.make(server.host, server.port)
    try:
        with stopped(server):
            elapsed, _ = check_connect_timeout(kind, obj, f"{server.host}:{server.port}", kind.stage)
        recovery = time_to_work(kind, obj)
        record(request, kind, scenario="connect: SIGSTOP", recovery_s=recovery, max_wait_s=elapsed)
    finally:
        kind.close(obj)


def test_a_dropped_syn_fails_the_first_checkout_at_the_connect_bound(
    kind: Kind, syn_black_hole: Tuple[str, int], request: pytest.FixtureRequest
) -> None:
    host, port = syn_black_hole
    obj = kind.make(host, port)
    try:
        elapsed, _ = check_connect_timeout(kind, obj, f"{host}:{port}", "TCP connect")
        record(request, kind, scenario="connect: SYN dropped", max_wait_s=elapsed)
    finally:
        kind.close(obj)


@pytest.mark.parametrize("fault", ["silent peer", "SYN dropped"])
def test_a_callers_own_gevent_timeout_during_a_connect_is_raised_as_itself(
    kind: Kind, server: _Server, syn_black_hole: Tuple[str, int], fault: str
) -> None:
    with Proxy(server.host, server.port) as proxy:
        proxy.blackhole = True
        host, port = (proxy.host, proxy.port) if fault == "silent peer" else syn_black_hole
        obj = kind.make(host, port, bound=30.0)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                outer = gevent.Timeout(0.3)
                outer.start()
                raised: Any = None
                try:
                    kind.first(obj)
                except BaseException as exc:
                    raised = "the caller's own" if exc is outer else repr(exc)
                finally:
                    outer.close()
                del outer  # with its traceback, which holds the frames of the interrupted connect
                collect()
            assert raised == "the caller's own", raised
            # The interrupted connect left no socket for the garbage collector and no slot taken.
            assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
            state = kind.idle(obj)
            assert state == {key: IDLE[key] for key in state}, state
        finally:
            kind.close(obj)


# ---------------------------------------------------------------------- the clients' own socket timeouts


def own_socket_timeout_case(kind: Kind, server: Any, stage: str, request: pytest.FixtureRequest) -> None:
    """A black-holed connect whose client gives up at its own ``socket_timeout`` before the (long) connect bound:
    the pool's connect timeout names ``socket_timeout`` and the stage."""
    with Proxy(server.host, server.port) as proxy:
        proxy.blackhole = True
        pool = kind.make(proxy.host, proxy.port, bound=30.0, socket_timeout=BOUND)
        try:
            elapsed, message = check_connect_timeout(kind, pool, f"{proxy.host}:{proxy.port}", stage)
            assert "after 0.5 s (socket_timeout)" in message, message
            record(request, kind, scenario="connect: socket_timeout", max_wait_s=elapsed)
        finally:
            kind.close(pool)


def test_tarantool_python_socket_timeout_while_connecting_is_a_connect_timeout_naming_it(
    tarantool_private: TarantoolServer, request: pytest.FixtureRequest
) -> None:
    # tarantool-python reports its own socket timeout as "(104, 'Connection reset by peer')"; the pool names it.
    own_socket_timeout_case(TarantoolPoolKind(), tarantool_private, "greeting", request)


def test_redis_py_socket_timeout_while_connecting_is_a_connect_timeout_naming_it(
    redis_with_password: RedisServer, request: pytest.FixtureRequest
) -> None:
    own_socket_timeout_case(GeventPoolKind(), redis_with_password, "handshake", request)


def test_tarantool_idle_check_against_a_stopped_server_is_bounded(fresh_tarantool: Any, request: Any) -> None:
    # socket_timeout stays None (the default): only the idle check's own bound can end the ping.
    pool = TarantoolPool(
        fresh_tarantool.host,
        fresh_tarantool.port,
        user=fresh_tarantool.user,
        password=fresh_tarantool.password,
        max_connections=1,
        timeout=5,
        check_after_idle=0,
        connection_timeout=BOUND,
    )
    pool.ping()
    with stopped(fresh_tarantool):
        start = time.monotonic()
        with pytest.raises(ConnectTimeout):
            pool.ping()  # the check's ping gives up, then the new connection's greeting does
        elapsed = time.monotonic() - start
    record(request, KINDS[2], scenario="idle check: SIGSTOP", recovery_s=None, max_wait_s=elapsed)
    assert 2 * BOUND - 0.1 < elapsed < 2 * BOUND + SLACK, elapsed
    assert pool.get_stats()["checks_failed"] == 1 and pool.size == 0
    assert pool.ping() is not None
    pool.close()
