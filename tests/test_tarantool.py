"""Tests of ``greenpool.TarantoolPool`` against a real tarantool: the helpers, ``connection()``, which errors
keep or discard a connection, health checks, credentials, ``from_url``, argument checks, fork, and the
warning about an unpatched ``socket`` module.

The heavy runs (1000 greenlets, interruption soak, a server killed mid-run) are in ``test_tarantool_soak.py``.
Uses the ``tarantool_server`` / ``fresh_tarantool`` fixtures of ``conftest.py``; each test writes its own id
range of the ``tester`` space and deletes it afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import gevent
import gevent.event
import pytest
import tarantool
from tarantool.const import ITERATOR_GE
from tarantool.error import DatabaseError, NetworkError

import greenpool
from greenpool import PoolClosed, PoolTimeout, TarantoolPool
from greenpool.tarantool import (
    CONNECTION_DEFAULTS,
    SocketNotPatchedWarning,
    TarantoolPoolClosed,
    TarantoolPoolTimeout,
)
from tests.helpers import in_forked_child

ROOT = Path(__file__).resolve().parent.parent

SESSION_ID = "return box.session.id()"


def make_pool(server: Any, **kw: Any) -> TarantoolPool:
    kw.setdefault("timeout", 5.0)
    return TarantoolPool(server.host, server.port, user=server.user, password=server.password, **kw)


def delete_range(server: Any, lo: int, hi: int) -> int:
    """Delete the tuples with ``lo <= id < hi`` (a test's own range); return how many there were."""
    conn = tarantool.Connection(server.host, server.port, user=server.user, password=server.password)
    try:
        return int(conn.eval(DELETE_RANGE, lo, hi).data[0])
    finally:
        conn.close()


DELETE_RANGE = """
local lo, hi = ...
local ids = {}
for _, t in box.space.tester:pairs({lo}, {iterator = 'GE'}) do
    if t[1] >= hi then break end
    table.insert(ids, t[1])
end
for _, id in ipairs(ids) do box.space.tester:delete(id) end
return #ids
"""


@pytest.fixture
def pool(tarantool_server: Any) -> Iterator[TarantoolPool]:
    p = make_pool(tarantool_server, max_connections=3)
    yield p
    p.close()


@pytest.fixture
def id_range(tarantool_server: Any) -> Iterator[Callable[[int], int]]:
    """``id_range(base)`` reserves ``[base, base + 1_000_000)`` of the ``tester`` space for this test: it is
    emptied now and deleted again afterwards. Returns ``base``."""
    used: list = []

    def reserve(base: int) -> int:
        delete_range(tarantool_server, base, base + 1_000_000)
        used.append(base)
        return base

    yield reserve
    for base in used:
        delete_range(tarantool_server, base, base + 1_000_000)


# ---------------------------------------------------------------------- requests


def test_helpers_run_each_request_and_return_tarantools_result(pool: TarantoolPool, id_range: Any) -> None:
    k = id_range(41_000_000)
    assert pool.ping(notime=True) == "Success"
    assert pool.insert("tester", (k, "a")).data == [[k, "a"]]
    assert pool.replace("tester", (k, "b")).data == [[k, "b"]]
    assert pool.select("tester", k).data == [[k, "b"]]
    assert pool.update("tester", k, [("=", 1, "c")]).data == [[k, "c"]]
    assert pool.upsert("tester", (k + 1, "new"), [("=", 1, "ignored")]).data == []
    assert pool.upsert("tester", (k + 1, "ignored"), [("=", 1, "upserted")]).data == []
    assert pool.select("tester", k + 1).data == [[k + 1, "upserted"]]
    assert pool.select("tester", [k], iterator=ITERATOR_GE, limit=2).data == [[k, "c"], [k + 1, "upserted"]]
    assert pool.delete("tester", k + 1).data == [[k + 1, "upserted"]]
    assert pool.select("tester", k + 1).data == []
    assert pool.call("echo", 1, "two", [3]).data == [1, "two", [3]]
    assert pool.call("add", 2, 40).data == [42]
    assert pool.eval("local a, b = ... return a * b", 6, 7).data == [42]
    rows = pool.execute('SELECT "id", "value" FROM "tester" WHERE "id" >= ? AND "id" < ?', [k, k + 10])
    assert rows.data == [[k, "c"]]
    named = pool.execute('SELECT "value" FROM "tester" WHERE "id" = :id', {"id": k})
    assert named.data == [["c"]]
    assert pool.in_use == 0 and pool.size == pool.idle >= 1
    stats = pool.get_stats()
    assert stats["connections_lost"] == 0 and stats["requests_errors"] == 0


def test_connection_block_gives_a_tarantool_connection_and_returns_it(pool: TarantoolPool, id_range: Any) -> None:
    k = id_range(42_000_000)
    with pool.connection() as tnt:
        assert isinstance(tnt, tarantool.Connection)
        assert pool.in_use == 1 and pool.owns(tnt)
        tnt.insert("tester", (k, {"nested": [1, 2]}))
        assert tnt.select("tester", k).data == [[k, {"nested": [1, 2]}]]
        assert tnt.space("tester").select(k).data == [[k, {"nested": [1, 2]}]]
        session = tnt.eval(SESSION_ID).data[0]
    assert pool.in_use == 0 and pool.idle == 1
    # The idle connection is reused: the same session answers.
    with pool.connection(timeout=1.0) as again:
        assert again is tnt
        assert again.eval(SESSION_ID).data[0] == session


def test_many_greenlets_share_max_connections(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server, max_connections=2)
    sessions: list = []

    def worker() -> None:
        for _ in range(5):
            sessions.append(pool.eval("require('fiber').sleep(0.001) return box.session.id()").data[0])

    gevent.joinall([gevent.spawn(worker) for _ in range(20)], raise_error=True)
    assert len(sessions) == 100 and len(set(sessions)) == 2
    assert pool.size == 2 and pool.in_use == 0
    pool.close()


def test_min_connections_are_prewarmed(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server, max_connections=4, min_connections=2)
    pool.prewarm()
    assert pool.size == pool.idle == 2
    pool.close()
    assert pool.size == 0


# ---------------------------------------------------------------------- which errors keep a connection


def test_error_replies_from_the_server_keep_the_connection(pool: TarantoolPool, id_range: Any) -> None:
    k = id_range(43_000_000)
    pool.insert("tester", (k, "first"))
    with pool.connection() as tnt:
        kept = tnt
    with pytest.raises(DatabaseError) as info:
        pool.insert("tester", (k, "duplicate"))
    assert not isinstance(info.value, NetworkError)
    assert "Duplicate key" in str(info.value)
    with pytest.raises(DatabaseError, match="boom"):
        pool.call("box.error", {"reason": "boom"})
    with pytest.raises(DatabaseError):
        pool.execute('SELECT "nope" FROM "tester"')
    with pytest.raises(DatabaseError):
        with pool.connection() as tnt:
            tnt.eval("error('raised in lua')")
    # Every request ran on the one connection, which is still in the pool and works.
    assert pool.size == pool.idle == 1
    assert pool.idle_connections() == [kept]
    assert pool.get_stats()["connections_lost"] == 0
    assert pool.select("tester", k).data == [[k, "first"]]


def test_network_error_discards_the_connection_so_a_late_reply_is_never_read(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server, max_connections=1, socket_timeout=0.5)
    first = pool.eval(SESSION_ID).data[0]
    late_at = time.monotonic() + 1.5
    with pytest.raises(NetworkError):
        # The reply comes 1.5 s after the request, long after the socket timed out: it must never be read as
        # the reply to a later request.
        pool.eval("require('fiber').sleep(1.5) return 'late'")
    assert pool.size == 0 and pool.get_stats()["connections_lost"] == 1
    with pool.connection() as tnt:
        assert tnt.eval(SESSION_ID).data[0] != first
    # Requests that span the moment the late reply is sent, each far shorter than the socket timeout, then one
    # after it: each gets its own reply.
    n = 0
    while time.monotonic() < late_at + 0.2:
        n += 1
        assert pool.eval("require('fiber').sleep(0.1) return ...", n).data == [n]
    assert pool.eval("return 'after'").data == ["after"]
    assert pool.size == 1 and pool.get_stats()["connections_lost"] == 1
    pool.close()


@pytest.mark.parametrize("how", ["timeout", "kill"])
def test_interrupted_request_discards_the_connection(tarantool_server: Any, how: str) -> None:
    pool = make_pool(tarantool_server, max_connections=1)
    first = pool.eval(SESSION_ID).data[0]
    if how == "timeout":
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.1):
                pool.eval("require('fiber').sleep(0.4) return 'late'")
    else:
        started = gevent.event.Event()

        def victim() -> None:
            with pool.connection() as tnt:
                started.set()
                tnt.eval("require('fiber').sleep(0.4) return 'late'")

        g = gevent.spawn(victim)
        started.wait(5)  # the victim yields only once its request is on the wire
        g.kill()
        assert isinstance(g.value, gevent.GreenletExit)
    assert pool.size == 0 and pool.in_use == 0
    assert pool.get_stats()["connections_lost"] == 1
    assert pool.eval("return 'next'").data == ["next"]
    assert pool.eval(SESSION_ID).data[0] != first
    pool.close()


def test_interrupted_connect_closes_its_socket() -> None:
    # A listener that accepts but never sends Tarantool's greeting: the connect hangs in the handshake.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        pool = TarantoolPool("127.0.0.1", listener.getsockname()[1], timeout=5.0)
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.2):
                pool.ping()
        assert pool.size == 0 and pool.get_stats()["connections_errors"] == 1
        listener.settimeout(5)
        accepted, _ = listener.accept()
        with accepted:
            accepted.settimeout(5)
            assert accepted.recv(1) == b""  # the half-made connection was closed, not left to the GC


def test_a_connection_closed_in_the_block_is_discarded(pool: TarantoolPool) -> None:
    with pool.connection() as tnt:
        tnt.close()
    assert pool.size == 0 and pool.get_stats()["connections_lost"] == 1
    assert pool.ping(notime=True) == "Success"


def test_pool_errors_are_greenpool_and_tarantool_errors(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server, max_connections=1, timeout=0.2)
    with pool.connection():
        start = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.ping()
        waited = time.monotonic() - start
    assert 0.15 <= waited < 2.0
    assert isinstance(info.value, TarantoolPoolTimeout)
    assert isinstance(info.value, tarantool.error.Error)
    assert not isinstance(info.value, DatabaseError)  # no request reached the server
    assert "No connection available" in str(info.value)
    assert pool.in_use == 0 and pool.get_stats()["requests_timeouts"] == 1
    pool.close()
    with pytest.raises(PoolClosed) as closed:
        pool.ping()
    assert isinstance(closed.value, TarantoolPoolClosed) and isinstance(closed.value, tarantool.error.Error)


# ---------------------------------------------------------------------- health check


def test_health_check_pings_only_idle_connections(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server, max_connections=1, check_after_idle=0.2)
    pings: list = []
    with pool.connection() as tnt:
        original = tnt.ping

        def counting_ping(*args: Any, **kwargs: Any) -> Any:
            pings.append(1)
            return original(*args, **kwargs)

        tnt.ping = counting_ping
    pool.eval("return 1")  # used just now: no ping
    assert pings == []
    gevent.sleep(0.25)  # idle longer than check_after_idle
    pool.eval("return 1")
    assert pings == [1]
    pool.close()


@pytest.mark.filterwarnings("ignore::tarantool.error.NetworkWarning")
def test_dead_idle_connection_fails_its_check_and_is_replaced_in_the_same_checkout(fresh_tarantool: Any) -> None:
    pool = make_pool(fresh_tarantool, max_connections=2, check_after_idle=0, timeout=2.0)
    with pool.connection() as a, pool.connection() as b:
        a.ping()
        b.ping()
    fresh_tarantool.kill()
    # Down: the ping fails, the connection is closed, and making a new one fails fast with tarantool's error.
    start = time.monotonic()
    with pytest.raises(NetworkError):
        pool.ping()
    assert time.monotonic() - start < 2.0
    stats = pool.get_stats()
    assert stats["checks_failed"] == 1 and stats["connections_errors"] == 1 and pool.size == 1
    fresh_tarantool.start()
    # Back: the caller sees no error, whether the remaining dead connection was reconnected or replaced.
    with pool.connection() as tnt:
        assert tnt.call("add", 1, 2).data == [3]
    assert pool.call("echo", "ok").data == ["ok"]
    assert pool.in_use == 0
    pool.close()


# ---------------------------------------------------------------------- credentials


def test_authenticates_with_user_and_password(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server)
    assert pool.eval("return box.session.user()").data == [tarantool_server.user]
    pool.close()


def test_wrong_password_fails_fast_with_a_clear_error_and_no_secret(
    tarantool_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wr0ng-Secret-value"
    caplog.set_level(logging.DEBUG)
    pool = TarantoolPool(tarantool_server.host, tarantool_server.port, "tester", secret, timeout=2.0)
    start = time.monotonic()
    with pytest.raises(NetworkError) as info:
        pool.ping()
    assert time.monotonic() - start < 2.0
    text = f"{info.value!s} {info.value!r} {info.value.__cause__!r}"
    assert "Incorrect password" in text or "credentials" in text
    assert pool.size == 0 and pool.in_use == 0
    stats = pool.get_stats()
    assert stats["connections_errors"] == 1
    for shown in (text, repr(pool), str(stats), caplog.text):
        assert secret not in shown
    # The pool is not wedged: the next checkout tries again (and fails the same way, at once).
    with pytest.raises(NetworkError):
        pool.ping()


def test_password_never_in_repr_stats_or_errors(tarantool_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pool = make_pool(tarantool_server, max_connections=1, timeout=0.05, leak_threshold=0.05, name="secretive")
    with pool.connection():
        with pytest.raises(PoolTimeout) as info:
            pool.ping()
        gevent.sleep(0.1)  # past leak_threshold: a warning with the stack is logged
    texts = [repr(pool), str(pool.get_stats()), str(info.value), caplog.text]
    assert "tester" in repr(pool) and "secretive" in caplog.text
    for text in texts:
        assert tarantool_server.password not in text
    pool.close()
    assert tarantool_server.password not in repr(pool)


# ---------------------------------------------------------------------- from_url and arguments


def test_from_url_parses_credentials_and_options(tarantool_server: Any) -> None:
    s = tarantool_server
    url = (
        f"tarantool://{s.user}:{s.password.replace('-', '%2D')}@{s.host}:{s.port}"
        "?max_connections=3&timeout=1.5&check_after_idle=none&min_connections=1&max_waiting=7"
        "&socket_timeout=4&connect_now=true&fetch_schema=yes&name=from-url"
    )
    pool = TarantoolPool.from_url(url)
    assert (pool.max_connections, pool.min_connections, pool.timeout, pool.check_after_idle) == (3, 1, 1.5, None)
    assert pool.max_waiting == 7 and pool.name == "from-url" and pool.user == s.user
    assert pool.host == s.host and pool.port == s.port
    assert pool.call("echo", "url").data == ["url"]
    with pool.connection() as tnt:
        assert tnt.socket_timeout == 4.0 and tnt.reconnect_max_attempts == 0
    assert s.password not in repr(pool)
    pool.close()
    # Keyword arguments override the URL; the port defaults to 3301.
    other = TarantoolPool.from_url(f"tarantool://{s.host}?max_connections=3", max_connections=5)
    assert other.max_connections == 5 and other.port == 3301 and other.user is None


def test_from_url_percent_decodes_credentials(tarantool_server: Any) -> None:
    user, password = "gp user@x", "p:ss/w@rd %"
    admin = make_pool(tarantool_server, max_connections=1)
    admin.eval(
        "local user, password = ... box.schema.user.create(user, {password = password, if_not_exists = true})",
        user,
        password,
    )
    try:
        url = f"tarantool://gp%20user%40x:p%3Ass%2Fw%40rd%20%25@{tarantool_server.host}:{tarantool_server.port}"
        pool = TarantoolPool.from_url(url)
        assert pool.user == user
        with pool.connection() as tnt:  # authenticated while it connected (a wrong password fails there)
            assert tnt.ping(notime=True) == "Success"
        assert password not in repr(pool) and "p%3Ass" not in repr(pool)
        pool.close()
        wrong = TarantoolPool.from_url(url.replace("%25@", "%26@"))
        with pytest.raises(NetworkError, match="Incorrect password"):
            wrong.ping()
    finally:
        admin.eval("box.schema.user.drop(..., {if_exists = true})", user)
        admin.close()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://localhost:6379", "'redis'"),
        ("tarantool://localhost:3301?max_conections=3", "'max_conections'"),
        ("tarantool://localhost:3301?max_connections=three", "max_connections='three'"),
        ("tarantool://localhost:3301?timeout=soon", "timeout='soon'"),
        ("tarantool://localhost:3301?connect_now=maybe", "connect_now='maybe'"),
        ("tarantool://localhost:3301?timeout=1&timeout=2", "'timeout'"),
        ("tarantool://localhost:3301?max_connections=0", "max_connections"),
        ("tarantool://localhost:3301?timeout=-1", "timeout"),
        ("tarantool://localhost:port", "port"),
        ("tarantool://localhost:70000", "port"),
        ("tarantool://:secret-pw@:3301", "host"),
        ("tarantool://localhost:3301/db", "'/db'"),
        ("tarantool://localhost:3301?password=secret-pw", "'password'"),
        ("tarantool://:secret-pw@localhost:3301", "password"),
    ],
)
def test_from_url_rejects_bad_urls_naming_the_culprit(url: str, named: str) -> None:
    with pytest.raises(ValueError) as info:
        TarantoolPool.from_url(url)
    assert named in str(info.value)
    assert "secret-pw" not in str(info.value)


def test_from_url_rejects_a_non_string() -> None:
    with pytest.raises(TypeError, match="url"):
        TarantoolPool.from_url(b"tarantool://localhost")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"host": 127001}, TypeError, "host"),
        ({"host": ""}, TypeError, "host"),
        ({"port": "3301"}, TypeError, "port"),
        ({"port": True}, TypeError, "port"),
        ({"port": 0}, ValueError, "port"),
        ({"port": 65536}, ValueError, "port"),
        ({"host": None, "port": 3301}, TypeError, "port"),
        ({"user": 42}, TypeError, "user"),
        ({"user": ""}, TypeError, "user"),
        ({"user": "u", "password": 12345}, TypeError, "password"),
        ({"password": "secret-pw"}, ValueError, "password"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_connections": 2.5}, TypeError, "max_connections"),
        ({"max_connections": "10"}, TypeError, "max_connections"),
        ({"min_connections": -1}, ValueError, "min_connections"),
        ({"min_connections": 11}, ValueError, "min_connections"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"check_after_idle": -0.5}, ValueError, "check_after_idle"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime"),
        ({"max_idle": "long"}, TypeError, "max_idle"),
        ({"leak_threshold": -1}, ValueError, "leak_threshold"),
        ({"max_waiting": -1}, ValueError, "max_waiting"),
        ({"name": 5}, TypeError, "name"),
        ({"socket_timeout": 0}, ValueError, "socket_timeout"),
        ({"connection_timeout": "5"}, TypeError, "connection_timeout"),
        ({"reconnect_max_attempts": -1}, ValueError, "reconnect_max_attempts"),
        ({"reconnect_delay": None}, TypeError, "reconnect_delay"),
        ({"connect_now": "yes"}, TypeError, "connect_now"),
        ({"socket_fd": 3}, ValueError, "socket_fd"),
        ({"max_connection": 3}, TypeError, "max_connection"),
        ({"sockettimeout": 3}, TypeError, "sockettimeout"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, error: type, named: str) -> None:
    args = {"host": "127.0.0.1", "port": 3301, **kwargs}
    with pytest.raises(error) as info:
        TarantoolPool(**args)
    assert named in str(info.value)
    assert "secret-pw" not in str(info.value) and "12345" not in str(info.value)


def test_defaults_suit_a_pool_and_can_be_overridden(tarantool_server: Any) -> None:
    assert CONNECTION_DEFAULTS["reconnect_max_attempts"] == 0 and CONNECTION_DEFAULTS["connect_now"] is True
    pool = make_pool(tarantool_server, max_connections=1)
    assert pool.timeout == 5.0 and pool.check_after_idle == 1.0
    with pool.connection() as tnt:
        assert not tnt.is_closed()  # connected while it was created
        assert (tnt.reconnect_max_attempts, tnt.reconnect_delay, tnt.connection_timeout) == (0, 0.0, 10.0)
    pool.close()
    lazy = make_pool(tarantool_server, max_connections=1, connect_now=False, reconnect_max_attempts=3)
    with lazy.connection() as tnt:
        assert tnt.is_closed() and tnt.reconnect_max_attempts == 3
        assert tnt.call("add", 1, 1).data == [2]  # connects on its first request
    lazy.close()
    assert TarantoolPool("127.0.0.1", 3301).timeout == 30.0


def test_lazy_export_is_the_adapter() -> None:
    assert greenpool.TarantoolPool is TarantoolPool
    assert issubclass(TarantoolPool, greenpool.Pool)


# ---------------------------------------------------------------------- fork


def test_child_process_gets_its_own_pool_and_parent_connections_keep_working(tarantool_server: Any) -> None:
    pool = make_pool(tarantool_server, max_connections=3)
    with pool.connection() as a, pool.connection() as b:
        parent_sessions = {a.eval(SESSION_ID).data[0], b.eval(SESSION_ID).data[0]}
    held = pool.acquire()  # checked out across the fork
    parent_sessions.add(held.eval(SESSION_ID).data[0])

    def child() -> dict:
        report: dict = {"size": pool.size, "idle": pool.idle, "in_use": pool.in_use}
        pool.release(held)  # the parent's: accepted and left alone
        with pool.connection() as tnt:
            report["session"] = tnt.eval(SESSION_ID).data[0]
            report["is_parents"] = tnt is a or tnt is b or tnt is held
        report["echo"] = pool.call("echo", "child").data
        report["size_after"] = pool.size
        return report

    report = in_forked_child(child)
    assert report["size"] == 0 and report["idle"] == 0 and report["in_use"] == 0
    assert report["session"] not in parent_sessions and not report["is_parents"]
    assert report["echo"] == ["child"] and report["size_after"] == 1
    # The parent's connections, idle and held, still work on their own sessions.
    assert held.eval(SESSION_ID).data[0] in parent_sessions
    pool.release(held)
    assert pool.size == 2 and pool.idle == 2
    with pool.connection() as tnt:
        assert tnt.eval(SESSION_ID).data[0] in parent_sessions
    pool.close()


# ---------------------------------------------------------------------- the unpatched socket warning

UNPATCHED = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if {patch}:
        from gevent import monkey
        monkey.patch_all()
    from greenpool import TarantoolPool
    first = TarantoolPool({host!r}, {port})
    second = TarantoolPool.from_url("tarantool://{host}:{port}")
    first.ping()
    second.ping()
print(json.dumps([[w.category.__name__, str(w.message), w.filename] for w in caught]))
"""


@pytest.mark.parametrize("patched", [False, True])
def test_warns_once_when_socket_is_not_patched(tarantool_server: Any, patched: bool) -> None:
    code = UNPATCHED.format(patch=patched, host=tarantool_server.host, port=tarantool_server.port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT)
    )
    assert done.returncode == 0, done.stderr
    caught = [w for w in json.loads(done.stdout.splitlines()[-1]) if w[0] == SocketNotPatchedWarning.__name__]
    if patched:
        assert caught == []
        return
    assert len(caught) == 1, caught
    _, message, filename = caught[0]
    assert "gevent.monkey.patch_all()" in message and "before importing tarantool" in message
    assert filename == "<string>"  # points at the caller, not into greenpool
    assert issubclass(SocketNotPatchedWarning, RuntimeWarning)


def test_libc_is_looked_up_once_not_per_connection(tarantool_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # tarantool.Connection() asks ctypes.util.find_library("c") each time, which runs `ldconfig -p` in a child
    # process; the pool makes tarantool-python ask it once.
    import ctypes.util

    import greenpool.tarantool

    lookups = greenpool.tarantool._LIBRARY_LOOKUPS
    assert lookups is not None
    real = ctypes.util.find_library
    calls: List[str] = []

    def find_library(name: str) -> Any:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", find_library)
    monkeypatch.setattr(lookups, "found", {})
    pool = make_pool(tarantool_server, max_connections=3)
    try:
        held = [pool.acquire() for _ in range(3)]
        for conn in held:
            pool.release(conn)
        assert pool.get_stats()["connections_num"] == 3
        assert calls == ["c"]
    finally:
        pool.close()
