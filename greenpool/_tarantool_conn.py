"""The shared sockets of ``greenpool.TarantoolMux``: its errors, the handshake (connect, greeting,
authentication) and the read callback that hands each reply to the greenlet that asked for it.

Depends on gevent, msgpack, tarantool-python (its error classes), ``greenpool._iproto``, ``greenpool._mux``,
``greenpool._green`` and ``greenpool.errors``.
"""

from __future__ import annotations

import socket as _socket_module
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import msgpack
from gevent import socket as gsocket

from greenpool import _green
from greenpool import _iproto as ip
from greenpool._mux import RESUME_BATCH, DeferredRequest, MuxIO, MuxShared, RawSocket, resume, resume_all
from greenpool.errors import ConnectTimeout, PoolClosed

try:
    from tarantool.error import DatabaseError, NetworkError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("greenpool.TarantoolMux needs tarantool-python: pip install 'greenpool[tarantool]'") from exc

__all__ = [
    "MuxClosed",
    "MuxConnectTimeout",
    "MuxConnectionError",
    "MuxError",
    "MuxTimeout",
    "DeferredSyncRequest",
    "SharedSocket",
    "TarantoolShared",
    "fail_pending",
    "finalize",
    "format_address",
    "open_socket",
    "waiter_error",
]

_MISSING: Any = object()


# ---------------------------------------------------------------------- errors


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


# ---------------------------------------------------------------------- shared state and one socket


class TarantoolShared(MuxShared):
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


class DeferredSyncRequest(DeferredRequest):
    """A request waiting for an in-flight permit: its ``sync`` is its ``seq``; ``glet`` waits for its reply."""

    __slots__ = ("body", "glet", "header")

    def __init__(self, sock: SharedSocket, header: bytes, body: bytes, sync: int, glet: Any) -> None:
        self.sock = sock  # DeferredRequest.__init__, written out: one is made per request over the limit
        self.header = header
        self.body = body
        self.n = 1
        self.seq = sync
        self.glet = glet

    def waiting(self) -> int:
        return 1 if self.sock.pending.get(self.seq) is self.glet else 0  # type: ignore[attr-defined]


class SharedSocket(MuxIO):
    """One shared socket of a mux: its requests (``sync`` -> the parked greenlet, or None once it gave up),
    sent or waiting for a permit; the reply reader."""

    __slots__ = ("address", "pending", "reader", "shared")

    def __init__(self, shared: TarantoolShared, address: Any) -> None:
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
        sync = request.seq
        pending = self.pending
        if pending.get(sync) is not request.glet:  # type: ignore[attr-defined]  # a DeferredSyncRequest
            pending.pop(sync, None)  # its greenlet gave up, or its socket was lost, meanwhile
            return False
        self.shared.sent_sync = sync
        out = self.out
        out.append(request.header)  # type: ignore[attr-defined]
        out.append(request.body)  # type: ignore[attr-defined]
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
            self.time_replies(shared.reply_hist)
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
        address = format_address(self.address)
        message = f"lost the connection to {address} ({reason}); the request may or may not have run"
        fail_pending(self.shared, pending, MuxConnectionError, code, message)


def fail_pending(
    shared: TarantoolShared, pending: Dict[int, Any], error: Type[MuxError], code: int, message: str
) -> None:
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


def format_address(address: Any) -> str:
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


def waiter_error(error: BaseException) -> Optional[BaseException]:
    """What a request that waited for another's failed connect raises: a copy of its connection error (each
    waiter its own traceback); None (try again) when the attempt was interrupted instead."""
    if not isinstance(error, MuxConnectionError):
        return None
    copy = type(error)(error.code, error.message)
    copy.errno = error.errno
    return copy


def finalize(shared: TarantoolShared, sockets: List[SharedSocket], timers: List[Any]) -> None:
    """Close the sockets of a mux that was garbage-collected (the pending requests had no greenlet left)."""
    shared.closed = True
    for timer in timers:
        timer.close()
    if _green.fork_generation() != sockets[0].generation:
        return
    for sock in sockets:
        sock.detach(close_socket=True)


def open_socket(
    address: Any, family: int, user: Optional[str], password: Optional[str], bound: Optional[float]
) -> Tuple[Any, int]:
    """Connect to ``address``, read the greeting, authenticate ``user`` (unless None), all within ``bound``
    seconds (else :class:`MuxConnectTimeout` naming the stage); return a non-blocking stdlib socket and the
    server's version id. Blocks this greenlet; raises :class:`MuxConnectionError`."""
    where = format_address(address)
    gsock = gsocket.socket(family, _socket_module.SOCK_STREAM)
    stage = "unix socket connect" if family == _socket_module.AF_UNIX else "TCP connect"
    version_id = 0

    def steps() -> None:
        nonlocal stage, version_id
        gsock.connect(address)
        if family != _socket_module.AF_UNIX:
            gsock.setsockopt(_socket_module.IPPROTO_TCP, _socket_module.TCP_NODELAY, 1)
        stage = "greeting"
        try:
            version_id, salt = ip.parse_greeting(_read_exactly(gsock, ip.GREETING_SIZE), where)
        except ValueError as exc:
            raise MuxConnectionError(0, str(exc)) from None
        if user is not None:
            stage = "authentication"
            _authenticate(gsock, user, salt, password or "", where)

    def expired(interruption: BaseException) -> MuxConnectTimeout:
        return MuxConnectTimeout(0, _green.connect_timeout_message(where, bound or 0.0, "connect_timeout", stage))

    try:
        _green.call_within(bound, steps, expired)
        fd = gsock.detach()
    except OSError as exc:
        gsock.close()
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise MuxConnectionError(exc.errno or 0, f"could not connect to {where}: {reason}") from None
    except BaseException:
        gsock.close()
        raise
    sock = RawSocket(family, _socket_module.SOCK_STREAM, 0, fileno=fd)
    sock.setblocking(False)
    return sock, version_id


def _authenticate(gsock: Any, user: str, salt: bytes, password: str, where: str) -> None:
    body = msgpack.packb(ip.auth_body(user, salt, password), use_bin_type=True)
    gsock.sendall(ip.pack_header(ip.AUTH, 0, len(body), 0) + body)
    prefix = _read_exactly(gsock, 5)
    [(_, code, value)] = ip.ReplyReader().feed(prefix + _read_exactly(gsock, msgpack.unpackb(prefix)))
    if code:
        message = value.message if isinstance(value, DatabaseError) else repr(value)
        number = value.code if isinstance(value, DatabaseError) else code & (ip.TYPE_ERROR - 1)
        error = MuxConnectionError(number, f"authentication as {user!r} at {where} failed: {message}")
        error.errno = 0
        raise error
