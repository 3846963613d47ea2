"""``greenpool.Pool``: the generic blocking connection pool for gevent.

Idle connections live on a ``gevent.queue.LifoQueue`` (the most recently used one is reused first, so
surplus connections go idle and can be reaped). Greenlets that find no idle connection and no free slot
queue in a FIFO of waiters; a released connection (or a freed slot) is handed directly to the oldest live
waiter, so a greenlet that releases and asks again queues behind the others (no barging). A waiter that
gave up (timed out, was killed) refuses the hand-off, which goes to the next one: nothing is lost.

The pool knows nothing of Redis or Tarantool: it is given a ``create`` callable and optional ``close`` and
``check`` callables. Depends on ``greenpool._green`` (the gevent seam), ``errors``, ``stats``, ``_validate``,
``events`` (listeners, see :mod:`greenpool.events`) and ``_log``.
"""

from __future__ import annotations

import logging
import os
import random
import traceback
import warnings
import weakref
from types import TracebackType
from typing import Any, Callable, Dict, Generic, List, NoReturn, Optional, Tuple, Type, TypeVar, Union

from greenpool import _green
from greenpool._deadline import remaining
from greenpool._log import RateLimited
from greenpool._validate import (
    check_callable,
    check_choice,
    check_int,
    check_name,
    check_seconds,
    check_sizes,
    deprecated_name,
)
from greenpool._waitqueue import EXPIRED, OVERLOADED, POLICIES, RAN_OUT, SHED, WaitQueue
from greenpool.errors import PoolClosed, PoolTimeout, TooManyWaiting, UnknownConnection
from greenpool.events import PoolEvents
from greenpool.stats import USAGE_BATCH, Counters, HistogramSnapshot

__all__ = ["Pool", "PooledConnection"]

logger = logging.getLogger("greenpool.pool")

C = TypeVar("C")


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


#: Marker for "use the pool's own setting".
UNSET: Any = _Unset()


class _Slot:
    """Handed to a waiter instead of a connection: "a slot is free, create a connection in it"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<slot>"


_SLOT = _Slot()


class _Entry:
    """A connection and what the pool knows about it.

    While the connection is idle, ``watcher`` (an event-loop read watcher on ``sock``, made by the pool's
    ``socket`` hook) notices the server closing it or sending anything; its callback sets ``stirred``,
    and the next checkout checks the connection before handing it out.
    """

    __slots__ = ("conn", "expires", "last_used", "leak_timer", "sock", "stirred", "taken", "watcher")

    def __init__(self, conn: Any, expires: float, now: float) -> None:
        self.conn = conn
        self.expires = expires
        self.last_used = now
        self.taken = now  # when it was last checked out
        self.leak_timer: Any = None
        self.sock: Any = None
        self.watcher: Any = None
        self.stirred = False

    def unwatch(self) -> None:
        """Close the idle watcher, if any (before the socket is closed, or the entry dropped)."""
        watcher, self.watcher, self.sock = self.watcher, None, None
        if watcher is not None:
            watcher.close()


def _on_idle_readable(entry: _Entry) -> None:
    """Idle watcher callback (runs in the hub): the server closed the idle connection or sent something."""
    entry.stirred = True
    watcher = entry.watcher
    if watcher is not None:
        watcher.stop()  # one-shot: the next checkout checks the connection


class PooledConnection(Generic[C]):
    """Context manager returned by :meth:`Pool.connection`.

    ``__enter__`` checks a connection out (blocking as :meth:`Pool.acquire` does) and returns it;
    ``__exit__`` returns it to the pool, or discards it if the block raised anything but one of the pool's
    ``keep_on`` exceptions.
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool[C], timeout: Any) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __enter__(self) -> C:
        self._conn = self._pool.acquire(self._timeout)
        return self._conn  # type: ignore[no-any-return]

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        conn, self._conn = self._conn, None
        discard = exc is not None and not self._pool.keeps(exc)
        self._pool.release(conn, discard=discard)


class Pool(Generic[C]):
    """A fair, bounded, blocking pool of connections for one gevent hub.

    ``create()`` makes a new connection (it may block, e.g. to connect); ``close(conn)`` closes one (default:
    call its ``close()`` method if it has one); ``check(conn)`` tells whether an idle connection still works
    (raise or return ``False`` for "broken"). Every other setting is keyword-only:

    - ``max_connections``: the hard limit of open connections (in use + idle + being created).
    - ``min_connections``: connections kept open even when idle (see :meth:`prewarm`).
    - ``timeout``: default seconds :meth:`acquire` waits; ``None`` waits forever, ``0`` never waits.
    - ``check_after_idle``: run ``check`` on checkout only when the connection has been idle this long
      (recent use proves liveness); ``0`` checks on every checkout.
    - ``max_lifetime``: close connections this old (less up to 10 % jitter) instead of reusing them.
    - ``max_idle``: close idle connections above ``min_connections`` after this long unused.
    - ``leak_threshold``: log a warning, with the stack that checked it out, for a connection held longer.
    - ``max_waiting``: refuse a checkout at once with :class:`TooManyWaiting` when this many greenlets
      already wait (``0``: no limit).
    - ``keep_on``: exception classes (or a predicate ``f(exc) -> bool``) that leave a connection reusable
      when they escape a ``with pool.connection()`` block (e.g. a server's error reply); any other
      exception discards the connection.
    - ``socket``: ``socket(conn)`` returns the connection's socket object (anything with ``fileno()``), or
      ``None`` when it has none (not connected). While a connection sits idle, the event loop watches that
      socket (no system call per checkout); when the server closes it (a restart, a failover, an idle
      timeout) or sends anything, the next checkout runs ``check`` on it whatever ``check_after_idle`` says,
      so a dead connection is replaced before a command fails on it. Default: no watching.
    - ``detach``: called in a child process, right after ``os.fork()``, for each connection inherited from
      the parent (idle or in use); it must close the child's copy of the socket without telling the server
      (e.g. redis-py's ``disconnect()``, which skips ``shutdown()`` in another process). Greenlets inherited
      from the parent that were reading such a socket then fail instead of stealing the parent's replies.
      Default: leave the inherited connections alone.
    - ``queue_policy``: who is served first when greenlets wait (see :class:`greenpool._waitqueue.WaitQueue`):
      ``"adaptive"`` (default: first come, first served while waiters are served in time, newest first while
      the queue is full of waiters that give up before their turn), ``"fifo"`` (always first come, first
      served) or ``"lifo"`` (always newest first).
    - ``name``: shown in ``repr``, log records and errors.
    - ``max_size``, ``min_size``: the former names of ``max_connections`` and ``min_connections``; they still
      work, with a ``DeprecationWarning``.

    A pool belongs to the first thread (gevent hub) that checks a connection out; using it from another
    thread raises :class:`WrongThread`. After ``os.fork()`` the child's pool starts empty and never uses the
    parent's connections; releasing one of them in the child is accepted and drops it.
    """

    #: Raised when a checkout times out; adapters substitute a subclass that is also their client's error.
    timeout_error: Type[PoolTimeout] = PoolTimeout
    #: Raised when the pool is closed.
    closed_error: Type[PoolClosed] = PoolClosed
    #: Raised when ``max_waiting`` greenlets already wait.
    too_many_waiting_error: Type[TooManyWaiting] = TooManyWaiting

    def __init__(
        self,
        create: Callable[[], C],
        close: Optional[Callable[[C], Any]] = None,
        check: Optional[Callable[[C], Any]] = None,
        *,
        max_connections: int = 10,
        min_connections: int = 0,
        timeout: Optional[float] = 30.0,
        check_after_idle: Optional[float] = 1.0,
        max_lifetime: Optional[float] = None,
        max_idle: Optional[float] = None,
        leak_threshold: Optional[float] = None,
        max_waiting: int = 0,
        keep_on: Union[Tuple[Type[BaseException], ...], Callable[[BaseException], bool]] = (),
        detach: Optional[Callable[[C], Any]] = None,
        socket: Optional[Callable[[C], Any]] = None,
        queue_policy: str = "adaptive",
        name: Optional[str] = None,
        max_size: Optional[int] = None,
        min_size: Optional[int] = None,
    ) -> None:
        max_connections = deprecated_name("max_size", "max_connections", max_size, max_connections, 10)
        min_connections = deprecated_name("min_size", "min_connections", min_size, min_connections, 0)
        self._create = check_callable("create", create, allow_none=False)
        self._close = check_callable("close", close)
        self._check = check_callable("check", check)
        self.min_connections, self.max_connections = check_sizes(min_connections, max_connections)
        self.timeout = check_seconds("timeout", timeout)
        self.check_after_idle = check_seconds("check_after_idle", check_after_idle)
        self.max_lifetime = check_seconds("max_lifetime", max_lifetime, allow_zero=False)
        self.max_idle = check_seconds("max_idle", max_idle, allow_zero=False)
        self.leak_threshold = check_seconds("leak_threshold", leak_threshold, allow_zero=False)
        self.max_waiting = check_int("max_waiting", max_waiting)
        self.keep_on = _check_keep_on(keep_on)
        self._detach = check_callable("detach", detach)
        self._socket = check_callable("socket", socket)
        self.queue_policy = check_choice("queue_policy", queue_policy, POLICIES)
        self.name = check_name(name) or f"pool-{id(self):x}"
        self._closed = False
        # The listeners (greenpool.events) live on the counters, not in an attribute of their own: one more
        # attribute on a pool costs every attribute read of the hot path (measured with callgrind).
        self._stats = Counters(PoolEvents())
        self._orphans: Dict[int, _Entry] = {}  # checked out before a fork, in the child
        self._reset()
        # Close the idle connections if the pool is garbage-collected; do not pass self to the callback.
        self._finalizer = weakref.finalize(self, _close_idle, self._idle, self._close_conn_fn())
        _LIVE_POOLS.add(self)

    # ------------------------------------------------------------------ state

    def _reset(self) -> None:
        """(Re)initialise the per-process state: at construction and in a child process after a fork."""
        self._idle: Any = _green.LifoQueue()
        self._idle_list: List[_Entry] = self._idle.queue  # the stack itself, for reaping and counting
        self._queue = WaitQueue(self.queue_policy, self._refused)
        self._queue.on_switch = self._queue_switched
        self._size = 0  # open connections + slots being filled
        self._in_use: Dict[int, _Entry] = {}
        self._thread: Optional[int] = None
        self._hub: Any = None
        self._loop: Any = None
        self._maint_timer: Any = None

    def _bind(self) -> None:
        """Tie the pool to the current thread's hub on first use; refuse any other thread after that."""
        ident = _green.claim_thread(self._thread, self.name, "Create one pool per thread.")
        if self._thread is None:
            self._thread = ident
            self._hub = _green.get_hub()
            self._loop = self._hub.loop
            self._queue.bind(self._hub)
            self._start_maintenance()

    def _after_fork(self) -> None:
        """Run in a child process right after ``os.fork()``: start empty, detach what the parent holds."""
        inherited = [*self._idle_list, *self._in_use.values()]
        for entry in inherited:
            entry.unwatch()  # the watchers belong to the parent's loop
        self._orphans = dict(self._in_use)
        self._finalizer.detach()
        if self._maint_timer is not None:
            self._maint_timer.close()
        self._queue.close()
        self._reset()
        self._finalizer = weakref.finalize(self, _close_idle, self._idle, self._close_conn_fn())
        if self._detach is not None:
            for entry in inherited:
                _close_quietly(self._detach, entry.conn, self.name)

    # ------------------------------------------------------------------ checkout

    def connection(self, timeout: Optional[float] = UNSET) -> PooledConnection[C]:
        """Return a context manager that checks a connection out and returns it afterwards.

        ``with pool.connection() as conn:`` blocks like :meth:`acquire`. If the block raises anything that is
        not one of ``keep_on`` (including ``gevent.Timeout``, ``GreenletExit``, ``KeyboardInterrupt``), the
        connection is closed instead of being reused, and its slot is freed.
        """
        return PooledConnection(self, timeout)

    def acquire(self, timeout: Optional[float] = UNSET) -> C:
        """Check a connection out.

        Returns an idle connection, or a new one (created in the caller's greenlet) while fewer than
        ``max_connections`` are open. Otherwise blocks, in the order ``queue_policy`` sets (first come first served
        while the pool keeps up), for up to ``timeout`` seconds (default: the pool's ``timeout``; ``None``
        forever; ``0`` not at all), then for as long as ``create()`` or ``check`` take on the connection it
        was given (the adapters bound those: see their docstrings).

        Raises :class:`PoolTimeout` when the time runs out, or at once inside a :func:`greenpool.deadline`
        whose budget cannot cover half the expected wait (or runs out while queued), or at once when the
        ``adaptive`` policy, overloaded, refuses a newcomer (see ``greenpool._waitqueue``); :class:`TooManyWaiting`
        when ``max_waiting`` greenlets already wait, :class:`PoolClosed` after :meth:`close`,
        :class:`WrongThread` from a second thread, and whatever ``create()`` raises when a new connection
        cannot be made.
        """
        if self._thread != _green.thread_ident() or self._loop is None:
            self._bind()
        if self._closed:
            raise self.closed_error(f"{self.name} is closed")
        stats = self._stats
        stats.requests_num += 1
        events = stats.events.hot
        start = _green.monotonic() if events is not None else 0.0
        if timeout is UNSET:
            timeout = self.timeout
        elif timeout is not None:
            timeout = check_seconds("timeout", timeout)
        value: Any
        nwaiting = self._queue.nwaiting
        if nwaiting == 0 and self._idle_list:
            value = self._idle_list.pop()
            stats.waits_ms.append(0.0)
        elif nwaiting == 0 and self._size < self.max_connections:
            self._size += 1
            value = _SLOT
            stats.waits_ms.append(0.0)
        else:
            value = self._wait(timeout)
        while True:
            if value is _SLOT:
                try:
                    entry = self._new_entry()
                except BaseException:
                    stats.requests_errors += 1
                    raise
                break
            entry = value
            if self._usable(entry):
                break
            # Broken or expired: close it and fill its slot with a new connection ourselves.
            value = _SLOT
        self._in_use[id(entry.conn)] = entry
        if self.leak_threshold is not None:
            self._watch_leak(entry)
        if events is not None:
            events.checkout(entry.conn, _green.monotonic() - start, self._give_back)
        return entry.conn  # type: ignore[no-any-return]

    def _wait(self, timeout: Optional[float]) -> Any:
        """Queue for a connection; return the entry or slot handed to us, or raise."""
        stats = self._stats
        queue = self._queue
        if self.max_waiting and queue.nwaiting >= self.max_waiting:
            stats.requests_rejected += 1
            stats.requests_errors += 1
            self._stats.events.rejected(queue.nwaiting)
            raise self.too_many_waiting_error(
                f"No connection available. {queue.nwaiting} greenlets already waiting "
                f"(max_waiting={self.max_waiting}); {self._state_text()}"
            )
        if timeout == 0:
            stats.refused_at_once += 1
            self._timed_out(0.0)
        start = _green.monotonic()
        value = queue.wait(timeout, self.max_connections)
        if value is OVERLOADED or value is SHED:  # refused at once: it did not wait
            stats.refused_at_once += 1
            if value is OVERLOADED:
                reason = "overload"
                why = (
                    "Overloaded: waiters give up before their turn and the queue already holds "
                    f"{queue.queued_work(self.max_connections) * 1000.0:.1f} ms of work, so a newcomer is refused "
                    "at once"
                )
            else:
                reason = "deadline"
                why = (
                    f"The caller's deadline ({(remaining() or 0.0) * 1000.0:.1f} ms left) would run out before its "
                    f"turn (expected wait {queue.expected_wait(self.max_connections) * 1000.0:.1f} ms)"
                )
            self._no_connection(0.0, reason, why)
        waited_ms = (_green.monotonic() - start) * 1000.0
        stats.requests_queued += 1
        stats.requests_wait_ms += waited_ms
        stats.waits_ms.append(waited_ms)
        stats.wait_hist.record(waited_ms)
        if value is RAN_OUT:  # skipped by a hand-off: the budget ran out while queued
            why = f"The caller's deadline ran out while it waited ({waited_ms:.1f} ms)"
            self._no_connection(waited_ms / 1000.0, "deadline", why)
        if value is EXPIRED:
            self._timed_out(waited_ms / 1000.0)
        return value

    def _refused(self, value: Any) -> None:
        """Take back what was handed to a waiter interrupted before it resumed: pass it on."""
        if isinstance(value, _Entry):
            self._put_back(value, _green.monotonic())
        elif value is _SLOT:
            self._free_slot()

    def keeps(self, exc: BaseException) -> bool:
        """Tell whether a connection stays reusable after ``exc`` escaped the block that used it."""
        keep_on = self.keep_on
        if isinstance(keep_on, tuple):
            return isinstance(exc, keep_on)
        return bool(keep_on(exc))

    def _timed_out(self, waited: float) -> NoReturn:
        self._stats.requests_timeouts += 1
        log = _pool_log(self, "timeout")
        log.log(logging.WARNING, "%s: checkout timed out after %.2f s", self._state_text(), waited)
        self._no_connection(waited, "timeout", f"Waited {waited:.2f} s")

    def _no_connection(self, waited: float, reason: str, why: str) -> NoReturn:
        """A checkout failed without a connection after ``waited`` seconds (``reason`` as the ``timeout`` event
        gives it): count it, tell the listeners, raise the pool's timeout error saying ``why``."""
        self._stats.requests_errors += 1
        self._stats.events.timeout(waited, reason)
        raise self.timeout_error(f"No connection available. {why}; {self._state_text()}")

    def _state_text(self) -> str:
        queue = self._queue
        handing = f"{queue.nhanding} being handed over, " if queue.nhanding else ""
        return (
            f"{self.name}: {len(self._in_use)}/{self.max_connections} in use, {handing}"
            f"{len(self._idle_list)} idle, {queue.nwaiting} waiting"
        )

    def _new_entry(self) -> _Entry:
        """Fill a reserved slot with a new connection; on any failure free the slot and re-raise."""
        stats = self._stats
        start = _green.monotonic()
        try:
            conn = self._create()
        except BaseException as exc:
            stats.connections_errors += 1
            seconds = _green.monotonic() - start
            stats.connect_hist.record(seconds * 1000.0)
            self._free_slot()
            self._stats.events.connect_error(exc, seconds)
            raise
        now = _green.monotonic()
        stats.connections_num += 1
        stats.connections_ms += (now - start) * 1000.0
        stats.connect_hist.record((now - start) * 1000.0)
        self._stats.events.connect(conn, now - start)
        expires = float("inf")
        if self.max_lifetime is not None:
            expires = now + self.max_lifetime * (1.0 - 0.1 * random.random())
        return _Entry(conn, expires, now)

    def _usable(self, entry: _Entry) -> bool:
        """Tell whether an idle entry may be handed out; close it (keeping its slot) when not."""
        if entry.watcher is not None:
            entry.watcher.stop()
        now = entry.taken = _green.monotonic()
        if now >= entry.expires:
            self._close_entry(entry, "expired")
            return False
        after = self.check_after_idle
        if self._check is None:
            return True
        if entry.stirred:  # the server closed it or sent something while it was idle: check it now
            entry.stirred = False
        elif after is None or now - entry.last_used < after:
            return True
        try:
            ok = self._check(entry.conn)
        except Exception:
            ok = False
        except BaseException:
            self._close_entry(entry)
            self._free_slot()
            raise
        if ok is False:
            self._stats.checks_failed += 1
            self._stats.connections_lost += 1
            logger.info("%s: an idle connection failed its health check; it is replaced", self.name)
            self._close_entry(entry, "check")
            return False
        entry.last_used = _green.monotonic()
        return True

    # ------------------------------------------------------------------ release

    def owns(self, conn: Any) -> bool:
        """Tell whether ``conn`` is currently checked out from this pool (in this process)."""
        entry = self._in_use.get(id(conn))
        return entry is not None and entry.conn is conn

    def release(self, conn: C, discard: bool = False) -> None:
        """Return a checked-out connection; never blocks.

        The connection goes straight to the oldest waiter, or onto the idle stack. With ``discard=True``
        (use it whenever the connection may be in an unknown state, e.g. a command was interrupted), or when
        it outlived ``max_lifetime``, or the pool is closed or above ``max_connections``, it is closed instead and
        its slot freed (handed to the oldest waiter, who then creates a connection).

        Raises :class:`UnknownConnection` if ``conn`` is not checked out from this pool (a foreign
        connection, or a second release); the pool's state is left as it was.
        """
        if self._thread is not None and self._thread != _green.thread_ident():
            self._bind()  # raises WrongThread
        key = id(conn)
        entry = self._in_use.pop(key, None)
        if entry is None or entry.conn is not conn:
            if entry is not None:
                self._in_use[key] = entry
            orphan = self._orphans.get(key)
            if orphan is not None and orphan.conn is conn:
                del self._orphans[key]  # checked out before a fork: the parent's, leave it alone
                return
            self._stats.returns_bad += 1
            raise UnknownConnection(f"{self.name}: connection {_conn_label(conn)} is not checked out from this pool")
        if entry.leak_timer is not None:
            entry.leak_timer.close()
            entry.leak_timer = None
        if discard:
            self._stats.connections_lost += 1
            held = _green.monotonic() - entry.taken
            self._close_entry(entry, "released")
            self._free_slot()
            self._returned(entry, held)
            return
        now = _green.monotonic()
        queue = self._queue
        held = now - entry.taken
        stats = self._stats
        usage = stats.usage_s
        usage.append(held)
        if len(usage) >= USAGE_BATCH:
            stats.fold_usage()
        queue.hold = queue.hold + (held - queue.hold) * 0.05 if queue.hold else held
        if queue.lifo:
            queue.released(now)
        self._put_back(entry, now)
        events = stats.events.hot
        if events is not None:
            events.checkin(conn, held)

    def _returned(self, entry: _Entry, held: float) -> None:
        """Account for a connection's return when it is discarded (the kept ones are accounted inline)."""
        stats = self._stats
        stats.usage_s.append(held)
        stats.events.checkin(entry.conn, held)

    def _give_back(self, conn: Any) -> None:
        """Take back a connection a ``checkout`` listener was interrupted with (it is discarded)."""
        if self.owns(conn):
            self.release(conn, discard=True)

    def _queue_switched(self, lifo: bool) -> None:
        """The adaptive queue policy switched order (called by the wait queue)."""
        # Rate-limited: under a load near the pool's limit the policy may switch back and forth many times a second.
        if lifo:
            _pool_log(self, "lifo").log(
                logging.WARNING,
                "%s: overloaded, waiters give up before their turn: serving the newest waiters first",
                self.name,
            )
        else:
            _pool_log(self, "fifo").log(
                logging.INFO, "%s: no longer overloaded: serving waiters first come, first served", self.name
            )
        self._stats.events.queue_mode(lifo)

    def _put_back(self, entry: _Entry, now: float) -> None:
        if self._closed or now >= entry.expires or self._size > self.max_connections:
            self._close_entry(entry, "expired" if now >= entry.expires else "closed")
            self._free_slot()
            return
        entry.last_used = now
        queue = self._queue
        if not (queue.nwaiting and queue.hand_off(entry)):
            self._idle_list.append(entry)
            if self._socket is not None:
                self._watch_idle(entry)

    def _watch_idle(self, entry: _Entry) -> None:
        """Watch an idle connection's socket for the server closing it (or sending anything)."""
        try:
            sock = self._socket(entry.conn)
        except Exception:
            sock = None
        watcher = entry.watcher
        if watcher is not None and entry.sock is sock:
            watcher.start(_on_idle_readable, entry)
            return
        # A new socket (the connection reconnected), or none: a new watcher, so that the loop registers the
        # descriptor afresh even when its number is the old one's.
        entry.unwatch()
        try:
            fd = -1 if sock is None else sock.fileno()
        except Exception:
            fd = -1
        if fd >= 0:
            watcher = entry.watcher = self._loop.io(fd, 1, ref=False)
            entry.sock = sock
            watcher.start(_on_idle_readable, entry)

    def _free_slot(self) -> None:
        """A connection was closed (or never made): let the oldest waiter create one in its place."""
        self._size -= 1
        if self._queue.nwaiting and self._size < self.max_connections and not self._closed:
            self._size += 1
            if not self._queue.hand_off(_SLOT):
                self._size -= 1

    def _close_entry(self, entry: _Entry, reason: str = "closed") -> None:
        """Close a connection whose slot the caller accounts for (not counted in ``_size`` here).

        ``reason`` is passed to the ``close`` listeners (see :mod:`greenpool.events`)."""
        entry.unwatch()
        self._stats.connections_closed += 1
        _close_quietly(self._close_conn_fn(), entry.conn, self.name)
        self._stats.events.close(entry.conn, reason)

    def _close_conn_fn(self) -> Callable[[Any], Any]:
        return self._close if self._close is not None else _default_close

    # ------------------------------------------------------------------ leaks and maintenance

    def _watch_leak(self, entry: _Entry) -> None:
        stack = "".join(traceback.format_stack(limit=16)[:-2])
        timer = self._loop.timer(self.leak_threshold)
        timer.start(_report_leak, self.name, _conn_label(entry.conn), self.leak_threshold, stack)
        entry.leak_timer = timer

    def _start_maintenance(self) -> None:
        if self.max_idle is None and self.max_lifetime is None and not self.min_connections:
            return
        interval = min(x for x in (self.max_idle, self.max_lifetime, 1.0) if x is not None)
        interval = max(0.05, interval / 2.0)
        timer = self._loop.timer(interval, interval, ref=False)
        timer.start(_maintain_soon, weakref.ref(self))
        self._maint_timer = timer

    def maintain(self) -> None:
        """Close expired and surplus idle connections, then top the pool up to ``min_connections``.

        Called periodically in the background when ``max_idle``, ``max_lifetime`` or ``min_connections`` is set;
        blocks while it creates connections (errors are logged, not raised).
        """
        if self._closed:
            return
        now = _green.monotonic()
        idle = self._idle_list
        # The bottom of the stack has been idle longest.
        i = 0
        while i < len(idle):
            entry = idle[i]
            too_idle = self.max_idle is not None and now - entry.last_used >= self.max_idle
            if now >= entry.expires or (too_idle and self._size > self.min_connections):
                del idle[i]
                self._close_entry(entry, "expired" if now >= entry.expires else "closed")
                self._free_slot()
            else:
                i += 1
        self.prewarm(log_errors=True)

    def prewarm(self, log_errors: bool = False) -> None:
        """Create connections (in this greenlet, one at a time) until ``min_connections`` are open.

        Blocks for as long as the creations take. Raises what ``create()`` raises, unless ``log_errors``.
        """
        if self._loop is None:
            self._bind()
        while not self._closed and self._size < self.min_connections and self._queue.nwaiting == 0:
            self._size += 1
            try:
                entry = self._new_entry()
            except Exception:
                if not log_errors:
                    raise
                logger.warning("%s: could not open a connection to keep min_connections", self.name, exc_info=True)
                return
            self._put_back(entry, _green.monotonic())

    # ------------------------------------------------------------------ sizing and closing

    def resize(self, *, max_connections: Optional[int] = None, min_connections: Optional[int] = None) -> None:
        """Change the size limits (keyword-only; ``None`` keeps a limit as it is); never blocks.

        Growing ``max_connections`` lets waiters create connections at once; shrinking it closes surplus idle
        connections now and surplus busy ones when they are released. Raises ``ValueError``/``TypeError``
        (naming the argument) for a bad size, or ``min_connections`` above ``max_connections``, and then
        changes nothing.
        """
        new_min, new_max = check_sizes(
            self.min_connections if min_connections is None else min_connections,
            self.max_connections if max_connections is None else max_connections,
        )
        self.min_connections, self.max_connections = new_min, new_max
        idle = self._idle_list
        while self._size > self.max_connections and idle:
            self._close_entry(idle.pop(0))
            self._size -= 1
        while self._queue.nwaiting and self._size < self.max_connections:
            self._size += 1
            if not self._queue.hand_off(_SLOT):
                self._size -= 1
                break

    def close(self) -> None:
        """Close the pool; idempotent, never blocks.

        Idle connections are closed now, busy ones when released. Greenlets waiting for a connection get
        :class:`PoolClosed`, and so does every later checkout.
        """
        if self._closed:
            return
        self._closed = True
        if self._maint_timer is not None:
            self._maint_timer.close()
            self._maint_timer = None
        self._queue.close()
        self._queue.fail_all(self.closed_error(f"{self.name} was closed while waiting"))
        idle = self._idle_list
        while idle:
            self._close_entry(idle.pop())
            self._size -= 1

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def max_size(self) -> int:
        """Deprecated name of :attr:`max_connections`."""
        _warn_renamed("max_size", "max_connections")
        return self.max_connections

    @property
    def min_size(self) -> int:
        """Deprecated name of :attr:`min_connections`."""
        _warn_renamed("min_size", "min_connections")
        return self.min_connections

    def __enter__(self) -> Pool[C]:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ introspection

    @property
    def size(self) -> int:
        """Open connections (idle + in use + being created)."""
        return self._size

    @property
    def idle(self) -> int:
        """Connections on the idle stack."""
        return len(self._idle_list)

    @property
    def in_use(self) -> int:
        """Connections checked out."""
        return len(self._in_use)

    @property
    def handing_over(self) -> int:
        """Connections (or free slots) handed to waiting greenlets that have not resumed yet."""
        return self._queue.nhanding

    @property
    def waiting(self) -> int:
        """Greenlets queued for a connection."""
        return self._queue.nwaiting

    def in_use_connections(self) -> List[C]:
        """The connections checked out right now (a new list)."""
        return [entry.conn for entry in self._in_use.values()]

    def idle_connections(self) -> List[C]:
        """The connections on the idle stack right now, most recently used last (a new list)."""
        return [entry.conn for entry in self._idle_list]

    def get_stats(self) -> Dict[str, Union[int, float, str]]:
        """Return a snapshot of the pool as a plain dict.

        Gauges: ``name``, ``pool_min``, ``pool_max``, ``pool_size`` (open connections), ``pool_available``
        (idle), ``in_use``, ``pool_handing_over`` (connections or free slots handed to waiting greenlets that
        have not resumed yet: neither idle nor in use), ``requests_waiting``. Totals since creation (or the
        last :meth:`pop_stats`):
        ``requests_num`` (checkouts asked for), ``requests_queued`` (had to wait: not those refused at once),
        ``requests_wait_ms``, ``requests_errors`` (failed checkouts), ``requests_timeouts``, ``requests_rejected``
        (max_waiting), ``connections_num`` (made), ``connections_ms`` (time spent making them),
        ``connections_errors`` (failed to make), ``connections_lost`` (found broken or discarded),
        ``connections_closed``, ``checks_failed``, ``returns_bad`` (releases of connections not checked out),
        ``usage_ms`` (time connections were held, checkout to release) and ``returns_num`` (releases it counts).
        Checkout wait percentiles over the last 10,000 checkouts not refused at once: ``wait_p50_ms``,
        ``wait_p99_ms``, ``wait_max_ms``
        (bucketed histograms, which add up across processes: :meth:`get_histograms`).
        """
        out: Dict[str, Union[int, float, str]] = {
            "name": self.name,
            "pool_min": self.min_connections,
            "pool_max": self.max_connections,
            "pool_size": self._size,
            "pool_available": len(self._idle_list),
            "in_use": len(self._in_use),
            "pool_handing_over": self._queue.nhanding,
            "requests_waiting": self._queue.nwaiting,
        }
        out.update(self._stats.snapshot())
        out.update(self._queue.stats())
        return out

    def get_histograms(self) -> Dict[str, HistogramSnapshot]:
        """Return the duration histograms since creation (or the last :meth:`pop_stats`); never blocks.

        ``wait``: checkout waits (every checkout not refused at once; those served at once count as 0 ms);
        ``connect``: time to make a connection (failed attempts included); ``usage``: time each connection
        was held, checkout to release. Each is a :class:`greenpool.stats.HistogramSnapshot` with buckets
        bounded by :data:`greenpool.stats.BOUNDS_MS`.
        """
        return self._stats.histograms()

    def pop_stats(self) -> Dict[str, Union[int, float, str]]:
        """Return :meth:`get_stats` and reset the totals to zero."""
        out = self.get_stats()
        self._stats = Counters(self._stats.events)
        self._queue.reset_stats()
        return out

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._size}/{self.max_connections} idle={len(self._idle_list)}"
        return f"<{type(self).__name__} {self.name} {state} in_use={len(self._in_use)} waiting={self._queue.nwaiting}>"


# ---------------------------------------------------------------------- helpers


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"{old!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=3)


def _check_keep_on(keep_on: Any) -> Any:
    if isinstance(keep_on, type):
        keep_on = (keep_on,)
    if callable(keep_on) and not isinstance(keep_on, tuple):
        return keep_on
    if not isinstance(keep_on, tuple) or not all(
        isinstance(cls, type) and issubclass(cls, BaseException) for cls in keep_on
    ):
        raise TypeError(f"keep_on must be a tuple of exception classes or a callable, got {keep_on!r}")
    return keep_on


def _conn_label(conn: Any) -> str:
    return f"<{type(conn).__name__} at 0x{id(conn):x}>"


def _default_close(conn: Any) -> None:
    close = getattr(conn, "close", None)
    if close is not None:
        close()


def _close_quietly(close: Callable[[Any], Any], conn: Any, name: str) -> None:
    try:
        close(conn)
    except Exception:
        logger.debug("%s: error while closing %s", name, _conn_label(conn), exc_info=True)


def _close_idle(idle: Any, close: Callable[[Any], Any]) -> None:
    entries = idle.queue
    while entries:
        entry = entries.pop()
        entry.unwatch()
        _close_quietly(close, entry.conn, "finalizer")


def _report_leak(name: str, label: str, threshold: float, stack: str) -> None:
    logger.warning(
        "%s: connection %s has been checked out for more than %.2f s; it was acquired at:\n%s",
        name,
        label,
        threshold,
        stack,
    )


#: The rate limiters of each pool's log records that come in bursts (kept apart: see ``Pool.__init__``).
_POOL_LOGS: weakref.WeakKeyDictionary[Pool[Any], Dict[str, RateLimited]] = weakref.WeakKeyDictionary()


def _pool_log(pool: Pool[Any], kind: str) -> RateLimited:
    """The rate-limited log of ``pool``'s records of one ``kind`` (checkout timeouts, queue mode switches)."""
    logs = _POOL_LOGS.get(pool)
    if logs is None:
        logs = _POOL_LOGS[pool] = {}
    log = logs.get(kind)
    if log is None:
        log = logs[kind] = RateLimited(logger)
    return log


#: Every pool of this process, reset in the child right after a fork.
_LIVE_POOLS: weakref.WeakSet[Pool[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_LIVE_POOLS):
        pool._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _maintain_soon(pool_ref: weakref.ReferenceType[Pool[Any]]) -> None:
    pool = pool_ref()
    if pool is not None and not pool.closed:
        _green.spawn(pool.maintain)
