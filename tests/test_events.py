"""Pool events (``greenpool.events``), the duration histograms of ``greenpool.stats`` and the core's log records.

Driven with a fake connection class and the pool's clock replaced by a counter the test advances (the
``clock`` fixture of ``test_waitqueue.py``), so every duration asserted is exact. Depends on gevent only.
"""

from __future__ import annotations

import logging
from typing import Any, List, Tuple

import gevent
import pytest

from greenpool import Pool, PoolTimeout, TooManyWaiting, events
from greenpool._log import RateLimited
from greenpool.stats import BOUNDS_MS, Histogram
from tests.test_waitqueue import Clock, clock, make_overloaded, queue_up, settle

__all__ = ["clock"]  # the fixture, imported for the tests below


class Conn:
    def __init__(self) -> None:
        self.closed = False
        self.healthy = True

    def close(self) -> None:
        self.closed = True


class Recorder:
    """Listens to every event of a pool and keeps ``(event, *args)`` tuples in order."""

    def __init__(self, pool: Any) -> None:
        self.calls: List[Tuple[Any, ...]] = []
        self.fns = {}
        for name in events.EVENTS:
            self.fns[name] = fn = self._make(name)
            events.listen(pool, name, fn)

    def _make(self, name: str) -> Any:
        def fn(*args: Any) -> None:
            self.calls.append((name, *args))

        return fn

    def names(self) -> List[str]:
        return [call[0] for call in self.calls]


def make_pool(**kw: Any) -> Pool[Conn]:
    kw.setdefault("max_connections", 1)
    kw.setdefault("timeout", 1.0)
    kw.setdefault("check", lambda conn: conn.healthy)
    return Pool(Conn, **kw)


# ---------------------------------------------------------------------- registration


def test_listen_and_remove_leave_no_dispatcher_behind() -> None:
    pool = make_pool()
    assert pool._stats.events.hot is None  # nobody listens: the hot path tests one attribute

    def fn(conn: Any, wait: float) -> None:
        pass

    events.listen(pool, "connect", fn)
    assert pool._stats.events.hot is None  # a rare event: the hot path stays as it was
    events.listen(pool, "checkout", fn)
    events.listen(pool, "checkout", fn)  # twice: kept once
    assert events.listeners(pool, "checkout") == (fn,)
    assert pool._stats.events.hot is pool._stats.events
    events.remove(pool, "checkout", fn)
    assert events.listeners(pool, "checkout") == ()
    assert pool._stats.events.hot is None
    events.remove(pool, "connect", fn)
    assert not pool._stats.events
    with pytest.raises(ValueError, match="is not listening to 'checkout'"):
        events.remove(pool, "checkout", fn)


def test_bad_arguments_are_named() -> None:
    pool = make_pool()
    with pytest.raises(ValueError, match=r"event must be one of .*; got 'chekout'"):
        events.listen(pool, "chekout", print)
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        events.listen(pool, "checkout", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool must be a greenpool pool"):
        events.listen(object(), "checkout", print)


# ---------------------------------------------------------------------- what fires, with what


def test_connect_checkout_checkin_carry_exact_durations(clock: Clock) -> None:
    def create() -> Conn:
        clock.advance(0.002)  # connecting takes 2 ms
        return Conn()

    pool: Pool[Conn] = Pool(create, max_connections=1, timeout=1.0)
    rec = Recorder(pool)
    conn = pool.acquire()
    clock.advance(0.005)  # held 5 ms
    pool.release(conn)
    assert rec.calls == [
        ("connect", conn, pytest.approx(0.002)),
        ("checkout", conn, pytest.approx(0.002)),  # the checkout waited for the connect
        ("checkin", conn, pytest.approx(0.005)),
    ]


def test_a_waiter_checkout_reports_its_queue_time(clock: Clock) -> None:
    pool = make_pool()
    conn = pool.acquire()
    rec = Recorder(pool)
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    clock.advance(0.25)
    pool.release(conn)
    assert waiter.get(timeout=5) is conn
    assert rec.calls == [("checkin", conn, pytest.approx(0.25)), ("checkout", conn, pytest.approx(0.25))]
    pool.release(conn)


def test_discarded_connections_fire_checkin_discard_and_close() -> None:
    pool = make_pool()
    rec = Recorder(pool)
    conn = pool.acquire()
    rec.calls.clear()
    pool.release(conn, discard=True)
    assert rec.names() == ["discard", "close", "checkin"]
    assert rec.calls[:2] == [("discard", conn, "released"), ("close", conn, "released")]
    assert conn.closed


def test_a_failed_check_fires_discard_and_close_with_reason_check() -> None:
    pool = make_pool(check_after_idle=0)
    conn = pool.acquire()
    pool.release(conn)
    conn.healthy = False
    rec = Recorder(pool)
    new = pool.acquire()
    assert new is not conn
    assert rec.names() == ["discard", "close", "connect", "checkout"]
    assert rec.calls[0] == ("discard", conn, "check") and rec.calls[1] == ("close", conn, "check")
    pool.release(new)


def test_an_expired_connection_closes_with_reason_expired(clock: Clock) -> None:
    pool = make_pool(max_lifetime=10.0)
    conn = pool.acquire()
    rec = Recorder(pool)
    clock.advance(11.0)
    pool.release(conn)
    assert ("close", conn, "expired") in rec.calls
    assert "discard" not in rec.names()  # expiry is not a fault


def test_pool_close_closes_idle_connections_with_reason_closed() -> None:
    pool = make_pool()
    conn = pool.acquire()
    pool.release(conn)
    rec = Recorder(pool)
    pool.close()
    assert rec.calls == [("close", conn, "closed")]


def test_timeouts_rejections_and_connect_errors(clock: Clock) -> None:
    pool = make_pool(max_waiting=1)
    rec = Recorder(pool)
    conn = pool.acquire()
    rec.calls.clear()
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0)
    assert rec.calls == [("timeout", 0.0, "timeout")]
    waiter = gevent.spawn(pool.acquire, 5.0)
    gevent.sleep(0)
    with pytest.raises(TooManyWaiting):
        pool.acquire()
    assert rec.calls[-1] == ("rejected", 1)
    waiter.kill()
    pool.release(conn, discard=True)

    failure = OSError("refused")

    def broken() -> Conn:
        clock.advance(0.003)
        raise failure

    bad: Pool[Conn] = Pool(broken, max_connections=1)
    rec = Recorder(bad)
    with pytest.raises(OSError):
        bad.acquire()
    assert rec.calls == [("connect_error", failure, pytest.approx(0.003))]


def test_adaptive_mode_switches_fire_queue_mode_and_log(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    modes: List[str] = []
    pool, conn, served = make_overloaded(clock)
    events.listen(pool, "queue_mode", modes.append)
    caplog.set_level(logging.INFO, logger="greenpool.pool")
    waiters = queue_up(pool, 20, served, start=200)
    assert modes == ["lifo"]
    pool.release(conn)
    settle()
    conn = waiters[19].value
    for g in waiters[:19]:
        g.kill()
    assert modes == ["lifo", "fifo"]
    levels = [(r.levelname, "newest waiters first" in r.getMessage()) for r in caplog.records]
    assert levels == [("WARNING", True), ("INFO", False)]
    pool.release(conn)


# ---------------------------------------------------------------------- listeners cannot break the pool


def test_a_listener_that_raises_is_logged_once_a_minute_and_the_pool_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = make_pool()
    seen: List[Any] = []

    def broken(conn: Any, wait: float) -> None:
        raise RuntimeError("listener bug")

    events.listen(pool, "checkout", broken)
    events.listen(pool, "checkout", lambda conn, wait: seen.append(conn))
    caplog.set_level(logging.ERROR, logger="greenpool.events")
    for _ in range(3):
        conn = pool.acquire()
        pool.release(conn)
    assert len(seen) == 3  # the next listener still ran, every time
    records = [r for r in caplog.records if r.name == "greenpool.events"]
    assert len(records) == 1 and "listener bug" in records[0].exc_text
    assert pool.in_use == 0 and pool.idle == 1


def test_interrupted_listeners_of_other_events_lose_no_slot(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool()

    def interrupted(*args: Any) -> None:
        raise gevent.GreenletExit

    for name in ("discard", "close", "checkin"):
        events.listen(pool, name, interrupted)
    conn = pool.acquire()
    with pytest.raises(gevent.GreenletExit):  # checkin runs last, once the books are straight
        pool.release(conn, discard=True)
    assert conn.closed and pool.size == 0 and pool.in_use == 0
    assert any("'discard' listener" in r.getMessage() for r in caplog.records)  # logged, contained
    events.remove(pool, "checkin", interrupted)
    pool.release(pool.acquire(timeout=0))  # the slot is usable


def test_a_checkout_listener_interrupted_gives_the_connection_back() -> None:
    pool = make_pool()

    def interrupted(conn: Any, wait: float) -> None:
        raise gevent.GreenletExit

    events.listen(pool, "checkout", interrupted)
    with pytest.raises(gevent.GreenletExit):
        pool.acquire()
    assert pool.in_use == 0 and pool.size == 0  # discarded, its slot freed
    events.remove(pool, "checkout", interrupted)
    conn = pool.acquire(timeout=0)  # the slot is usable at once
    pool.release(conn)


# ---------------------------------------------------------------------- histograms and usage totals


def test_histograms_count_every_checkout_and_hold(clock: Clock) -> None:
    def create() -> Conn:
        clock.advance(0.004)
        return Conn()

    pool: Pool[Conn] = Pool(create, max_connections=1, timeout=1.0)
    conn = pool.acquire()  # served at once (after a 4 ms connect)
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    clock.advance(0.03)  # held 30 ms, the waiter queued as long
    pool.release(conn)
    conn = waiter.get(timeout=5)
    clock.advance(0.0002)
    pool.release(conn)
    hists = pool.get_histograms()
    assert hists["wait"].count == 2 and hists["wait"].counts[0] == 1  # the one served at once: 0 ms
    assert hists["wait"].counts[BOUNDS_MS.index(50.0)] == 1 and hists["wait"].sum_ms == pytest.approx(30.0)
    assert hists["connect"].count == 1 and hists["connect"].counts[BOUNDS_MS.index(5.0)] == 1
    usage = hists["usage"]
    assert usage.count == 2 and usage.sum_ms == pytest.approx(30.2)
    assert usage.counts[BOUNDS_MS.index(0.25)] == 1 and usage.counts[BOUNDS_MS.index(50.0)] == 1
    assert usage.cumulative()[-1] == 2
    stats = pool.pop_stats()
    assert stats["usage_ms"] == pytest.approx(30.2) and stats["returns_num"] == 2
    assert stats["requests_wait_ms"] == pytest.approx(30.0)
    assert pool.get_histograms()["usage"].count == 0  # pop_stats starts the totals over


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    hist = Histogram()
    for ms in (0.0, 0.1, 0.1001, 10_000.0, 10_001.0):
        hist.record(ms)
    snap = hist.snapshot()
    assert snap.counts[0] == 2 and snap.counts[1] == 1  # 0.1 is "<= 0.1"
    assert snap.counts[len(BOUNDS_MS) - 1] == 1 and snap.counts[-1] == 1  # above every bound
    assert snap.count == 5


# ---------------------------------------------------------------------- log records


def test_checkout_timeouts_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(name="orders")
    conn = pool.acquire()
    caplog.set_level(logging.WARNING, logger="greenpool.pool")
    for _ in range(3):
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0)
    records = [r.getMessage() for r in caplog.records if r.name == "greenpool.pool"]
    assert records == ["orders: 1/1 in use, 0 idle, 0 waiting: checkout timed out after 0.00 s"]
    pool.release(conn)


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimited(logging.getLogger("greenpool.test"), interval=0.0)
    caplog.set_level(logging.INFO, logger="greenpool.test")
    log.log(logging.INFO, "a %s", "x")
    log.log(logging.INFO, "a %s", "y")
    assert [r.getMessage() for r in caplog.records] == ["a x", "a y"]
    held = RateLimited(logging.getLogger("greenpool.test"), interval=3600.0)
    held.log(logging.INFO, "first")
    held.log(logging.INFO, "second")
    held._last -= 3600.0  # as if the interval had passed
    held.log(logging.INFO, "third")
    assert caplog.records[-1].getMessage() == "third (1 similar messages suppressed in the last 3600 s)"


def test_a_failed_health_check_is_logged_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(check_after_idle=0, name="orders")
    conn = pool.acquire()
    pool.release(conn)
    conn.healthy = False
    caplog.set_level(logging.INFO, logger="greenpool.pool")
    pool.release(pool.acquire())
    assert [r.getMessage() for r in caplog.records] == [
        "orders: an idle connection failed its health check; it is replaced"
    ]
