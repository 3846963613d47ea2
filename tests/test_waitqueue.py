"""The wait queue's policies and ``greenpool.deadline``, driven step by step with fake connections.

The pool's clock (``greenpool._green.monotonic``) is replaced by a counter the test advances, so the adaptive
policy's windows and the hold-time average are exact and nothing depends on the machine's speed. Waiters give
up by being killed (as an outer ``gevent.Timeout`` would do), never by real time passing.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List

import gevent
import gevent.event
import pytest

import greenpool
from greenpool import Pool, PoolTimeout, _green, deadline
from greenpool._deadline import BUDGETS


class Conn:
    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(_green, "monotonic", fake)
    import greenpool._deadline as deadline_module

    monkeypatch.setattr(deadline_module, "monotonic", fake)
    yield fake


def settle() -> None:
    """Let every runnable greenlet run (hand-offs resume their waiters)."""
    for _ in range(3):
        gevent.sleep(0)


def queue_up(pool: Pool[Conn], n: int, served: List[int], start: int = 0) -> List[gevent.Greenlet]:
    """Spawn ``n`` greenlets that each wait for a connection, note their number when served, and hold it."""
    held: List[Any] = []

    def one(i: int) -> Any:
        conn = pool.acquire()
        served.append(i)
        held.append(conn)
        return conn

    greenlets = []
    for i in range(start, start + n):
        greenlets.append(gevent.spawn(one, i))
        gevent.sleep(0)  # queue in this order
    return greenlets


def serve_in_turn(pool: Pool[Conn], conn: Any, waiters: List[Any], served: List[int], hold: Any = None) -> Any:
    """Release ``conn`` once per waiter in ``waiters`` (numbered from 0), after ``hold`` = ``(clock, seconds)`` of
    use each time; the waiter served takes it and holds it. Return the connection, held by the last one."""
    for _ in range(len(waiters)):
        if hold is not None:
            hold[0].advance(hold[1])
        pool.release(conn)
        settle()
        conn = waiters[served[-1]].value
    return conn


def served_in_turn(clock: Clock, checkouts: int, hold: float, **options: Any) -> Any:
    """A pool of one connection (``options`` passed on) after ``checkouts`` waiters were served in turn, each
    holding it ``hold`` seconds. Return ``(pool, conn, served)``: the connection is held by the last of them."""
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=None, **options)
    conn = pool.acquire()
    served: List[int] = []
    waiters = queue_up(pool, checkouts, served)
    conn = serve_in_turn(pool, conn, waiters, served, hold=(clock, hold))
    return pool, conn, served


def test_bad_policy_names_the_argument() -> None:
    with pytest.raises(ValueError, match="queue_policy must be one of 'adaptive', 'fifo', 'lifo', got 'random'"):
        Pool(Conn, queue_policy="random")
    with pytest.raises(TypeError, match="queue_policy"):
        Pool(Conn, queue_policy=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("policy", "order"), [("fifo", [0, 1, 2, 3]), ("lifo", [3, 2, 1, 0])])
def test_fixed_policies_serve_in_their_order(policy: str, order: List[int]) -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=None, queue_policy=policy)
    conn = pool.acquire()
    served: List[int] = []
    waiters = queue_up(pool, 4, served)
    conn = serve_in_turn(pool, conn, waiters, served)
    assert served == order
    pool.release(conn)
    assert pool.get_stats()["queue_policy"] == policy


def test_adaptive_stays_fifo_for_a_long_queue_served_in_time(clock: Clock) -> None:
    pool, conn, served = served_in_turn(clock, 200, 0.001)
    assert served == list(range(200))
    stats = pool.get_stats()
    assert stats["queue_mode"] == "fifo" and stats["queue_mode_switches"] == 0
    pool.release(conn)


def make_overloaded(clock: Clock, hold: float = 0.00003) -> Any:
    """A pool of one connection held ``hold`` seconds per checkout, whose last ten waiters gave up (were
    interrupted). Once LIFO, it queues newcomers up to 1 ms of work: 34 waiters at the default hold."""
    pool, conn, served = served_in_turn(clock, 10, hold)
    # Ten waiters give up in the queue (their callers' deadlines fired; the clock stands still, so that the
    # connection's hold time stays as measured).
    doomed = queue_up(pool, 10, served, start=100)
    for g in doomed:
        g.kill()
    assert pool.waiting == 0 and pool.get_stats()["queue_mode"] == "fifo"
    return pool, conn, served


def test_adaptive_turns_lifo_when_waiters_give_up_and_back_when_the_queue_empties(clock: Clock) -> None:
    pool, conn, served = make_overloaded(clock)
    served.clear()
    # Ten gave up and ten were served over the last windows: the next waiter to queue turns the queue LIFO.
    waiters = queue_up(pool, 20, served, start=200)
    stats = pool.get_stats()
    assert stats["queue_mode"] == "lifo" and stats["queue_mode_switches"] == 1
    clock.advance(0.01)
    pool.release(conn)
    settle()
    assert served == [219]  # the newest
    conn = waiters[19].value
    for g in waiters[:19]:
        g.kill()  # the rest give up; the queue empties
    assert pool.waiting == 0
    stats = pool.get_stats()
    assert stats["queue_mode"] == "fifo" and stats["queue_mode_switches"] == 2
    assert stats["queue_lifo_s"] == pytest.approx(0.01)
    pool.release(conn)


def test_lifo_refuses_a_newcomer_at_once_when_the_queue_holds_enough_work(clock: Clock) -> None:
    pool, conn, served = make_overloaded(clock)
    served.clear()
    newcomers = queue_up(pool, 34, served, start=400)  # 33 waiting hold 0.99 ms of work: the 34th is let in
    assert pool.get_stats()["queue_mode"] == "lifo" and pool.waiting == 34
    before = pool.get_stats()
    size, waits = pool.size, pool.get_histograms()["wait"].count
    timeouts: List[Any] = []
    greenpool.events.listen(pool, "timeout", lambda waited, reason: timeouts.append((waited, reason)))
    with pytest.raises(PoolTimeout, match=r"Overloaded: .* holds 1.0 ms of work, so a newcomer is refused at once"):
        pool.acquire()
    stats = pool.get_stats()
    assert stats["requests_shed"] == before["requests_shed"] + 1 and timeouts == [(0.0, "overload")]
    # It did not wait: neither a queued checkout nor a wait of 0 ms in the figures.
    assert stats["requests_queued"] == before["requests_queued"] and stats["wait_p50_ms"] == before["wait_p50_ms"]
    assert stats["requests_num"] == before["requests_num"] + 1 and pool.get_histograms()["wait"].count == waits
    assert pool.size == size and pool.waiting == 34  # no slot taken, nobody queued
    for g in newcomers:
        g.kill()
    pool.release(conn)
    assert pool.size == 1 and pool.in_use == 0 and pool.waiting == 0


def refuse(pool: Pool[Conn], n: int) -> None:
    """``n`` newcomers (greenlets of their own) are each refused at once for overload."""
    refused = []
    for _ in range(n):
        g = gevent.spawn(pool.acquire)
        g.join(1)
        refused.append(isinstance(g.exception, PoolTimeout) and "Overloaded" in str(g.exception))
    assert refused == [True] * n


def test_a_greenlet_refused_for_overload_that_asks_again_at_once_queues(clock: Clock) -> None:
    # Refusing a loop that asks again right away sheds nothing: it waits its turn instead.
    pool, conn, served = make_overloaded(clock)
    newcomers = queue_up(pool, 34, served, start=400)
    outcome: List[str] = []

    def retry() -> None:
        try:
            pool.acquire()
        except PoolTimeout:
            outcome.append("refused")
        pool.acquire()
        outcome.append("served")

    g = gevent.spawn(retry)
    gevent.sleep(0)
    assert outcome == ["refused"] and pool.waiting == 35
    refuse(pool, 1)  # another newcomer still is
    for w in [g, *newcomers]:
        w.kill()
    pool.release(conn)
    assert pool.size == 1 and pool.in_use == 0 and pool.waiting == 0


def test_refusals_keep_the_queue_lifo_only_while_it_is_full(clock: Clock) -> None:
    pool, conn, _ = make_overloaded(clock)  # ten gave up in the queue
    mine: List[int] = []
    newcomers = queue_up(pool, 34, mine)
    refuse(pool, 10)
    clock.advance(0.1)
    refuse(pool, 10)
    clock.advance(0.1)
    # Nobody gave up in the queue over the last two windows, only refusals: still LIFO while the queue is full.
    refuse(pool, 1)
    assert pool.get_stats()["queue_mode"] == "lifo"
    for _ in range(33):  # served newest first, down to one waiter
        pool.release(conn)
        settle()
        conn = newcomers[mine[-1]].value
    assert mine[-1] == 1 and pool.waiting == 1
    # The first of those checkouts held the connection across the 0.2 s the clock moved, which the hold-time
    # average took in: put it back to the checkouts' own 30 us (else one waiter is half of the bound already).
    pool._queue.hold = 0.00003
    late = queue_up(pool, 1, mine, start=100)  # the queue is short and nobody dies in it: FIFO again, no refusal
    stats = pool.get_stats()
    assert stats["queue_mode"] == "fifo" and pool.waiting == 2
    for _ in range(2):
        pool.release(conn)
        settle()
        conn = (newcomers + late)[[0, 100].index(mine[-1]) * 34].value
    assert mine[-2:] == [0, 100]
    pool.release(conn)
    assert pool.size == 1 and pool.in_use == 0 and pool.waiting == 0


def test_lifo_queues_one_checkout_per_connection_however_long_they_hold(clock: Clock) -> None:
    # Checkouts of 5 ms: one waiter is more than 1 ms of work, yet the queue takes one per connection (and one
    # more), so that a connection released finds a waiter rather than idling until the next arrival.
    pool, conn, served = make_overloaded(clock, hold=0.005)
    served.clear()
    gate = gevent.event.Event()
    order: List[str] = []

    def request() -> None:
        # Holds the connection for its first command until the gate opens, then asks again for its second.
        first = pool.acquire()
        order.append("first")
        gate.wait()
        pool.release(first)
        second = pool.acquire()
        order.append("second")
        pool.release(second)

    g = gevent.spawn(request)
    gevent.sleep(0)
    pool.release(conn)  # released at once: the hold average is 4.75 ms now
    settle()
    assert order == ["first"]
    newcomers = queue_up(pool, 2, served, start=500)
    assert pool.get_stats()["queue_mode"] == "lifo" and pool.waiting == 2
    with pytest.raises(PoolTimeout, match=r"Overloaded: .* holds 9.5 ms of work, so a newcomer is refused at once"):
        pool.acquire()
    assert pool.waiting == 2
    # The request releases its connection after 100 ms (to the newest newcomer): its second checkout queues
    # although the queue is full (it is in the middle of a request), and is served first.
    clock.advance(0.1)
    gate.set()
    settle()
    assert served == [501] and pool.waiting == 2
    with pytest.raises(PoolTimeout, match="Overloaded"):
        pool.acquire()  # a newcomer is refused
    pool.release(newcomers[1].value)
    settle()
    assert order == ["first", "second"] and served == [501, 500]  # it released to newcomer 500
    g.join(5)
    pool.release(newcomers[0].value)
    assert pool.size == 1 and pool.in_use == 0 and pool.waiting == 0


def test_lifo_serves_a_greenlet_in_the_middle_of_a_request_before_newcomers(clock: Clock) -> None:
    pool, conn, served = make_overloaded(clock)
    served.clear()
    newcomers = queue_up(pool, 20, served, start=300)
    assert pool.get_stats()["queue_mode"] == "lifo"
    order: List[str] = []

    def request() -> None:
        # Holds the connection for its first command, releases it and asks again for its second.
        first = pool.acquire()
        order.append("first")
        pool.release(first)
        second = pool.acquire()
        order.append("second")
        pool.release(second)

    pool.release(conn)
    settle()  # newcomer 319 holds it now
    conn = newcomers[19].value
    g = gevent.spawn(request)
    gevent.sleep(0)  # queued as the newest
    pool.release(conn)
    settle()
    assert order == ["first"]  # its first command done, it released the connection to newcomer 318
    assert served[-1] == 318
    pool.release(newcomers[18].value)
    settle()
    assert order == ["first", "second"]  # its second checkout went ahead of the 18 older newcomers
    g.join(5)
    settle()
    for w in newcomers:
        if not w.dead:
            w.kill()  # still queued: they give up
    pool.release(newcomers[served[-1] - 300].value)  # the newcomer it handed the connection to
    assert pool.size == 1 and pool.in_use == 0 and pool.waiting == 0


# ---------------------------------------------------------------------- deadlines


def test_deadline_raises_gevent_timeout_and_restores_nothing_behind() -> None:
    with pytest.raises(gevent.Timeout):
        with deadline(0.01):
            assert greenpool.remaining() is not None
            gevent.sleep(5)
    assert BUDGETS == {} and greenpool.remaining() is None


def test_deadlines_nest_and_never_extend() -> None:
    with deadline(0.5) as outer:
        with deadline(30) as inner:
            assert inner.at == outer.at
            left = greenpool.remaining()
            assert left is not None and left <= 0.5
        with deadline(0.1) as shorter:
            assert shorter.at < outer.at
        assert greenpool.remaining() == pytest.approx(outer.remaining(), abs=0.05)
    assert BUDGETS == {}


def test_deadline_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="seconds must be a finite number of seconds >= 0, got -1"):
        deadline(-1)
    with pytest.raises(TypeError, match="seconds must be a number of seconds, got None"):
        deadline(None)  # type: ignore[arg-type]


def test_checkout_that_cannot_be_served_in_time_fails_at_once(clock: Clock) -> None:
    pool, conn, served = served_in_turn(clock, 3, 0.01, queue_policy="fifo")  # three checkouts of 10 ms each
    ahead = queue_up(pool, 5, served, start=400)  # 5 ahead, one connection freed every 10 ms: 50 ms to wait
    size, queued, waits = pool.size, pool.get_stats()["requests_queued"], pool.get_histograms()["wait"].count
    with deadline(0.02):
        with pytest.raises(PoolTimeout, match=r"deadline \(20.0 ms left\) would run out before its turn"):
            pool.acquire()
    stats = pool.get_stats()
    assert stats["requests_shed"] == 1 and pool.size == size and pool.waiting == 5
    assert stats["requests_queued"] == queued and pool.get_histograms()["wait"].count == waits  # it did not wait
    with deadline(0):  # already spent: refused at once too, not a wait that ran out
        with pytest.raises(PoolTimeout, match=r"deadline \(0.0 ms left\) would run out before its turn"):
            pool.acquire()
    assert pool.get_stats()["requests_queued"] == queued and pool.get_histograms()["wait"].count == waits
    with deadline(5):
        late = gevent.spawn(pool.acquire)
        gevent.sleep(0)
    assert pool.waiting == 6  # a budget that covers the wait queues as usual
    for g in [late, *ahead]:
        g.kill()
    pool.release(conn)
    assert pool.waiting == 0 and pool.in_use == 0 and pool.size == 1


def test_checkouts_refused_for_their_deadline_count_as_give_ups(clock: Clock) -> None:
    pool, conn, served = served_in_turn(clock, 3, 0.01)
    ahead = queue_up(pool, 5, served, start=400)  # 50 ms to wait
    for _ in range(8):
        with deadline(0.02):
            with pytest.raises(PoolTimeout, match="would run out before its turn"):
                pool.acquire()
    assert pool.get_stats()["queue_mode"] == "fifo"
    late = queue_up(pool, 1, served, start=500)  # the next waiter to queue sees 8 give-ups of 11 leaving
    assert pool.get_stats()["queue_mode"] == "lifo"
    for g in [*late, *ahead]:
        g.kill()
    pool.release(conn)
    assert pool.waiting == 0 and pool.in_use == 0 and pool.size == 1


def test_hand_off_skips_a_waiter_whose_deadline_ran_out(clock: Clock) -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=None)
    conn = pool.acquire()
    errors: List[BaseException] = []

    def doomed() -> None:
        with deadline(5):  # real time: long; the pool's clock is the fake one
            try:
                pool.acquire()
            except PoolTimeout as exc:
                errors.append(exc)

    first = gevent.spawn(doomed)
    gevent.sleep(0)
    second = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    clock.advance(10)  # the first waiter's budget has run out
    pool.release(conn)
    settle()
    assert second.dead and second.value is conn  # handed to the next waiter instead
    assert first.dead and len(errors) == 1
    assert pool.get_stats()["requests_shed"] == 1 and pool.size == 1
    pool.release(conn)


def test_a_waiter_interrupted_after_its_time_ran_out_gets_no_stray_wake_up(clock: Clock) -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=60)
    held = pool.acquire()
    outcome: List[Any] = []

    class Interrupt(Exception):
        pass

    def waiter() -> None:
        try:
            pool.acquire()
        except Interrupt:
            outcome.append("interrupted")
        # Wait on something else: a stale wake-up from the pool would switch in here and end the wait early.
        outcome.append(gevent.event.Event().wait(0.2))

    g = gevent.spawn(waiter)
    gevent.sleep(0)
    g.kill(Interrupt, block=False)  # lands first...
    clock.advance(61)
    pool._queue._on_expiry()  # ...after its checkout timed out and its wake-up was scheduled
    g.join(5)
    assert g.successful() and outcome == ["interrupted", False]
    assert pool.waiting == 0 and pool.handing_over == 0
    pool.release(held)


def test_adaptive_returns_to_fifo_once_nobody_gave_up_for_two_windows(clock: Clock) -> None:
    pool, conn, served = make_overloaded(clock)
    waiters = queue_up(pool, 3, served, start=500)
    assert pool.get_stats()["queue_mode"] == "lifo"
    clock.advance(0.25)  # two windows without a give-up
    late = queue_up(pool, 1, served, start=600)
    stats = pool.get_stats()
    assert stats["queue_mode"] == "fifo" and stats["queue_mode_switches"] == 2
    for _ in range(4):
        pool.release(conn)
        settle()
        conn = (waiters + late)[[500, 501, 502, 600].index(served[-1])].value
    assert served[-4:] == [500, 501, 502, 600]  # FIFO again, oldest first
    pool.release(conn)


def test_checkout_timeouts_alone_never_turn_the_queue_lifo(clock: Clock) -> None:
    # The seed scenario's shape: a long queue whose waiters may time out on the pool's own timeout. A waiter
    # served just before its checkout timeout still does its work, so FIFO loses nothing and must stay.
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=0.05)
    conn = pool.acquire()
    errors: List[BaseException] = []

    def waiter() -> None:
        try:
            pool.release(pool.acquire())
        except PoolTimeout as exc:
            errors.append(exc)

    greenlets = [gevent.spawn(waiter) for _ in range(50)]
    gevent.sleep(0)
    clock.advance(1.0)
    pool._queue._on_expiry()  # every waiter's checkout timed out
    gevent.joinall(greenlets, timeout=5)
    more = queue_up(pool, 5, [])  # queuing again evaluates the policy
    stats = pool.get_stats()
    assert len(errors) == 50 and stats["queue_mode"] == "fifo" and stats["queue_mode_switches"] == 0
    gevent.killall(more)
    pool.release(conn)
    assert pool.waiting == 0 and pool.idle == 1


def test_a_waiter_that_times_out_says_so_even_when_another_was_shed_meanwhile(clock: Clock) -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=1, timeout=None)
    conn = pool.acquire()
    outcome: List[str] = []

    def with_deadline() -> None:
        with deadline(5):
            try:
                pool.acquire()
            except PoolTimeout as exc:
                outcome.append(f"shed: {exc}")

    def with_timeout() -> None:
        try:
            pool.acquire(60)
        except PoolTimeout as exc:
            outcome.append(f"timeout: {exc}")

    doomed = gevent.spawn(with_deadline)
    gevent.sleep(0)
    served = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    patient = gevent.spawn(with_timeout)
    gevent.sleep(0)
    clock.advance(10)  # the first waiter's budget has run out
    pool.release(conn)  # skips it (shed), hands the connection to the second
    settle()
    clock.advance(61)
    pool._queue._on_expiry()  # the third waiter's checkout timeout
    gevent.joinall([doomed, served, patient], timeout=5)
    assert len(outcome) == 2
    assert outcome[0].startswith("shed: No connection available. The caller's deadline ran out while it waited")
    assert outcome[1].startswith("timeout: No connection available. Waited 71.00 s")
    stats = pool.get_stats()
    assert stats["requests_shed"] == 1 and stats["requests_timeouts"] == 1
    pool.release(served.value)


def test_queue_mode_switches_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=1, name="switchy")
    caplog.set_level(logging.INFO, logger="greenpool.pool")
    for _ in range(5):
        pool._queue_switched(True)
        pool._queue_switched(False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert warnings == ["switchy: overloaded, waiters give up before their turn: serving the newest waiters first"]
    assert infos == ["switchy: no longer overloaded: serving waiters first come, first served"]
    assert pool.get_stats()["queue_mode"] == "fifo"  # logging only: the queue itself never switched
