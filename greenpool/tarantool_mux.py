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
import weakref
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

import msgpack

from greenpool import _green
from greenpool import _iproto as ip
from greenpool._mux import (
    MAX_SHARED_CONNECTIONS,
    UNSET,
    UP,
    connect_shared,
    either_argument,
    mux_histograms,
    mux_stats,
    reset_totals,
    resume,
)
from greenpool._tarantool_conn import (
    DeferredSyncRequest,
    MuxClosed,
    MuxConnectionError,
    MuxConnectTimeout,
    MuxError,
    MuxTimeout,
    SharedSocket,
    TarantoolShared,
    fail_pending,
    finalize,
    format_address,
    open_socket,
    waiter_error,
)
from greenpool._tarantool_requests import MuxResponse, MuxResponseExecute, RequestMethods
from greenpool._tarantool_url import MUX_IGNORED_OPTIONS, mux_options, parse_url
from greenpool._validate import check_address, check_credentials, check_int, check_name, check_seconds, deprecated_name
from greenpool.stats import HistogramSnapshot

try:
    from tarantool.msgpack_ext.packer import default as _ext_default
    from tarantool.schema import Schema
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
_pack_header, _HEADER_LEN = ip.HEADER.pack, ip.HEADER.size - 5
_pack_header_sv, _HEADER_SV_LEN = ip.HEADER_SV.pack, ip.HEADER_SV.size - 5
_MISSING: Any = object()


def _sweep_soon(mux_ref: weakref.ReferenceType[TarantoolMux]) -> None:
    mux = mux_ref()
    if mux is not None:
        mux._sweep()


# ---------------------------------------------------------------------- the mux


class TarantoolMux(RequestMethods):
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

    _shared: TarantoolShared

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
        shared_connections = deprecated_name("connections", "shared_connections", connections, shared_connections, 1)
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
        self.name = name or f"tarantool {format_address(self._address)}"
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
        accepted and do not apply (``greenpool._tarantool_url.MUX_IGNORED_OPTIONS``). ``kwargs`` override what
        the URL says. Never blocks (the first request connects).

        Raises ``ValueError`` naming the scheme, option or value that is wrong (never showing the password),
        also for ``transport=ssl`` and an ``auth_type`` other than ``chap-sha1``.
        """
        from greenpool.tarantool import _URL_OPTIONS as pool_options

        options = parse_url(url, mux_options(pool_options))
        options.update(kwargs)
        auth_type = options.pop("auth_type", None)
        if auth_type not in (None, "", "chap-sha1"):
            raise ValueError(f"auth_type={auth_type!r} is not supported by TarantoolMux (only 'chap-sha1')")
        return cls(**{key: value for key, value in options.items() if key not in MUX_IGNORED_OPTIONS})

    def _setup(self) -> None:
        """(Re)initialise the per-process state: at construction and in a child process after a fork."""
        self._generation = _green.fork_generation()
        self._shared = shared = TarantoolShared(self.max_in_flight)
        space_ids, index_ids, schema = self._space_ids, self._index_ids, self._schema.schema

        def on_schema() -> None:
            space_ids.clear()
            index_ids.clear()
            schema.clear()

        shared.on_schema = on_schema
        self._sockets = [SharedSocket(shared, self._address) for _ in range(self.shared_connections)]
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
        self._finalizer = weakref.finalize(self, finalize, shared, self._sockets, self._timers)

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
        room = shared.in_flight < shared.max_in_flight and not shared.deferred  # has_room(1), inlined
        if not room and self.timeout == 0:
            raise MuxTimeout(0, self._no_permit_message())
        shared.requests += 1
        self._sync = sync = self._sync + 1
        if schema_version is None:  # ip.pack_header, written out: this runs once per request
            header = _pack_header(0xCE, _HEADER_LEN + len(body), 0x82, 0, code, 1, 0xCF, sync)
        else:
            header = _pack_header_sv(
                0xCE, _HEADER_SV_LEN + len(body), 0x83, 0, code, 1, 0xCF, sync, 5, 0xCF, schema_version
            )
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
            shared.deferred.append(DeferredSyncRequest(sock, header, body, sync, glet))
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

    def _connect(self, sock: SharedSocket) -> None:
        """Bring ``sock`` up, or wait for the greenlet that is doing so; raise what the attempt raised."""
        if self._shared.closed:
            raise MuxClosed(0, f"{self.name} is closed")

        def start(raw: Any) -> None:
            if self._shared.closed:
                raw.close()
                raise MuxClosed(0, f"{self.name} was closed while connecting")
            sock.attach(raw, self._loop)

        connect_shared(sock, self._shared, self._open, start, waiter_error)

    def _open(self) -> Any:
        """Connect, read the greeting, authenticate, within ``connect_timeout``; blocks this greenlet."""
        sock, self._version_id = open_socket(
            self._address, self._family, self.user, self._password, self.connect_timeout
        )
        return sock

    def _pack_ext(self, obj: Any) -> Any:
        return _ext_default(obj, msgpack.Packer(use_bin_type=True), self._version_id)

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

    def get_histograms(self) -> Dict[str, HistogramSnapshot]:
        """Return the ``reply`` histogram (milliseconds): for each send on a shared socket, the time until as
        many replies as requests sent by then had arrived (one value per send, so a busy socket's batches count
        once each). Cumulative until :meth:`pop_stats`; in a fork's child it starts empty. Never blocks."""
        if self._generation != _green.fork_generation():
            self._after_fork()
        return mux_histograms(self._shared)

    def __repr__(self) -> str:
        up = sum(sock.state == UP for sock in self._sockets)
        state = "closed" if self._shared.closed else f"connected={up}"
        user = f" user={self.user!r}" if self.user else ""
        return (
            f"<{type(self).__name__} {self.name!r} {format_address(self._address)}{user} {state}/"
            f"{len(self._sockets)} in_flight={self._shared.in_flight}>"
        )


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
