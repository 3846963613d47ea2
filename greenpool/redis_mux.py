"""``greenpool.RedisMuxPool``: many greenlets share one auto-pipelined Redis socket, plain or TLS.

``redis.Redis(connection_pool=RedisMuxPool(host=..., port=..., max_connections=10, timeout=1))`` works
unchanged. :meth:`RedisMuxPool.get_connection` hands out a lightweight per-checkout proxy
(``greenpool._redis_checkout``). Plain commands and non-transactional pipelines sent through it are queued on one
shared socket (or ``shared_connections=N`` sockets): a command goes out at once while the server has at most a
quarter as much work queued as waits to be sent, and under load everything queued during one turn of the gevent
loop goes out in one ``send``; a read watcher (a callback in the hub, not a greenlet) reads what arrived, parses
the replies with one ``hiredis.Reader`` and, since Redis answers in order, hands each reply to the oldest waiter
of that socket, switching straight to the greenlet parked on it. No per-request Event, AsyncResult or timer.

Commands that hold per-connection state (MULTI/EXEC, WATCH, pub/sub, blocking commands, SELECT, CLIENT,
MONITOR, AUTH, HELLO, ...) and the attributes listed in :data:`DEDICATED_ATTRIBUTES` (the socket, the parser...)
make the checkout take a dedicated connection from the fair :class:`greenpool.GeventPool` this class extends;
the checkout keeps it until :meth:`RedisMuxPool.release`.

Depends on redis-py (>= 8.0), hiredis, gevent, ``greenpool.redis``, ``greenpool._redis_checkout``,
``greenpool._mux`` and ``greenpool._green``.
"""

from __future__ import annotations

import socket as _socket_module
from collections import deque
from typing import Any, Callable, ClassVar, Deque, Dict, List, Mapping, Optional, Tuple, Union

from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from greenpool import _green
from greenpool._mux import (
    MAX_SHARED_CONNECTIONS,
    RESUME_BATCH,
    UP,
    DeferredRequest,
    MuxIO,
    MuxShared,
    RawSocket,
    connect_shared,
    mux_histograms,
    mux_stats,
    reset_totals,
    resume_all,
)
from greenpool._redis_checkout import (
    ANSWERED,
    DEDICATED_ATTRIBUTES,
    DEDICATED_COMMANDS,
    TEMPLATE_METHODS,
    WAITING,
    MuxConnection,
    Waiter,
    fail_waiters,
)
from greenpool._validate import check_int, deprecated_name
from greenpool.redis import _URL_EXTRAS, GeventPool, RedisConnectTimeout
from greenpool.stats import HistogramSnapshot

try:
    import hiredis
    from redis._parsers.base import BaseParser

    _PushNotification: Any = getattr(hiredis, "PushNotification", None)
except ImportError:  # pragma: no cover - depends on the environment
    hiredis = None  # type: ignore[assignment]
    _PushNotification = None

__all__ = ["DEDICATED_ATTRIBUTES", "DEDICATED_COMMANDS", "TEMPLATE_METHODS", "RedisMuxPool"]

_NOT_ENOUGH_DATA: Any = object()


class _DeferredCommands(DeferredRequest):
    """Commands waiting for in-flight permits, with the waiters of their replies."""

    __slots__ = ("data", "waiters")

    def __init__(self, sock: MuxIO, data: List[Any], waiters: List[Waiter], seq: int) -> None:
        self.sock = sock  # DeferredRequest.__init__, written out: one is made per command over the limit
        self.n = len(waiters)
        self.seq = seq
        self.data = data
        self.waiters = waiters

    def waiting(self) -> int:
        return sum(1 for waiter in self.waiters if waiter.state == WAITING)


class _SharedSocket(MuxIO):
    """One shared socket: the FIFO of the waiters of the commands sent on it (Redis answers in order)."""

    __slots__ = ("fifo", "reader", "shared")

    def __init__(self, shared: MuxShared) -> None:
        super().__init__()
        self.shared = shared
        self.reader: Any = None
        self.fifo: Deque[Waiter] = deque()

    def attach(self, opened: Tuple[Any, bool], loop: Any, reader: Any) -> None:
        """Start driving ``opened``, a socket and whether it is an SSL socket (see ``RedisMuxPool._open``)."""
        self.reader = reader
        sock, tls = opened
        self.start_io(sock, loop, tls=tls)

    def detach(self) -> Deque[Waiter]:
        """Stop the watchers, close the socket; return the waiters of the commands that were in flight on it."""
        self.stop_io()
        self.reader = None
        fifo, self.fifo = self.fifo, deque()
        return fifo

    def lost(self, message: str) -> None:
        """The socket broke or was closed: fail every command in flight on it (never blocks)."""
        shared = self.shared
        fifo = self.detach()
        shared.in_flight -= len(fifo)
        fail_waiters(shared, fifo, RedisConnectionError, message)
        shared.drain()

    def admit(self, request: DeferredRequest) -> bool:
        waiters = request.waiters  # type: ignore[attr-defined]  # a _DeferredCommands
        if waiters[0].state != WAITING if request.n == 1 else all(waiter.state != WAITING for waiter in waiters):
            return False  # every greenlet gave up before it was sent
        if self.state != UP:
            fail_waiters(self.shared, waiters, RedisConnectionError, "Connection lost before the command was sent.")
            return False
        self.fifo.extend(waiters)
        self.out.extend(request.data)  # type: ignore[attr-defined]
        return True

    def send_failed(self, exc: OSError) -> None:
        self.lost(f"Error while writing to socket: {exc}")

    def read_failed(self, exc: Optional[OSError]) -> None:
        self.lost("Connection closed by server." if exc is None else f"Error while reading from socket: {exc}")

    def on_readable(self) -> None:
        """Read watcher callback (in the hub): read, parse, hand each reply to its waiter, then flush."""
        nbytes = self.receive()
        if not nbytes:
            return
        reader = self.reader
        reader.feed(self.view, 0, nbytes)
        fifo = self.fifo
        shared = self.shared
        # Parse the replies before resuming their greenlets, up to RESUME_BATCH at a time, so that
        # ``unanswered`` is exact at low concurrency while the greenlets are resumed (each sends its next
        # command at once while the server has little to do: see MuxIO.pushed); what they send beyond that goes
        # out in one send at the end.
        self.flush_pending = True
        ready: List[Any] = []  # greenlet, reply, greenlet, reply...
        gets = reader.gets
        while True:
            try:
                reply = gets(False)
            except InvalidResponse as exc:
                self.give_up(f"Protocol error: {exc}", ready)
                return
            if reply is _NOT_ENOUGH_DATA:
                break
            if _PushNotification is not None and isinstance(reply, _PushNotification):
                continue  # an out-of-band RESP3 push: not a reply to anything
            if not fifo:
                self.give_up("Protocol error: a reply came that no command asked for.", ready)
                return
            waiter = fifo.popleft()
            self.unanswered -= 1
            shared.in_flight -= 1
            shared.replies += 1
            if waiter.state != WAITING:
                shared.dropped += 1  # its greenlet gave up, or it timed out: drop the late reply
                continue
            waiter.state = ANSWERED
            waiter.value = reply
            if waiter.glet is not None:
                ready.append(waiter.glet)
                ready.append(reply)
                if len(ready) >= 2 * RESUME_BATCH:
                    if shared.deferred:
                        shared.drain()
                    resume_all(ready)
                    ready = []
                    if self.fifo is not fifo:
                        return
        self.time_replies(shared.reply_hist)
        if shared.deferred:
            shared.drain()
        resume_all(ready)
        if self.fifo is fifo:  # not closed or lost meanwhile
            self.flush_pending = False
            if self.out:
                self.flush()

    def give_up(self, reason: str, ready: List[Any]) -> None:
        """The reply stream cannot be followed: drop the socket, then hand out the replies parsed before."""
        self.lost(reason)
        resume_all(ready)


class RedisMuxPool(GeventPool):
    """A :class:`greenpool.GeventPool` whose plain commands share auto-pipelined sockets.

    ``RedisMuxPool(max_connections=50, timeout=20, connection_class=Connection, queue_class=LifoQueue, *,
    shared_connections=1, max_in_flight=1024, <GeventPool's keyword arguments>, **connection_kwargs)``:
    every argument of :class:`greenpool.GeventPool` (which it is: dedicated connections come from its fair pool,
    ``max_connections`` and ``timeout`` bound them; ``connection_kwargs`` such as ``host``, ``port``,
    ``password``, ``socket_timeout`` go to redis-py's connections) plus, keyword-only:

    - ``shared_connections`` (default 1, at most 1024): shared sockets; checkouts are spread over them round
      robin. ``connections`` is its deprecated old name.
    - ``max_in_flight`` (default 1024): commands sent on the shared sockets and not answered yet (a
      command given up by its greenlet counts until its reply is read). Beyond it, commands wait, first
      come first served, parked in :meth:`MuxConnection.read_response` until replies free permits; a
      pipeline larger than the limit is sent alone when nothing is in flight.

    ``socket_timeout`` (a connection argument) bounds each command's wait for its reply, checked by a
    periodic timer (up to a fifth of it, at most 0.5 s, late, never early): the command alone fails with
    ``redis.exceptions.TimeoutError`` and its late reply is dropped. When a shared socket breaks, every
    command in flight on it fails with ``redis.exceptions.ConnectionError`` (redis-py's client may retry
    it, per its ``retry`` setting) and the next command reconnects. The shared sockets connect through
    redis-py's own ``Connection.connect()`` (AUTH, HELLO, SELECT db, client name), so ``db`` is honoured,
    within the connect bound of a new :class:`greenpool.GeventPool` connection (``socket_connect_timeout``):
    past it the command that connects, and every command waiting for that attempt, fails with
    :class:`greenpool.redis.RedisConnectTimeout` (a ``redis.exceptions.TimeoutError``, which redis-py's client
    retries per its ``retry`` setting, each attempt bounded alike).

    :meth:`from_url` reads ``shared_connections`` and ``max_in_flight`` from the query string too.

    Over TLS (``ssl=True``, ``rediss://``, ``connection_class=SSLConnection``) the shared sockets are multiplexed
    too: redis-py's ``SSLConnection`` connects them (the same ``ssl_*`` arguments, certificate and host name
    checks), then the hub reads and writes their TLS records without blocking. The replies are parsed with hiredis:
    without it the constructor raises ``ImportError`` naming the package.

    After ``os.fork()`` the child opens its own sockets on first use and never touches the parent's. The shared
    sockets belong to the gevent hub of the first thread that sends a command through them; another thread gets
    :class:`greenpool.errors.WrongThread` (create one pool per thread).
    """

    _url_extras: ClassVar[Mapping[str, Callable[[str], Any]]] = {
        **_URL_EXTRAS,
        "shared_connections": int,
        "connections": int,
        "max_in_flight": int,
    }

    def __init__(
        self,
        *args: Any,
        shared_connections: int = 1,
        max_in_flight: int = 1024,
        connections: Any = None,
        **kwargs: Any,
    ) -> None:
        shared_connections = deprecated_name("connections", "shared_connections", connections, shared_connections, 1)
        self._shared_connections = check_int(
            "shared_connections", shared_connections, minimum=1, maximum=MAX_SHARED_CONNECTIONS
        )
        self._max_in_flight = check_int("max_in_flight", max_in_flight, minimum=1)
        self._mux_ready = False
        super().__init__(*args, **kwargs)
        template = self.make_connection()
        self._template = template
        encoder = template.encoder
        self._decode = bool(encoder.decode_responses)
        self._encoding = encoder.encoding
        self._encoding_errors = encoder.encoding_errors
        if hiredis is None:
            raise ImportError(
                "RedisMuxPool parses the shared sockets' replies with hiredis: pip install hiredis "
                "(or 'greenpool[redis]'); without it, use greenpool.GeventPool"
            )
        self._socket_timeout: Optional[float] = self.connection_kwargs.get("socket_timeout")
        self._mux_ready = True
        self._mux_setup()

    @property
    def shared_connections(self) -> int:
        """The shared sockets this pool spreads plain commands over."""
        return self._shared_connections

    @property
    def max_in_flight(self) -> int:
        """The most commands in flight on the shared sockets."""
        return self._max_in_flight

    def _mux_setup(self) -> None:
        self._generation = _green.fork_generation()
        self._shared = MuxShared(self._max_in_flight)
        self._sockets = [_SharedSocket(self._shared) for _ in range(self._shared_connections)]
        self._rr = 0
        self._thread: Optional[int] = None
        self._hub: Any = None
        self._timer: Any = None

    def _mux_after_fork(self) -> None:
        if self._timer is not None:
            self._timer.close()
        for sock in self._sockets:
            sock.detach()  # closes the child's copy of the descriptor only
        self._mux_setup()

    # -------------------------------------------------------------- checkout

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Return a checkout proxy at once (never blocks); a dedicated connection is taken on demand.

        Taking one blocks as :meth:`greenpool.GeventPool.get_connection` does, up to ``timeout``, and raises
        what it raises (``RedisPoolTimeout``...), from the command that needed it.
        """
        return MuxConnection(self)

    def release(self, connection: Any) -> None:
        """End a checkout: its unread replies are dropped when they come, its dedicated connection (if any)
        goes back to the fair pool (closed if the holder was interrupted). Never blocks."""
        if not isinstance(connection, MuxConnection):
            super().release(connection)
            return
        connection._abandon()
        dedicated, connection._dedicated = connection._dedicated, None
        if dedicated is not None:
            super().release(dedicated)

    def _get_dedicated(self) -> Any:
        self._shared.dedicated_checkouts += 1
        return super().get_connection()

    # -------------------------------------------------------------- the shared sockets

    def _submit(self, proxy: MuxConnection, data: List[Any], n: int) -> None:
        if self._generation != _green.fork_generation():
            self._mux_after_fork()
        if self._thread != _green.thread_ident():
            self._bind()
        sockets = self._sockets
        if len(sockets) == 1:
            sock = sockets[0]
        else:
            self._rr += 1
            sock = sockets[self._rr % len(sockets)]
        if sock.state != UP:
            self._connect(sock)
        shared = self._shared
        shared.requests += n
        t = _green.monotonic() if self._socket_timeout is not None else 0.0
        waiters = [Waiter(t) for _ in range(n)] if n != 1 else [Waiter(t)]
        proxy._waiters.extend(waiters)
        in_flight = shared.in_flight
        if not shared.deferred and (not in_flight or in_flight + n <= shared.max_in_flight):  # has_room(n)
            shared.in_flight += n
            sock.fifo.extend(waiters)
            sock.queue(data, n)
        else:
            shared.deferred.append(_DeferredCommands(sock, data, waiters, shared.requests))

    def _bind(self) -> None:
        """Tie the shared sockets to the current thread's hub on first use; refuse any other thread after that."""
        advice = "Create one RedisMuxPool per thread: its shared sockets belong to one hub."
        self._thread = _green.claim_thread(self._thread, self._pool.name, advice)
        self._hub = _green.get_hub()
        timeout = self._socket_timeout
        if timeout:
            tick = min(max(timeout / 5.0, 0.005), 0.5)
            self._timer = self._hub.loop.timer(tick, tick, ref=False)
            self._timer.start(_sweep, self._shared, self._sockets, timeout)

    def _connect(self, sock: _SharedSocket) -> None:
        """Bring ``sock`` up (or wait for the greenlet doing so); raise what connecting raises.

        The attempt is bounded as a new connection of :class:`greenpool.GeventPool` is (the connect bound, then
        :class:`greenpool.redis.RedisConnectTimeout`), and so are the greenlets waiting for it: they get the same
        timeout error, or a ``ConnectionError`` that quotes the attempt's error.
        """
        connect_shared(
            sock, self._shared, self._open, lambda opened: sock.attach(opened, self._hub.loop, _reader()), _for_waiter
        )

    def _open(self) -> Tuple[Any, bool]:
        """Connect a redis-py connection (within the connect bound: TCP connect, TLS handshake with redis-py's
        certificate checks, AUTH/HELLO/SELECT), then take its socket: a plain one as a non-blocking stdlib socket,
        a TLS one (``SSLConnection``) as it is, set non-blocking. Blocks this greenlet."""
        connection = self._new_connection()
        try:
            sock = connection._sock
            connection._sock = None
            if isinstance(connection, SSLConnection):
                sock.setblocking(False)
                return sock, True
            family = sock.family
            fd = sock.detach()
        finally:
            connection.disconnect()
        raw = RawSocket(family, _socket_module.SOCK_STREAM, 0, fileno=fd)
        raw.setblocking(False)
        return raw, False

    # -------------------------------------------------------------- redis-py pool API

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the shared sockets, failing their pending commands with ``ConnectionError`` (the next
        command reconnects), and disconnect dedicated connections as :class:`GeventPool` does. Never blocks."""
        if getattr(self, "_mux_ready", False) and self._generation == _green.fork_generation():
            if self._thread is not None and self._thread != _green.thread_ident():
                self._bind()  # raises WrongThread: the sockets' watchers belong to another thread's loop
            for sock in self._sockets:
                if sock.state == UP:
                    sock.lost("Connection closed by the pool (disconnect).")
        super().disconnect(inuse_connections)

    def close(self) -> None:
        """Close the shared sockets (pending commands fail with ``ConnectionError``) and the idle dedicated
        connections; the pool stays usable, as redis-py's pools do. Never blocks."""
        self.disconnect(inuse_connections=False)

    def get_stats(self) -> Dict[str, Union[int, float, str]]:
        """The fair pool's statistics (dedicated connections), the shared sockets' ``mux_*`` statistics (the
        same keys as :meth:`greenpool.TarantoolMux.get_stats`, listed in the README) and
        ``mux_dedicated_checkouts`` (checkouts that took a dedicated connection). Never blocks."""
        stats = super().get_stats()
        stats.update(mux_stats(self._shared, list(self._sockets)))
        stats["mux_dedicated_checkouts"] = self._shared.dedicated_checkouts
        return stats

    def pop_stats(self) -> Dict[str, Union[int, float, str]]:
        """Return :meth:`get_stats` and reset its totals (the fair pool's and the ``mux_*`` ones) to zero."""
        stats = super().pop_stats()
        stats.update(mux_stats(self._shared, list(self._sockets)))
        stats["mux_dedicated_checkouts"] = self._shared.dedicated_checkouts
        reset_totals(self._shared, list(self._sockets))
        return stats

    def get_histograms(self) -> Dict[str, HistogramSnapshot]:
        """The fair pool's histograms (dedicated connections: ``wait``, ``connect``, ``usage``) and the shared
        sockets' ``reply`` histogram (as :meth:`greenpool.TarantoolMux.get_histograms`). Never blocks."""
        histograms = super().get_histograms()
        histograms.update(mux_histograms(self._shared))
        return histograms


def _reader() -> Any:
    return hiredis.Reader(
        protocolError=InvalidResponse, replyError=BaseParser.parse_error, notEnoughData=_NOT_ENOUGH_DATA
    )


def _for_waiter(error: BaseException) -> BaseException:
    """What a command that waited for another's failed connect of its shared socket raises: the same connect
    timeout, else a ``ConnectionError`` that quotes the error."""
    message = str(error) if isinstance(error, Exception) else ""
    if isinstance(error, RedisConnectTimeout):
        return RedisConnectTimeout(message)
    reason = f": {message}" if message else ""
    return RedisConnectionError(f"Error connecting the shared socket (another command's attempt failed{reason}).")


def _sweep(shared: MuxShared, sockets: List[_SharedSocket], timeout: float) -> None:
    """Periodic timer callback (in the hub): fail the commands that waited ``timeout`` for their reply."""
    deadline = _green.monotonic() - timeout
    expired: List[Waiter] = []
    for sock in sockets:
        if sock.generation != _green.fork_generation():
            return
        for waiter in sock.fifo:
            if waiter.t > deadline:
                break
            if waiter.state == WAITING:
                expired.append(waiter)
    for request in shared.deferred:
        assert isinstance(request, _DeferredCommands)
        if request.waiters[0].t > deadline:
            break
        expired.extend(waiter for waiter in request.waiters if waiter.state == WAITING)
    if expired:
        shared.timeouts += len(expired)
        shared.failed -= len(expired)
        fail_waiters(shared, expired, RedisTimeoutError, "Timeout reading from socket")
