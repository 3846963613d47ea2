"""Pool events: hooks for metrics and tracing, in the manner of SQLAlchemy's pool events.

``greenpool.events.listen(pool, "checkout", fn)`` calls ``fn`` each time ``pool`` hands a connection out;
``remove(pool, "checkout", fn)`` stops it. ``pool`` is a :class:`greenpool.Pool`, a ``TarantoolPool``, a
``GeventPool`` or a ``RedisMuxPool`` (for these two the events are those of its dedicated connections, and
listeners survive ``reset()``). The events, with the arguments each listener is called with:

==================  =====================  ===========================================================
event               arguments              when
==================  =====================  ===========================================================
``connect``         ``conn, seconds``      a new connection was made; ``seconds`` it took
``connect_error``   ``exc, seconds``       making a connection failed with ``exc`` after ``seconds``
``checkout``        ``conn, wait``         ``conn`` was handed out, ``wait`` seconds after the checkout
                                           began (queued, plus making or checking the connection)
``checkin``         ``conn, held``         ``conn`` came back after being held ``held`` seconds
                                           (whether it is kept or discarded)
``discard``         ``conn, reason``       ``conn`` was found unusable: ``"released"`` (its holder
                                           discarded it: interrupted, or an error), ``"check"`` (it
                                           failed its health check); it is closed next
``close``           ``conn, reason``       ``conn`` was closed: ``"released"``, ``"check"``, ``"expired"``
                                           (``max_lifetime``) or ``"closed"`` (idle reaping, a smaller
                                           ``max_connections``, the pool closing)
``timeout``         ``waited, reason``     a checkout failed without a connection after ``waited``
                                           seconds: ``"timeout"`` (its time ran out), ``"deadline"``
                                           (shed: its :func:`greenpool.deadline` could not be met) or
                                           ``"overload"`` (refused at once by the adaptive policy in
                                           LIFO order: the queue held too much work)
``rejected``        ``waiting``            a checkout was refused at once: ``waiting`` greenlets
                                           already waited (``max_waiting``)
``queue_mode``      ``mode``               the adaptive queue policy switched to ``"lifo"`` or ``"fifo"``
==================  =====================  ===========================================================

Listeners run in the greenlet that caused the event (``checkout``/``checkin`` on the hot path: keep them
short and never block). A listener that raises an ``Exception`` has it logged (logger ``greenpool.events``,
at most once a minute per listener) and the pool carries on; nothing a listener does can lose a connection
or a slot: ``checkout`` and ``checkin`` run once the pool's books are straight (a ``checkout`` listener
interrupted discards the connection it was handed), the other events contain interruptions too.
While nobody listens to ``checkout`` or ``checkin``, the pool pays one attribute test per checkout and per
release.

Depends on the standard library; :func:`listen` imports ``greenpool.pool`` when first called (the pools import
this module, not the other way round).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["EVENTS", "PoolEvents", "listen", "listeners", "remove"]

logger = logging.getLogger("greenpool.events")

#: The event names :func:`listen` accepts.
EVENTS = ("connect", "connect_error", "checkout", "checkin", "discard", "close", "timeout", "rejected", "queue_mode")

#: ``close`` reasons that also fire ``discard`` (the connection was found unusable).
_DISCARD_REASONS = frozenset(("released", "check"))

#: Seconds between two log records about the same failing listener.
_LOG_EVERY = 60.0

Listener = Callable[..., Any]


class PoolEvents:
    """The listeners of one pool, by event, and the calls the pool makes to run them.

    Every pool has one. ``hot`` is the object itself while anybody listens to ``checkout`` or ``checkin``
    and ``None`` otherwise: the hot path reads it and does nothing more while it is ``None``. The other
    events are rare, and their methods run the (often empty) tuple of listeners directly. Each method runs
    every listener of its event in registration order.
    """

    __slots__ = ("_by_event", "_last_logged", "hot")

    def __init__(self) -> None:
        self._by_event: Dict[str, Tuple[Listener, ...]] = {name: () for name in EVENTS}
        self._last_logged: Dict[int, float] = {}
        self.hot: Optional[PoolEvents] = None

    def __bool__(self) -> bool:
        return any(self._by_event.values())

    def add(self, event: str, fn: Listener) -> None:
        if fn not in self._by_event[event]:
            self._by_event[event] = (*self._by_event[event], fn)
        self._update()

    def discard_listener(self, event: str, fn: Listener) -> bool:
        """Remove ``fn`` from ``event``; tell whether it was there."""
        current = self._by_event[event]
        if fn not in current:
            return False
        self._by_event[event] = tuple(f for f in current if f != fn)
        self._update()
        return True

    def _update(self) -> None:
        self.hot = self if self._by_event["checkout"] or self._by_event["checkin"] else None

    def of(self, event: str) -> Tuple[Listener, ...]:
        return self._by_event[event]

    def _run(self, event: str, *args: Any) -> None:
        """Run the listeners of a hot event: an interruption (``BaseException``) propagates to the caller."""
        for fn in self._by_event[event]:
            try:
                fn(*args)
            except Exception:
                self._log_failure(event, fn)

    def _run_contained(self, event: str, *args: Any) -> None:
        """Run the listeners of an event fired in the middle of the pool's bookkeeping: nothing but
        ``KeyboardInterrupt`` and ``SystemExit`` escapes (a listener interrupted must have blocked, which
        listeners must not do: logged), so that no slot or connection is lost."""
        for fn in self._by_event[event]:
            try:
                fn(*args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                self._log_failure(event, fn)

    def _log_failure(self, event: str, fn: Listener) -> None:
        now = time.monotonic()
        key = id(fn)
        last = self._last_logged.get(key)
        if last is not None and now - last < _LOG_EVERY:
            return
        self._last_logged[key] = now
        logger.exception("greenpool: a %r listener (%r) raised; the pool carries on", event, fn)

    # The calls the pools make.

    def connect(self, conn: Any, seconds: float) -> None:
        self._run_contained("connect", conn, seconds)

    def connect_error(self, exc: BaseException, seconds: float) -> None:
        self._run_contained("connect_error", exc, seconds)

    def checkout(self, conn: Any, wait: float, give_back: Callable[[Any], Any]) -> None:
        """Run the ``checkout`` listeners; if one is interrupted (``BaseException``), give ``conn`` back
        (``give_back(conn)``, which discards it) before the interruption propagates, so it is not lost."""
        try:
            self._run("checkout", conn, wait)
        except BaseException:
            give_back(conn)
            raise

    def checkin(self, conn: Any, held: float) -> None:
        self._run("checkin", conn, held)

    def close(self, conn: Any, reason: str) -> None:
        if reason in _DISCARD_REASONS:
            self._run_contained("discard", conn, reason)
        self._run_contained("close", conn, reason)

    def timeout(self, waited: float, reason: str) -> None:
        self._run_contained("timeout", waited, reason)

    def rejected(self, waiting: int) -> None:
        self._run_contained("rejected", waiting)

    def queue_mode(self, lifo: bool) -> None:
        self._run_contained("queue_mode", "lifo" if lifo else "fifo")


def _core(pool: Any) -> Any:
    """The core pool that fires the events: the pool itself, or a redis adapter's inner pool."""
    from greenpool.pool import Pool

    if isinstance(pool, Pool):
        return pool
    inner = getattr(pool, "_pool", None)
    if isinstance(inner, Pool):
        return inner
    raise TypeError(f"pool must be a greenpool pool (Pool, GeventPool, TarantoolPool, RedisMuxPool), got {pool!r}")


def _check_event(event: str) -> None:
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)}; got {event!r}")


def listen(pool: Any, event: str, fn: Listener) -> None:
    """Call ``fn`` on each ``event`` of ``pool`` (see the module docstring); never blocks.

    Adding the same listener twice keeps one. Raises ``ValueError`` for an unknown event, ``TypeError`` for
    a ``fn`` that is not callable or a ``pool`` that is not one of greenpool's.
    """
    _check_event(event)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    _core(pool)._stats.events.add(event, fn)


def remove(pool: Any, event: str, fn: Listener) -> None:
    """Stop calling ``fn`` on ``event``; never blocks. Raises ``ValueError`` if it was not listening."""
    _check_event(event)
    if not _core(pool)._stats.events.discard_listener(event, fn):
        raise ValueError(f"{fn!r} is not listening to {event!r} on {pool!r}")


def listeners(pool: Any, event: str) -> Tuple[Listener, ...]:
    """The listeners of ``event`` on ``pool``, in the order they run."""
    _check_event(event)
    return _core(pool)._stats.events.of(event)  # type: ignore[no-any-return]
