"""``greenpool.TarantoolMux``: many greenlets share one auto-pipelined Tarantool connection.

A :class:`TarantoolMux` speaks IPROTO (packed and parsed by ``greenpool._iproto``) over non-blocking sockets
driven by the gevent hub's event loop (``greenpool._mux``). Every request gets its own ``sync`` number and goes
out at once while the server has at most a quarter as much work queued as waits to be sent; under load, requests
made while the hub is busy are coalesced into one ``send``; a read watcher (a callback in the hub, not a
greenlet) reads whatever has arrived in one ``recv_into``, cuts it into replies and switches straight to the
greenlet that asked for each of them. No per-request Event, AsyncResult or timer: a request costs one park and
one resume. This module keeps the lifecycle (connect, fork, close), the scheduling (permits, timeouts) and the
API.

The methods (``ping``, ``select``, ``insert``, ``replace``, ``update``, ``upsert``, ``delete``, ``call``,
``eval``, ``execute``) take the arguments of tarantool-python's ``tarantool.Connection`` methods and return
the same objects: ``tarantool.response.Response`` (``ResponseExecute`` for SQL), ``ping()`` a float. Error
replies raise ``tarantool.error.DatabaseError`` with the server's code and message; network failures raise
:class:`MuxConnectionError`, timeouts :class:`MuxTimeout`, use after :meth:`TarantoolMux.close`
:class:`MuxClosed`, all ``tarantool.error.NetworkError`` subclasses.

Depends on gevent, msgpack and tarantool-python (its response, schema, error and msgpack extension code),
``greenpool._iproto``, ``greenpool._mux``, ``greenpool._green``, ``greenpool._validate``, ``greenpool.errors``
and, for the URL options, ``greenpool.tarantool``; not on the core pool.
"""

from __future__ import annotations

import socket as _socket_module
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import msgpack
from gevent import socket as gsocket

from greenpool import _green
from greenpool import _iproto as ip
from greenpool._mux import (
    MAX_SHARED_CONNECTIONS,
    RESUME_BATCH,
    UNSET,
    UP,
    DeferredRequest,
    MuxIO,
    MuxShared,
    RawSocket,
    connect_shared,
    either_argument,
    mux_stats,
    renamed_argument,
    reset_totals,
    resume,
    resume_all,
)
from greenpool._tarantool_url import parse_url, url_int, url_seconds, url_str
from greenpool._validate import check_address, check_credentials, check_int, check_name, check_seconds
from greenpool.errors import ConnectTimeout, PoolClosed

try:
    from tarantool.error import DatabaseError, NetworkError
    from tarantool.msgpack_ext.packer import default as _ext_default
    from tarantool.response import Response, ResponseExecute
    from tarantool.schema import Schema
    from tarantool.utils import wrap_key
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("greenpool.TarantoolMux needs tarantool-python: pip install 'greenpool[tarantool]'") from exc

__all__ = [
    "ITERATORS",
    "MuxClosed",
    "MuxConnectTimeout",
    "MuxConnectionError",
    "MuxError",
    "MuxResponse",
    "MuxResponseExecute",
    "MuxTimeout",
    "TarantoolMux",
]

ITERATORS = ip.ITERATORS
_MISSING: Any = object()


# ---------------------------------------------------------------------- errors and responses


class MuxError(NetworkError):  # type: ignore[misc]
    """A request failed without a reply from the server (a ``tarantool.error.NetworkError``, so existing
    handlers catch it). ``code`` and ``errno`` hold the ``errno`` when a system call failed (else 0);
    ``message`` says what happened."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.errno = code

    def __str__(self) -> str:
        return str(self.message)


class MuxConnectionError(MuxError):
    """The connection could not be made (refused, timed out, authentication refused), or broke with
    requests in flight: those may or may not have run on the server. The next request reconnects.

    A refused authentication carries the server's error code in ``code`` (``errno`` is 0).
    """


class MuxConnectTimeout(MuxConnectionError, ConnectTimeout):
    """The connection was not ready within ``connect_timeout`` (also a :class:`greenpool.ConnectTimeout`); the
    message names the server and the stage (TCP connect, greeting, authentication)."""


class MuxTimeout(MuxError):
    """No in-flight permit within ``timeout``, or no reply within ``socket_timeout``; only this request failed.

    A request that timed out waiting for its reply may still run on the server; its late reply is dropped. The
    connection stays open.
    """


class MuxClosed(MuxError, PoolClosed):
    """The mux was closed (by your code) before the request got its reply."""


class MuxResponse(Response):  # type: ignore[misc]
    """A ``tarantool.response.Response`` built from an already parsed reply (no second unpacking)."""

    def __init__(self, conn: Any, sync: int, body: Dict[int, Any], data: Any, schema_version: int) -> None:
        self.conn = conn
        self._sync = sync
        self._code = 0
        self._return_code = 0
        self._body = body
        self._data = data
        self._schema_version = schema_version


class MuxResponseExecute(ResponseExecute):  # type: ignore[misc]
    """A ``tarantool.response.ResponseExecute`` built from an already parsed reply."""

    __init__ = MuxResponse.__init__


# ---------------------------------------------------------------------- shared state and one socket


class _Shared(MuxShared):
    """:class:`greenpool._mux.MuxShared` plus the schema version the replies carried, what to do when it moves
    (forget the cached space and index ids), and the highest ``sync`` handed to a socket (requests are handed
    over in ``sync`` order, so ``sent_sync`` tells a sent request from one waiting for a permit)."""

    __slots__ = ("on_schema", "schema_version", "sent_sync")

    def __init__(self, max_in_flight: int) -> None:
        super().__init__(max_in_flight)
        self.schema_version = 0
        self.on_schema: Callable[[], None] = _noop
        self.sent_sync = 0


def _noop() -> None:
    pass


class _DeferredRequest(DeferredRequest):
    """A request waiting for an in-flight permit: its ``sync`` is its ``seq``; ``glet`` waits for its reply."""

    __slots__ = ("glet",)

    def __init__(self, sock: _SharedSocket, data: List[bytes], sync: int, glet: Any) -> None:
        super().__init__(sock, data, 1, sync)
        self.glet = glet

    def waiting(self) -> int:
        return 1 if self.sock.pending.get(self.seq) is self.glet else 0  # type: ignore[attr-defined]


class _SharedSocket(MuxIO):
    """One shared socket of a mux: its requests (``sync`` -> the parked greenlet, or None once it gave up),
    sent or waiting for a permit; the reply reader."""

    __slots__ = ("address", "pending", "reader", "shared")

    def __init__(self, shared: _Shared, address: Any) -> None:
        super().__init__()
        self.shared = shared
        self.address = address
        self.pending: Dict[int, Any] = {}
        self.reader = ip.ReplyReader()

    def attach(self, sock: Any, loop: Any) -> None:
        """Start driving the connected, authenticated ``sock`` from the hub's ``loop``."""
        self.reader = ip.ReplyReader()
        self.start_io(sock, loop)

    def detach(self, close_socket: bool) -> Dict[int, Any]:
        """Stop the watchers, drop (and optionally close) the socket; return the requests that were in flight."""
        self.stop_io(close_socket)
        pending, self.pending = self.pending, {}
        return pending

    def admit(self, request: DeferredRequest) -> bool:
        assert isinstance(request, _DeferredRequest)
        sync = request.seq
        if self.pending.get(sync) is not request.glet:  # its greenlet gave up, or its socket was lost, meanwhile
            self.pending.pop(sync, None)
            return False
        self.shared.sent_sync = sync
        return True

    def send_failed(self, exc: OSError) -> None:
        self.lost(exc.errno or 0, f"send failed: {exc}")

    def read_failed(self, exc: Optional[OSError]) -> None:
        if exc is None:
            self.lost(0, "the server closed the connection")
        else:
            self.lost(exc.errno or 0, f"recv failed: {exc}")

    def on_readable(self) -> None:
        """Read watcher callback (in the hub): read what arrived, resume the greenlet of each reply, flush.

        The replies are decoded and resumed RESUME_BATCH at a time, so that ``unanswered`` is exact at low
        concurrency while the greenlets run (each sends its next request at once while the server has little to
        do: see MuxIO.pushed); what they send beyond that goes out in one send at the end.
        """
        nbytes = self.receive()
        if not nbytes:
            return
        reader = self.reader
        reader.append(self.view[:nbytes])
        pending = self.pending
        shared = self.shared
        self.flush_pending = True
        while True:
            batch = reader.take(RESUME_BATCH)
            if reader.schema_version > shared.schema_version:
                shared.schema_version = reader.schema_version
                shared.on_schema()
            ready: List[Any] = []  # greenlet, reply body (or the error to raise), ...
            for sync, code, value in batch:
                glet = pending.pop(sync, _MISSING)
                if glet is _MISSING:
                    shared.dropped += 1
                    continue
                self.unanswered -= 1
                shared.replies += 1
                shared.in_flight -= 1
                if glet is None:  # its greenlet gave up (timeout, kill): drop the late reply
                    shared.dropped += 1
                    continue
                if code:
                    shared.error_replies += 1
                ready.append(glet)
                ready.append(value)
            if reader.broken is not None:
                self.lost(0, f"protocol error: {reader.broken}")
                resume_all(ready)
                return
            if shared.deferred:
                shared.drain()  # the permits freed above go to the requests waiting for one, oldest first
            resume_all(ready)
            if self.pending is not pending:  # closed or lost meanwhile
                return
            if len(batch) < RESUME_BATCH:
                break
        self.flush_pending = False
        if self.out:
            self.flush()

    def lost(self, code: int, reason: str) -> None:
        """The socket broke (in the hub): close it and fail every request in flight on it."""
        pending = self.detach(close_socket=True)
        address = _format_address(self.address)
        message = f"lost the connection to {address} ({reason}); the request may or may not have run"
        fail_pending(self.shared, pending, MuxConnectionError, code, message)


def fail_pending(shared: _Shared, pending: Dict[int, Any], error: Type[MuxError], code: int, message: str) -> None:
    """Fail the requests of ``pending`` (in the hub), each with its own ``error(code, message)``; the permits
    of those that were sent go to the requests waiting for one."""
    if not pending:
        return
    sent = sum(1 for sync in pending if not shared.waiting_since(sync))
    glets = [glet for glet in pending.values() if glet is not None]
    pending.clear()
    for glet in glets:
        shared.failed += 1
        resume(glet, error(code, message))
    shared.in_flight -= sent
    shared.drain()


def _format_address(address: Any) -> str:
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def _read_exactly(sock: Any, nbytes: int) -> bytes:
    chunks = []
    while nbytes > 0:
        chunk = sock.recv(nbytes)
        if not chunk:
            raise OSError(0, "the server closed the connection during the handshake")
        chunks.append(chunk)
        nbytes -= len(chunk)
    return b"".join(chunks)


def _for_waiter(error: BaseException) -> Optional[BaseException]:
    """What a request that waited for another's failed connect raises: a copy of its connection error (each
    waiter its own traceback); None (try again) when the attempt was interrupted instead."""
    if not isinstance(error, MuxConnectionError):
        return None
    copy = type(error)(error.code, error.message)
    copy.errno = error.errno
    return copy


def _finalize(shared: _Shared, sockets: List[_SharedSocket], timers: List[Any]) -> None:
    """Close the sockets of a mux that was garbage-collected (the pending requests had no greenlet left)."""
    shared.closed = True
    for timer in timers:
        timer.close()
    if _green.fork_generation() != sockets[0].generation:
        return
    for sock in sockets:
        sock.detach(close_socket=True)


def _sweep_soon(mux_ref: weakref.ReferenceType[TarantoolMux]) -> None:
    mux = mux_ref()
    if mux is not None:
        mux._sweep()


# ---------------------------------------------------------------------- URL options

#: Options of ``TarantoolPool.from_url`` that do not apply to a multiplexer: accepted and ignored.
IGNORED_URL_OPTIONS = frozenset(
    {
        "max_connections",
        "min_connections",
        "max_waiting",
        "queue_policy",
        "check_after_idle",
        "max_lifetime",
        "max_idle",
        "leak_threshold",
        "reconnect_max_attempts",
        "reconnect_delay",
        "connect_now",
        "fetch_schema",
        "ssl_key_file",
        "ssl_cert_file",
        "ssl_ca_file",
        "ssl_ciphers",
        "ssl_password",
        "ssl_password_file",
    }
)


def _url_options() -> Dict[str, Callable[[str, str], Any]]:
    from greenpool.tarantool import _URL_OPTIONS as pool_options

    return {
        **pool_options,
        "shared_connections": url_int,
        "connections": url_int,
        "max_in_flight": url_int,
        "timeout": url_seconds,
        "socket_timeout": url_seconds,
        "connect_timeout": url_seconds,
        "connection_timeout": url_seconds,
        "name": url_str,
        "transport": url_str,
        "auth_type": url_str,
    }


# ---------------------------------------------------------------------- the mux


class TarantoolMux:
    """A multiplexed, auto-pipelined Tarantool connection shared by any number of greenlets.

    ``TarantoolMux(host, port, user=None, password=None, *, shared_connections=1, max_in_flight=1024,
    timeout=30.0, socket_timeout=30.0, connect_timeout=10.0, name=None)``:

    - ``host``, ``port``: the server (``host=None`` and ``port="/path/to.sock"`` for a unix socket).
    - ``user``, ``password``: chap-sha1 credentials (``None``: the guest user). The password is never
      shown in ``repr``, stats, logs or errors.
    - ``shared_connections``: sockets to spread requests over (round robin, at most 1024); each connects on
      first use. ``connections`` is its deprecated old name.
    - ``max_in_flight``: requests sent and not yet answered, over all sockets (a request given up by its
      greenlet counts until its late reply comes). A request beyond it waits for an in-flight permit, first
      come first served, its greenlet parked (back-pressure: whatever the number of greenlets, the server and
      the sockets hold at most this many requests).
    - ``timeout``: seconds a request waits for an in-flight permit before it fails with :class:`MuxTimeout`
      (``0``: it fails at once when there is none; ``None``: waits forever).
    - ``socket_timeout``: seconds a request waits for its reply once sent, then :class:`MuxTimeout` (``None``:
      forever). Both are checked by one periodic timer, so they fire up to a tenth of the shorter (at most
      0.5 s) late, never early.
    - ``connect_timeout`` (tarantool-python's name, ``connection_timeout``, is accepted too): seconds to connect,
      read the greeting and authenticate (``None``: no bound); then :class:`MuxConnectTimeout` (a
      :class:`MuxConnectionError`) names the stage that did not end in time.
    - ``name``: shown in errors, ``repr`` and stats (default ``tarantool host:port``).

    Every method blocks only the calling greenlet, until its reply arrives. The connection is made by
    the first request (or :meth:`connect`); when it breaks, the requests in flight on it fail with
    :class:`MuxConnectionError` and the next request reconnects. A greenlet interrupted while it waits
    (``gevent.Timeout``, ``kill``) gives up its request: the late reply is dropped, never handed to
    another request. Space and index names are resolved through ``_vspace``/``_vindex`` (cached, flushed
    when the server's schema version changes; a request built from a stale name is retried). After
    ``os.fork()`` the child opens its own connection on first use and never touches the parent's socket.
    One mux belongs to one thread's gevent hub.

    Not supported (tarantool-python features): ``on_push`` callbacks (pushed messages are skipped), the
    1.6 ``call_16`` mode, ``transport="ssl"`` (Tarantool Enterprise's TLS: a ``ValueError`` says so), ``crud_*``
    helpers, ``space()`` objects, ``encoding=None``.
    """

    def __init__(
        self,
        host: Optional[str],
        port: Union[int, str],
        user: Optional[str] = None,
        password: Optional[str] = None,
        *,
        shared_connections: int = 1,
        max_in_flight: int = 1024,
        timeout: Optional[float] = 30.0,
        socket_timeout: Optional[float] = 30.0,
        connect_timeout: Optional[float] = UNSET,
        connection_timeout: Optional[float] = UNSET,
        name: Optional[str] = None,
        transport: Optional[str] = None,
        connections: Optional[int] = None,
    ) -> None:
        check_address(host, port)
        if host is None:
            self._address: Any = port
            self._family = _socket_module.AF_UNIX
        else:
            self._address = (host, port)
            self._family = _socket_module.AF_INET6 if ":" in host else _socket_module.AF_INET
        check_credentials(user, password)
        check_name(name)
        if transport not in (None, ""):
            raise ValueError(
                f"transport={transport!r} is not supported by TarantoolMux (it speaks plain IPROTO; TLS is "
                "Tarantool Enterprise's): use greenpool.TarantoolPool with tarantool-python's transport='ssl'"
            )
        if connections is not None:
            given = shared_connections if shared_connections != 1 else connections
            shared_connections = renamed_argument("shared_connections", given, "connections", connections, 1)
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.shared_connections = check_int(
            "shared_connections", shared_connections, minimum=1, maximum=MAX_SHARED_CONNECTIONS
        )
        self.max_in_flight = check_int("max_in_flight", max_in_flight, minimum=1)
        self.timeout = check_seconds("timeout", timeout)
        self.socket_timeout = check_seconds("socket_timeout", socket_timeout, allow_zero=False)
        bound = either_argument("connect_timeout", connect_timeout, "connection_timeout", connection_timeout, 10.0)
        self.connect_timeout = check_seconds("connect_timeout", bound, allow_zero=False)
        self.name = name or f"tarantool {_format_address(self._address)}"
        self._pack = msgpack.Packer(use_bin_type=True, default=self._pack_ext).pack
        self._version_id = 0
        self._schema = Schema(self)
        self._space_ids: Dict[Any, int] = {}
        self._index_ids: Dict[Tuple[int, Any], int] = {}
        self._setup()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> TarantoolMux:
        """Build a mux from ``tarantool://[user[:password]@]host[:port][?option=value&...]``: any URL
        :meth:`greenpool.TarantoolPool.from_url` takes.

        The port defaults to 3301; user and password are percent-decoded. Query options: ``shared_connections``,
        ``max_in_flight``, ``timeout``, ``socket_timeout``, ``connect_timeout`` (or ``connection_timeout``;
        seconds, ``none`` waits forever) and ``name``; the pool's own options (``max_connections``,
        ``min_connections``, ``check_after_idle``, ``max_lifetime``, ``max_idle``, ``leak_threshold``,
        ``max_waiting``, ``queue_policy``) and tarantool-python's reconnect, schema and ``ssl_*`` options are
        accepted and do not apply (:data:`IGNORED_URL_OPTIONS`). ``kwargs`` override what the URL says. Never
        blocks (the first request connects).

        Raises ``ValueError`` naming the scheme, option or value that is wrong (never showing the password),
        also for ``transport=ssl`` and an ``auth_type`` other than ``chap-sha1``.
        """
        options = parse_url(url, _url_options())
        options.update(kwargs)
        auth_type = options.pop("auth_type", None)
        if auth_type not in (None, "", "chap-sha1"):
            raise ValueError(f"auth_type={auth_type!r} is not supported by TarantoolMux (only 'chap-sha1')")
        return cls(**{key: value for key, value in options.items() if key not in IGNORED_URL_OPTIONS})

    def _setup(self) -> None:
        """(Re)initialise the per-process state: at construction and in a child process after a fork."""
        self._generation = _green.fork_generation()
        self._shared = shared = _Shared(self.max_in_flight)
        space_ids, index_ids, schema = self._space_ids, self._index_ids, self._schema.schema

        def on_schema() -> None:
            space_ids.clear()
            index_ids.clear()
            schema.clear()

        shared.on_schema = on_schema
        self._sockets = [_SharedSocket(shared, self._address) for _ in range(self.shared_connections)]
        self._socket = self._sockets[0] if self.shared_connections == 1 else None
        self._rr = 0
        self._sync = 0
        # (time, the first sync not made yet) and (time, the first sync not sent yet), a tick apart.
        self._made_marks: Deque[Tuple[float, int]] = deque()
        self._sent_marks: Deque[Tuple[float, int]] = deque()
        self._thread: Optional[int] = None
        self._hub: Any = None
        self._loop: Any = None
        self._timers: List[Any] = []
        self._finalizer = weakref.finalize(self, _finalize, shared, self._sockets, self._timers)

    def _bind(self) -> None:
        """Tie the mux to the current thread's hub on first use; refuse any other thread after that."""
        ident = _green.claim_thread(self._thread, self.name, "Create one TarantoolMux per thread.")
        if self._thread is None:
            self._thread = ident
            self._hub = _green.get_hub()
            self._loop = self._hub.loop
            bounds = [bound for bound in (self.timeout, self.socket_timeout) if bound]
            if bounds:
                tick = min(max(min(bounds) / 10.0, 0.005), 0.5)
                timer = self._loop.timer(tick, tick, ref=False)
                timer.start(_sweep_soon, weakref.ref(self))
                self._timers.append(timer)

    def _after_fork(self) -> None:
        # The parent's sockets stay untouched: stop our watchers in the child's (reinitialised) loop and
        # close the child's copies of the descriptors; greenlets parked on them in the child stay parked.
        self._finalizer.detach()
        for timer in self._timers:
            timer.close()
        for sock in self._sockets:
            sock.detach(close_socket=True)
        self._setup()

    # -------------------------------------------------------------- the request path

    def _request(self, code: int, body: bytes, schema_version: Optional[int], cls: Any) -> Any:
        """Send one request and park until its reply; return a ``cls`` response (or the body if ``cls`` is None).

        Without an in-flight permit the request waits for one (registered, not sent; with ``timeout=0`` it
        fails at once); a reply that frees one sends it. Either way the greenlet parks once and is resumed once,
        by its reply or its failure.
        """
        if self._generation != _green.fork_generation():
            self._after_fork()
        shared = self._shared
        if shared.closed:
            raise MuxClosed(0, f"{self.name} is closed")
        if self._thread != _green.thread_ident():
            self._bind()
        sock = self._socket
        if sock is None:
            sock = self._sockets[self._rr % self.shared_connections]
            self._rr += 1
        if sock.state != UP:
            self._connect(sock)
        room = shared.has_room(1)
        if not room and self.timeout == 0:
            raise MuxTimeout(0, self._no_permit_message())
        shared.requests += 1
        self._sync = sync = self._sync + 1
        header = ip.pack_header(code, sync, len(body), schema_version)
        glet = _green.getcurrent()
        pending = sock.pending
        pending[sync] = glet
        if room:
            shared.in_flight += 1
            shared.sent_sync = sync
            sock.out.append(header)
            sock.out.append(body)
            sock.pushed()
        else:
            shared.deferred.append(_DeferredRequest(sock, [header, body], sync, glet))
        switch = self._hub.switch
        try:
            value = switch()
            while pending.get(sync) is glet:  # resumed by something other than our reply: park again
                value = switch()
        except BaseException:
            if pending.get(sync) is glet:
                pending[sync] = None  # gave up: the reply will be dropped; the permit is freed when it comes
            raise
        if value.__class__ is not dict:
            raise value
        if cls is None:
            return value
        data = value.get(ip.DATA)
        if data is not None and data.__class__ is not list and not isinstance(data, (list, tuple)):
            data = [data]
        return cls(self, sync, value, data, shared.schema_version)

    def _no_permit_message(self) -> str:
        shared = self._shared
        return (
            f"{self.name}: no in-flight permit within timeout={self.timeout} s "
            f"({shared.in_flight} requests in flight, max_in_flight={shared.max_in_flight})"
        )

    def _sweep(self) -> None:
        """Periodic timer callback (in the hub): fail the requests that waited ``timeout`` for a permit, or
        ``socket_timeout`` for their reply since they were sent."""
        if self._generation != _green.fork_generation():
            return
        now = _green.monotonic()
        permit_limit = _mark(self._made_marks, now, self.timeout, self._sync + 1)
        reply_limit = _mark(self._sent_marks, now, self.socket_timeout, self._shared.sent_sync + 1)
        if permit_limit:
            self._expire_permit_waits(permit_limit)
        if reply_limit:
            self._expire_reply_waits(reply_limit)

    def _expire_permit_waits(self, limit: int) -> None:
        shared = self._shared
        for request in list(shared.deferred):
            if request.seq >= limit:
                break
            pending = request.sock.pending  # type: ignore[attr-defined]
            glet = pending.get(request.seq)
            if glet is not None:
                pending[request.seq] = None
                shared.timeouts += 1
                resume(glet, MuxTimeout(0, self._no_permit_message()))

    def _expire_reply_waits(self, limit: int) -> None:
        shared = self._shared
        message = f"{self.name}: no reply within socket_timeout={self.socket_timeout} s"
        for sock in self._sockets:
            pending = sock.pending
            if not pending:
                continue
            expired = [
                (sync, glet)
                for sync, glet in pending.items()
                if sync < limit and glet is not None and not shared.waiting_since(sync)
            ]
            for sync, glet in expired:
                if sock.pending is not pending:
                    break
                if pending.get(sync) is glet:
                    pending[sync] = None
                    shared.timeouts += 1
                    resume(glet, MuxTimeout(0, message))

    # -------------------------------------------------------------- connecting

    def connect(self) -> None:
        """Connect every socket now (otherwise each connects on first use); blocks up to ``connect_timeout``.

        Raises :class:`MuxConnectionError` (refused, timed out, authentication failed) or :class:`MuxClosed`.
        """
        if self._generation != _green.fork_generation():
            self._after_fork()
        if self._thread != _green.thread_ident():
            self._bind()
        for sock in self._sockets:
            if sock.state != UP:
                self._connect(sock)

    def _connect(self, sock: _SharedSocket) -> None:
        """Bring ``sock`` up, or wait for the greenlet that is doing so; raise what the attempt raised."""
        if self._shared.closed:
            raise MuxClosed(0, f"{self.name} is closed")

        def start(raw: Any) -> None:
            if self._shared.closed:
                raw.close()
                raise MuxClosed(0, f"{self.name} was closed while connecting")
            sock.attach(raw, self._loop)

        connect_shared(sock, self._shared, self._open, start, _for_waiter)

    def _open(self) -> Any:
        """Connect, read the greeting, authenticate, all within ``connect_timeout`` (else
        :class:`MuxConnectTimeout` naming the stage); return a non-blocking stdlib socket. Blocks this greenlet."""
        address = _format_address(self._address)
        gsock = gsocket.socket(self._family, _socket_module.SOCK_STREAM)
        stage = "unix socket connect" if self._family == _socket_module.AF_UNIX else "TCP connect"

        def steps() -> None:
            nonlocal stage
            gsock.connect(self._address)
            if self._family != _socket_module.AF_UNIX:
                gsock.setsockopt(_socket_module.IPPROTO_TCP, _socket_module.TCP_NODELAY, 1)
            stage = "greeting"
            try:
                self._version_id, salt = ip.parse_greeting(_read_exactly(gsock, ip.GREETING_SIZE), address)
            except ValueError as exc:
                raise MuxConnectionError(0, str(exc)) from None
            if self.user is not None:
                stage = "authentication"
                self._authenticate(gsock, salt, address)

        def expired(interruption: BaseException) -> MuxConnectTimeout:
            seconds = self.connect_timeout or 0.0
            return MuxConnectTimeout(0, _green.connect_timeout_message(address, seconds, "connect_timeout", stage))

        try:
            _green.call_within(self.connect_timeout, steps, expired)
            fd = gsock.detach()
        except OSError as exc:
            gsock.close()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise MuxConnectionError(exc.errno or 0, f"could not connect to {address}: {reason}") from None
        except BaseException:
            gsock.close()
            raise
        sock = RawSocket(self._family, _socket_module.SOCK_STREAM, 0, fileno=fd)
        sock.setblocking(False)
        return sock

    def _authenticate(self, gsock: Any, salt: bytes, address: str) -> None:
        user = self.user
        body = self._pack(ip.auth_body(user or "", salt, self._password or ""))
        gsock.sendall(ip.pack_header(ip.AUTH, 0, len(body), 0) + body)
        prefix = _read_exactly(gsock, 5)
        [(_, code, value)] = ip.ReplyReader().feed(prefix + _read_exactly(gsock, msgpack.unpackb(prefix)))
        if code:
            message = value.message if isinstance(value, DatabaseError) else repr(value)
            number = value.code if isinstance(value, DatabaseError) else code & (ip.TYPE_ERROR - 1)
            error = MuxConnectionError(number, f"authentication as {user!r} at {address} failed: {message}")
            error.errno = 0
            raise error

    def _pack_ext(self, obj: Any) -> Any:
        return _ext_default(obj, msgpack.Packer(use_bin_type=True), self._version_id)

    # -------------------------------------------------------------- schema

    def _space_id(self, space: Any) -> int:
        if space.__class__ is int:
            return space
        sid = self._space_ids.get(space)
        if sid is None:
            ip.check_space(space)
            if isinstance(space, int):
                return space
            sid = self._schema.get_space(space).sid
            self._space_ids[space] = sid
        return sid

    def _index_id(self, sid: int, index: Any) -> int:
        if index.__class__ is int:
            return index
        iid = self._index_ids.get((sid, index))
        if iid is None:
            ip.check_index(index)
            if isinstance(index, int):
                return index
            iid = self._schema.get_index(sid, index).iid
            self._index_ids[(sid, index)] = iid
        return iid

    def _ops(self, sid: int, op_list: Any) -> List[Any]:
        """``op_list`` with field names replaced by their numbers (as tarantool-python does)."""
        ops = []
        for op in op_list:
            if isinstance(op[1], str):
                op = list(op)
                op[1] = self._schema.get_field(sid, op[1])["id"]
            ops.append(op)
        return ops

    def _space_request(self, code: int, space: Any, build: Callable[[int], Any], names: bool = False) -> Any:
        """Send a request on a space given by name or id (``names``: it also names an index or fields).

        A request built from names carries the schema version they were resolved at; when the server's
        schema has moved since, it refuses the request, and it is rebuilt from fresh names and sent again.
        """
        if space.__class__ is int and not names:
            return self._request(code, self._pack(build(space)), None, MuxResponse)
        for attempt in (1, 2, 3):
            payload = self._pack(build(self._space_id(space)))
            try:
                return self._request(code, payload, self._shared.schema_version, MuxResponse)
            except DatabaseError as exc:
                if exc.code != ip.ER_WRONG_SCHEMA_VERSION or isinstance(exc, NetworkError) or attempt == 3:
                    raise
                self._shared.on_schema()
        raise AssertionError("unreachable")  # pragma: no cover

    def flush_schema(self) -> None:
        """Forget the cached space and index ids; they are fetched again on next use. Never blocks."""
        self._shared.on_schema()

    # -------------------------------------------------------------- the tarantool-python API

    def ping(self, notime: bool = False) -> Union[float, str]:
        """Send a PING; return the round trip in seconds (``"Success"`` with ``notime``). Blocks until the reply."""
        start = time.time()
        self._request(ip.PING, b"", None, None)
        if notime:
            return "Success"
        return time.time() - start

    def select(
        self,
        space_name: Union[str, int],
        key: Any = None,
        *,
        offset: int = 0,
        limit: int = 0xFFFFFFFF,
        index: Union[str, int] = 0,
        iterator: Union[str, int, None] = None,
    ) -> Response:
        """SELECT from a space by ``key`` on ``index`` (name or id); ``iterator`` is a number or a name of
        :data:`ITERATORS` (default ``EQ``, or ``ALL`` for an empty key). Returns a ``Response`` of tuples."""
        ip.check_space(space_name)
        ip.check_index(index)
        offset = check_int("offset", offset)
        limit = check_int("limit", limit)
        it = ip.iterator_number(iterator, key)
        key = wrap_key(key, select=True)

        def build(sid: int) -> Dict[int, Any]:
            return ip.select_body(sid, self._index_id(sid, index), offset, limit, it, key)

        return self._space_request(ip.SELECT, space_name, build, isinstance(index, str))

    def insert(self, space_name: Union[str, int], values: Sequence[Any]) -> Response:
        """INSERT ``values`` (a list or tuple) into a space; a duplicate key raises ``DatabaseError``.
        Returns a ``Response`` holding the inserted tuple."""
        return self._store(ip.INSERT, space_name, values)

    def replace(self, space_name: Union[str, int], values: Sequence[Any]) -> Response:
        """REPLACE ``values`` (a list or tuple) in a space. Returns a ``Response`` holding the new tuple."""
        return self._store(ip.REPLACE, space_name, values)

    def _store(self, code: int, space_name: Any, values: Any) -> Any:
        if values.__class__ is not list:
            ip.check_values("values", values)
        if space_name.__class__ is int:
            return self._request(code, self._pack(ip.store_body(space_name, values)), None, MuxResponse)
        sid = self._space_ids.get(space_name) if space_name.__class__ is str else None
        if sid is not None:
            payload = self._pack(ip.store_body(sid, values))
            try:
                return self._request(code, payload, self._shared.schema_version, MuxResponse)
            except DatabaseError as exc:
                if exc.code != ip.ER_WRONG_SCHEMA_VERSION or isinstance(exc, NetworkError):
                    raise
                self._shared.on_schema()
        ip.check_space(space_name)
        return self._space_request(code, space_name, lambda sid: ip.store_body(sid, values))

    def delete(self, space_name: Union[str, int], key: Any, *, index: Union[str, int] = 0) -> Response:
        """DELETE the tuple with ``key`` on ``index`` (name or id). Returns a ``Response`` with the deleted tuple."""
        ip.check_space(space_name)
        ip.check_index(index)
        key = wrap_key(key)

        def build(sid: int) -> Dict[int, Any]:
            return ip.delete_body(sid, self._index_id(sid, index), key)

        return self._space_request(ip.DELETE, space_name, build, isinstance(index, str))

    def update(
        self, space_name: Union[str, int], key: Any, op_list: Sequence[Any], *, index: Union[str, int] = 0
    ) -> Response:
        """UPDATE the tuple with ``key`` by ``op_list`` (``[('+', 2, 1), ('=', 'value', x)]``, fields by number
        as tarantool-python takes them, or by name). Returns a ``Response`` with the updated tuple."""
        ip.check_space(space_name)
        ip.check_index(index)
        ip.check_ops(op_list)
        key = wrap_key(key)

        def build(sid: int) -> Dict[int, Any]:
            return ip.update_body(sid, self._index_id(sid, index), key, self._ops(sid, op_list))

        return self._space_request(ip.UPDATE, space_name, build, _names_in(index, op_list))

    def upsert(
        self,
        space_name: Union[str, int],
        tuple_value: Sequence[Any],
        op_list: Sequence[Any],
        *,
        index: Union[str, int] = 0,
    ) -> Response:
        """UPSERT: insert ``tuple_value``, or apply ``op_list`` to the existing tuple. Returns an empty ``Response``."""
        ip.check_space(space_name)
        ip.check_index(index)
        ip.check_values("tuple_value", tuple_value)
        ip.check_ops(op_list)

        def build(sid: int) -> Dict[int, Any]:
            return ip.upsert_body(sid, self._index_id(sid, index), tuple_value, self._ops(sid, op_list))

        return self._space_request(ip.UPSERT, space_name, build, _names_in(index, op_list))

    def call(self, func_name: str, *args: Any) -> Response:
        """CALL a stored Lua function with ``args`` (one list or tuple argument is taken as the argument list).
        Returns a ``Response`` whose data are the function's return values."""
        if not isinstance(func_name, str):
            raise TypeError(f"func_name must be a str, got {func_name!r} ({type(func_name).__name__})")
        return self._request(ip.CALL, self._pack(ip.call_body(func_name, ip.arguments(args))), None, MuxResponse)

    def eval(self, expr: str, *args: Any) -> Response:
        """EVAL a Lua expression with ``args`` (available as ``...``). Returns a ``Response`` of its results."""
        if not isinstance(expr, str):
            raise TypeError(f"expr must be a str, got {expr!r} ({type(expr).__name__})")
        return self._request(ip.EVAL, self._pack(ip.eval_body(expr, ip.arguments(args))), None, MuxResponse)

    def execute(self, query: str, params: Union[Sequence[Any], Mapping[str, Any], None] = None) -> ResponseExecute:
        """EXECUTE an SQL statement with positional (``?``) or named (``:name``) ``params``. Returns a
        ``ResponseExecute`` (``data``, ``affected_row_count``, ``autoincrement_ids``)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {query!r} ({type(query).__name__})")
        if not params:
            bind: Any = []
        elif isinstance(params, Mapping):
            bind = [{f":{name}": value} for name, value in params.items()]
        elif isinstance(params, (list, tuple)):
            bind = params
        else:
            raise TypeError(f"params must be a list, tuple or mapping, got {params!r} ({type(params).__name__})")
        return self._request(ip.EXECUTE, self._pack(ip.execute_body(query, bind)), None, MuxResponseExecute)

    # -------------------------------------------------------------- closing and introspection

    def close(self) -> None:
        """Close the sockets; idempotent, never blocks.

        Requests in flight and greenlets waiting for a permit fail with :class:`MuxClosed` (from the hub, at its
        next turn), and so does every later request.
        """
        shared = self._shared
        if shared.closed:
            return
        shared.closed = True
        for timer in self._timers:
            timer.close()
        if self._generation != _green.fork_generation():
            return
        message = f"{self.name} was closed before the reply came"
        loop = self._loop or _green.get_hub().loop
        for sock in self._sockets:
            pending = sock.detach(close_socket=True)
            if pending:
                loop.run_callback(fail_pending, shared, pending, MuxClosed, 0, message)

    def is_closed(self) -> bool:
        """True once :meth:`close` was called (tarantool-python's name)."""
        return self._shared.closed

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._shared.closed

    def __enter__(self) -> TarantoolMux:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def get_stats(self) -> Dict[str, Union[int, str]]:
        """Return a snapshot as a plain dict: ``name`` and the ``mux_*`` keys :class:`greenpool.RedisMuxPool`
        reports too (the README lists them; ``mux_requests / mux_writes`` is the average batch). In a fork's
        child they start from zero. Never blocks."""
        if self._generation != _green.fork_generation():
            self._after_fork()
        stats: Dict[str, Union[int, str]] = {"name": self.name}
        stats.update(mux_stats(self._shared, list(self._sockets)))
        return stats

    def pop_stats(self) -> Dict[str, Union[int, str]]:
        """Return :meth:`get_stats` and reset its totals to zero (the gauges stay). Never blocks."""
        stats = self.get_stats()
        reset_totals(self._shared, list(self._sockets))
        return stats

    def __repr__(self) -> str:
        up = sum(sock.state == UP for sock in self._sockets)
        state = "closed" if self._shared.closed else f"connected={up}"
        user = f" user={self.user!r}" if self.user else ""
        return (
            f"<{type(self).__name__} {self.name!r} {_format_address(self._address)}{user} {state}/"
            f"{len(self._sockets)} in_flight={self._shared.in_flight}>"
        )


def _names_in(index: Any, op_list: Any) -> bool:
    """Whether an index or a field is given by name (resolved through the cached schema)."""
    return isinstance(index, str) or any(isinstance(op[1], str) for op in op_list)


def _mark(marks: Deque[Tuple[float, int]], now: float, bound: Optional[float], first_after: int) -> int:
    """Record that every ``sync`` below ``first_after`` was made (or sent) by ``now``; return the ``sync`` below
    which every request was made (sent) at least ``bound`` seconds ago (0: none, or no bound)."""
    if not bound:
        return 0
    marks.append((now, first_after))
    limit = 0
    deadline = now - bound
    while marks and marks[0][0] <= deadline:
        limit = marks.popleft()[1]
    return limit
