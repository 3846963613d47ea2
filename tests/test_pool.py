"""Tests of the core ``greenpool.Pool`` with a small fake connection class (no server needed)."""

from __future__ import annotations

import gc
import logging
import os
import random
import subprocess
import sys
import time
from typing import Any

import gevent
import gevent.event
import pytest
from gevent import monkey

from greenpool import Pool, PoolClosed, PoolError, PoolTimeout, TooManyWaiting, UnknownConnection, WrongThread

real_sleep = monkey.get_original("time", "sleep")


class Conn:
    """A fake connection: counts itself, records whether it was closed."""

    made = 0

    def __init__(self) -> None:
        Conn.made += 1
        self.id = Conn.made
        self.closed = False
        self.healthy = True

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<Conn {self.id}>"


def make_pool(**kw: object) -> Pool[Conn]:
    kw.setdefault("max_connections", 2)
    kw.setdefault("timeout", 1.0)
    return Pool(Conn, **kw)  # type: ignore[arg-type]


def wait_until(predicate, timeout: float = 5.0) -> None:
    """Yield to other greenlets until ``predicate()`` holds (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        gevent.sleep(0)


def accounted(pool: Pool[Conn]) -> None:
    """Every slot is an idle or a busy connection: nothing lost, nothing leaked."""
    assert pool.size == pool.idle + pool.in_use, pool.get_stats()


def timer_lateness(seconds: float) -> gevent.Greenlet:
    """Spawn a greenlet that sleeps ``seconds`` and returns how late it woke up: the hub's own lateness, which a busy
    machine adds to every timer, the pool's included. Started beside a pool wait of the same length, it tells a pool
    timer that fires late from a machine that runs it late."""

    def sleeper() -> float:
        start = time.monotonic()
        gevent.sleep(seconds)
        return time.monotonic() - start - seconds

    return gevent.spawn(sleeper)


def assert_on_time(elapsed: float, expected: float, lateness: float) -> None:
    """``elapsed`` is within 50 ms of ``expected``, beyond what the hub was late with a plain timer meanwhile."""
    assert -0.05 < elapsed - expected < max(lateness, 0.0) + 0.05, (elapsed, expected, lateness)


def assert_does_not_yield(call: Any, *args: Any) -> BaseException:
    """Run ``call(*args)``, which must raise without ever yielding to the hub (no other greenlet runs meanwhile,
    however slow the machine); return what it raised."""
    others = gevent.spawn(lambda: None)  # runs as soon as this greenlet yields
    try:
        call(*args)
    except BaseException as exc:
        assert not others.dead, "it yielded to the hub: it waited"
        others.join(5)
        return exc
    raise AssertionError(f"{call} returned")


# ---------------------------------------------------------------------- limits and timeouts


def test_lazy_creation_and_limit() -> None:
    pool = make_pool(max_connections=3, timeout=0)
    assert pool.size == 0
    conns = [pool.acquire() for _ in range(3)]
    assert len({c.id for c in conns}) == 3 and pool.size == 3 and pool.in_use == 3
    with pytest.raises(PoolTimeout):
        pool.acquire()
    # The three were served at once (0 ms waits); the fourth was refused without waiting, so no wait of its own.
    wait = pool.get_histograms()["wait"]
    assert pool.get_stats()["requests_queued"] == 0 and wait.count == 3 and wait.counts[0] == 3
    for c in conns:
        pool.release(c)
    assert pool.idle == 3 and pool.in_use == 0
    # LIFO: the most recently returned connection comes back first.
    assert pool.acquire() is conns[-1]


def test_timeout_is_honoured_within_50ms() -> None:
    pool = make_pool(max_connections=1, timeout=0.3)
    held = pool.acquire()
    for timeout in (None, 0.1):  # the pool's default, then a per-call one
        expected = 0.3 if timeout is None else timeout
        reference = timer_lateness(expected)
        start = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.acquire() if timeout is None else pool.acquire(timeout)
        elapsed = time.monotonic() - start
        assert_on_time(elapsed, expected, reference.get(timeout=5))
        assert str(info.value).startswith("No connection available.")
        assert "1/1 in use" in str(info.value) and "waiting" in str(info.value)
    pool.release(held)
    assert pool.get_stats()["requests_timeouts"] == 2


def test_mixed_timeouts_each_expire_on_time() -> None:
    # Waiters sharing a timeout are expired by one timer; others get their own. Each must fire on time.
    pool = make_pool(max_connections=1, timeout=0.3)
    held = pool.acquire()
    ended: dict[str, float] = {}

    def wait(label: str, timeout: object) -> None:
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.acquire() if timeout is None else pool.acquire(timeout)
        ended[label] = time.monotonic() - start

    greenlets = [
        gevent.spawn(wait, "default-1", None),
        gevent.spawn(wait, "short", 0.1),
        gevent.spawn(wait, "default-2", None),
        gevent.spawn(wait, "long", 0.5),
    ]
    references = {seconds: timer_lateness(seconds) for seconds in (0.1, 0.3, 0.5)}
    gevent.joinall(greenlets, timeout=5, raise_error=True)
    for label, expected in (("default-1", 0.3), ("short", 0.1), ("default-2", 0.3), ("long", 0.5)):
        assert_on_time(ended[label], expected, references[expected].get(timeout=5))
    pool.release(held)
    accounted(pool)


def test_steady_hand_off_keeps_the_expiry_queue_short() -> None:
    pool = make_pool(max_connections=2, timeout=5)
    longest = [0]
    stop = gevent.event.Event()

    def worker() -> None:
        while not stop.is_set():
            with pool.connection():
                longest[0] = max(longest[0], len(pool._queue._expiry))
                gevent.sleep(0)

    greenlets = [gevent.spawn(worker) for _ in range(50)]
    # As many hand-offs as it takes, however long that is on this machine.
    wait_until(lambda: pool.get_stats()["requests_queued"] > 1000, timeout=30)
    stop.set()
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert longest[0] <= 50  # at most one entry per waiting greenlet: served ones do not pile up


def test_timeout_zero_never_waits() -> None:
    pool = make_pool(max_connections=1)
    held = pool.acquire()
    error = assert_does_not_yield(pool.acquire, 0)
    assert isinstance(error, PoolTimeout) and "Waited 0.00 s" in str(error)
    pool.release(held)


def test_timeout_none_waits_until_released() -> None:
    pool = make_pool(max_connections=1, timeout=None)
    held = pool.acquire()
    got = gevent.spawn(pool.acquire)
    wait_until(lambda: pool.waiting == 1)
    pool.release(held)
    assert got.get(timeout=5) is held


def test_timeout_message_states_the_pool() -> None:
    pool = make_pool(max_connections=2, timeout=0.05, name="orders")
    held = [pool.acquire(), pool.acquire()]
    others = [gevent.spawn(pool.acquire, 5) for _ in range(3)]
    wait_until(lambda: pool.waiting == 3)
    with pytest.raises(PoolTimeout) as info:
        pool.acquire()
    assert "orders: 2/2 in use, 0 idle, 3 waiting" in str(info.value)
    for c in held:
        pool.release(c)
    for g in others:
        pool.release(g.get(timeout=5))


# ---------------------------------------------------------------------- fairness


def test_waiters_are_served_first_come_first_served() -> None:
    pool = make_pool(max_connections=1, timeout=10)
    held = pool.acquire()
    served: list[int] = []

    def waiter(i: int) -> None:
        with pool.connection():
            served.append(i)

    greenlets = []
    for i in range(100):
        greenlets.append(gevent.spawn(waiter, i))
        wait_until(lambda n=i + 1: pool.waiting == n)  # enqueue strictly in order
    pool.release(held)
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert served == list(range(100))


def test_no_barging_a_releaser_queues_behind_waiters() -> None:
    pool = make_pool(max_connections=1, timeout=10)
    order: list[str] = []
    conn = pool.acquire()
    waiter = gevent.spawn(lambda: (pool.acquire(), order.append("waiter")))
    wait_until(lambda: pool.waiting == 1)
    pool.release(conn)
    # The releaser asks again at once: it must not take back the connection it just returned.
    again = gevent.spawn(lambda: (pool.acquire(), order.append("releaser")))
    waiter.join(5)
    assert order == ["waiter"] and pool.waiting == 1
    pool.release(conn)
    again.join(5)
    assert order == ["waiter", "releaser"]


def test_hand_off_to_a_timed_out_waiter_goes_to_the_next() -> None:
    pool = make_pool(max_connections=1)
    held = pool.acquire()
    quick = gevent.spawn(pool.acquire, 0.05)
    patient = gevent.spawn(pool.acquire, 5)
    wait_until(lambda: pool.waiting == 2)
    with pytest.raises(PoolTimeout):
        quick.get(timeout=5)
    pool.release(held)
    assert patient.get(timeout=5) is held
    accounted(pool)


def test_release_racing_the_waiters_timer_loses_nothing() -> None:
    # Block the hub past the waiter's deadline, then release: whichever of the timer and the hand-off wins,
    # the connection ends with the waiter or on the idle stack, never nowhere.
    for _ in range(20):
        pool = make_pool(max_connections=1)
        held = pool.acquire()
        waiter = gevent.spawn(pool.acquire, 0.01)
        wait_until(lambda p=pool: p.waiting == 1)
        real_sleep(0.02)
        pool.release(held)
        try:
            got = waiter.get(timeout=5)
        except PoolTimeout:
            assert pool.idle == 1 and pool.in_use == 0
        else:
            assert got is held and pool.in_use == 1
            pool.release(got)
        accounted(pool)
        assert pool.size == 1 and pool.acquire(0) is held


# ---------------------------------------------------------------------- interruption safety


@pytest.mark.parametrize("how", ["timeout", "kill", "error"])
def test_interrupted_holder_discards_its_connection(how: str) -> None:
    pool = make_pool(max_connections=1)
    inside = gevent.event.Event()
    seen: list[Conn] = []

    def holder() -> None:
        with pool.connection() as conn:
            seen.append(conn)
            inside.set()
            if how == "error":
                raise RuntimeError("half-read reply")
            gevent.sleep(10)

    if how == "timeout":
        g = gevent.spawn(lambda: gevent.with_timeout(0.05, holder))
    else:
        g = gevent.spawn(holder)
    inside.wait(5)
    if how == "kill":
        g.kill(block=True, timeout=5)
    g.join(5)
    assert seen[0].closed, "an interrupted connection must be closed, not reused"
    assert pool.size == 0 and pool.in_use == 0
    assert pool.acquire(0) is not seen[0]  # its slot is free again


def test_keep_on_keeps_the_connection() -> None:
    class ServerSaidNo(Exception):
        pass

    pool = make_pool(max_connections=1, keep_on=(ServerSaidNo,))
    with pytest.raises(ServerSaidNo):
        with pool.connection() as conn:
            raise ServerSaidNo
    assert not conn.closed and pool.idle == 1
    predicate_pool = make_pool(max_connections=1, keep_on=lambda exc: isinstance(exc, KeyError))
    with pytest.raises(KeyError):
        with predicate_pool.connection() as kept:
            raise KeyError
    with pytest.raises(ValueError):
        with predicate_pool.connection() as dropped:
            raise ValueError
    assert kept is dropped and dropped.closed


def test_waiter_killed_while_queued_leaves_the_queue() -> None:
    pool = make_pool(max_connections=1)
    held = pool.acquire()
    doomed = gevent.spawn(pool.acquire, 5)
    survivor = gevent.spawn(pool.acquire, 5)
    wait_until(lambda: pool.waiting == 2)
    doomed.kill(block=True, timeout=5)
    assert pool.waiting == 1
    pool.release(held)
    assert survivor.get(timeout=5) is held
    accounted(pool)


def test_waiter_killed_after_the_hand_off_passes_it_on() -> None:
    pool = make_pool(max_connections=1)
    held = pool.acquire()
    doomed = gevent.spawn(pool.acquire, 5)
    survivor = gevent.spawn(pool.acquire, 5)
    wait_until(lambda: pool.waiting == 2)
    # The kill is scheduled first, the hand-off second: the kill lands after the connection was given to
    # `doomed` but before it ran. It must pass the connection on to `survivor`.
    doomed.kill(block=False)
    pool.release(held)
    assert survivor.get(timeout=5) is held
    assert doomed.dead and isinstance(doomed.value, gevent.GreenletExit)
    accounted(pool)
    assert pool.in_use == 1


def test_waiter_killed_after_a_slot_hand_off_frees_the_slot() -> None:
    pool = make_pool(max_connections=1)
    held = pool.acquire()
    doomed = gevent.spawn(pool.acquire, 5)
    wait_until(lambda: pool.waiting == 1)
    doomed.kill(block=False)
    pool.release(held, discard=True)  # the freed slot goes to `doomed`, which dies before using it
    doomed.join(5)
    assert pool.size == 0 and pool.in_use == 0
    assert pool.acquire(0) is not held


def test_create_interrupted_frees_the_slot() -> None:
    entered = gevent.event.Event()

    def slow_create() -> Conn:
        entered.set()
        gevent.sleep(10)
        return Conn()

    pool: Pool[Conn] = Pool(slow_create, max_connections=1, timeout=1)
    g = gevent.spawn(pool.acquire)
    entered.wait(5)
    assert pool.size == 1
    g.kill(block=True, timeout=5)
    assert pool.size == 0 and pool.get_stats()["connections_errors"] == 1


def test_create_failure_is_raised_and_the_slot_goes_to_the_next_waiter() -> None:
    attempts: list[int] = []

    def flaky() -> Conn:
        attempts.append(1)
        if len(attempts) == 2:
            raise ConnectionRefusedError("server down")
        return Conn()

    pool: Pool[Conn] = Pool(flaky, max_connections=1, timeout=2)
    held = pool.acquire()
    first = gevent.spawn(pool.acquire)
    second = gevent.spawn(pool.acquire)
    wait_until(lambda: pool.waiting == 2)
    pool.release(held, discard=True)
    with pytest.raises(ConnectionRefusedError):
        first.get(timeout=5)
    assert isinstance(second.get(timeout=5), Conn)
    assert pool.size == 1 and pool.get_stats()["connections_errors"] == 1


def test_random_interruptions_never_lose_or_leak() -> None:
    pool = make_pool(max_connections=3, timeout=0.5)
    rng = random.Random(7)
    peak = [0]

    def worker() -> None:
        for _ in range(200):
            try:
                with gevent.Timeout(rng.uniform(0.0, 0.002)):
                    with pool.connection():
                        peak[0] = max(peak[0], pool.size)
                        gevent.sleep(rng.uniform(0, 0.001))
            except (gevent.Timeout, PoolTimeout):
                pass

    greenlets = [gevent.spawn(worker) for _ in range(50)]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    assert peak[0] <= 3
    assert pool.in_use == 0 and pool.waiting == 0
    accounted(pool)
    stats = pool.get_stats()
    assert stats["connections_lost"] > 0  # interruptions really happened


# ---------------------------------------------------------------------- health, lifetime, idle


def test_failed_check_is_replaced_within_the_same_checkout() -> None:
    checked: list[Conn] = []

    def check(conn: Conn) -> bool:
        checked.append(conn)
        return conn.healthy

    pool: Pool[Conn] = Pool(Conn, check=check, max_connections=2, check_after_idle=0, timeout=1)
    a = pool.acquire()
    pool.release(a)
    a.healthy = False
    b = pool.acquire()
    assert b is not a and a.closed and checked == [a]
    assert pool.get_stats()["checks_failed"] == 1 and pool.size == 1


def test_check_runs_only_after_idle_window() -> None:
    calls: list[Conn] = []
    # A window far longer than the two statements below take, even on a machine that stalls this process.
    pool: Pool[Conn] = Pool(Conn, check=calls.append, max_connections=1, check_after_idle=0.25)
    conn = pool.acquire()
    pool.release(conn)
    pool.release(pool.acquire())
    assert calls == []  # recently used: no check
    gevent.sleep(0.3)
    pool.release(pool.acquire())
    assert calls == [conn]


def test_check_raising_counts_as_broken() -> None:
    def check(conn: Conn) -> None:
        raise OSError("gone")

    pool: Pool[Conn] = Pool(Conn, check=check, max_connections=1, check_after_idle=0)
    first = pool.acquire()
    pool.release(first)
    assert pool.acquire() is not first and first.closed


def test_max_lifetime_recycles_connections() -> None:
    pool = make_pool(max_connections=1, max_lifetime=0.05)
    first = pool.acquire()
    pool.release(first)
    gevent.sleep(0.06)
    second = pool.acquire()
    assert second is not first and first.closed
    pool.release(second)


def test_max_lifetime_has_jitter() -> None:
    pool = make_pool(max_connections=50, max_lifetime=100.0)
    conns = [pool.acquire() for _ in range(50)]
    expiries = {round(entry.expires, 6) for entry in pool._in_use.values()}
    assert len(expiries) > 40
    for c in conns:
        pool.release(c)


def test_max_idle_reaps_down_to_min_connections() -> None:
    pool = make_pool(max_connections=4, min_connections=1, max_idle=0.1)
    conns = [pool.acquire() for _ in range(4)]
    for c in conns:
        pool.release(c)
    assert pool.idle == 4
    wait_until(lambda: pool.size == 1, timeout=5)
    assert sum(c.closed for c in conns) == 3


def test_min_connections_are_prewarmed_and_kept() -> None:
    pool = make_pool(max_connections=4, min_connections=2)
    pool.prewarm()
    assert pool.size == 2 and pool.idle == 2
    pool.release(pool.acquire(), discard=True)
    wait_until(lambda: pool.size == 2, timeout=5)  # the maintenance tops it up again


def test_leak_threshold_warns_with_the_acquiring_stack(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(max_connections=1, leak_threshold=0.05)
    caplog.set_level(logging.WARNING, logger="greenpool")

    def forgetful_caller() -> Conn:
        return pool.acquire()

    conn = forgetful_caller()
    wait_until(lambda: bool(caplog.records), timeout=5)
    message = caplog.records[0].getMessage()
    assert "more than 0.05 s" in message and "forgetful_caller" in message
    pool.release(conn)
    # Released in time: no warning.
    caplog.clear()
    pool.release(pool.acquire())
    gevent.sleep(0.1)
    assert not caplog.records


# ---------------------------------------------------------------------- resize, close, max_waiting


def test_resize_up_serves_waiters_and_down_closes_surplus() -> None:
    pool = make_pool(max_connections=1, timeout=5)
    held = pool.acquire()
    waiters = [gevent.spawn(pool.acquire) for _ in range(3)]
    wait_until(lambda: pool.waiting == 3)
    pool.resize(max_connections=4)
    got = [g.get(timeout=5) for g in waiters]
    assert pool.size == 4 and pool.waiting == 0
    pool.resize(max_connections=2)
    for c in [*got, held]:
        pool.release(c)
    assert pool.size == 2 and sum(c.closed for c in [*got, held]) == 2
    with pytest.raises(ValueError, match="min_connections must be <= max_connections"):
        pool.resize(min_connections=3)


def test_resize_under_load() -> None:
    pool = make_pool(max_connections=2, timeout=5)
    peak = [0]
    stop = gevent.event.Event()

    def worker() -> None:
        while not stop.is_set():
            with pool.connection():
                peak[0] = max(peak[0], pool.in_use)
                gevent.sleep(0.001)

    greenlets = [gevent.spawn(worker) for _ in range(30)]
    for size in (5, 1, 8, 3):
        pool.resize(max_connections=size)
        peak[0] = 0
        gevent.sleep(0.05)
        wait_until(lambda s=size: pool.size <= s)
        assert peak[0] <= max(size, 8)
    stop.set()
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert pool.size <= 3 and pool.in_use == 0
    accounted(pool)


def test_close_wakes_waiters_with_pool_closed() -> None:
    pool = make_pool(max_connections=1, timeout=None)
    held = pool.acquire()
    idle_pool_conn = None
    waiters = [gevent.spawn(pool.acquire) for _ in range(5)]
    wait_until(lambda: pool.waiting == 5)
    pool.close()
    pool.close()  # idempotent
    for g in waiters:
        with pytest.raises(PoolClosed):
            g.get(timeout=5)
    with pytest.raises(PoolClosed):
        pool.acquire()
    pool.release(held)  # a busy connection is closed when it comes back
    assert held.closed and pool.size == 0 and idle_pool_conn is None


def test_close_closes_idle_connections_and_context_manager() -> None:
    with make_pool(max_connections=2) as pool:
        a, b = pool.acquire(), pool.acquire()
        pool.release(a)
        pool.release(b)
    assert pool.closed and a.closed and b.closed


def test_max_waiting_sheds_load_at_once() -> None:
    pool = make_pool(max_connections=1, max_waiting=2, timeout=5)
    held = pool.acquire()
    waiters = [gevent.spawn(pool.acquire) for _ in range(2)]
    wait_until(lambda: pool.waiting == 2)
    error = assert_does_not_yield(pool.acquire)
    assert isinstance(error, TooManyWaiting) and "max_waiting=2" in str(error)
    assert pool.get_stats()["requests_rejected"] == 1
    pool.release(held)
    for g in waiters:
        pool.release(g.get(timeout=5))


# ---------------------------------------------------------------------- misuse


def test_release_of_foreign_connection_or_twice_is_refused() -> None:
    pool = make_pool(max_connections=2)
    other = make_pool(max_connections=1)
    mine = pool.acquire()
    theirs = other.acquire()
    with pytest.raises(UnknownConnection, match="not checked out from this pool"):
        pool.release(theirs)
    with pytest.raises(UnknownConnection):
        pool.release(Conn())
    pool.release(mine)
    with pytest.raises(UnknownConnection):
        pool.release(mine)
    stats = pool.get_stats()
    assert stats["returns_bad"] == 3 and stats["pool_size"] == 1 and stats["pool_available"] == 1
    assert not theirs.closed and other.in_use == 1


def test_use_after_close_is_a_clear_error() -> None:
    pool = make_pool()
    pool.close()
    with pytest.raises(PoolClosed, match="is closed"):
        pool.acquire()
    with pytest.raises(PoolClosed):
        with pool.connection():
            pass


def test_use_from_another_thread_is_refused() -> None:
    pool = make_pool()
    pool.release(pool.acquire())  # bind to this thread's hub
    threadpool = gevent.get_hub().threadpool
    with pytest.raises(WrongThread, match="belongs to the gevent hub of thread"):
        threadpool.apply(pool.acquire)
    assert pool.size == 1 and pool.idle == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_connections": "10"}, TypeError, "max_connections"),
        ({"max_connections": True}, TypeError, "max_connections"),
        ({"min_connections": -1}, ValueError, "min_connections"),
        ({"min_connections": 5, "max_connections": 2}, ValueError, "min_connections"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"check_after_idle": -0.5}, ValueError, "check_after_idle"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime"),
        ({"max_idle": "x"}, TypeError, "max_idle"),
        ({"leak_threshold": -1}, ValueError, "leak_threshold"),
        ({"max_waiting": -1}, ValueError, "max_waiting"),
        ({"max_waiting": 1.5}, TypeError, "max_waiting"),
        ({"keep_on": ("x",)}, TypeError, "keep_on"),
        ({"name": 3}, TypeError, "name"),
        ({"check": 3}, TypeError, "check"),
        ({"close": "no"}, TypeError, "close"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(kwargs: dict, exc: type, name: str) -> None:
    with pytest.raises(exc) as info:
        Pool(Conn, **kwargs)
    assert name in str(info.value)
    value = next(iter(kwargs.values()))
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_bad_create_and_per_call_timeout() -> None:
    with pytest.raises(TypeError, match="create"):
        Pool(None)  # type: ignore[arg-type]
    pool = make_pool()
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire(-2)


# ---------------------------------------------------------------------- stats, fork, gc, imports


def test_stats_count_what_happened() -> None:
    pool = make_pool(max_connections=1, timeout=0.05)
    a = pool.acquire()
    with pytest.raises(PoolTimeout):
        pool.acquire()
    waiter = gevent.spawn(pool.acquire, 5)
    wait_until(lambda: pool.waiting == 1)
    pool.release(a)
    pool.release(waiter.get(timeout=5), discard=True)
    stats = pool.get_stats()
    assert stats["requests_num"] == 3
    assert stats["requests_queued"] == 2
    assert stats["requests_timeouts"] == 1 and stats["requests_errors"] == 1
    assert stats["connections_num"] == 1 and stats["connections_lost"] == 1
    assert stats["pool_size"] == 0 and stats["in_use"] == 0 and stats["requests_waiting"] == 0
    assert stats["wait_max_ms"] >= 40 and stats["wait_p50_ms"] >= 0
    popped = pool.pop_stats()
    assert popped["requests_num"] == 3 and pool.get_stats()["requests_num"] == 0


def test_fork_child_starts_empty_and_leaves_parent_connections_alone() -> None:
    pool = make_pool(max_connections=2)
    busy = pool.acquire()
    idle = pool.acquire()
    pool.release(idle)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 3
        try:
            ok = pool.size == 0 and pool.idle == 0  # the child's pool starts empty
            fresh = pool.acquire()
            ok = ok and fresh is not idle and fresh is not busy
            pool.release(busy)  # checked out before the fork: accepted, left alone
            ok = ok and not busy.closed and not idle.closed
            pool.release(fresh)
            code = 0 if ok and pool.size == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert pool.size == 2 and pool.in_use == 1 and pool.idle == 1
    pool.release(busy)


def test_fork_detaches_inherited_connections_in_the_child_only() -> None:
    detached: list[Conn] = []
    pool: Pool[Conn] = Pool(Conn, detach=detached.append, max_connections=2, timeout=1)
    busy = pool.acquire()
    idle = pool.acquire()
    pool.release(idle)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 3
        try:
            # Detached at fork time, before any greenlet of the child could use them; never closed.
            ok = {c.id for c in detached} == {busy.id, idle.id} and not busy.closed and not idle.closed
            code = 0 if ok and pool.size == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert detached == [] and pool.size == 2
    pool.release(busy)


def test_garbage_collected_pool_closes_idle_connections() -> None:
    pool = make_pool(max_connections=2)
    conn = pool.acquire()
    pool.release(conn)
    del pool
    gc.collect()
    assert conn.closed


def test_repr_and_stats_carry_no_connection_secrets() -> None:
    class Secretive(Conn):
        def __repr__(self) -> str:
            return "<Secretive password=hunter2>"

    pool: Pool[Conn] = Pool(Secretive, max_connections=1, timeout=0, name="s")
    held = pool.acquire()
    with pytest.raises(PoolError) as info:
        pool.acquire()
    with pytest.raises(UnknownConnection) as info2:
        pool.release(Secretive())
    for text in (repr(pool), str(pool.get_stats()), str(info.value), str(info2.value)):
        assert "hunter2" not in text
    pool.release(held)


def test_core_imports_without_redis_or_tarantool() -> None:
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['tarantool'] = None\n"
        "import greenpool\n"
        "p = greenpool.Pool(object, max_connections=1)\n"
        "p.release(p.acquire())\n"
        "assert 'redis' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------------- hand-over accounting and idle watching


def test_connections_being_handed_over_are_counted_and_named() -> None:
    pool = make_pool(max_connections=2, timeout=5, name="orders")
    held = [pool.acquire(), pool.acquire()]
    waiters = [gevent.spawn(pool.acquire) for _ in range(3)]
    wait_until(lambda: pool.waiting == 3)
    for conn in held:
        pool.release(conn)  # handed to the two oldest waiters, which have not run yet
    assert pool.handing_over == 2 and pool.in_use == 0 and pool.idle == 0 and pool.waiting == 1
    assert pool.get_stats()["pool_handing_over"] == 2
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(0)
    assert "orders: 0/2 in use, 2 being handed over, 0 idle, 1 waiting" in str(info.value)
    first, second = waiters[0].get(timeout=5), waiters[1].get(timeout=5)
    assert pool.handing_over == 0 and pool.in_use == 2
    waiters[2].kill(block=False)  # the kill lands after the hand-off below, before the waiter resumes
    pool.release(first)  # handed to the third waiter
    assert pool.handing_over == 1
    waiters[2].join(5)  # it passed the connection on to the idle stack
    assert pool.handing_over == 0 and pool.idle == 1
    pool.release(second)
    accounted(pool)


class SocketConn(Conn):
    """A fake connection over a real socket pair; ``peer`` is the server's end."""

    def __init__(self) -> None:
        super().__init__()
        import socket

        self.sock, self.peer = socket.socketpair()

    def reconnect(self) -> None:
        self.close()
        import socket

        self.sock, self.peer = socket.socketpair()
        self.closed = False

    def close(self) -> None:
        super().close()
        self.sock.close()
        self.peer.close()

    def alive(self) -> bool:
        try:
            return self.sock.recv(1, __import__("socket").MSG_PEEK | __import__("socket").MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False


def watched_pool(**kw: object) -> Pool[SocketConn]:
    checks: list = []

    def check(conn: SocketConn) -> bool:
        checks.append(conn)
        return conn.alive()

    kw.setdefault("check_after_idle", None)  # never by idle time: only the watcher can trigger a check
    pool: Pool[SocketConn] = Pool(
        SocketConn, check=check, socket=lambda c: None if c.closed else c.sock, max_connections=2, timeout=1, **kw
    )  # type: ignore[arg-type]
    pool.checks = checks  # type: ignore[attr-defined]
    return pool


def test_idle_connection_closed_by_the_server_is_checked_and_replaced() -> None:
    pool = watched_pool()
    a = pool.acquire()
    pool.release(a)
    b = pool.acquire()
    assert b is a and pool.checks == []  # nothing happened: no check on the hot path
    pool.release(a)
    a.peer.close()  # the server goes away while the connection is idle
    wait_until(lambda: pool._idle_list[0].stirred)
    c = pool.acquire()
    assert c is not a and a.closed and pool.checks == [a]
    assert pool.get_stats()["checks_failed"] == 1
    pool.release(c)
    pool.close()
    assert c.closed and pool._idle_list == []


def test_idle_data_from_the_server_triggers_a_check_but_a_healthy_connection_stays() -> None:
    pool = watched_pool()
    a = pool.acquire()
    pool.release(a)
    a.peer.send(b"+push\r\n")
    wait_until(lambda: pool._idle_list[0].stirred)
    assert pool.acquire() is a and pool.checks == [a]  # the check said it is fine
    a.sock.recv(100)
    pool.release(a)
    assert pool.acquire() is a and pool.checks == [a]  # no news: no check
    pool.release(a)
    pool.close()


def test_a_reconnected_connection_is_watched_on_its_new_socket() -> None:
    pool = watched_pool()
    a = pool.acquire()
    pool.release(a)
    first = pool._idle_list[0].watcher
    a = pool.acquire()
    a.reconnect()
    pool.release(a)
    entry = pool._idle_list[0]
    assert entry.watcher is not first and entry.sock is a.sock and not entry.watcher.ref
    a.peer.close()
    wait_until(lambda: entry.stirred)
    b = pool.acquire()
    assert b is not a and a.closed
    pool.release(b)
    pool.close()
    assert b.closed


def test_a_connection_without_a_socket_is_not_watched() -> None:
    pool = watched_pool()
    a = pool.acquire()
    a.close()
    a.closed = True
    pool.release(a)
    assert pool._idle_list[0].watcher is None
    pool.close()
