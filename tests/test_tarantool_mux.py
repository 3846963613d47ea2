"""Tests of ``greenpool.tarantool_mux.TarantoolMux`` against real tarantool servers.

Every operation against tarantool-python's own results; replies matched to their requests under 1000+
greenlets with values from 0 B to 1 MB and under random interruptions; a per-request timeout, back-pressure,
``close()``, a server killed mid-flight and restarted, authentication failures, bad arguments, fork, threads.
Uses the ``tarantool_server`` (shared) and ``fresh_tarantool`` (private, killable) fixtures of conftest.
"""

from __future__ import annotations

import gc
import os
import random
import socket
import time
from itertools import count
from typing import Any, Dict, Iterator, List

import gevent
import pytest
import tarantool
from gevent import monkey
from tarantool.error import DatabaseError, NetworkError, SchemaError
from tarantool.response import Response, ResponseExecute

from greenpool.errors import PoolClosed, WrongThread
from greenpool.tarantool_mux import MuxClosed, MuxConnectionError, MuxError, MuxTimeout, TarantoolMux
from stress.servers import free_port
from tests.helpers import wait_until
from tests.proxy import Proxy

# Keys of this file's tuples in the shared `tester` space (other test files use other ranges).
_keys = count(71_000_000)


def make_mux(server: Any, via: Any = None, **kwargs: Any) -> TarantoolMux:
    """A mux with the server's credentials, connected to the server or ``via`` a proxy in front of it."""
    address = via or server
    return TarantoolMux(address.host, address.port, server.user, server.password, **kwargs)


@pytest.fixture
def mux(tarantool_server: Any) -> Iterator[TarantoolMux]:
    with make_mux(tarantool_server, name="test-mux") as m:
        yield m


@pytest.fixture
def tnt(tarantool_server: Any) -> Iterator[Any]:
    conn = tarantool.Connection(
        tarantool_server.host, tarantool_server.port, user=tarantool_server.user, password=tarantool_server.password
    )
    yield conn
    conn.close()


# ---------------------------------------------------------------------- the API, against tarantool-python


def test_every_operation_returns_what_tarantool_python_returns(mux: TarantoolMux, tnt: Any) -> None:
    a, b, c = next(_keys), next(_keys), next(_keys)
    assert isinstance(mux.ping(), float) and mux.ping(notime=True) == "Success"

    inserted = mux.insert("tester", [a, "first"])
    assert isinstance(inserted, Response)
    assert inserted.data == [[a, "first"]] and inserted[0] == [a, "first"] and len(inserted) == 1
    assert inserted.rowcount == 1 and inserted.return_code == 0 and list(inserted) == [[a, "first"]]
    assert tnt.select("tester", a).data == inserted.data

    replaced = mux.replace("tester", (a, {"nested": [1, 2.5, None, b"bytes"]}))
    assert replaced.data == tnt.select("tester", a).data == [[a, {"nested": [1, 2.5, None, b"bytes"]}]]

    assert mux.select("tester", a).data == tnt.select("tester", a).data
    assert mux.select("tester", [a], index="primary").data == tnt.select("tester", [a], index="primary").data
    assert mux.select("tester", key=999_999_999_999).data == []
    mux.insert("tester", [b, "b"])
    mux.insert("tester", [c, "c"])
    ge = mux.select("tester", a, iterator="GE", limit=3)
    assert [row[0] for row in ge] == [a, b, c]
    assert (
        mux.select("tester", a, iterator=5, offset=1, limit=2).data
        == tnt.select("tester", a, iterator=5, offset=1, limit=2).data
    )
    assert [row[0] for row in mux.select("tester", c, iterator="LT", limit=2)] == [b, a]

    ops = [("=", 1, "by number")]
    assert mux.update("tester", b, ops).data == tnt.select("tester", b).data == [[b, "by number"]]
    assert mux.update("tester", b, [("=", "value", "by name")]).data == [[b, "by name"]]
    assert tnt.update("tester", b, [("=", 1, "tnt")]).data == mux.select("tester", b).data

    upserted = mux.upsert("tester", [b, 0], [("=", 1, "upserted")])
    assert upserted.data == [] and mux.select("tester", b).data == [[b, "upserted"]]
    mux.upsert("tester", [b + 10**9, 5], [("+", 1, 1)], index="primary")
    assert mux.select("tester", b + 10**9).data == [[b + 10**9, 5]]
    mux.delete("tester", b + 10**9)

    deleted = mux.delete("tester", c)
    assert deleted.data == [[c, "c"]] and tnt.select("tester", c).data == []
    assert mux.delete("tester", [c], index="primary").data == []

    assert mux.call("add", 2, 3).data == tnt.call("add", 2, 3).data == [5]
    assert mux.call("echo", [1, "two", [3]]).data == tnt.call("echo", [1, "two", [3]]).data == [1, "two", [3]]
    assert mux.call("echo").data == []
    assert mux.eval("return ...", "x", 2).data == tnt.eval("return ...", "x", 2).data == ["x", 2]
    assert mux.eval("return {1, 2}").data == [[1, 2]]
    for key in (a, b):
        mux.delete("tester", key)


def test_sql_execute_with_positional_and_named_parameters(mux: TarantoolMux, tnt: Any) -> None:
    table = f"MUX_SQL_{os.getpid()}"
    mux.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (id INTEGER PRIMARY KEY AUTOINCREMENT, name STRING)')
    try:
        inserted = mux.execute(f'INSERT INTO "{table}" (name) VALUES (?), (?)', ["a", "b"])
        assert isinstance(inserted, ResponseExecute)
        assert inserted.affected_row_count == 2 and len(inserted.autoincrement_ids) == 2
        selected = mux.execute(f'SELECT name FROM "{table}" WHERE name = :name', {"name": "b"})
        assert selected.data == [["b"]] and selected.affected_row_count is None
        assert selected.data == tnt.execute(f'SELECT name FROM "{table}" WHERE name = :name', {"name": "b"}).data
        assert mux.execute("SELECT ?, ?", (1, "x")).data == [[1, "x"]]
        with pytest.raises(DatabaseError) as info:
            mux.execute("SELECT * FROM no_such_table_anywhere")
        assert not isinstance(info.value, NetworkError) and "no_such_table_anywhere" in info.value.message.lower()
    finally:
        mux.execute(f'DROP TABLE IF EXISTS "{table}"')


def test_error_replies_raise_database_error_with_the_servers_code_and_message(mux: TarantoolMux) -> None:
    key = next(_keys)
    mux.insert("tester", [key, "x"])
    with pytest.raises(DatabaseError) as info:
        mux.insert("tester", [key, "again"])
    assert not isinstance(info.value, NetworkError)
    assert info.value.code == 3 and "Duplicate key" in info.value.message  # ER_TUPLE_FOUND
    with pytest.raises(DatabaseError) as info:
        mux.call("no_such_function")
    assert info.value.code == 33 and "no_such_function" in info.value.message  # ER_NO_SUCH_PROC
    with pytest.raises(DatabaseError) as info:
        mux.eval("box.error({code = 4242, reason = 'custom failure'})")
    assert info.value.code == 4242 and info.value.message == "custom failure"
    with pytest.raises(SchemaError):
        mux.select("no_such_space", 1)
    assert mux.select("tester", key).data == [[key, "x"]]  # the connection is still fine
    stats = mux.get_stats()
    assert stats["mux_error_replies"] >= 3 and stats["mux_connects"] == 1 and stats["mux_failed"] == 0
    mux.delete("tester", key)


def test_space_ids_work_and_a_recreated_space_is_found_again(mux: TarantoolMux, tnt: Any) -> None:
    name = f"mux_schema_{os.getpid()}"
    create = "local s = box.schema.space.create(...) s:create_index('pk', {parts = {1, 'unsigned'}}) return s.id"
    tnt.eval(f"if box.space.{name} then box.space.{name}:drop() end")
    first_id = tnt.eval(create, name).data[0]
    try:
        assert mux.replace(name, [1, "old"]).data == [[1, "old"]]
        assert mux.select(first_id, 1).data == [[1, "old"]]
        # Another client drops the space and creates one of the same name, with another id.
        tnt.eval(f"box.space.{name}:drop() box.schema.space.create('{name}_filler')")
        second_id = tnt.eval(create, name).data[0]
        assert second_id != first_id
        assert mux.replace(name, [2, "new"]).data == [[2, "new"]]
        assert mux.select(name, index="pk").data == [[2, "new"]]
        assert mux.select(second_id).data == [[2, "new"]]
    finally:
        tnt.eval(
            f"for _, n in ipairs({{'{name}', '{name}_filler'}}) do if box.space[n] then box.space[n]:drop() end end"
        )


# ---------------------------------------------------------------------- matching under load and interruption


def _size(rng: random.Random) -> int:
    """0 B to 1 MB: mostly small, some tens of KB, a few close to 1 MB."""
    roll = rng.random()
    if roll < 0.02:
        return rng.randint(512 * 1024, 1024 * 1024)
    if roll < 0.15:
        return rng.randint(1024, 64 * 1024)
    if roll < 0.3:
        return 0
    return rng.randint(1, 1024)


def test_every_reply_matches_its_request_under_1200_greenlets_with_mixed_commands(mux: TarantoolMux) -> None:
    base = next(_keys)
    for _ in range(1300):
        next(_keys)
    mismatches: List[str] = []
    done = [0]

    def worker(i: int) -> None:
        rng = random.Random(i)
        key = base + i
        stored = None
        for n in range(8):
            token = f"{i}:{n}"
            size = _size(rng)
            # Stored tuples stay under 64 KB (the server has 256 MB of memtx memory); echoed values go to 1 MB.
            blob = rng.randbytes(min(size, 64 * 1024))  # stored as MessagePack bin, returned as bytes
            text = token[-1] * size  # Lua returns strings as MessagePack str
            op = rng.randrange(6)
            if op == 0:
                got = mux.replace("tester", [key, token, blob]).data
                want: Any = [[key, token, blob]]
                stored = want
            elif op == 1:
                got = mux.select("tester", key).data
                want = stored or []
            elif op == 2:
                got = mux.call("echo", token, text).data
                want = [token, text]
            elif op == 3:
                got = mux.eval("local t, b = ... return t, #b, b:sub(-3)", token, text).data
                want = [token, size, text[-3:]]
            elif op == 4:
                got = mux.execute("SELECT ?, ?", [token, len(blob)]).data
                want = [[token, len(blob)]]
            else:
                got = mux.ping(notime=True)
                want = "Success"
            if got != want:
                mismatches.append(f"greenlet {i} op {op} #{n}: {str(got)[:80]} != {str(want)[:80]}")
        if stored is not None:
            mux.delete("tester", key)
        done[0] += 1

    greenlets = [gevent.spawn(worker, i) for i in range(1200)]
    gevent.joinall(greenlets, timeout=90, raise_error=True)
    assert done[0] == 1200
    assert mismatches == []
    stats = mux.get_stats()
    assert stats["mux_replies"] == stats["mux_requests"] and stats["mux_in_flight"] == 0 and stats["mux_dropped"] == 0
    assert stats["mux_writes"] < stats["mux_requests"] / 2, "requests were not coalesced into fewer sends"


#: How many of each outcome the interruption soak wants (the mux's dropped late replies too); how the timeouts land
#: depends on the machine's speed, so it runs passes until it has them, for at most SOAK_BUDGET seconds.
SOAK_WANT = {"ok": 1000, "interrupted": 1000, "killed": 5, "dropped": 1}
SOAK_BUDGET = 40.0


def test_interrupted_requests_never_receive_or_steal_another_reply(mux: TarantoolMux) -> None:
    mismatches: List[str] = []
    counts = {"ok": 0, "interrupted": 0, "killed": 0}

    def worker(i: int) -> None:
        rng = random.Random(1000 + i)
        for n in range(50):
            token = f"{i}:{n}:{rng.random()}" + "z" * rng.choice([0, 10, 1000, 20_000])
            try:
                with gevent.Timeout(rng.choice([0.0001, 0.0005, 0.001, 0.005, 0.05, 0.5])):
                    if n % 2:
                        got = mux.call("echo", token).data
                        want: Any = [token]
                    else:
                        got = mux.eval("return ...", token, len(token)).data
                        want = [token, len(token)]
            except gevent.Timeout:
                counts["interrupted"] += 1
                continue
            counts["ok"] += 1
            if got != want:
                mismatches.append(f"{got!r} != {want!r}")

    def killer(greenlets: List[gevent.Greenlet], n: int) -> None:
        rng = random.Random(7 + n)
        while not all(g.dead for g in greenlets):
            victim = rng.choice(greenlets)
            if not victim.dead:
                victim.kill(block=False)
                counts["killed"] += 1
            gevent.sleep(0.002)

    def reached() -> Dict[str, int]:
        return {**counts, "dropped": int(mux.get_stats()["mux_dropped"])}

    started = time.monotonic()
    passes = 0
    while time.monotonic() - started < SOAK_BUDGET:
        greenlets = [gevent.spawn(worker, passes * 400 + i) for i in range(400)]
        killing = gevent.spawn(killer, greenlets, passes)
        gevent.joinall(greenlets, timeout=60)
        killing.join(timeout=10)
        assert all(g.dead for g in greenlets) and killing.dead, "a greenlet hung"
        passes += 1
        if all(reached()[what] >= want for what, want in SOAK_WANT.items()):
            break
    assert mismatches == []
    # Every abandoned request's late reply arrives and is dropped; the slots all come back.
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 0)
    outcome = reached()
    assert all(outcome[what] >= want for what, want in SOAK_WANT.items()), (
        f"{outcome} after {passes} passes in {time.monotonic() - started:.1f} s, wanted {SOAK_WANT}"
    )
    assert mux.get_stats()["mux_connects"] == 1
    assert mux.call("echo", "after").data == ["after"]


def test_an_undecodable_reply_fails_only_its_own_request(mux: TarantoolMux) -> None:
    # Lua hands bytes back as a MessagePack str: not UTF-8 here, so it cannot be decoded (tarantool-python
    # raises the same UnicodeDecodeError). Its neighbours in the same read, before and after, are unharmed.
    big = "y" * 300_000
    calls = []
    for n in range(40):
        calls.append(gevent.spawn(mux.call, "echo", n, big if n % 3 else "small"))
        if n in (10, 25):
            calls.append(gevent.spawn(mux.call, "echo", b"\xff\xfe not utf-8"))
    gevent.joinall(calls, timeout=30)
    bad = [g for g in calls if g.exception is not None]
    assert len(bad) == 2 and all(isinstance(g.exception, UnicodeDecodeError) for g in bad)
    good = [g.value.data for g in calls if g.exception is None]
    assert good == [[n, big if n % 3 else "small"] for n in range(40)]
    stats = mux.get_stats()
    assert stats["mux_connects"] == 1 and stats["mux_in_flight"] == 0 and stats["mux_failed"] == 0
    assert mux.call("echo", "still fine").data == ["still fine"]


# ---------------------------------------------------------------------- timeouts, back-pressure, close


def test_a_timeout_fails_only_that_request_and_its_late_reply_is_dropped(tarantool_server: Any) -> None:
    with make_mux(tarantool_server, socket_timeout=0.3) as mux:
        slow = gevent.spawn(mux.eval, "require('fiber').sleep(1.0) return 'late'")
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
        for n in range(20):  # other requests keep working meanwhile
            assert mux.call("echo", n).data == [n]
        with pytest.raises(MuxTimeout) as info:
            slow.get(timeout=5)
        assert isinstance(info.value, NetworkError) and "no reply within socket_timeout=0.3 s" in str(info.value)
        assert mux.get_stats()["mux_timeouts"] == 1
        wait_until(lambda: mux.get_stats()["mux_dropped"] == 1)
        stats = mux.get_stats()
        assert stats["mux_in_flight"] == 0 and stats["mux_connects"] == 1 and stats["mux_failed"] == 0
        assert mux.eval("return 'next'").data == ["next"]


def test_back_pressure_bounds_the_requests_in_flight(tarantool_server: Any) -> None:
    probe = (
        "local fiber = require('fiber') mux_now = (mux_now or 0) + 1 "
        "mux_max = math.max(mux_max or 0, mux_now) fiber.sleep(0.02) mux_now = mux_now - 1 return ..."
    )
    with make_mux(tarantool_server, max_in_flight=8) as mux:
        mux.eval("mux_now, mux_max = 0, 0")
        seen = []

        def watch() -> None:
            while True:
                seen.append(mux.get_stats()["mux_in_flight"])
                gevent.sleep(0.001)

        watcher = gevent.spawn(watch)
        results = [gevent.spawn(mux.eval, probe, i) for i in range(100)]
        wait_until(lambda: mux.get_stats()["mux_waiting"] > 50)
        gevent.joinall(results, timeout=30, raise_error=True)
        watcher.kill()
        assert [g.value.data for g in results] == [[i] for i in range(100)]
        assert mux.eval("return mux_max").data == [8]  # the server never had more than 8 at once
        assert max(seen) == 8 and mux.get_stats()["mux_waiting"] == 0


def test_waiting_for_an_in_flight_permit_times_out(tarantool_server: Any) -> None:
    with make_mux(tarantool_server, max_in_flight=1, timeout=0.2, socket_timeout=0.4) as mux:
        hog = gevent.spawn(mux.eval, "require('fiber').sleep(0.8)")
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
        with pytest.raises(MuxTimeout, match=r"no in-flight permit within timeout=0\.2 s"):
            mux.ping()
        with pytest.raises(MuxTimeout):
            hog.get(timeout=5)
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 0)
        assert mux.ping(notime=True) == "Success"


def test_timeout_0_fails_at_once_without_a_permit(tarantool_server: Any) -> None:
    with make_mux(tarantool_server, max_in_flight=1, timeout=0) as mux:
        hog = gevent.spawn(mux.eval, "require('fiber').sleep(0.3)")
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
        with pytest.raises(MuxTimeout, match=r"no in-flight permit within timeout=0\.0 s"):
            mux.ping()
        assert mux.get_stats()["mux_waiting"] == 0 and mux.get_stats()["mux_requests"] == 1
        hog.get(timeout=5)
        assert mux.ping(notime=True) == "Success"


def test_a_request_given_up_while_queued_for_a_slot_is_never_sent(tarantool_server: Any) -> None:
    with make_mux(tarantool_server, max_in_flight=1) as mux:
        mux.eval("mux_queued_ran = false")
        hog = gevent.spawn(mux.eval, "require('fiber').sleep(0.3)")
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 1)
        queued = gevent.spawn(mux.eval, "mux_queued_ran = true")
        wait_until(lambda: mux.get_stats()["mux_waiting"] == 1)
        queued.kill()
        assert mux.get_stats()["mux_waiting"] == 0
        hog.get(timeout=5)
        assert mux.eval("return mux_queued_ran").data == [False]
        stats = mux.get_stats()
        assert stats["mux_in_flight"] == 0 and stats["mux_dropped"] == 0 and stats["mux_requests"] == 4


def test_close_fails_pending_and_queued_requests_and_later_ones(tarantool_server: Any) -> None:
    mux = make_mux(tarantool_server, max_in_flight=4)
    sleepers = [gevent.spawn(mux.eval, "require('fiber').sleep(5)") for _ in range(10)]
    wait_until(lambda: mux.get_stats()["mux_in_flight"] == 4 and mux.get_stats()["mux_waiting"] == 6)
    mux.close()
    mux.close()  # idempotent
    gevent.joinall(sleepers, timeout=2)
    for glet in sleepers:
        assert glet.dead and isinstance(glet.exception, MuxClosed)
        assert isinstance(glet.exception, NetworkError) and isinstance(glet.exception, PoolClosed)
    with pytest.raises(MuxClosed):
        mux.ping()
    assert mux.closed and mux.is_closed() and "closed" in repr(mux)


# ---------------------------------------------------------------------- failures of the server and the network


def test_server_killed_mid_flight_fails_every_request_promptly_then_recovers(fresh_tarantool: Any) -> None:
    mux = make_mux(fresh_tarantool, socket_timeout=30)
    try:
        mux.ping()
        inflight = [gevent.spawn(mux.eval, "require('fiber').sleep(20) return 1") for _ in range(200)]
        wait_until(lambda: mux.get_stats()["mux_in_flight"] == 200 and mux.get_stats()["mux_writes"] >= 2)
        fresh_tarantool.kill()
        gevent.joinall(inflight, timeout=5)
        assert all(g.dead for g in inflight), "requests hang after the server died"
        for glet in inflight:
            assert isinstance(glet.exception, MuxConnectionError) and isinstance(glet.exception, NetworkError)
        assert "lost the connection" in str(inflight[0].exception)
        assert mux.get_stats()["mux_failed"] == 200 and mux.get_stats()["mux_in_flight"] == 0
        with pytest.raises(MuxConnectionError, match="could not connect"):
            mux.ping()  # nothing listens now
        fresh_tarantool.start()
        assert mux.call("echo", "back").data == ["back"]  # the next request reconnects
        stats = mux.get_stats()
        assert stats["mux_connects"] == 2 and stats["mux_sockets_up"] == 1 and stats["mux_connect_errors"] == 1
    finally:
        mux.close()


def test_from_url_takes_the_pools_url_and_the_mux_options(tarantool_server: Any) -> None:
    s = tarantool_server
    url = (
        f"tarantool://{s.user}:{s.password.replace('-', '%2D')}@{s.host}:{s.port}"
        "?shared_connections=2&max_in_flight=64&timeout=1.5&socket_timeout=2&connect_timeout=none&name=mux-from-url"
    )
    with TarantoolMux.from_url(url) as mux:
        assert (mux.shared_connections, mux.max_in_flight, mux.timeout, mux.connect_timeout) == (2, 64, 1.5, None)
        assert mux.socket_timeout == 2 and mux.name == "mux-from-url" and mux.user == s.user
        assert (mux.host, mux.port) == (s.host, s.port)
        gevent.joinall([gevent.spawn(mux.call, "echo", i) for i in range(4)], raise_error=True)
        assert mux.get_stats()["mux_connects"] == 2
        assert s.password not in repr(mux)
    other = TarantoolMux.from_url(f"tarantool://{s.host}?shared_connections=3", shared_connections=5)  # kwargs win
    assert other.shared_connections == 5 and other.port == 3301 and other.user is None
    assert other.name == f"tarantool {s.host}:3301"
    with pytest.raises(ValueError, match="max_in_flight='many' is not an integer"):
        TarantoolMux.from_url(f"tarantool://{s.host}?max_in_flight=many")
    with pytest.raises(ValueError, match="scheme must be 'tarantool'"):
        TarantoolMux.from_url(f"redis://{s.host}")
    with pytest.raises(ValueError, match="Tarantool Enterprise"):
        TarantoolMux.from_url(f"tarantool://{s.host}?transport=ssl")


def test_from_url_accepts_every_option_of_the_pools_url(tarantool_server: Any) -> None:
    # The pool's own options are accepted and do not apply; connection_timeout is connect_timeout.
    from greenpool.tarantool import TarantoolPool

    s = tarantool_server
    url = (
        f"tarantool://{s.host}:{s.port}?max_connections=3&min_connections=1&check_after_idle=1&max_lifetime=60"
        "&max_idle=30&leak_threshold=5&max_waiting=10&queue_policy=fifo&connection_timeout=4&socket_timeout=3"
        "&reconnect_max_attempts=2&reconnect_delay=0.1&fetch_schema=true&connect_now=false"
    )
    pool = TarantoolPool.from_url(url)
    pool.close()
    mux = TarantoolMux.from_url(url)
    assert (mux.connect_timeout, mux.socket_timeout, mux.shared_connections) == (4, 3, 1)
    assert mux.ping(notime=True) == "Success"
    mux.close()


def test_the_old_connections_argument_still_works_with_a_deprecation_warning(tarantool_server: Any) -> None:
    s = tarantool_server
    with pytest.warns(DeprecationWarning, match="'connections' is deprecated, use 'shared_connections'"):
        mux = TarantoolMux(s.host, s.port, connections=2)
    assert mux.shared_connections == 2 and mux.get_stats()["mux_shared_connections"] == 2
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="shared_connections=3, connections=2"):
        TarantoolMux(s.host, s.port, shared_connections=3, connections=2)
    with pytest.warns(DeprecationWarning):
        assert TarantoolMux.from_url(f"tarantool://{s.host}?connections=4").shared_connections == 4
    assert TarantoolMux(s.host, s.port, connection_timeout=3).connect_timeout == 3  # tarantool-python's name


def test_pop_stats_resets_the_totals_not_the_gauges(mux: TarantoolMux) -> None:
    gevent.joinall([gevent.spawn(mux.call, "echo", i) for i in range(5)], raise_error=True)
    popped = mux.pop_stats()
    assert popped["mux_requests"] == popped["mux_replies"] == 5 and popped["mux_connects"] == 1
    after = mux.get_stats()
    assert after["mux_requests"] == after["mux_connects"] == after["mux_writes"] == 0
    assert after["mux_sockets_up"] == 1 and after["mux_max_in_flight"] == 1024


def test_a_request_goes_out_at_once_while_the_server_is_idle(mux: TarantoolMux) -> None:
    mux.ping()
    sends = mux.get_stats()["mux_writes"]
    seen: List[int] = []

    def second() -> None:
        seen.append(mux.get_stats()["mux_writes"] - sends)
        mux.ping()

    # Both greenlets run in the same loop turn: the first one's request is not held back for a batch.
    gevent.joinall([gevent.spawn(mux.ping), gevent.spawn(second)], raise_error=True)
    assert seen == [1]


def test_a_send_failing_in_a_greenlet_fails_every_request_then_reconnects(mux: TarantoolMux) -> None:
    mux.ping()
    mux._sockets[0].sock.shutdown(socket.SHUT_WR)  # the next send fails (EPIPE) before the server's EOF is read
    requests = [gevent.spawn(mux.call, "echo", i) for i in range(20)]
    gevent.joinall(requests, timeout=5)
    assert all(g.dead for g in requests), "requests hang after a failed send"
    assert all(isinstance(g.exception, MuxConnectionError) for g in requests)
    assert "send failed" in str(requests[0].exception)
    assert mux.call("echo", "back").data == ["back"]  # the next request reconnects
    stats = mux.get_stats()
    assert stats["mux_connects"] == 2 and stats["mux_failed"] == 20 and stats["mux_in_flight"] == 0


def test_wrong_password_gives_a_clear_error_without_the_password(tarantool_server: Any) -> None:
    secret = "not-the-Password-42"
    mux = TarantoolMux(tarantool_server.host, tarantool_server.port, tarantool_server.user, secret)
    try:
        attempts = [gevent.spawn(mux.ping) for _ in range(5)]  # all wait for the same failed connect
        gevent.joinall(attempts, timeout=10)
        for glet in attempts:
            error = glet.exception
            assert isinstance(error, MuxConnectionError) and isinstance(error, NetworkError)
            text = str(error) + repr(error) + repr(error.args)
            assert secret not in text
            assert "authentication as 'tester'" in text and "password" in text.lower()
        assert secret not in repr(mux) and secret not in str(mux.get_stats())
        assert mux.get_stats()["mux_sockets_up"] == 0
    finally:
        mux.close()


def test_a_server_that_never_greets_times_out_the_connect(tarantool_server: Any) -> None:
    with Proxy(tarantool_server.host, tarantool_server.port) as proxy:
        proxy.blackhole = True
        with TarantoolMux(proxy.host, proxy.port, connect_timeout=0.3) as mux:
            with gevent.Timeout(5):
                with pytest.raises(MuxConnectionError, match=r"timed out after 0\.3 s"):
                    mux.ping()
            assert mux.get_stats()["mux_connect_errors"] == 1 and mux.get_stats()["mux_in_flight"] == 0


def test_a_silent_server_times_requests_out_then_a_reset_frees_their_slots(tarantool_server: Any) -> None:
    with Proxy(tarantool_server.host, tarantool_server.port) as proxy:
        with make_mux(tarantool_server, via=proxy, socket_timeout=0.3, max_in_flight=50) as mux:
            assert mux.ping(notime=True) == "Success"
            proxy.blackhole = True  # the server stops answering; the socket stays open
            silent = [gevent.spawn(mux.call, "echo", n) for n in range(50)]
            gevent.joinall(silent, timeout=5)
            assert all(isinstance(g.exception, MuxTimeout) for g in silent)
            assert not isinstance(silent[0].exception, MuxConnectionError)
            assert isinstance(silent[0].exception, MuxError) and isinstance(silent[0].exception, NetworkError)
            # Given-up requests keep their slots until their replies come (or the connection goes).
            assert mux.get_stats()["mux_in_flight"] == 50
            proxy.blackhole = False
            proxy.reset_all()
            wait_until(lambda: mux.get_stats()["mux_in_flight"] == 0)
            assert mux.call("echo", "again").data == ["again"]
            assert mux.get_stats()["mux_connects"] == 2 and mux.get_stats()["mux_timeouts"] == 50


def test_a_reply_cut_in_the_middle_fails_the_requests_in_flight_and_the_next_reconnects(tarantool_server: Any) -> None:
    with Proxy(tarantool_server.host, tarantool_server.port) as proxy:
        with make_mux(tarantool_server, via=proxy) as mux:
            mux.ping()
            proxy.cut_next_reply(after_bytes=1000)
            calls = [gevent.spawn(mux.call, "echo", "w" * 5000, n) for n in range(20)]
            gevent.joinall(calls, timeout=5)
            assert all(g.dead for g in calls)
            # No reply of 5 KB fits in the first 1000 bytes: every request fails, none gets half a reply.
            assert all(isinstance(g.exception, MuxConnectionError) for g in calls)
            assert "lost the connection" in str(calls[0].exception)
            assert mux.get_stats()["mux_failed"] == 20 and mux.get_stats()["mux_in_flight"] == 0
            assert mux.call("echo", "whole").data == ["whole"]
            assert mux.get_stats()["mux_connects"] == 2


def test_nothing_listening_fails_fast_with_the_errno() -> None:
    import errno

    with TarantoolMux("127.0.0.1", free_port(), connect_timeout=5) as mux:
        with pytest.raises(MuxConnectionError) as info:
            mux.ping()
        assert info.value.errno == errno.ECONNREFUSED and "could not connect to 127.0.0.1:" in str(info.value)


def test_guest_user_and_eager_connect_over_several_sockets(tarantool_server: Any) -> None:
    with TarantoolMux(tarantool_server.host, tarantool_server.port) as guest:
        assert guest.ping(notime=True) == "Success"
    with make_mux(tarantool_server, shared_connections=3) as mux:
        mux.connect()
        assert mux.get_stats()["mux_sockets_up"] == 3
        sessions = [gevent.spawn(mux.eval, "return box.session.id()") for _ in range(30)]
        gevent.joinall(sessions, raise_error=True)
        assert len({g.value.data[0] for g in sessions}) == 3


# ---------------------------------------------------------------------- arguments, stats, fork, threads, gc


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda s: TarantoolMux(s.host, "3301"), TypeError, "port"),
        (lambda s: TarantoolMux(s.host, 0), ValueError, "port"),
        (lambda s: TarantoolMux("", 1), TypeError, "host"),
        (lambda s: TarantoolMux(None, 3301), TypeError, "port"),
        (lambda s: TarantoolMux(s.host, s.port, user=""), TypeError, "user"),
        (lambda s: TarantoolMux(s.host, s.port, password="x"), ValueError, "password"),
        (lambda s: TarantoolMux(s.host, s.port, shared_connections=0), ValueError, "shared_connections"),
        (lambda s: TarantoolMux(s.host, s.port, shared_connections=1.5), TypeError, "shared_connections"),
        (lambda s: TarantoolMux(s.host, s.port, timeout=-1), ValueError, "timeout"),
        (lambda s: TarantoolMux(s.host, s.port, socket_timeout=0), ValueError, "socket_timeout"),
        (lambda s: TarantoolMux(s.host, s.port, connect_timeout=1, connection_timeout=2), TypeError, "disagree"),
        (lambda s: TarantoolMux(s.host, s.port, transport="ssl"), ValueError, "Tarantool Enterprise"),
        (lambda s: TarantoolMux(s.host, s.port, timeout="1"), TypeError, "timeout"),
        (lambda s: TarantoolMux(s.host, s.port, max_in_flight=0), ValueError, "max_in_flight"),
        (lambda s: TarantoolMux(s.host, s.port, connect_timeout=-1), ValueError, "connect_timeout"),
        (lambda s: TarantoolMux(s.host, s.port, name=3), TypeError, "name"),
    ],
)
def test_bad_constructor_arguments_are_named(tarantool_server: Any, call: Any, error: Any, words: str) -> None:
    with pytest.raises(error, match=words):
        call(tarantool_server)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda m: m.replace("tester", "not a tuple"), TypeError, "values"),
        (lambda m: m.insert("tester", 5), TypeError, "values"),
        (lambda m: m.replace(["tester"], [1]), TypeError, "space_name"),
        (lambda m: m.select(1.5, 1), TypeError, "space_name"),
        (lambda m: m.select("tester", 1, index=1.5), TypeError, "index"),
        (lambda m: m.select("tester", 1, iterator="SIDEWAYS"), ValueError, "iterator"),
        (lambda m: m.select("tester", 1, limit=-1), ValueError, "limit"),
        (lambda m: m.select("tester", 1, offset="0"), TypeError, "offset"),
        (lambda m: m.update("tester", 1, "=1"), TypeError, "op_list"),
        (lambda m: m.update("tester", 1, ["="]), TypeError, "op_list"),
        (lambda m: m.upsert("tester", 1, []), TypeError, "tuple_value"),
        (lambda m: m.call(42), TypeError, "func_name"),
        (lambda m: m.eval(b"return 1"), TypeError, "expr"),
        (lambda m: m.execute("SELECT ?", 5), TypeError, "params"),
        (lambda m: m.execute(None), TypeError, "query"),
    ],
)
def test_bad_request_arguments_are_named_and_send_nothing(mux: TarantoolMux, call: Any, error: Any, words: str) -> None:
    with pytest.raises(error, match=words):
        call(mux)
    assert mux.get_stats()["mux_requests"] == 0


def test_stats_count_requests_batches_and_bytes(mux: TarantoolMux) -> None:
    stats: Dict[str, Any] = mux.get_stats()
    assert stats["name"] == "test-mux" and stats["mux_requests"] == 0 and stats["mux_sockets_up"] == 0
    gevent.joinall([gevent.spawn(mux.call, "echo", i) for i in range(50)], raise_error=True)
    stats = mux.get_stats()
    assert stats["mux_requests"] == stats["mux_replies"] == 50 and stats["mux_connects"] == 1
    # The first request goes at once, then batches that double while the server works: about log2(50) sends.
    assert 1 <= stats["mux_writes"] <= 10, (
        f"50 concurrent requests should go out in a few sends, not {stats['mux_writes']}"
    )
    assert stats["mux_bytes_out"] > 50 * 18 and stats["mux_bytes_in"] > 50 * 18 and stats["mux_reads"] >= 1
    assert stats["mux_max_in_flight"] == 1024 and stats["mux_waiting"] == 0 and stats["mux_in_flight"] == 0


def test_fork_child_opens_its_own_connection_and_leaves_the_parents_alone(mux: TarantoolMux) -> None:
    assert mux.eval("return box.session.id()").data
    parent_session = mux.eval("return box.session.id()").data[0]
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 3
        try:
            child_session = mux.eval("return box.session.id()").data[0]
            stats = mux.get_stats()
            code = 0 if child_session != parent_session and stats["mux_connects"] == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert mux.eval("return box.session.id()").data == [parent_session]
    assert mux.get_stats()["mux_connects"] == 1


def test_a_mux_belongs_to_one_thread(mux: TarantoolMux) -> None:
    mux.ping()
    start_new_thread = monkey.get_original("_thread", "start_new_thread")
    outcome: List[BaseException] = []

    def other_thread() -> None:
        try:
            mux.ping()
        except BaseException as exc:
            outcome.append(exc)

    start_new_thread(other_thread, ())
    wait_until(lambda: bool(outcome))
    assert isinstance(outcome[0], WrongThread) and "one TarantoolMux per thread" in str(outcome[0])


def test_a_garbage_collected_mux_closes_its_socket(tarantool_server: Any) -> None:
    mux = make_mux(tarantool_server)
    mux.ping()
    sock = mux._sockets[0].sock
    assert sock.fileno() >= 0
    del mux
    gc.collect()
    assert sock.fileno() == -1
