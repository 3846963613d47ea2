"""``greenpool.RedisMuxPool``: many greenlets share one auto-pipelined Redis socket.

``redis.Redis(connection_pool=RedisMuxPool(host=..., port=..., max_connections=10, timeout=1))`` works
unchanged. :meth:`RedisMuxPool.get_connection` hands out a lightweight per-checkout proxy. Plain commands and
non-transactional pipelines sent through it are queued on one shared socket (or ``connections=N`` sockets):
a command goes out at once while the server has at most a quarter as much work queued as waits to be sent, and
under load
everything queued during one turn of the gevent loop goes out in one ``send``; a read watcher (a callback in
the hub, not a greenlet) reads what arrived, parses the replies with one ``hiredis.Reader`` and, since Redis
answers in order, hands each reply to the oldest reply slot of that socket, switching straight to the
greenlet parked on it. No per-request Event, AsyncResult or timer.

Commands that hold per-connection state (MULTI/EXEC, WATCH, pub/sub, blocking commands, SELECT, CLIENT,
MONITOR, AUTH, HELLO, ...) and anything that touches the connection's socket or parser make the checkout
take a dedicated connection from the fair :class:`greenpool.GeventPool` this class extends; the checkout
keeps it until :meth:`RedisMuxPool.release`.

Depends on redis-py (>= 8.0), hiredis, gevent, ``greenpool.redis`` and ``greenpool._green``.
"""

from __future__ import annotations

import socket as _socket_module
from collections import deque
from typing import Any, Callable, ClassVar, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

from gevent.event import Event
from gevent.monkey import get_original
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from greenpool import _green
from greenpool._mux import CONNECTING as _CONNECTING
from greenpool._mux import DOWN as _DOWN
from greenpool._mux import MAX_MUX_CONNECTIONS, MuxIO
from greenpool._mux import UP as _UP
from greenpool._validate import check_int
from greenpool.redis import _URL_EXTRAS, GeventPool, RedisConnectTimeout

try:
    import hiredis
    from redis._parsers.base import BaseParser

    _PushNotification: Any = getattr(hiredis, "PushNotification", None)
except ImportError:  # pragma: no cover - depends on the environment
    hiredis = None  # type: ignore[assignment]
    _PushNotification = None

__all__ = ["RedisMuxPool"]

# The stdlib socket class even when ``socket`` is monkey-patched: the hub's watchers drive it directly.
_RawSocket: Any = get_original("socket", "socket")

_NOT_ENOUGH_DATA: Any = object()

#: Commands that need a connection of their own: they change or depend on per-connection state, or block.
DEDICATED_COMMANDS: FrozenSet[str] = frozenset(
    {
        "ASKING",  # applies to the next command on its connection: both must take the same (dedicated) one
        "AUTH",
        "BLMOVE",
        "BLMPOP",
        "BLPOP",
        "BRPOP",
        "BRPOPLPUSH",
        "BZMPOP",
        "BZPOPMAX",
        "BZPOPMIN",
        "CLIENT",
        "DISCARD",
        "EXEC",
        "HELLO",
        "HIMPORT",
        "MONITOR",
        "MULTI",
        "PSUBSCRIBE",
        "PSYNC",
        "PUNSUBSCRIBE",
        "QUIT",
        "READONLY",
        "READWRITE",
        "RESET",
        "SELECT",
        "SSUBSCRIBE",
        "SUBSCRIBE",
        "SUNSUBSCRIBE",
        "SYNC",
        "UNSUBSCRIBE",
        "UNWATCH",
        "WAIT",
        "WAITAOF",
        "WATCH",
    }
)
_BLOCK_OPTION_COMMANDS = frozenset({"XREAD", "XREADGROUP"})
# Command name as redis-py passes it (str or bytes) -> whether it needs a dedicated connection, for the names
# whose verdict does not depend on the arguments (bounded: a program uses a few hundred names at most).
_VERDICTS: Dict[Any, bool] = {}

#: Proxy attributes read from a never-connected template connection (configuration, no state).
_TEMPLATE_ATTRS = frozenset(
    {
        "client_name",
        "credential_provider",
        "db",
        "encoder",
        "get_protocol",
        "health_check_interval",
        "host",
        "lib_name",
        "lib_version",
        "password",
        "path",
        "port",
        "protocol",
        "retry",
        "retry_on_error",
        "retry_on_timeout",
        "socket_connect_timeout",
        "socket_timeout",
        "username",
    }
)

#: Replies parsed before their greenlets are resumed. Holding many more parsed replies back (hundreds) makes
#: the collection of the young generation, hence the whole multiplexer, several times slower under thousands
#: of greenlets (measured: 5000 greenlets PING, 54k/s at 16, 44k/s at 64, 26k/s at 256).
_RESUME_BATCH = 16

# Slot states.
_WAIT, _READY, _GONE = 0, 1, 2


class _Slot:
    """The reply of one command: the greenlet parked on it (if any), the reply once it came."""

    __slots__ = ("glet", "state", "t", "value")

    def __init__(self, t: float) -> None:
        self.glet: Any = None
        self.state = _WAIT
        self.value: Any = None
        self.t = t


class _Counters:
    """Totals shared by the sockets of one pool (kept apart so the hub's watchers never keep the pool alive)."""

    __slots__ = (
        "dedicated",
        "deferred",
        "dropped",
        "failed",
        "in_flight",
        "max_in_flight",
        "replies",
        "requests",
        "timeouts",
    )

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        # Commands waiting for in-flight room, first come first served: (socket, data, slots).
        self.deferred: Deque[Tuple[_MuxSocket, List[Any], List[_Slot]]] = deque()
        self.requests = self.replies = self.dropped = self.failed = self.timeouts = self.dedicated = 0

    def drain(self) -> None:
        """Send the oldest deferred commands while there is room (in the hub or a greenlet; never blocks)."""
        deferred = self.deferred
        while deferred:
            sock, data, slots = deferred[0]
            n = len(slots)
            if self.in_flight and self.in_flight + n > self.max_in_flight:
                return
            deferred.popleft()
            if slots[0].state != _WAIT if n == 1 else all(slot.state != _WAIT for slot in slots):
                continue  # every greenlet gave up before it was sent
            if sock.state != _UP:
                _fail(self, slots, RedisConnectionError, "Connection lost before the command was sent.")
                continue
            self.in_flight += n
            sock.fifo.extend(slots)
            sock.queue(data, n)


def _switch(glet: Any, value: Any) -> None:
    try:
        glet.switch(value)
    except BaseException:  # pragma: no cover - only a raw greenlet whose parent is the hub gets here
        pass


def _resume(slot: _Slot, glet: Any) -> None:
    """Hub callback: resume ``glet`` if it still waits on ``slot``."""
    if slot.glet is glet:
        _switch(glet, slot.value)


def _fail(counters: _Counters, slots: Sequence[_Slot], error: Any, message: str) -> None:
    """Fail the still-waiting ``slots`` with ``error(message)``, resuming their greenlets (directly in the
    hub; from a greenlet, through hub callbacks, so that the caller keeps running)."""
    failed = []
    for slot in slots:
        if slot.state == _WAIT:
            slot.state = _READY
            slot.value = error(message)
            counters.failed += 1
            if slot.glet is not None:
                failed.append(slot)
    if not failed:
        return
    hub = _green.get_hub()
    if _green.getcurrent() is hub:
        for slot in failed:
            _switch(slot.glet, slot.value)
    else:
        for slot in failed:
            hub.loop.run_callback(_resume, slot, slot.glet)


class _MuxSocket(MuxIO):
    """One shared socket: the FIFO of reply slots of the commands sent on it, the output of this loop turn."""

    __slots__ = (
        "connect_done",
        "counters",
        "fifo",
        "reader",
    )

    def __init__(self, counters: _Counters) -> None:
        super().__init__()
        self.counters = counters
        self.reader: Any = None
        self.fifo: Deque[_Slot] = deque()
        self.connect_done: Optional[Event] = None

    def attach(self, sock: Any, loop: Any, reader: Any) -> None:
        self.reader = reader
        self.start_io(sock, loop)

    def detach(self) -> Deque[_Slot]:
        """Stop the watchers, close the socket; return the slots that were in flight on it."""
        self.stop_io()
        self.reader = None
        fifo, self.fifo = self.fifo, deque()
        return fifo

    def lost(self, message: str) -> None:
        """The socket broke or was closed: fail every command in flight on it (never blocks)."""
        counters = self.counters
        fifo = self.detach()
        counters.in_flight -= len(fifo)
        _fail(counters, fifo, RedisConnectionError, message)
        counters.drain()

    # -------------------------------------------------------------- output

    def queue(self, data: List[Any], n: int) -> None:
        """Queue ``data``, ``n`` commands whose slots are in the FIFO already."""
        self.out.extend(data)
        self.pushed(n)

    def send_failed(self, exc: OSError) -> None:
        self.lost(f"Error while writing to socket: {exc}")

    def read_failed(self, exc: Optional[OSError]) -> None:
        self.lost("Connection closed by server." if exc is None else f"Error while reading from socket: {exc}")

    # -------------------------------------------------------------- input

    def on_readable(self) -> None:
        """Read watcher callback (in the hub): read, parse, hand each reply to its slot, then flush."""
        nbytes = self.receive()
        if not nbytes:
            return
        reader = self.reader
        reader.feed(self.view, 0, nbytes)
        fifo = self.fifo
        counters = self.counters
        # Parse the replies before resuming their greenlets, up to _RESUME_BATCH at a time, so that
        # ``unanswered`` is exact at low concurrency while the greenlets are resumed (each sends its next
        # command at once while the server has little to do: see MuxIO.pushed); what they send beyond that goes
        # out in one send at the end.
        self.flush_pending = True
        ready: List[_Slot] = []
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
            slot = fifo.popleft()
            self.unanswered -= 1
            counters.in_flight -= 1
            counters.replies += 1
            if slot.state != _WAIT:
                counters.dropped += 1  # its greenlet gave up, or it timed out: drop the late reply
                continue
            slot.state = _READY
            slot.value = reply
            if slot.glet is not None:
                ready.append(slot)
                if len(ready) >= _RESUME_BATCH:
                    if counters.deferred:
                        counters.drain()
                    _resume_all(ready)
                    ready = []
                    if self.fifo is not fifo:
                        return
        if counters.deferred:
            counters.drain()
        _resume_all(ready)
        if self.fifo is fifo:  # not closed or lost meanwhile
            if counters.deferred:
                counters.drain()
            self.flush_pending = False
            if self.out:
                self.flush()

    def give_up(self, reason: str, ready: List[_Slot]) -> None:
        """The reply stream cannot be followed: drop the socket, then hand out the replies parsed before."""
        self.lost(reason)
        _resume_all(ready)


def _resume_all(ready: List[_Slot]) -> None:
    """Resume the greenlet parked on each slot, in order (in the hub)."""
    for slot in ready:
        glet = slot.glet
        if glet is not None:  # still parked on it
            try:
                glet.switch(slot.value)
            except BaseException:  # pragma: no cover - see _switch
                pass


class _MuxConnection:
    """What :meth:`RedisMuxPool.get_connection` returns: one checkout's view of the multiplexer.

    Plain commands are queued on a shared socket; the first command that needs per-connection state (or any
    use of the socket, the parser or connect callbacks) takes a dedicated connection, kept until release.
    """

    __slots__ = ("__weakref__", "_dedicated", "_mux", "_packed", "_slots")

    def __init__(self, mux: RedisMuxPool) -> None:
        self._mux = mux
        self._slots: Deque[_Slot] = deque()
        self._dedicated: Any = None
        self._packed: Optional[List[Any]] = None

    # -------------------------------------------------------------- routing

    def _dedicate(self) -> Any:
        connection = self._dedicated
        if connection is None:
            connection = self._dedicated = self._mux._get_dedicated()
        return connection

    @property
    def dedicated(self) -> bool:
        """Whether this checkout holds a dedicated connection (until it is released)."""
        return self._dedicated is not None

    def __getattr__(self, name: str) -> Any:
        if name in _TEMPLATE_ATTRS:
            return getattr(self._mux._template, name)
        return getattr(self._dedicate(), name)

    # Read by redis-py's client on every command: served without the (slower) __getattr__ fallback.
    retry = property(lambda self: self._mux._template.retry)
    host = property(lambda self: self._mux._template.host)
    port = property(lambda self: self._mux._template.port)
    db = property(lambda self: self._mux._template.db)

    # -------------------------------------------------------------- the redis-py Connection interface

    def pack_command(self, *args: Any) -> Any:
        return self._mux._template.pack_command(*args)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        self._packed = [args[0] for args in commands]
        return self._mux._template.pack_commands(commands)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        """Queue one command (a dedicated connection sends it at once). Blocks only to connect."""
        connection = self._dedicated
        if connection is None and self._needs_dedicated(args[0], args):
            connection = self._dedicate()
        if connection is not None:
            connection.send_command(*args, **kwargs)
            return
        self._mux._submit(self, self._mux._template.pack_command(*args), 1)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Queue commands packed by :meth:`pack_commands`; anything else goes to a dedicated connection."""
        names, self._packed = self._packed, None
        connection = self._dedicated
        if connection is None and (names is None or any(self._needs_dedicated(name, ()) for name in names)):
            connection = self._dedicate()
        if connection is not None:
            connection.send_packed_command(command, check_health)
            return
        assert names is not None
        data = [command] if isinstance(command, (bytes, bytearray, memoryview, str)) else list(command)
        self._mux._submit(self, data, len(names))

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        """Return the reply of the oldest unread command; park this greenlet until it arrives.

        Raises ``redis.exceptions.ConnectionError`` when the socket broke or the pool disconnected,
        ``redis.exceptions.TimeoutError`` after ``socket_timeout`` without a reply, the server's error.
        An interrupted caller (``gevent.Timeout``, kill) gives up the reply: it is read and dropped later.
        """
        slots = self._slots
        if not slots:
            return self._dedicate().read_response(disable_decoding=disable_decoding, **kwargs)
        slot = slots.popleft()
        if slot.state != _READY:
            slot.glet = _green.getcurrent()
            switch = self._mux._hub.switch
            try:
                switch()
                while slot.state != _READY:  # resumed by something other than this reply: park again
                    switch()
            except BaseException:
                if slot.state == _WAIT:
                    slot.state = _GONE
                slot.glet = None
                raise
            slot.glet = None
        value = slot.value
        if isinstance(value, Exception):
            raise value
        if self._mux._decode and not disable_decoding:
            return _decode(value, self._mux._encoding, self._mux._encoding_errors)
        return value

    def disconnect(self, *args: Any) -> None:
        """Disconnect the dedicated connection, if any; the shared socket manages itself."""
        if self._dedicated is not None:
            self._dedicated.disconnect(*args)

    def connect(self) -> None:
        if self._dedicated is not None:
            self._dedicated.connect()

    def check_health(self) -> None:
        if self._dedicated is not None:
            self._dedicated.check_health()

    def should_reconnect(self) -> bool:
        return self._dedicated is not None and bool(self._dedicated.should_reconnect())

    @property
    def himport_registry(self) -> Any:
        # Pipelines look for HIMPORT fieldsets to prepare on the connection: none on a shared socket.
        return None if self._dedicated is None else self._dedicated.himport_registry

    @property
    def _resp2_fallback(self) -> bool:
        # Read by redis-py 8.2's client on every reply (whether the server refused HELLO and the connection fell
        # back to RESP2): the shared sockets keep the protocol they were opened with.
        source = self._dedicated if self._dedicated is not None else self._mux._template
        return bool(getattr(source, "_resp2_fallback", False))

    @property
    def is_connected(self) -> bool:
        return self._dedicated is None or bool(self._dedicated.is_connected)

    def _needs_dedicated(self, name: Any, args: Sequence[Any]) -> bool:
        if not self._mux._enabled:
            return True
        cacheable = name.__class__ is str or name.__class__ is bytes
        if cacheable:
            verdict = _VERDICTS.get(name)
            if verdict is not None:
                return verdict
        word = (name.decode("latin-1") if isinstance(name, bytes) else str(name)).split(" ", 1)[0].upper()
        if word in _BLOCK_OPTION_COMMANDS:  # XREAD ... BLOCK: it depends on the arguments
            return not args or any(isinstance(a, (str, bytes)) and a.upper() in ("BLOCK", b"BLOCK") for a in args)
        verdict = word in DEDICATED_COMMANDS
        if cacheable and len(_VERDICTS) < 4096:
            _VERDICTS[name] = verdict
        return verdict

    def _abandon(self) -> None:
        for slot in self._slots:
            if slot.state == _WAIT:
                slot.state = _GONE
            slot.glet = None
        self._slots.clear()

    def __repr__(self) -> str:
        where = "dedicated" if self._dedicated is not None else "shared"
        return f"<{type(self).__name__} {where} of {self._mux._core_settings['name']!r}>"


def _decode(value: Any, encoding: str, errors: str) -> Any:
    if isinstance(value, bytes):
        return value.decode(encoding, errors)
    if isinstance(value, list):
        return [_decode(item, encoding, errors) for item in value]
    if isinstance(value, dict):
        return {_decode(k, encoding, errors): _decode(v, encoding, errors) for k, v in value.items()}
    if isinstance(value, set):
        return {_decode(item, encoding, errors) for item in value}
    return value


class RedisMuxPool(GeventPool):
    """A :class:`greenpool.GeventPool` whose plain commands share auto-pipelined sockets.

    Takes every argument of :class:`greenpool.GeventPool` (which it is: dedicated connections come from its
    fair pool, ``max_connections`` and ``timeout`` bound them) plus:

    - ``connections`` (default 1, at most 1024): shared sockets; checkouts are spread over them round robin.
    - ``max_in_flight`` (default 1024): commands sent on the shared sockets and not answered yet (a
      command given up by its greenlet counts until its reply is read). Beyond it, commands wait, first
      come first served, parked in :meth:`_MuxConnection.read_response` until replies free room; a
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

    :meth:`from_url` reads ``connections`` and ``max_in_flight`` from the query string too.

    Without hiredis, or with TLS (``SSLConnection``), every checkout takes a dedicated connection, as with
    :class:`greenpool.GeventPool`. After ``os.fork()`` the child opens its own sockets on first use and
    never touches the parent's. The shared sockets belong to the gevent hub of the first thread that sends a
    command through them; another thread gets :class:`greenpool.errors.WrongThread` (create one pool per
    thread).
    """

    _url_extras: ClassVar[Mapping[str, Callable[[str], Any]]] = {
        **_URL_EXTRAS,
        "connections": int,
        "max_in_flight": int,
    }

    def __init__(self, *args: Any, connections: int = 1, max_in_flight: int = 1024, **kwargs: Any) -> None:
        self._mux_sockets_count = check_int("connections", connections, minimum=1, maximum=MAX_MUX_CONNECTIONS)
        self._max_in_flight = check_int("max_in_flight", max_in_flight, minimum=1)
        self._mux_ready = False
        super().__init__(*args, **kwargs)
        template = self.make_connection()
        self._template = template
        encoder = template.encoder
        self._decode = bool(encoder.decode_responses)
        self._encoding = encoder.encoding
        self._encoding_errors = encoder.encoding_errors
        self._enabled = hiredis is not None and not isinstance(template, SSLConnection)
        self._socket_timeout: Optional[float] = self.connection_kwargs.get("socket_timeout")
        self._mux_ready = True
        self._mux_setup()

    def _mux_setup(self) -> None:
        self._generation = _green.fork_generation()
        self._counters = _Counters(self._max_in_flight)
        self._sockets = [_MuxSocket(self._counters) for _ in range(self._mux_sockets_count)]
        self._rr = 0
        # The last failed connect of a shared socket: (its attempt's Event, whether it timed out, its message).
        self._mux_connect_failure: Tuple[Any, bool, str] = (None, False, "")
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
        return _MuxConnection(self)

    def release(self, connection: Any) -> None:
        """End a checkout: its unread replies are dropped when they come, its dedicated connection (if any)
        goes back to the fair pool (closed if the holder was interrupted). Never blocks."""
        if not isinstance(connection, _MuxConnection):
            super().release(connection)
            return
        connection._abandon()
        dedicated, connection._dedicated = connection._dedicated, None
        if dedicated is not None:
            super().release(dedicated)

    def _get_dedicated(self) -> Any:
        self._counters.dedicated += 1
        return super().get_connection()

    # -------------------------------------------------------------- the shared sockets

    def _submit(self, proxy: _MuxConnection, data: List[Any], n: int) -> None:
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
        if sock.state != _UP:
            self._connect(sock)
        counters = self._counters
        counters.requests += n
        t = _green.monotonic() if self._socket_timeout is not None else 0.0
        slots = [_Slot(t) for _ in range(n)] if n != 1 else [_Slot(t)]
        proxy._slots.extend(slots)
        in_flight = counters.in_flight
        if not counters.deferred and (not in_flight or in_flight + n <= counters.max_in_flight):
            counters.in_flight = in_flight + n
            sock.fifo.extend(slots)
            sock.queue(data, n)
        else:
            counters.deferred.append((sock, data, slots))

    def _bind(self) -> None:
        """Tie the shared sockets to the current thread's hub on first use; refuse any other thread after that."""
        advice = "Create one RedisMuxPool per thread: its shared sockets belong to one hub."
        self._thread = _green.claim_thread(self._thread, self._pool.name, advice)
        self._hub = _green.get_hub()
        timeout = self._socket_timeout
        if timeout:
            tick = min(max(timeout / 5.0, 0.005), 0.5)
            self._timer = self._hub.loop.timer(tick, tick, ref=False)
            self._timer.start(_sweep, self._counters, self._sockets, timeout)

    def _connect(self, sock: _MuxSocket) -> None:
        """Bring ``sock`` up (or wait for the greenlet doing so); raise what connecting raises.

        The attempt is bounded as a new connection of :class:`greenpool.GeventPool` is (the connect bound, then
        :class:`greenpool.redis.RedisConnectTimeout`), and so are the greenlets waiting for it: they get the same
        timeout error, or a ``ConnectionError`` when the attempt failed otherwise.
        """
        while sock.state != _UP:
            done = sock.connect_done
            if done is not None:
                done.wait()
                if sock.state != _UP:
                    attempt, timed_out, message = self._mux_connect_failure
                    if attempt is done and timed_out:
                        raise RedisConnectTimeout(message)
                    reason = f": {message}" if attempt is done and message else ""
                    raise RedisConnectionError(
                        f"Error connecting the shared socket (another command's attempt failed{reason})."
                    )
                return
            done = sock.connect_done = Event()
            sock.state = _CONNECTING
            try:
                connection = self._new_connection()  # within the connect bound
                try:
                    gsock = connection._sock
                    family = gsock.family
                    fd = gsock.detach()
                    connection._sock = None
                finally:
                    connection.disconnect()
                raw = _RawSocket(family, _socket_module.SOCK_STREAM, 0, fileno=fd)
                raw.setblocking(False)
                reader = hiredis.Reader(
                    protocolError=InvalidResponse,
                    replyError=BaseParser.parse_error,
                    notEnoughData=_NOT_ENOUGH_DATA,
                )
                sock.attach(raw, self._hub.loop, reader)
            except BaseException as exc:
                sock.state = _DOWN
                # What the waiters raise: the same connect timeout, else a ConnectionError that quotes the error.
                message = str(exc) if isinstance(exc, Exception) else ""
                self._mux_connect_failure = (done, isinstance(exc, RedisConnectTimeout), message)
                raise
            finally:
                sock.connect_done = None
                done.set()

    # -------------------------------------------------------------- redis-py pool API

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the shared sockets, failing their pending commands with ``ConnectionError`` (the next
        command reconnects), and disconnect dedicated connections as :class:`GeventPool` does. Never blocks."""
        if getattr(self, "_mux_ready", False) and self._generation == _green.fork_generation():
            if self._thread is not None and self._thread != _green.thread_ident():
                self._bind()  # raises WrongThread: the sockets' watchers belong to another thread's loop
            for sock in self._sockets:
                if sock.state == _UP:
                    sock.lost("Connection closed by the pool (disconnect).")
        super().disconnect(inuse_connections)

    def close(self) -> None:
        """Close the shared sockets (pending commands fail with ``ConnectionError``) and the idle dedicated
        connections; the pool stays usable, as redis-py's pools do. Never blocks."""
        self.disconnect(inuse_connections=False)

    def get_stats(self) -> Dict[str, Union[int, float, str]]:
        """The fair pool's statistics (dedicated connections) plus the shared sockets' counters:
        ``mux_sockets_up``, ``mux_in_flight``, ``mux_max_in_flight``, ``mux_deferred``, ``mux_requests``,
        ``mux_replies``, ``mux_dropped``, ``mux_failed``, ``mux_timeouts``, ``mux_dedicated_checkouts``,
        ``mux_connects``, ``mux_reads``, ``mux_writes``. Never blocks."""
        stats = super().get_stats()
        counters = self._counters
        sockets = self._sockets
        stats.update(
            {
                "mux_sockets_up": sum(1 for sock in sockets if sock.state == _UP),
                "mux_in_flight": counters.in_flight,
                "mux_max_in_flight": counters.max_in_flight,
                "mux_deferred": sum(len(slots) for _, _, slots in counters.deferred),
                "mux_requests": counters.requests,
                "mux_replies": counters.replies,
                "mux_dropped": counters.dropped,
                "mux_failed": counters.failed,
                "mux_timeouts": counters.timeouts,
                "mux_dedicated_checkouts": counters.dedicated,
                "mux_connects": sum(sock.connects for sock in sockets),
                "mux_reads": sum(sock.reads for sock in sockets),
                "mux_writes": sum(sock.writes for sock in sockets),
            }
        )
        return stats


def _sweep(counters: _Counters, sockets: List[_MuxSocket], timeout: float) -> None:
    """Periodic timer callback (in the hub): fail the commands that waited ``timeout`` for their reply."""
    deadline = _green.monotonic() - timeout
    expired: List[_Slot] = []
    for sock in sockets:
        if sock.generation != _green.fork_generation():
            return
        for slot in sock.fifo:
            if slot.t > deadline:
                break
            if slot.state == _WAIT:
                expired.append(slot)
    for _, _, slots in counters.deferred:
        if slots[0].t > deadline:
            break
        expired.extend(slot for slot in slots if slot.state == _WAIT)
    if expired:
        counters.timeouts += len(expired)
        counters.failed -= len(expired)
        _fail(counters, expired, RedisTimeoutError, "Timeout reading from socket")
