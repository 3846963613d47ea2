"""Interruption soak for ``greenpool.GeventPool``: many greenlets whose commands are cut short by ``gevent.Timeout``.

200 greenlets run 500 rounds of ``SET k_i v_i_j`` / ``GET k_i`` (one key per greenlet) through one pool of 20
connections, each command under a ``gevent.Timeout`` drawn around the measured latency, so a large share are
interrupted while waiting for a connection, while connecting, while sending, or while reading. A shorter run
repeats it with the pure-Python parser over RESP2. A connection returned with an
unread reply would hand one greenlet another command's reply; the test checks that never happens, that no
connection leaks and that the pool never grows past ``max_connections``. Uses the session ``redis_server``.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from typing import Any, List, Optional, Set

import gevent
import pytest
import redis
from gevent.event import Event
from redis._parsers import _HiredisParser, _RESP2Parser

from greenpool import GeventPool
from tests.test_redis import server_kwargs

GREENLETS = 200
ROUNDS = 500
MAX_CONNECTIONS = 20


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parser_class", "protocol", "rounds"),
    [
        pytest.param(_HiredisParser, 3, ROUNDS, id="hiredis-resp3"),
        pytest.param(_RESP2Parser, 2, 150, id="python-resp2"),
    ],
)
def test_interrupted_commands_never_leak_replies(
    redis_server: Any, parser_class: Any, protocol: int, rounds: int
) -> None:
    # driver_info=None skips CLIENT SETINFO when connecting: with two fewer round trips per connection, the
    # reconnections that follow the interruptions do not take longer than the timeouts themselves.
    pool = GeventPool(
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

    # Measure one command's latency (checkout wait included) under the same load, without interruptions.
    samples: List[float] = []

    def measure(i: int) -> None:
        for _ in range(10):
            start = time.perf_counter()
            r.set(keys[i], "warm")
            samples.append(time.perf_counter() - start)

    gevent.joinall([gevent.spawn(measure, i) for i in range(GREENLETS)], raise_error=True, timeout=60)
    r.delete(*keys)
    latency = statistics.median(samples)

    mismatches: List[str] = []
    counts = {"commands": 0, "interrupted": 0}
    sizes: List[int] = []
    done = Event()

    def sampler() -> None:
        while not done.wait(0.005):
            sizes.append(int(pool.get_stats()["pool_size"]))

    def run(i: int) -> None:
        key = keys[i]
        rng = random.Random(i)
        # Values GET may legitimately return: the last confirmed SET, and any interrupted SET (which the server
        # may or may not have executed, possibly after a later SET sent over another connection).
        confirmed: Optional[bytes] = None
        interrupted: Set[Optional[bytes]] = set()
        for j in range(rounds):
            value = f"{i}:{j}".encode()
            counts["commands"] += 2
            try:
                with gevent.Timeout(rng.uniform(0.2, 2.0) * latency):
                    ok = r.set(key, value)
                if ok is not True:
                    mismatches.append(f"SET {key} answered {ok!r}")
                confirmed = value
            except gevent.Timeout:
                counts["interrupted"] += 1
                interrupted.add(value)
            try:
                with gevent.Timeout(rng.uniform(0.2, 2.0) * latency):
                    got = r.get(key)
                if got != confirmed and got not in interrupted:
                    mismatches.append(f"GET {key} answered {got!r}, expected {confirmed!r}")
            except gevent.Timeout:
                counts["interrupted"] += 1

    watcher = gevent.spawn(sampler)
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(run, i) for i in range(GREENLETS)], raise_error=True, timeout=100)
    elapsed = time.perf_counter() - started
    done.set()
    watcher.join(timeout=5)
    final = pool.get_stats()
    r.delete(*keys)
    pool.disconnect()

    share = counts["interrupted"] / counts["commands"]
    detail = f"{counts}, {share:.0%} interrupted, latency {latency * 1000:.2f} ms, {elapsed:.1f} s, stats {final}"
    assert counts["commands"] == GREENLETS * rounds * 2
    assert mismatches == [], detail
    assert final["in_use"] == 0, detail
    assert final["requests_waiting"] == 0, detail
    assert sizes and max(sizes) <= MAX_CONNECTIONS, detail
    assert final["pool_size"] <= MAX_CONNECTIONS, detail
    # A large number of commands really were interrupted (the share varies with the machine's load).
    assert share > 0.03 and counts["interrupted"] > 1000, detail
    # Many interruptions hit a command holding a connection (not only waiters): those were discarded.
    assert final["connections_lost"] > 50, detail
