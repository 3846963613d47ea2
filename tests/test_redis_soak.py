"""Interruption soak for ``greenpool.GeventPool``: many greenlets whose commands are cut short by ``gevent.Timeout``.

200 greenlets run ``SET k_i v`` / ``GET k_i`` (one key per greenlet) through one pool of 20 connections, in passes of
25 rounds each, every command under a ``gevent.Timeout``: half of them around the whole command, drawn around the
measured latency (checkout wait included), so that many are interrupted while waiting for a connection or while
connecting; the other half started once the connection is checked out, drawn around the measured time a command
holds its connection, so that many are interrupted while sending or while reading. The latencies are measured again
before each pass, so the timeouts follow the machine's speed and load. A shorter run repeats it with the
pure-Python parser over RESP2.

So many callers give up that the pool's adaptive policy turns LIFO and refuses some newcomers at once
(``RedisPoolTimeout``, "Overloaded"): a refused command was never sent, and the test counts it as such.

A connection returned with an unread reply would hand one greenlet another command's reply; the test checks that
never happens, that no connection leaks and that the pool never grows past ``max_connections``. How many
interruptions land where depends on the machine, so the passes go on until enough commands were interrupted and
enough held connections were discarded (or a time budget runs out, which fails the test), and for a number of passes
or a number of seconds, whichever comes first. Uses the session ``redis_server``.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from functools import partial
from typing import Any, Dict, List, Optional, Set

import gevent
import pytest
import redis
from gevent.event import Event
from redis._parsers import _HiredisParser, _RESP2Parser

from greenpool import GeventPool
from greenpool.redis import RedisPoolTimeout
from tests.test_redis import server_kwargs

GREENLETS = 200
MAX_CONNECTIONS = 20
ROUNDS_PER_PASS = 25  # SET + GET rounds of each greenlet in one pass
WANT_INTERRUPTED = 1000  # commands interrupted, wherever the timeout landed
WANT_DISCARDED = 100  # connections discarded because a command holding them was interrupted
SOAK_SECONDS = 12.0  # a slow machine stops after this long (once it has the wanted counts), a fast one after min_passes
BUDGET = 45.0  # seconds of passes to reach the wanted counts; the test fails beyond


class ArmingPool(GeventPool):
    """A ``GeventPool`` that starts the calling greenlet's pending ``gevent.Timeout`` (put in ``pending``) once it
    holds a connection, and records how long each checkout held its connection (``holds``, in seconds).

    The pool's own behaviour is unchanged: it only lets a timeout measure the command itself (send and read).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: Dict[Any, gevent.Timeout] = {}
        self.holds: List[float] = []
        self._since: Dict[Any, float] = {}

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)
        me = gevent.getcurrent()
        self._since[me] = time.perf_counter()
        timer = self.pending.pop(me, None)
        if timer is not None:
            timer.start()
        return connection

    def release(self, connection: Any) -> None:
        since = self._since.pop(gevent.getcurrent(), None)
        if since is not None:
            self.holds.append(time.perf_counter() - since)
        super().release(connection)


def run_all(work: Any, timeout: float = 60.0) -> None:
    """Run ``work(i)`` in ``GREENLETS`` greenlets at once; re-raise the first error; fail on a hang."""
    greenlets = [gevent.spawn(work, i) for i in range(GREENLETS)]
    gevent.joinall(greenlets, raise_error=True, timeout=timeout)
    assert all(g.dead for g in greenlets), f"a greenlet hung for {timeout} s"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parser_class", "protocol", "min_passes"),
    [
        pytest.param(_HiredisParser, 3, 8, id="hiredis-resp3"),
        pytest.param(_RESP2Parser, 2, 3, id="python-resp2"),
    ],
)
def test_interrupted_commands_never_leak_replies(
    redis_server: Any, parser_class: Any, protocol: int, min_passes: int
) -> None:
    # driver_info=None skips CLIENT SETINFO when connecting: with two fewer round trips per connection, the
    # reconnections that follow the interruptions do not take longer than the timeouts themselves.
    pool = ArmingPool(
        max_connections=MAX_CONNECTIONS,
        timeout=30,
        parser_class=parser_class,
        protocol=protocol,
        driver_info=None,
        **server_kwargs(redis_server),
    )
    r = redis.Redis(connection_pool=pool)
    prefix = f"greenpool-soak:{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{i}" for i in range(GREENLETS)]
    probes = [f"{prefix}probe:{i}" for i in range(GREENLETS)]
    # Per key, the values GET may legitimately return: the last confirmed SET, and any interrupted SET (which the
    # server may or may not have executed, possibly after a later SET sent over another connection).
    confirmed: Dict[int, Optional[bytes]] = dict.fromkeys(range(GREENLETS))
    unsure: Dict[int, Set[Optional[bytes]]] = {i: set() for i in range(GREENLETS)}
    mismatches: List[str] = []
    counts = {"commands": 0, "interrupted": 0, "interrupted_holding": 0, "refused": 0}
    sizes: List[int] = []
    done = Event()

    def sampler() -> None:
        while not done.wait(0.005):
            sizes.append(int(pool.get_stats()["pool_size"]))

    def measure() -> Dict[str, float]:
        """One command's latency (checkout wait included) and the time it holds its connection, at the same
        concurrency, without interruptions."""
        samples: List[float] = []
        pool.holds.clear()

        def probe(i: int) -> None:
            done = 0
            while done < 3:
                start = time.perf_counter()
                try:
                    r.set(probes[i], "probe")
                except RedisPoolTimeout:
                    # The last pass's give-ups may still keep the queue LIFO: refused, try again.
                    counts["refused"] += 1
                    gevent.sleep(0.001)
                    continue
                samples.append(time.perf_counter() - start)
                done += 1

        run_all(probe)
        return {"latency": statistics.median(samples), "hold": statistics.median(pool.holds)}

    def command(rng: random.Random, timing: Dict[str, float], call: Any, *args: Any) -> Any:
        """Run ``call(*args)`` under a timeout: around the whole command, or started once it holds a connection.
        Raise ``gevent.Timeout`` when that one fired."""
        counts["commands"] += 1
        holding = rng.random() < 0.5
        timer = gevent.Timeout(rng.uniform(0.2, 2.0) * timing["hold" if holding else "latency"])
        me = gevent.getcurrent()
        if holding:
            pool.pending[me] = timer
        else:
            timer.start()
        try:
            return call(*args)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            counts["interrupted"] += 1
            counts["interrupted_holding"] += holding
            raise
        finally:
            timer.cancel()
            pool.pending.pop(me, None)

    def work(i: int, n: int, timing: Dict[str, float]) -> None:
        key = keys[i]
        rng = random.Random(n * GREENLETS + i)
        for j in range(ROUNDS_PER_PASS):
            value = f"{i}:{n}:{j}".encode()
            try:
                ok = command(rng, timing, r.set, key, value)
                if ok is not True:
                    mismatches.append(f"SET {key} answered {ok!r}")
                confirmed[i] = value
            except gevent.Timeout:
                unsure[i].add(value)
            except RedisPoolTimeout:
                counts["refused"] += 1  # refused before a connection was taken: never sent
            try:
                got = command(rng, timing, r.get, key)
                if got != confirmed[i] and got not in unsure[i]:
                    mismatches.append(f"GET {key} answered {got!r}, expected {confirmed[i]!r}")
            except gevent.Timeout:
                pass
            except RedisPoolTimeout:
                counts["refused"] += 1

    def discarded() -> int:
        return int(pool.get_stats()["connections_lost"])

    watcher = gevent.spawn(sampler)
    started = time.perf_counter()
    timings: List[Dict[str, float]] = []
    while True:
        timing = measure()
        timings.append(timing)
        run_all(partial(work, n=len(timings), timing=timing))
        elapsed = time.perf_counter() - started
        enough = counts["interrupted"] >= WANT_INTERRUPTED and discarded() >= WANT_DISCARDED
        soaked = len(timings) >= min_passes or elapsed >= SOAK_SECONDS
        if (enough and soaked) or elapsed > BUDGET:
            break
    done.set()
    watcher.join(timeout=5)
    final = pool.get_stats()
    r.delete(*keys, *probes)
    pool.disconnect()

    ms = [f"{t['latency'] * 1000:.2f}/{t['hold'] * 1000:.2f}" for t in timings]
    detail = (
        f"{counts} in {len(timings)} passes, {elapsed:.1f} s; latency/hold ms per pass {ms}; "
        f"stats {final}; mismatches {mismatches[:5]}"
    )
    # The invariants, whatever the machine's speed.
    assert counts["commands"] == len(timings) * GREENLETS * ROUNDS_PER_PASS * 2, detail
    assert mismatches == [], detail
    # Every pool error was a refusal of a newcomer under overload (counted as shed), none a checkout timeout.
    assert counts["refused"] == final["requests_shed"] and final["requests_timeouts"] == 0, detail
    assert final["in_use"] == 0, detail
    assert final["requests_waiting"] == 0, detail
    assert sizes and max(sizes) <= MAX_CONNECTIONS, detail
    assert final["pool_size"] <= MAX_CONNECTIONS, detail
    # Enough of each kind of interruption happened for the invariants to mean something.
    assert counts["interrupted"] >= WANT_INTERRUPTED, f"too few interruptions within {BUDGET:.0f} s: {detail}"
    assert final["connections_lost"] >= WANT_DISCARDED, f"too few discarded connections within {BUDGET:.0f} s: {detail}"
