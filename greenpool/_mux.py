"""What the multiplexers (``greenpool.redis_mux``, ``greenpool.tarantool_mux``) share: socket I/O, records, words.

The words, used the same way in both multiplexers:

- a *shared socket* (:class:`MuxIO`): one server connection that carries the requests of many greenlets;
  ``shared_connections`` of them per multiplexer, each connecting on first use (one :class:`ConnectAttempt`
  at a time, the other greenlets wait for it: :func:`connect_shared`);
- an *in-flight permit*: room for one request on the shared sockets, ``max_in_flight`` of them per multiplexer
  (:attr:`MuxShared.in_flight` are taken); a request without one waits as a :class:`DeferredRequest` in
  :attr:`MuxShared.deferred`, first come first served, until a reply frees one (:meth:`MuxShared.drain`);
- a *waiter*: what one request's greenlet is parked on until its reply (or its failure) comes; it is resumed
  from the hub by :func:`resume` or :func:`resume_all`, never through an Event.

:class:`MuxIO` is the base of a multiplexer's socket class: it owns the socket, its watchers, the read buffer and
the output (:meth:`MuxIO.start_io`, :meth:`MuxIO.stop_io`); the subclass provides :meth:`MuxIO.send_failed`,
:meth:`MuxIO.read_failed` and an ``on_readable`` that starts with :meth:`MuxIO.receive`. A request goes out at once
while the server has at most a quarter as many requests to work on as wait to be sent (so the server never idles
long while a batch builds up); under load, everything queued during one turn of the gevent loop goes out in one
non-blocking ``send``. What does not fit into the socket buffer goes on when the socket is writable. Depends on
``greenpool._green``.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from gevent.event import Event
from gevent.monkey import get_original

from greenpool import _green
from greenpool.stats import Histogram, HistogramSnapshot

__all__ = [
    "CONNECTING",
    "DOWN",
    "MAX_SHARED_CONNECTIONS",
    "RESUME_BATCH",
    "UP",
    "ConnectAttempt",
    "DeferredRequest",
    "MuxIO",
    "MuxShared",
    "UNSET",
    "RawSocket",
    "connect_shared",
    "either_argument",
    "mux_histograms",
    "mux_stats",
    "reset_totals",
    "resume",
    "resume_all",
]

logger = logging.getLogger("greenpool")

#: The stdlib socket class even when ``socket`` is monkey-patched: the hub's watchers drive it directly.
RawSocket: Any = get_original("socket", "socket")

#: Replies parsed before their greenlets are resumed. Holding many more parsed replies back (hundreds) makes
#: the collection of the young generation, hence the whole multiplexer, several times slower under thousands
#: of greenlets.
RESUME_BATCH = 16

# What a non-blocking send or receive raises when it would block; over TLS, the SSL socket's own errors too (a TLS
# write may need to read first, and the other way round).
_WOULD_BLOCK = (BlockingIOError,)
_TLS_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

#: Socket states.
DOWN, CONNECTING, UP = 0, 1, 2

#: The most shared sockets one multiplexer spreads its requests over (``shared_connections``): each is a server
#: connection and a few objects made up front; a few per CPU core of the server are what helps.
MAX_SHARED_CONNECTIONS = 1024

_READ_SIZE = 256 * 1024


class MuxIO:
    """Non-blocking I/O of one multiplexed socket: batched output, and the read that starts each read callback
    (all of it runs in the hub or never blocks)."""

    __slots__ = (
        "attempt",
        "bytes_in",
        "bytes_out",
        "connects",
        "flush_pending",
        "generation",
        "handed",
        "loop",
        "out",
        "read_watcher",
        "reads",
        "sent_marks",
        "sock",
        "state",
        "tls",
        "unanswered",
        "unsent",
        "view",
        "would_block",
        "write_watcher",
        "writes",
        "wview",
    )

    def __init__(self) -> None:
        self.state = DOWN
        self.sock: Any = None
        self.loop: Any = None
        self.out: List[Any] = []
        self.unsent = 0  # requests in ``out``
        self.unanswered = 0  # requests handed to the socket whose reply has not been parsed yet
        self.handed = 0  # requests handed to the socket since it connected
        self.sent_marks: Deque[Any] = deque()  # (when, handed) per send whose replies have not all been parsed
        self.wview: Optional[memoryview] = None  # the rest of a send that did not fit into the socket buffer
        self.flush_pending = False
        self.read_watcher: Any = None
        self.write_watcher: Any = None
        self.view = memoryview(b"")  # the read buffer, made on first connect
        self.generation = _green.fork_generation()
        self.connects = self.reads = self.writes = self.bytes_in = self.bytes_out = 0
        self.attempt: Optional[ConnectAttempt] = None  # the connect under way, if any
        self.tls = False  # ``sock`` is an ``ssl.SSLSocket`` (or gevent's) in non-blocking mode
        self.would_block: Any = _WOULD_BLOCK

    def admit(self, request: DeferredRequest) -> bool:
        """Take ``request``, which is given its permits if this returns True, onto this socket: put what it sends
        in ``out`` (:meth:`pushed` follows). Return False when nobody waits for it any more or it cannot be sent
        (then its waiters have been failed). Never blocks."""
        raise NotImplementedError

    def on_readable(self) -> None:
        """Read watcher callback (in the hub): starts with :meth:`receive`, then parses (the subclass says how)."""
        raise NotImplementedError

    def start_io(self, sock: Any, loop: Any, tls: bool = False) -> None:
        """Start driving the connected, non-blocking ``sock`` from the hub's ``loop``; the socket is up. With
        ``tls``, ``sock`` is an SSL socket whose handshake is done: its records are read and written here."""
        self.sock = sock
        self.tls = tls
        self.would_block = _TLS_WOULD_BLOCK if tls else _WOULD_BLOCK
        self.loop = loop
        if not self.view:
            self.view = memoryview(bytearray(_READ_SIZE))
        self.wview = None
        self.read_watcher = loop.io(sock.fileno(), 1)
        self.write_watcher = loop.io(sock.fileno(), 2)
        self.read_watcher.start(self.on_readable)
        self.state = UP
        self.connects += 1

    def stop_io(self, close_socket: bool = True) -> None:
        """Stop the watchers, drop the socket (closing it unless told not to) and what waited to be sent; the
        socket is down. Never blocks."""
        for watcher in (self.read_watcher, self.write_watcher):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.read_watcher = self.write_watcher = None
        sock, self.sock = self.sock, None
        if sock is not None and close_socket:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass
        self.state = DOWN
        self.wview = None
        self.out = []
        self.unsent = self.unanswered = self.handed = 0
        self.sent_marks.clear()
        self.flush_pending = False

    def send_failed(self, exc: OSError) -> None:
        """Fail the socket after ``send`` raised ``exc`` (the subclass says how); called in the hub."""
        raise NotImplementedError

    def read_failed(self, exc: Optional[OSError]) -> None:
        """Fail the socket after ``recv`` raised ``exc``, or the server closed it (``None``); called in the hub."""
        raise NotImplementedError

    def receive(self) -> int:
        """Read what has arrived into ``view`` (in the hub, never blocks); return how many bytes, or 0 when there
        is nothing to parse: nothing yet, the parent's socket in a fork's child, or a failure (then
        :meth:`read_failed` has run)."""
        if self.generation != _green.fork_generation():
            self.read_watcher.stop()  # the parent's socket, inherited by a child: leave it to the parent
            return 0
        if self.tls:
            return self.receive_tls()
        try:
            nbytes: int = self.sock.recv_into(self.view)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.read_failed(exc)
            return 0
        if not nbytes:
            self.read_failed(None)
            return 0
        self.reads += 1
        self.bytes_in += nbytes
        return nbytes

    def receive_tls(self) -> int:
        """:meth:`receive` over TLS: one ``recv_into`` returns at most one TLS record (16 KB), so read until the
        SSL socket would block or the buffer is full; when it is full with more decrypted data held by the SSL
        object (which no watcher sees), read again at the next loop turn."""
        sock, view = self.sock, self.view
        nbytes = 0
        closed = False
        try:
            while nbytes < len(view):
                got: int = sock.recv_into(view[nbytes:])
                if not got:
                    closed = True
                    break
                nbytes += got
        except _TLS_WOULD_BLOCK:
            pass
        except OSError as exc:
            self.read_failed(exc)
            return 0
        if not nbytes:
            if closed:
                self.read_failed(None)
            return 0
        if nbytes == len(view) and sock.pending():
            self.loop.run_callback(self._read_pending, sock)
        self.reads += 1
        self.bytes_in += nbytes
        return nbytes

    def _read_pending(self, sock: Any) -> None:
        if self.sock is sock:  # not failed (and maybe reconnected) meanwhile
            self.on_readable()

    def schedule_flush(self) -> None:
        """Send what is queued at the end of this loop turn (once, however much is queued meanwhile)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.run_callback(self.flush)

    def pushed(self, n: int = 1) -> None:
        """Count ``n`` requests just appended to ``out`` and decide when they go: at once when the server has
        nothing to work on, or a quarter or less of what waits here (so that it never idles long while a batch
        builds up), else with everything else queued during this loop turn.

        From idle, batches go out as 1, 4, 20, 100... requests. Measured against sending once the server has
        as many as wait here (1, 1, 2, 4...): 10 greenlets, Tarantool replace 1.5 KB, 64k/s against 58k/s (medians of
        8 interleaved runs); Redis PING 83-86k/s against 73-75k/s; the same at 100 to 5000 greenlets.
        """
        self.unsent += n
        if self.unsent >= 4 * self.unanswered:
            self.send()
        else:
            self.schedule_flush()

    def flush(self) -> None:
        """Send what is queued (a hub callback, or the end of a read); never blocks."""
        self.flush_pending = False
        self.send()

    def time_replies(self, hist: Histogram) -> None:
        """Record in ``hist`` how long each send waited until as many replies as requests handed over by then had
        been parsed (one value per send, not per request: a few operations per read callback). Never blocks."""
        marks = self.sent_marks
        if not marks:
            return
        parsed = self.handed - self.unanswered
        if marks[0][1] > parsed:
            return
        now = _green.monotonic()
        while marks and marks[0][1] <= parsed:
            hist.record((now - marks.popleft()[0]) * 1000.0)

    def queue(self, data: List[Any], n: int) -> None:
        """Queue ``data``, ``n`` requests that hold their permits (sent as :meth:`pushed` decides)."""
        self.out.extend(data)
        self.pushed(n)

    def send(self) -> None:
        """Send what is queued, as much as the socket takes now; the rest when it is writable. Never blocks."""
        out = self.out
        if not out or self.wview is not None or self.sock is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.unanswered += self.unsent
        self.handed += self.unsent
        self.unsent = 0
        self.sent_marks.append((_green.monotonic(), self.handed))
        try:
            sent = self.sock.send(data)
        except self.would_block:
            sent = 0
        except OSError as exc:
            if _green.getcurrent() is _green.get_hub():
                self.send_failed(exc)
            else:  # a greenlet's immediate send: fail the socket from the hub, which resumes the parked greenlets
                self.loop.run_callback(self._send_failed_later, self.sock, exc)
            return
        self.writes += 1
        self.bytes_out += sent
        if sent < len(data):
            self.wview = memoryview(data)[sent:]
            self.write_watcher.start(self.on_writable)

    def _send_failed_later(self, sock: Any, exc: OSError) -> None:
        if self.sock is sock:  # not failed (and maybe reconnected) meanwhile
            self.send_failed(exc)

    def on_writable(self) -> None:
        """Write watcher callback: go on with a send that did not fit into the socket buffer."""
        if self.generation != _green.fork_generation():
            self.write_watcher.stop()  # the parent's socket, inherited by a child: leave it to the parent
            return
        while True:
            view = self.wview
            if view is None:
                out = self.out
                if not out:
                    self.write_watcher.stop()
                    return
                view = memoryview(b"".join(out))
                out.clear()
                self.unanswered += self.unsent
                self.unsent = 0
            try:
                sent = self.sock.send(view)
            except self.would_block:
                self.wview = view
                return
            except OSError as exc:
                self.send_failed(exc)
                return
            self.writes += 1
            self.bytes_out += sent
            if sent < len(view):
                self.wview = view[sent:]
                return
            self.wview = None


# ---------------------------------------------------------------------- records


class ConnectAttempt:
    """One connect of a shared socket: ``done`` is set when it ends, ``error`` is what it raised (None: it
    succeeded). The greenlets that wait for it read both."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = Event()
        self.error: Optional[BaseException] = None


class DeferredRequest:
    """Requests waiting for in-flight permits: ``n`` requests for socket ``sock``, queued at sequence number
    ``seq`` (a multiplexer-wide count of requests made, so that ``seq`` orders them). A multiplexer subclasses it
    to hold the packed requests and who waits for the replies."""

    __slots__ = ("n", "seq", "sock")

    def __init__(self, sock: MuxIO, n: int, seq: int) -> None:
        self.sock = sock
        self.n = n
        self.seq = seq

    def waiting(self) -> int:
        """How many of its greenlets still wait (the others gave up)."""
        return self.n


class MuxShared:
    """What the shared sockets of one multiplexer share: the in-flight permits, the requests waiting for one,
    the counters. Kept apart from the multiplexer so that the hub's watchers (which hold the sockets, which
    hold this) never keep the multiplexer itself alive."""

    __slots__ = (
        "closed",
        "connect_errors",
        "dedicated_checkouts",
        "deferred",
        "dropped",
        "error_replies",
        "failed",
        "in_flight",
        "max_in_flight",
        "replies",
        "reply_hist",
        "requests",
        "timeouts",
    )

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # permits taken: requests sent (or queued to be sent) and not answered yet
        self.deferred: Deque[DeferredRequest] = deque()
        self.closed = False
        self.requests = self.replies = self.error_replies = self.dropped = self.failed = self.timeouts = 0
        self.connect_errors = self.dedicated_checkouts = 0
        self.reply_hist = Histogram()  # per send: until its replies were parsed (MuxIO.time_replies)

    def has_room(self, n: int) -> bool:
        """Whether ``n`` requests may take their permits now (nothing waits before them and they fit; a batch
        larger than ``max_in_flight`` goes alone when nothing is in flight)."""
        in_flight = self.in_flight
        return not self.deferred and (not in_flight or in_flight + n <= self.max_in_flight)

    def drain(self) -> None:
        """Give permits to the oldest deferred requests while there is room, and hand each to its socket (in
        the hub or a greenlet; never blocks)."""
        deferred = self.deferred
        sock: Any = None  # the socket the requests admitted since the last pushed() went to
        admitted = 0
        while deferred:
            request = deferred[0]
            n = request.n
            if self.in_flight and self.in_flight + n > self.max_in_flight:
                break
            deferred.popleft()
            if request.sock is not sock:
                if admitted:
                    sock.pushed(admitted)
                sock, admitted = request.sock, 0
            if sock.admit(request):
                self.in_flight += n
                admitted += n
        if admitted:  # one pushed() per run of requests for one socket: they go out together
            sock.pushed(admitted)

    def waiting_since(self, seq: int) -> bool:
        """Whether the request numbered ``seq`` (still waiting for something) waits for a permit rather than for
        its reply: it was queued no earlier than the oldest deferred request."""
        deferred = self.deferred
        return bool(deferred) and seq >= deferred[0].seq


# ---------------------------------------------------------------------- resuming waiters


def resume(glet: Any, value: Any) -> None:
    """Resume ``glet`` (parked in ``hub.switch()``) with ``value``, from the hub. An error escaping it (only a raw
    greenlet whose parent is the hub can raise here) is logged: it must not stop the read callback."""
    try:
        glet.switch(value)
    except BaseException:  # pragma: no cover - see the docstring
        logger.exception("greenpool: a greenlet resumed by a multiplexer raised")


def resume_all(ready: List[Any]) -> None:
    """Resume each greenlet of ``[greenlet, value, greenlet, value, ...]`` with its value, in order (in the hub)."""
    for i in range(0, len(ready), 2):
        try:
            ready[i].switch(ready[i + 1])
        except BaseException:  # pragma: no cover - see resume()
            logger.exception("greenpool: a greenlet resumed by a multiplexer raised")


# ---------------------------------------------------------------------- connecting


def connect_shared(
    sock: MuxIO,
    shared: MuxShared,
    open_socket: Callable[[], Any],
    start: Callable[[Any], None],
    waiter_error: Callable[[BaseException], Optional[BaseException]],
) -> None:
    """Bring ``sock`` up, or wait for the greenlet doing so; blocks this greenlet for one attempt at most.

    ``open_socket()`` connects (bounded by the multiplexer's connect bound) and returns what ``start(opened)``
    takes to start driving it. A greenlet that waited for another's attempt that failed raises
    ``waiter_error(error)``, or tries again itself when that returns None. The one that connected raises what
    the attempt raised. Failed attempts are counted in ``shared.connect_errors``.
    """
    while sock.state != UP:
        attempt = sock.attempt
        if attempt is not None:
            attempt.done.wait()
            if sock.state != UP and attempt.error is not None:
                error = waiter_error(attempt.error)
                if error is not None:
                    raise error
            continue
        attempt = sock.attempt = ConnectAttempt()
        sock.state = CONNECTING
        try:
            start(open_socket())
        except BaseException as exc:
            sock.state = DOWN
            attempt.error = exc
            shared.connect_errors += 1
            raise
        finally:
            sock.attempt = None
            attempt.done.set()


# ---------------------------------------------------------------------- stats and arguments


def mux_stats(shared: MuxShared, sockets: List[MuxIO]) -> Dict[str, int]:
    """The ``mux_*`` statistics both multiplexers report (see the README's table); in a fork's child, they
    start from zero. Never blocks."""
    return {
        "mux_shared_connections": len(sockets),
        "mux_sockets_up": sum(1 for sock in sockets if sock.state == UP),
        "mux_in_flight": shared.in_flight,
        "mux_max_in_flight": shared.max_in_flight,
        "mux_waiting": sum(request.waiting() for request in shared.deferred),
        "mux_requests": shared.requests,
        "mux_replies": shared.replies,
        "mux_error_replies": shared.error_replies,
        "mux_timeouts": shared.timeouts,
        "mux_failed": shared.failed,
        "mux_dropped": shared.dropped,
        "mux_connects": sum(sock.connects for sock in sockets),
        "mux_connect_errors": shared.connect_errors,
        "mux_reads": sum(sock.reads for sock in sockets),
        "mux_writes": sum(sock.writes for sock in sockets),
        "mux_bytes_in": sum(sock.bytes_in for sock in sockets),
        "mux_bytes_out": sum(sock.bytes_out for sock in sockets),
    }


def mux_histograms(shared: MuxShared) -> Dict[str, HistogramSnapshot]:
    """The ``reply`` histogram both multiplexers report: per send, the milliseconds until as many replies as
    requests sent by then had been parsed; cumulative until ``pop_stats()``. Never blocks."""
    return {"reply": shared.reply_hist.snapshot()}


def reset_totals(shared: MuxShared, sockets: List[MuxIO]) -> None:
    """Zero the totals :func:`mux_stats` reports (for ``pop_stats()``); the gauges stay. Never blocks."""
    shared.requests = shared.replies = shared.error_replies = shared.timeouts = shared.failed = 0
    shared.dropped = shared.connect_errors = shared.dedicated_checkouts = 0
    shared.reply_hist = Histogram()
    for sock in sockets:
        sock.connects = sock.reads = sock.writes = sock.bytes_in = sock.bytes_out = 0


#: An argument that was not given (for :func:`either_argument`).
UNSET: Any = object()


def either_argument(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """Return the value of ``name``, which the client library calls ``alias`` (both spellings are accepted;
    ``UNSET``: not given); both with different values raise ``TypeError``."""
    if alias_value is UNSET:
        return default if value is UNSET else value
    if value is not UNSET and value != alias_value:
        raise TypeError(f"{name}={value!r} and {alias}={alias_value!r} disagree; give one of them")
    return alias_value
