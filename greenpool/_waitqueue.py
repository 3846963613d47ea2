"""The queue of greenlets waiting for a connection, and the policy that picks which one is served next.

:class:`WaitQueue` holds the waiters of one :class:`greenpool.Pool` (one gevent hub), their expiry timers and
the service policy; the pool hands it what a waiter may be given (an idle connection, a free slot, an
exception) and gets back what a waiter refused. :class:`Waiter` is one greenlet's wait, a small state machine.
Depends on ``greenpool._green`` (the gevent seam) and ``greenpool._deadline`` (the callers' budgets) only.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, Optional

from greenpool import _green
from greenpool._deadline import BUDGETS

__all__ = ["EXPIRED", "OVERLOADED", "POLICIES", "RAN_OUT", "SHED", "WaitQueue", "Waiter"]

#: The service policies a pool accepts as ``queue_policy``.
POLICIES = ("adaptive", "fifo", "lifo")

# Waiter states (see Waiter).
WAITING, GIVEN, DONE, GONE = "waiting", "given", "done", "gone"


class _Outcome:
    """A marker :meth:`WaitQueue.wait` returns instead of a value."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: Returned by :meth:`WaitQueue.wait` when the waiter's checkout timeout ran out.
EXPIRED: Any = _Outcome("expired")
#: Returned by :meth:`WaitQueue.wait` when the caller's deadline cannot be met: refused at once, without waiting.
SHED: Any = _Outcome("shed")
#: Returned by :meth:`WaitQueue.wait` when the caller's deadline ran out while it waited (a hand-off skipped it).
RAN_OUT: Any = _Outcome("ran out")
#: Returned by :meth:`WaitQueue.wait` when the adaptive policy refused a newcomer at once (overload).
OVERLOADED: Any = _Outcome("overloaded")

#: The adaptive policy turns LIFO only once at least this many waiters gave up within its last two windows.
_GIVE_UP_QUORUM = 8
#: A greenlet that released a connection this recently is in the middle of a request (adaptive policy).
_CONTINUATION = 0.02
#: The adaptive policy counts hand-offs and give-ups in windows of this many seconds.
_WINDOW = 0.1
#: The adaptive policy turns LIFO when this share of those leaving the queue gave up (over its last two
#: windows), and back to FIFO under half of it: LIFO makes the oldest waiters give up too, a few of them.
_GIVE_UP_SHARE = 0.1
#: In the adaptive policy's LIFO mode a newcomer is refused at once when the queue already holds this many
#: seconds of work for the connections (waiters x recent hold time / max_connections), and more than one
#: checkout per connection (see :meth:`WaitQueue.overloaded`).
_OVERLOAD_QUEUE_S = 0.001


class Waiter:
    """One greenlet's wait for a connection.

    States and transitions:

    - ``WAITING``: queued, ``value`` is ``None``.
    - ``WAITING -> GIVEN`` (:meth:`WaitQueue.hand_off`): handed ``value`` (an idle entry, the free-slot
      marker or an exception to raise); its wake-up (``wake``, a hub callback) is scheduled, it has not run.
    - ``GIVEN -> DONE``: it resumed and took ``value`` (terminal).
    - ``WAITING -> GONE``: it left empty-handed: its checkout timeout expired (a timer), its caller's
      deadline could not be met (``greenpool.deadline``), or it was interrupted while queued (a kill, an outer
      ``gevent.Timeout``). A gone waiter stays in the queue until the hand-off skips it (terminal).
    - ``GIVEN -> GONE``: interrupted after the hand-off but before it resumed: the wake-up is cancelled and
      ``value`` goes back to the pool through the queue's ``refused`` callback, so nothing is lost
      (terminal).

    ``expires`` is when its checkout timeout ends (for waiters on the shared expiry timer), ``budget`` when
    its caller's deadline ends (0.0: none).
    """

    __slots__ = ("budget", "expires", "greenlet", "state", "value", "wake")

    def __init__(self, greenlet: Any, budget: float) -> None:
        self.greenlet = greenlet
        self.state = WAITING
        self.value: Any = None
        self.wake: Any = None
        self.expires = 0.0
        self.budget = budget


class WaitQueue:
    """The waiters of one pool and the order they are served in.

    Policies (``policy``):

    - ``"fifo"``: strictly first come, first served. Best while the pool keeps up: nobody waits longer than
      their share of the queue (the 5000-greenlet closed loop completes 100 % of its checkouts).
    - ``"lifo"``: the newest waiter first. Under overload the newest waiter has the most time left before its
      deadline; the oldest are the doomed ones.
    - ``"adaptive"`` (the pools' default): FIFO while waiters are served in time, LIFO while they give up before their
      turn. *Giving up* is a waiter's caller interrupting it while it is queued (its request's ``gevent.Timeout`` or
      ``greenpool.deadline`` fired, or it was killed): a sign that it is served too late to be of use. A waiter refused
      for its ``greenpool.deadline`` (below) counts too: it is the same give-up, seen coming (without it, requests under
      ``greenpool.deadline`` would hide the overload from the policy and keep the queue in FIFO order, the order that
      collapses). The pool's own checkout ``timeout`` is not: a waiter served just before it still gets its work done,
      so FIFO loses nothing there and stays. The queue counts, in windows of 0.1 s, the waiters handed a connection and
      those that gave up; it turns LIFO when, over the last two windows, at least 8 gave up and they were at least a
      tenth of those that left the queue, and back to FIFO once fewer than 8 or under a twentieth gave up (LIFO itself
      makes a few of the oldest give up), or when the queue empties. A long queue served in time (the 5000-greenlet
      closed loop) never turns LIFO. In LIFO mode a greenlet that released a connection within the last 20 ms (it is in
      the middle of a request) is served before newcomers, so that requests of several commands finish instead of each
      doing its first command only. And in LIFO mode a newcomer is refused at once, with :data:`OVERLOADED`, when the
      queue already holds more than 1 ms of work for the connections (waiters x recent hold time /
      ``max_connections``) and more than one checkout per connection (:meth:`overloaded`). Its greenlet has not waited
      yet and is the cheapest to turn away: no switch, no timer, no frames kept alive until its deadline fires (the
      long-lived doomed waiters of a long LIFO queue are what fills the collector's old generation and slows the
      whole process under sustained overload). A greenlet that left the queue empty-handed (refused, or gave up)
      within the last 20 ms and asks again is not a newcomer either: it queues with the greenlets in the middle of a
      request (refusing a loop that comes straight back sheds nothing). A refusal counts as a give-up, so the queue
      stays LIFO while it refuses; but once the queue holds no more than half the bound and fewer than 8 waiters
      gave up in it, refusals alone do not keep it LIFO.

    With any policy, a waiter whose caller set a :func:`greenpool.deadline` that cannot be met is refused at once
    instead of holding its place: its remaining budget is shorter than half the expected wait (an average, so a
    margin), or it runs out while it is queued. No slot is taken, no connection handed to a greenlet about to
    be interrupted.

    ``refused(value)`` takes back a value handed to a waiter that was interrupted before it resumed.
    Everything runs in the pool's hub; nothing here blocks except :meth:`wait`.
    """

    def __init__(self, policy: str, refused: Callable[[Any], None]) -> None:
        self.policy = policy
        self._refused = refused
        self.lifo = policy == "lifo"
        self._adaptive = policy == "adaptive"
        self._waiters: Deque[Waiter] = deque()
        self._first: Deque[Waiter] = deque()  # adaptive LIFO mode: greenlets in the middle of a request
        # Waiters that share one timeout are also queued here, in arrival order, so their expiry times are in
        # order too and one timer, armed for the oldest, expires them all (no timer per wait).
        self._expiry: Deque[Waiter] = deque()
        self._expiry_timeout: Optional[float] = None
        self._expiry_timer: Any = None
        self.nwaiting = 0  # live waiters (the deques also hold gone ones, skipped lazily)
        self.nhanding = 0  # waiters handed something that have not resumed yet
        self._ngone = 0
        self._hub: Any = None
        self._loop: Any = None
        # Adaptive policy state.
        self._window_start = 0.0
        self._window = [0, 0, 0]  # this window's give-ups (refusals included), hand-offs and overload refusals
        self._last_window = [0, 0, 0]
        #: Seconds a connection is held per checkout, recently: a moving average the pool's release updates
        #: (inline: it is on the hot path).
        self.hold = 0.0
        # LIFO mode: greenlet -> when it last released a connection or left the queue empty-handed.
        self._recent: Dict[Any, float] = {}
        self._mode_since = 0.0
        # Figures for get_stats().
        self.switches = 0
        self.lifo_seconds = 0.0
        self.shed = 0
        #: Called with the new ``lifo`` flag when the adaptive policy switches order (the pool logs it).
        self.on_switch: Optional[Callable[[bool], None]] = None

    def bind(self, hub: Any) -> None:
        self._hub = hub
        self._loop = hub.loop
        self._mode_since = _green.monotonic()

    def close(self) -> None:
        """Stop the shared expiry timer (the pool is closing or forking)."""
        if self._expiry_timer is not None:
            self._expiry_timer.close()
            self._expiry_timer = None

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: Optional[float], max_connections: int) -> Any:
        """Queue the current greenlet and block until it is handed a value or its time is up.

        Returns the value handed over (an entry or the slot marker; an exception value is raised),
        :data:`EXPIRED` when ``timeout`` seconds passed first, :data:`SHED` (at once) when the caller's deadline
        cannot be met, :data:`RAN_OUT` when its budget ran out while queued, or :data:`OVERLOADED` (at once) when
        the adaptive policy refuses a newcomer. An
        interruption (kill, outer ``gevent.Timeout``) propagates after the waiter left the queue; a value
        handed to it meanwhile goes back through ``refused``.
        """
        now = _green.monotonic()
        greenlet = _green.getcurrent()
        budget = BUDGETS.get(greenlet, 0.0) if BUDGETS else 0.0
        if self._adaptive:
            self._adapt(now, max_connections)
        if budget and 2.0 * (budget - now) < self.expected_wait(max_connections):
            self._shed()
            return SHED
        if self.lifo and self._recent and self._recent.pop(greenlet, -1.0) > now - _CONTINUATION:
            waiter = Waiter(greenlet, budget)
            self._first.append(waiter)
        else:
            if self.lifo and self._adaptive and self.overloaded(max_connections):
                self._shed()
                self._window[2] += 1
                self._recent_now(greenlet, now)  # if it asks again at once, it is not a newcomer
                return OVERLOADED
            waiter = Waiter(greenlet, budget)
            self._waiters.append(waiter)
        self.nwaiting += 1
        timer = None
        if timeout is not None:
            expiry = self._expiry
            if not expiry or timeout == self._expiry_timeout:
                self._expiry_timeout = timeout
                waiter.expires = now + timeout
                expiry.append(waiter)
                if self._expiry_timer is None:
                    self._arm_expiry(timeout)
            else:
                timer = self._loop.timer(timeout)
                timer.start(self._expire, waiter)
        try:
            self._hub.switch()
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            if timer is not None:
                timer.close()
        if waiter.state != GIVEN:
            # Woken by a timer (EXPIRED), or skipped for its deadline (its value is RAN_OUT); state GONE.
            if waiter.state == WAITING:  # pragma: no cover - a stray switch into this greenlet
                self._leave(waiter)
            return RAN_OUT if waiter.value is RAN_OUT else EXPIRED
        waiter.state = DONE
        self.nhanding -= 1
        value = waiter.value
        if isinstance(value, BaseException):
            raise value
        return value

    def expected_wait(self, max_connections: int) -> float:
        """Seconds a greenlet queuing now should expect to wait for its turn.

        While every connection is busy one frees up every ``hold / max_connections`` seconds on average; in LIFO mode
        only the greenlets in the middle of a request are ahead of a newcomer. 0.0 until a use was measured.
        """
        if self.lifo:
            return len(self._first) * self.hold / max_connections
        return self.queued_work(max_connections)

    def _shed(self) -> None:
        """A checkout refused (for its deadline, or under overload): counted, and a give-up for the adaptive policy,
        one it saw coming."""
        self.shed += 1
        self._window[0] += 1

    def overloaded(self, max_connections: int, share: float = 1.0) -> bool:
        """Whether a newcomer is refused at once in the adaptive policy's LIFO mode: the queue already holds more than
        1 ms of work for the connections and more than one checkout per connection (with slow commands, one waiter
        per connection is what keeps a released connection from idling until the next arrival).

        Why so short a queue: served newest first, a waiter that newer arrivals keep pushing down waits until its
        caller's deadline fires, and costs a park, a wake-up and an exception through the client's frames, where a
        newcomer refused at once costs the exception only. ``python -m stress overload`` measured a 20 ms bound, 2 ms,
        1 ms and 0.5 ms: 1 ms delivered the most requests in time at 1.5x, 2x and 4x the knee (the CHANGELOG has the
        figures). With ``share``, whether it holds more than that share of the bound.
        """
        return self.queued_work(max_connections) > share * max(_OVERLOAD_QUEUE_S, self.hold)

    def queued_work(self, max_connections: int) -> float:
        """Seconds of work the queue holds for the connections: every waiter's turn, at the recent hold time."""
        return self.nwaiting * self.hold / max_connections

    def released(self, now: float) -> None:
        """The current greenlet released a connection at ``now``: in LIFO mode, it is in the middle of a request.

        Called by the pool's release (only while ``lifo``), not when a refused hand-off comes back.
        """
        self._recent_now(_green.getcurrent(), now)

    def _recent_now(self, greenlet: Any, now: float) -> None:
        """LIFO mode: if ``greenlet`` asks again within 20 ms, it is not a newcomer (see the class docstring)."""
        recent = self._recent
        recent[greenlet] = now
        if len(recent) > 4096:  # greenlets that never came back: forget the stale ones
            horizon = now - _CONTINUATION
            self._recent = {g: t for g, t in recent.items() if t > horizon}

    # ------------------------------------------------------------------ handing over

    def hand_off(self, value: Any) -> bool:
        """Give ``value`` to the next live waiter by the policy; return False when nobody waits."""
        waiter = self._next(self._first, False) if self._first else None
        if waiter is None:
            waiter = self._next(self._waiters, self.lifo)
            if waiter is None:
                return False
        self._give(waiter, value)
        return True

    def _next(self, waiters: Deque[Waiter], newest: bool) -> Optional[Waiter]:
        """Pop the next live waiter whose deadline (if any) can still be met; refuse those whose cannot."""
        while waiters:
            waiter = waiters.pop() if newest else waiters.popleft()
            if waiter.state != WAITING:
                self._ngone -= 1
                continue
            if waiter.budget and waiter.budget <= _green.monotonic():
                self._shed()
                waiter.value = RAN_OUT
                self._leave(waiter)
                self._ngone -= 1
                waiter.wake = self._loop.run_callback(waiter.greenlet.switch)
                continue
            return waiter
        return None

    def _give(self, waiter: Waiter, value: Any) -> None:
        waiter.state = GIVEN
        waiter.value = value
        self._window[1] += 1
        self.nwaiting -= 1
        self.nhanding += 1
        waiter.wake = self._loop.run_callback(waiter.greenlet.switch)
        expiry = self._expiry
        while expiry and expiry[0].state != WAITING:
            expiry.popleft()
        while expiry and expiry[-1].state != WAITING:
            expiry.pop()
        if not self.nwaiting:
            self._emptied()

    # ------------------------------------------------------------------ leaving

    def _abandon(self, waiter: Waiter) -> None:
        """The waiting greenlet was interrupted: leave the queue, passing on anything handed to it."""
        state = waiter.state
        if state == WAITING:
            self._window[0] += 1  # gave up: its caller interrupted it while it was queued
            self._leave(waiter)
            if self.lifo:
                self._recent_now(waiter.greenlet, _green.monotonic())
            return
        if waiter.wake is not None:
            # Its wake-up (a hand-off, or the news that its time is up) is still scheduled: cancel it, or it
            # would later switch into this greenlet wherever it is waiting by then.
            waiter.wake.stop()
        if state == GIVEN:
            waiter.state = GONE
            self.nhanding -= 1
            value, waiter.value = waiter.value, None
            self._refused(value)

    def _expire(self, waiter: Waiter) -> None:
        """Timer callback (runs in the hub): the waiter's time is up unless it was already handed something."""
        if waiter.state == WAITING:
            self._leave(waiter)
            waiter.greenlet.switch()

    def _arm_expiry(self, delay: float) -> None:
        timer = self._loop.timer(max(delay, 0.0))
        timer.start(self._on_expiry)
        self._expiry_timer = timer

    def _on_expiry(self) -> None:
        """Shared timer callback (runs in the hub): time out every due waiter, re-arm for the next one."""
        self._expiry_timer.close()
        self._expiry_timer = None
        expiry = self._expiry
        now = _green.monotonic()
        while expiry:
            waiter = expiry[0]
            if waiter.state != WAITING:
                expiry.popleft()
            elif waiter.expires <= now + 0.001:
                expiry.popleft()
                self._leave(waiter)
                waiter.wake = self._loop.run_callback(waiter.greenlet.switch)
            else:
                self._arm_expiry(waiter.expires - now)
                break

    def _leave(self, waiter: Waiter) -> None:
        """Mark a still-queued waiter as gone; it is skipped (and eventually pruned) by the hand-off."""
        waiter.state = GONE
        self.nwaiting -= 1
        self._ngone += 1
        if self._ngone > 64 and self._ngone > self.nwaiting:
            self._waiters = deque(w for w in self._waiters if w.state == WAITING)
            self._first = deque(w for w in self._first if w.state == WAITING)
            self._ngone = 0
        if not self.nwaiting:
            self._emptied()

    def _emptied(self) -> None:
        """Nobody waits any more: the adaptive policy starts over in FIFO order."""
        if self.lifo and self._adaptive:
            self._set_lifo(False, _green.monotonic())

    def fail_all(self, error: BaseException) -> None:
        """Hand ``error`` to every waiter (the pool is closing)."""
        while self.nwaiting and self.hand_off(error):
            pass

    # ------------------------------------------------------------------ the adaptive policy

    def _adapt(self, now: float, max_connections: int) -> None:
        """Pick FIFO or LIFO (adaptive policy; runs as a waiter queues, on the contended path only)."""
        elapsed = now - self._window_start
        if elapsed >= _WINDOW:
            self._last_window = self._window if elapsed < 2 * _WINDOW else [0, 0, 0]
            self._window = [0, 0, 0]
            self._window_start = now
        gave_up = self._window[0] + self._last_window[0]
        share = gave_up / (gave_up + self._window[1] + self._last_window[1] or 1)
        if not self.lifo:
            if gave_up >= _GIVE_UP_QUORUM and share >= _GIVE_UP_SHARE:
                self._set_lifo(True, now)
        elif (
            gave_up < _GIVE_UP_QUORUM
            or share < 0.5 * _GIVE_UP_SHARE
            or (
                gave_up - self._window[2] - self._last_window[2] < _GIVE_UP_QUORUM
                and not self.overloaded(max_connections, 0.5)
            )
        ):
            # Refusals keep the queue LIFO only while it is still (half) full: else they would keep it refusing by
            # themselves once the load has gone. Half, not full: the bound moves with the hold time, and a queue
            # that hovers at it under overload must not flip the order at every move.
            self._set_lifo(False, now)

    def _set_lifo(self, lifo: bool, now: float) -> None:
        if lifo == self.lifo:
            return
        if self.lifo:
            self.lifo_seconds += now - self._mode_since
            self._recent = {}
            # Back to FIFO: the waiters that jumped the queue keep their place at its head.
            if self._first:
                self._waiters.extendleft(reversed(self._first))
                self._first = deque()
        self.lifo = lifo
        self._mode_since = now
        self.switches += 1
        if self.on_switch is not None:
            self.on_switch(lifo)

    def stats(self) -> Dict[str, Any]:
        """The policy's figures for ``get_stats()``."""
        lifo_seconds = self.lifo_seconds
        if self.lifo and self._adaptive:
            lifo_seconds += _green.monotonic() - self._mode_since
        return {
            "queue_policy": self.policy,
            "queue_mode": "lifo" if self.lifo else "fifo",
            "queue_mode_switches": self.switches,
            "queue_lifo_s": round(lifo_seconds, 3),
            "requests_shed": self.shed,
        }

    def reset_stats(self) -> None:
        now = _green.monotonic()
        self.switches = 0
        self.shed = 0
        self.lifo_seconds = 0.0
        if self.lifo:
            self._mode_since = now
