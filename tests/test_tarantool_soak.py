"""Heavy runs of ``greenpool.TarantoolPool`` against a real tarantool: 1000 greenlets on 5 connections,
random ``gevent.Timeout`` interruptions, and a server killed and restarted mid-run.

Each greenlet owns its ids and checks every reply it reads, so a reply delivered to the wrong request
shows up as a mismatch. Uses the fixtures of ``conftest.py`` and the helpers of ``test_tarantool.py``.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import gevent
import gevent.event
import pytest
import tarantool
from tarantool.const import ITERATOR_GE

from greenpool import PoolTimeout
from tests.helpers import wait_until
from tests.test_tarantool import delete_range, make_pool

SELECT_RANGE = """
local lo, hi = ...
local rows = {}
for _, t in box.space.tester:pairs({lo}, {iterator = 'GE'}) do
    if t[1] >= hi then break end
    table.insert(rows, t)
end
return rows
"""


# A fiber that keeps the server's transaction thread busy for up to 2 ms at a time, so that replies come
# late by a varying amount (as from a loaded server) and an interruption finds the request on the wire.
BUSY_SERVER = """
local fiber, clock = require('fiber'), require('clock')
_G.greenpool_busy = true
fiber.create(function()
    while _G.greenpool_busy do
        local busy_until = clock.monotonic() + math.random() * 0.002
        while clock.monotonic() < busy_until do end
        fiber.sleep(0.0005)
    end
end)
"""


def stored(pool: Any, lo: int, hi: int) -> Dict[int, Any]:
    """The tuples with ``lo <= id < hi``, as ``{id: value}``."""
    rows = pool.eval(SELECT_RANGE, lo, hi).data[0]
    return {row[0]: row[1] for row in rows}


def test_1000_greenlets_on_5_connections_lose_no_write(tarantool_server: Any) -> None:
    """1000 greenlets x 100 requests (50 replace + 50 select of what was just written)."""
    base, greenlets, rounds = 50_000_000, 1000, 50
    delete_range(tarantool_server, base, base + greenlets * rounds)
    pool = make_pool(tarantool_server, max_connections=5, timeout=60.0)
    acknowledged: Dict[int, List[int]] = {}
    mismatches: List[Tuple[int, Any]] = []
    sizes: List[int] = []
    done = gevent.event.Event()

    def watch() -> None:
        while not done.is_set():
            sizes.append(pool.size)
            gevent.sleep(0.001)

    def worker(g: int) -> None:
        for i in range(rounds):
            key = base + g * rounds + i
            reply = pool.replace("tester", (key, g * 1000 + i))
            if reply.data != [[key, g * 1000 + i]]:
                mismatches.append((key, reply.data))
            acknowledged[key] = [key, g * 1000 + i]
            reply = pool.select("tester", key)
            if reply.data != [[key, g * 1000 + i]]:
                mismatches.append((key, reply.data))

    watcher = gevent.spawn(watch)
    start = time.monotonic()
    workers = [gevent.spawn(worker, g) for g in range(greenlets)]
    gevent.joinall(workers, raise_error=True)
    elapsed = time.monotonic() - start
    done.set()
    watcher.join()
    try:
        assert mismatches == []
        assert len(acknowledged) == greenlets * rounds
        # Every acknowledged write is readable afterwards (read back in bulk).
        assert stored(pool, base, base + greenlets * rounds) == {k: v[1] for k, v in acknowledged.items()}
        assert pool.select("tester", [base], iterator=ITERATOR_GE, limit=1).data == [acknowledged[base]]
        assert max(sizes) == 5 and len(sizes) > 10
        stats = pool.get_stats()
        assert pool.in_use == 0 and pool.waiting == 0 and pool.size == pool.idle == 5
        assert stats["requests_num"] >= greenlets * rounds * 2 and stats["requests_errors"] == 0
        assert stats["connections_num"] == 5 and stats["connections_lost"] == 0, f"{elapsed:.1f} s, {stats}"
    finally:
        delete_range(tarantool_server, base, base + greenlets * rounds)
        pool.close()


#: The interruption soak runs passes until this many requests were interrupted and this many completed, and at
#: least SOAK_MIN_PASSES passes; it fails when the counts are not reached within SOAK_BUDGET seconds (how the
#: timeouts land depends on the machine's speed).
SOAK_WANT = 150
SOAK_MIN_PASSES = 3
SOAK_BUDGET = 40.0


def test_random_interruptions_never_deliver_a_wrong_reply(fresh_tarantool: Any) -> None:
    """Greenlets replace and select their own keys under ``gevent.Timeout``s drawn around the request's own
    latency on a busy server (measured again before each pass): whatever is interrupted, every reply read is the
    one for its request, and nothing leaks."""
    server = fresh_tarantool
    greenlets, keys_each, rounds = 10, 4, 20
    pool = make_pool(server, max_connections=5, timeout=30.0)
    tokens = iter(range(1, 10**9))
    # Per key, the values that may be stored: the last acknowledged write, or any interrupted write (the
    # server may apply one after a later write, sent on another connection, was acknowledged).
    acked: Dict[int, int] = {}
    unsure: Dict[int, Set[int]] = {}
    mismatches: List[Tuple[str, int, Any]] = []
    counts = {"ops": 0, "interrupted": 0}
    latencies: List[float] = []

    def possible(key: int, value: int) -> bool:
        return value == acked[key] or value in unsure[key]

    def keys_of(g: int) -> List[int]:
        return [g * keys_each + j + 1 for j in range(keys_each)]

    def timed(method: str, *args: Any) -> Any:
        with pool.connection() as tnt:
            start = time.monotonic()
            result = getattr(tnt, method)(*args)
            latencies.append(time.monotonic() - start)
        return result

    def interruptible(limit: float, method: str, *args: Any) -> Tuple[bool, Any]:
        """Run a request under a ``gevent.Timeout`` of ``limit`` seconds (armed once the connection is
        checked out, so that it interrupts the request and not the making of a connection)."""
        counts["ops"] += 1
        timer = gevent.Timeout(limit)
        try:
            with pool.connection() as tnt:
                timer.start()
                return True, getattr(tnt, method)(*args)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            counts["interrupted"] += 1
            return False, None
        finally:
            timer.cancel()

    def warm(g: int) -> None:
        for key in keys_of(g):
            token = next(tokens)
            assert timed("replace", "tester", (key, token)).data == [[key, token]]
            acked[key], unsure[key] = token, set()
            assert timed("select", "tester", key).data == [[key, token]]

    def calibrate(g: int) -> None:
        for _ in range(10):
            key = random.choice(keys_of(g))
            token = next(tokens)
            assert timed("replace", "tester", (key, token)).data == [[key, token]]
            acked[key] = token
            assert timed("select", "tester", key).data == [[key, token]]

    def worker(g: int, latency: float, n: int) -> None:
        rnd = random.Random(n * greenlets + g)
        for _ in range(rounds):
            key = rnd.choice(keys_of(g))
            token = next(tokens)
            ok, reply = interruptible(rnd.uniform(0, 2 * latency), "replace", "tester", (key, token))
            if ok:
                if reply.data != [[key, token]]:
                    mismatches.append(("replace", key, reply.data))
                acked[key] = token
            else:
                unsure[key].add(token)
            ok, reply = interruptible(rnd.uniform(0, 2 * latency), "select", "tester", key)
            if ok and (len(reply.data) != 1 or reply.data[0][0] != key or not possible(key, reply.data[0][1])):
                mismatches.append(("select", key, reply.data))

    gevent.joinall([gevent.spawn(warm, g) for g in range(greenlets)], raise_error=True)
    pool.eval(BUSY_SERVER)
    lost_before = pool.get_stats()["connections_lost"]
    started = time.monotonic()
    passes: List[float] = []

    def enough() -> bool:
        interrupted = counts["interrupted"]
        return min(interrupted, counts["ops"] - interrupted) >= SOAK_WANT

    while (not enough() or len(passes) < SOAK_MIN_PASSES) and time.monotonic() - started < SOAK_BUDGET:
        # The same concurrency without interruptions measures the latency the timeouts are drawn around.
        latencies.clear()
        gevent.joinall([gevent.spawn(calibrate, g) for g in range(greenlets)], raise_error=True)
        latency = statistics.median(latencies)
        passes.append(latency)
        n = len(passes)
        gevent.joinall([gevent.spawn(worker, g, latency, n) for g in range(greenlets)], raise_error=True)
    pool.eval("_G.greenpool_busy = false")

    stats = pool.get_stats()
    detail = f"{counts} in {len(passes)} passes, latencies {[round(x * 1000, 2) for x in passes]} ms, {stats}"
    assert mismatches == [], detail
    # Enough requests were interrupted, and enough completed, for the checks to mean something.
    assert enough(), f"wanted {SOAK_WANT} interrupted and {SOAK_WANT} completed within {SOAK_BUDGET} s: {detail}"
    # Every interrupted request closed its connection, and only those were closed.
    assert stats["connections_lost"] - lost_before == counts["interrupted"] and stats["checks_failed"] == 0, detail
    # No leak: every slot is an idle connection, and the server sees exactly those connections.
    assert pool.in_use == 0 and pool.waiting == 0 and pool.size == pool.idle <= 5
    assert stats["connections_num"] - stats["connections_closed"] == pool.size
    admin = tarantool.Connection(server.host, server.port, user=server.user, password=server.password)
    try:
        connections = "return box.stat.net().CONNECTIONS.current"
        wait_until(lambda: admin.eval(connections).data[0] - 1 == pool.size)
    finally:
        admin.close()
    # What is stored is what was acknowledged last, or an interrupted write.
    final = stored(pool, 1, greenlets * keys_each + 1)
    assert set(final) == set(acked)
    assert [key for key, value in final.items() if not possible(key, value)] == []
    pool.close()


@pytest.mark.filterwarnings("ignore::tarantool.error.NetworkWarning")
def test_server_killed_mid_run_then_restarted(fresh_tarantool: Any) -> None:
    """Callers get tarantool's errors while the server is down, none waits past the checkout timeout,
    and the pool serves again by itself once the server is back."""
    server = fresh_tarantool
    timeout = 1.0
    pool = make_pool(server, max_connections=4, timeout=timeout)
    outcomes: List[Tuple[str, Optional[BaseException], float]] = []
    acknowledged: Dict[int, int] = {}
    phase = ["up"]
    stop = gevent.event.Event()

    def worker(g: int) -> None:
        i = 0
        while not stop.is_set():
            key, i = g * 1_000_000 + i + 1, i + 1
            start = time.monotonic()
            error: Optional[BaseException] = None
            try:
                if pool.replace("tester", (key, g)).data == [[key, g]]:
                    acknowledged[key] = g
            except Exception as exc:
                error = exc
            outcomes.append((phase[0], error, time.monotonic() - start))
            # Do not spin on a dead server; with it up, just let the others run.
            gevent.sleep(0.01 if error is not None else 0)

    def count(in_phase: str, ok: bool) -> int:
        return sum(1 for p, e, _ in outcomes if p == in_phase and (e is None) == ok)

    workers = [gevent.spawn(worker, g) for g in range(20)]
    wait_until(lambda: count("up", True) >= 300)
    phase[0] = "down"
    server.kill()
    wait_until(lambda: count("down", False) >= 100)
    phase[0] = "restarting"
    server.start()  # blocks this greenlet (only) until the server answers again
    phase[0] = "back"
    wait_until(lambda: count("back", True) >= 300, timeout=20)
    stop.set()
    gevent.joinall(workers, raise_error=True)

    errors = [e for _, e, _ in outcomes if e is not None]
    assert errors and all(isinstance(e, tarantool.error.Error) for e in errors), {type(e) for e in errors}
    # While it is down the network fails; while it restarts it may also answer "read-only" (recovering).
    down = [e for p, e, _ in outcomes if p == "down" and e is not None]
    assert all(isinstance(e, (tarantool.error.NetworkError, PoolTimeout)) for e in down), {repr(e) for e in down}
    slowest = max(elapsed for _, _, elapsed in outcomes)
    assert slowest < timeout + 1.0, f"a request took {slowest:.2f} s"
    # Recovered by itself: the last requests all succeeded.
    assert all(e is None for _, e, _ in outcomes[-100:])
    assert pool.in_use == 0 and pool.size <= 4
    # Acknowledged writes survived the crash (tarantool's WAL) and read back through the pool.
    rows = stored(pool, 1, 20 * 1_000_000)
    assert {k: rows.get(k) for k in acknowledged} == acknowledged
    pool.close()
