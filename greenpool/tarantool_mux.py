"""``greenpool.TarantoolMux``: many greenlets share one auto-pipelined Tarantool connection.

A :class:`TarantoolMux` speaks IPROTO itself over a non-blocking socket driven by the gevent hub's event loop.
Every request gets its own ``sync`` number and goes out at once while the server has at most a quarter as much
work queued as waits to be sent; under load, requests made while the hub is busy are coalesced into one
``send``; a read watcher (a callback in the hub, not a greenlet) reads whatever has arrived in one
``recv_into``, parses the replies with one ``msgpack.Unpacker`` and switches straight to the greenlet that asked
for each of them. No per-request Event, AsyncResult or timer: a request costs one park and one resume.

The methods (``ping``, ``select``, ``insert``, ``replace``, ``update``, ``upsert``, ``delete``, ``call``,
``eval``, ``execute``) take the arguments of tarantool-python's ``tarantool.Connection`` methods and return
the same objects: ``tarantool.response.Response`` (``ResponseExecute`` for SQL), ``ping()`` a float. Error
replies raise ``tarantool.error.DatabaseError`` with the server's code and message; network failures raise
:class:`MuxConnectionError`, timeouts :class:`MuxTimeout`, use after :meth:`TarantoolMux.close`
:class:`MuxClosed`, all ``tarantool.error.NetworkError`` subclasses.

Depends on gevent, msgpack and tarantool-python (its response, schema, error and msgpack extension code),
and on ``greenpool._green`` / ``greenpool._validate`` / ``greenpool.errors``; not on the core pool.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket as _socket_module
import struct
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import msgpack
from gevent import socket as gsocket
from gevent.event import Event
from gevent.monkey import get_original
from msgpack import OutOfData

from greenpool import _green
from greenpool._mux import CONNECTING as _CONNECTING
from greenpool._mux import DOWN as _DOWN
from greenpool._mux import MAX_MUX_CONNECTIONS, MuxIO
from greenpool._mux import UP as _UP
from greenpool._tarantool_url import parse_url, url_int, url_seconds, url_str
from greenpool._validate import check_address, check_credentials, check_int, check_name, check_seconds
from greenpool.errors import ConnectTimeout, PoolClosed

try:
    from tarantool.error import DatabaseError, NetworkError
    from tarantool.msgpack_ext.packer import default as _ext_default
    from tarantool.msgpack_ext.unpacker import ext_hook as _ext_hook
    from tarantool.response import Response, ResponseExecute
    from tarantool.schema import Schema
    from tarantool.types import decode_box_error
    from tarantool.utils import wrap_key
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("greenpool.TarantoolMux needs tarantool-python: pip install 'greenpool[tarantool]'") from exc

__all__ = [
    "MuxClosed",
    "MuxConnectTimeout",
    "MuxConnectionError",
    "MuxError",
    "MuxResponse",
    "MuxResponseExecute",
    "MuxTimeout",
    "TarantoolMux",
]

logger = logging.getLogger("greenpool")

# The stdlib socket class even when ``socket`` is monkey-patched: the hub's watchers drive it directly.
_RawSocket: Any = get_original("socket", "socket")

# ---------------------------------------------------------------------- IPROTO

_REQUEST_TYPE, _SYNC, _SCHEMA_VERSION = 0x00, 0x01, 0x05
_SPACE_ID, _INDEX_ID, _LIMIT, _OFFSET, _ITERATOR = 0x10, 0x11, 0x12, 0x13, 0x14
_KEY, _TUPLE, _FUNCTION_NAME, _USER_NAME, _EXPR, _OPS = 0x20, 0x21, 0x22, 0x23, 0x27, 0x28
_DATA, _ERROR_24, _SQL_TEXT, _SQL_BIND, _ERROR = 0x30, 0x31, 0x40, 0x41, 0x52

_SELECT, _INSERT, _REPLACE, _UPDATE, _DELETE, _AUTH = 1, 2, 3, 4, 5, 7
_EVAL, _UPSERT, _CALL, _EXECUTE, _PING = 8, 9, 10, 11, 64
_CHUNK = 0x80
_TYPE_ERROR = 0x8000
_ER_WRONG_SCHEMA_VERSION = 109

_GREETING_SIZE = 128

# A request is <0xce uint32 length> <header map> <body map>; the header is packed by hand, with the sync
# always as a uint64 (valid MessagePack for any value).
_HEADER = struct.Struct(">BIBBBBBQ")  # 0xce len | 0x82 0x00 type 0x01 0xcf sync
_HEADER_SV = struct.Struct(">BIBBBBBQBBQ")  # ... | 0x83 ... 0x05 0xcf schema_version
_HEADER_LEN = _HEADER.size - 5
_HEADER_SV_LEN = _HEADER_SV.size - 5

#: Iterator names accepted by :meth:`TarantoolMux.select` besides the numbers tarantool-python takes.
ITERATORS: Dict[str, int] = {
    "EQ": 0,
    "REQ": 1,
    "ALL": 2,
    "LT": 3,
    "LE": 4,
    "GE": 5,
    "GT": 6,
    "BITS_ALL_SET": 7,
    "BITS_ANY_SET": 8,
    "BITS_ALL_NOT_SET": 9,
    "OVERLAPS": 10,
    "NEIGHBOR": 11,
}

#: Replies parsed before their greenlets are resumed (see greenpool.redis_mux._RESUME_BATCH).
_RESUME_BATCH = 16
_MISSING: Any = object()

_URL_OPTIONS: Dict[str, Callable[[str, str], Any]] = {
    "connections": url_int,
    "max_in_flight": url_int,
    "timeout": url_seconds,
    "connect_timeout": url_seconds,
    "name": url_str,
}


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
    """No reply (or no free in-flight slot) within the mux's ``timeout``; only this request failed.

    The request may still run on the server; its late reply is dropped. The connection stays open.
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


def _error_reply(code: int, body: Any) -> DatabaseError:
    message = body.get(_ERROR_24, "") if body.__class__ is dict else ""
    extra = body.get(_ERROR) if body.__class__ is dict else None
    return DatabaseError(
        code & (_TYPE_ERROR - 1), message, extra_info=decode_box_error(extra) if extra is not None else None
    )


# ---------------------------------------------------------------------- one socket


class _Shared:
    """What the connections of one mux share: the in-flight count, the queue of requests waiting for a
    slot, the counters.

    Kept apart from :class:`TarantoolMux` so that the hub's watchers (which hold the connections) never
    keep the mux itself alive: a mux that is garbage-collected closes its sockets.
    """

    __slots__ = (
        "closed",
        "deferred",
        "dropped",
        "error_replies",
        "failed",
        "in_flight",
        "max_in_flight",
        "on_schema",
        "replies",
        "schema_version",
        "timeouts",
    )

    def __init__(self, max_in_flight: int) -> None:
        self.in_flight = 0  # requests sent and not answered yet
        self.max_in_flight = max_in_flight
        # Requests waiting for a slot, first come first served: (greenlet, conn, pending, sync, header, body).
        # They are registered in their connection's pending dict already, and numbered after every request
        # sent so far: a registered request is queued iff its sync is at least the head's.
        self.deferred: Deque[Tuple[Any, _Conn, Dict[int, Any], int, bytes, bytes]] = deque()
        self.closed = False
        self.schema_version = 0
        self.on_schema: Callable[[], None] = _noop
        self.replies = 0
        self.error_replies = 0
        self.dropped = 0
        self.timeouts = 0
        self.failed = 0

    def release(self, n: int = 1) -> None:
        """Free ``n`` in-flight slots and send the oldest queued requests in them (called in the hub)."""
        self.in_flight -= n
        deferred = self.deferred
        while deferred and self.in_flight < self.max_in_flight:
            glet, conn, pending, sync, header, body = deferred.popleft()
            if pending is not conn.pending:
                continue  # its connection went away meanwhile, and failed it
            if pending.get(sync) is not glet:  # its greenlet gave up while it waited
                pending.pop(sync, None)
                continue
            self.in_flight += 1
            conn.send_soon(header, body)

    def is_queued(self, sync: int) -> bool:
        """Whether request ``sync`` (still registered) waits for a slot rather than for its reply."""
        return bool(self.deferred) and sync >= self.deferred[0][3]

    def queued(self) -> int:
        """Requests waiting for a slot whose greenlet still waits."""
        return sum(1 for glet, conn, pending, sync, _, _ in self.deferred if pending.get(sync) is glet)


def _noop() -> None:
    pass


def _resume_all(ready: List[Any]) -> None:
    """Resume each greenlet of ``[greenlet, value, ...]`` with its value, in order (in the hub)."""
    for i in range(0, len(ready), 2):
        try:
            ready[i].switch(ready[i + 1])
        except BaseException:  # pragma: no cover - see _switch
            logger.exception("greenpool: a greenlet resumed by TarantoolMux raised")


def _switch(glet: Any, value: Any) -> None:
    """Resume ``glet`` (parked in ``hub.switch()``) from the hub; an error escaping it must not stop the caller."""
    try:
        glet.switch(value)
    except BaseException:  # pragma: no cover - only a raw greenlet whose parent is the hub gets here
        logger.exception("greenpool: a greenlet resumed by TarantoolMux raised")


class _Conn(MuxIO):
    """One socket of a mux: its requests (``sync`` -> the parked greenlet, or None once it gave up), sent
    or queued for a slot; the output waiting for the next send; the reply parser's state."""

    __slots__ = (
        "address",
        "connect_done",
        "end",
        "fed",
        "header",
        "pending",
        "shared",
        "skip",
        "stage",
        "unpacker",
    )

    def __init__(self, shared: _Shared, address: Any) -> None:
        super().__init__()
        self.shared = shared
        self.address = address
        self.pending: Dict[int, Any] = {}
        self.connect_done: Any = None  # [Event set when it ends, its error] while a greenlet connects
        self.unpacker: Any = None
        self.stage = 0
        self.end = 0
        self.fed = 0  # bytes fed to the unpacker (its stream position once they are parsed)
        self.skip = 0  # bytes still to drop: the rest of a reply that could not be decoded
        self.header: Any = None

    # -------------------------------------------------------------- wiring (called by the mux)

    def attach(self, sock: Any, loop: Any) -> None:
        """Start driving the connected, authenticated ``sock`` from the hub's ``loop``."""
        self.unpacker = _new_unpacker()
        self.stage = 0
        self.header = None
        self.fed = self.skip = 0
        self.start_io(sock, loop)

    def detach(self, close_socket: bool) -> Dict[int, Any]:
        """Stop the watchers, drop (and optionally close) the socket; return the requests that were in flight."""
        self.stop_io(close_socket)
        self.unpacker = None
        pending, self.pending = self.pending, {}
        return pending

    # -------------------------------------------------------------- output

    def send_soon(self, header: bytes, body: bytes) -> None:
        """Queue a request; everything queued during this loop turn goes out in one ``send``."""
        out = self.out
        out.append(header)
        out.append(body)
        self.pushed()

    def send_failed(self, exc: OSError) -> None:
        self.lost(exc.errno or 0, f"send failed: {exc}")

    def read_failed(self, exc: Optional[OSError]) -> None:
        if exc is None:
            self.lost(0, "the server closed the connection")
        else:
            self.lost(exc.errno or 0, f"recv failed: {exc}")

    # -------------------------------------------------------------- input

    def on_readable(self) -> None:
        """Read watcher callback (in the hub): read what arrived, resume the greenlet of each reply, flush."""
        nbytes = self.receive()
        if not nbytes:
            return
        chunk = self.view[:nbytes]
        if self.skip:  # the rest of a reply that could not be decoded
            skipped = min(self.skip, nbytes)
            self.skip -= skipped
            chunk = chunk[skipped:]
        self.fed += len(chunk)
        unpacker = self.unpacker
        unpacker.feed(chunk)
        unpack = unpacker.unpack
        pending = self.pending
        shared = self.shared
        # Parse the replies before resuming their greenlets, up to _RESUME_BATCH at a time, so that
        # ``unanswered`` is exact at low concurrency while the greenlets are resumed (each sends its next
        # request at once while the server has little to do: see MuxIO.pushed); what they send beyond that
        # goes out in one send at the end.
        self.flush_pending = True
        ready: List[Any] = []  # greenlet, reply body (or the error to raise), ...
        stage = self.stage
        header = self.header
        body: Any
        while True:
            try:
                obj = unpack()
            except OutOfData:
                break
            except Exception as exc:
                # A reply that cannot be decoded (say, a string that is not UTF-8): fail its request alone.
                if stage != 2 or not self.resync(exc, header, chunk, ready):
                    self.give_up(f"protocol error: undecodable reply ({exc!r})", ready)
                    return
                unpacker = self.unpacker
                unpack = unpacker.unpack
                stage = 0
                continue
            if stage == 0:  # the length prefix: where this reply ends
                self.end = unpacker.tell() + obj
                stage = 1
                continue
            if stage == 1:
                header = obj
                if header.__class__ is not dict:
                    self.give_up(f"protocol error: reply header is {header!r}", ready)
                    return
                if unpacker.tell() < self.end:
                    stage = 2
                    continue
                body = {}
            else:
                body = obj
            stage = 0
            code = header.get(_REQUEST_TYPE, 0)
            version = header.get(_SCHEMA_VERSION)
            if version is not None and version > shared.schema_version:
                shared.schema_version = version
                shared.on_schema()
            if code == _CHUNK:  # an out-of-band push (box.session.push): not delivered
                continue
            glet = pending.pop(header.get(_SYNC, -1), _MISSING)
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
                body = _error_reply(code, body)
            ready.append(glet)
            ready.append(body)
            if len(ready) >= _RESUME_BATCH * 2:
                self.stage = stage
                self.header = header
                if shared.deferred:
                    shared.release(0)
                _resume_all(ready)
                if self.pending is not pending:  # closed or lost meanwhile
                    return
                ready = []
        self.stage = stage
        self.header = header
        if shared.deferred:
            shared.release(0)  # the slots freed above go to the requests queued for one, oldest first
        _resume_all(ready)
        if self.pending is pending:  # not closed or lost meanwhile
            self.flush_pending = False
            if self.out:
                self.flush()

    def resync(self, exc: Exception, header: Any, chunk: memoryview, ready: List[Any]) -> bool:
        """The body of the reply ``header`` could not be decoded: add its greenlet and ``exc`` to ``ready`` and
        go on with the next reply (a fresh unpacker fed what follows this one). False if the stream cannot be
        followed."""
        rest = self.fed - self.end  # bytes after the broken reply, all from the current chunk
        if rest > len(chunk):
            return False
        self.unpacker = _new_unpacker()
        self.stage = 0
        self.header = None
        if rest >= 0:
            self.unpacker.feed(chunk[len(chunk) - rest :])
            self.fed = rest
        else:
            self.skip = -rest
            self.fed = 0
        shared = self.shared
        glet = self.pending.pop(header.get(_SYNC, -1), _MISSING)
        if glet is _MISSING:
            shared.dropped += 1
            return True
        self.unanswered -= 1
        shared.replies += 1
        shared.in_flight -= 1
        if glet is None:
            shared.dropped += 1
        else:
            ready.append(glet)
            ready.append(exc)
        return True

    # -------------------------------------------------------------- failure

    def give_up(self, reason: str, ready: List[Any]) -> None:
        """The reply stream cannot be followed: drop the socket, then hand out the replies parsed before."""
        self.lost(0, reason)
        if self.shared.deferred:
            self.shared.release(0)
        _resume_all(ready)

    def lost(self, code: int, reason: str) -> None:
        """The socket broke (in the hub): close it and fail every request in flight on it."""
        address = _format_address(self.address)
        pending = self.detach(close_socket=True)
        message = f"lost the connection to {address} ({reason}); the request may or may not have run"
        fail_pending(self.shared, pending, MuxConnectionError, code, message)


def fail_pending(shared: _Shared, pending: Dict[int, Any], error: Type[MuxError], code: int, message: str) -> None:
    """Fail the requests of ``pending`` (in the hub), each with its own ``error(code, message)``; the slots
    of those that were sent go to the queued requests."""
    if not pending:
        return
    deferred = shared.deferred
    sent = len(pending) if not deferred else sum(1 for sync in pending if sync < deferred[0][3])
    glets = [glet for glet in pending.values() if glet is not None]
    pending.clear()
    for glet in glets:
        shared.failed += 1
        _switch(glet, error(code, message))
    shared.release(sent)


def _new_unpacker() -> Any:
    return msgpack.Unpacker(
        use_list=True, raw=False, strict_map_key=False, ext_hook=_unpack_ext, max_buffer_size=2**31 - 1
    )


def _unpack_ext(code: int, data: bytes) -> Any:
    return _ext_hook(code, data, msgpack.Unpacker(use_list=True, raw=False, strict_map_key=False))


def _format_address(address: Any) -> str:
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def _check_values(name: str, value: Any) -> None:
    if value.__class__ is not list and not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or a tuple, got {value!r} ({type(value).__name__})")


def _check_ops(op_list: Any) -> None:
    _check_values("op_list", op_list)
    for op in op_list:
        if not isinstance(op, (list, tuple)) or len(op) < 2:
            raise TypeError(f"each operation in op_list must be a list or tuple like ('=', 2, value), got {op!r}")


def _names_in(index: Any, op_list: Any) -> bool:
    """Whether an index or a field is given by name (resolved through the cached schema)."""
    return isinstance(index, str) or any(isinstance(op[1], str) for op in op_list)


def _check_space(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"space_name must be a str (space name) or an int (space id), got {value!r}")


def _check_index(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"index must be a str (index name) or an int (index id), got {value!r}")


def _scramble(salt: bytes, password: str) -> bytes:
    """chap-sha1: ``sha1(password) xor sha1(salt + sha1(sha1(password)))``."""
    hash1 = hashlib.sha1(password.encode()).digest()
    hash2 = hashlib.sha1(hash1).digest()
    hash3 = hashlib.sha1(salt[:20] + hash2).digest()
    return bytes(a ^ b for a, b in zip(hash1, hash3))


def _parse_greeting(greeting: bytes, address: str) -> Tuple[int, bytes]:
    """Return ``(version_id, salt)`` from the 128-byte greeting, or raise :class:`MuxConnectionError`."""
    try:
        line = greeting[:64].decode().strip()
        product, version, protocol = line.split(" ")[:3]
        if product != "Tarantool":
            raise ValueError(line)
        if protocol != "(Binary)":
            raise MuxConnectionError(0, f"{address} speaks {protocol.strip('()')}, not the binary protocol")
        major, minor, patch = (int(part) for part in version.split("-")[0].split(".")[:3])
        salt = base64.b64decode(greeting[64:108].strip())[:20]
    except MuxConnectionError:
        raise
    except (ValueError, UnicodeDecodeError, TypeError):
        raise MuxConnectionError(0, f"{address} did not send a Tarantool greeting") from None
    return (major << 16) | (minor << 8) | patch, salt


def _read_exactly(sock: Any, nbytes: int) -> bytes:
    chunks = []
    while nbytes > 0:
        chunk = sock.recv(nbytes)
        if not chunk:
            raise OSError(0, "the server closed the connection during the handshake")
        chunks.append(chunk)
        nbytes -= len(chunk)
    return b"".join(chunks)


def _finalize(shared: _Shared, conns: List[_Conn], timers: List[Any]) -> None:
    """Close the sockets of a mux that was garbage-collected (the pending requests had no greenlet left)."""
    shared.closed = True
    for timer in timers:
        timer.close()
    if _green.fork_generation() != conns[0].generation:
        return
    for conn in conns:
        conn.detach(close_socket=True)


def _sweep_soon(mux_ref: weakref.ReferenceType[TarantoolMux]) -> None:
    mux = mux_ref()
    if mux is not None:
        mux._sweep()


# ---------------------------------------------------------------------- the mux


class TarantoolMux:
    """A multiplexed, auto-pipelined Tarantool connection shared by any number of greenlets.

    ``TarantoolMux(host, port, user=None, password=None, *, connections=1, timeout=30.0,
    max_in_flight=1024, connect_timeout=10.0, name=None)``:

    - ``host``, ``port``: the server (``host=None`` and ``port="/path/to.sock"`` for a unix socket).
    - ``user``, ``password``: chap-sha1 credentials (``None``: the guest user). The password is never
      shown in ``repr``, stats, logs or errors.
    - ``connections``: sockets to spread requests over (round robin, at most 1024); each connects on first use.
    - ``timeout``: seconds a request waits for its reply (and, before that, for a free in-flight slot)
      before it fails with :class:`MuxTimeout`; ``None`` waits forever. Checked by one periodic timer,
      so a timeout fires up to ``timeout / 5`` (at most 1 s) late, never early.
    - ``max_in_flight``: requests sent and not yet answered, over all sockets (a request given up by its
      greenlet counts until its late reply comes). A request beyond it is queued, first come first
      served, until a reply frees a slot, its greenlet parked (back-pressure: whatever the number of
      greenlets, the server and the sockets hold at most this many requests).
    - ``connect_timeout``: seconds to connect, read the greeting and authenticate (``None``: no bound); then
      :class:`MuxConnectTimeout` (a :class:`MuxConnectionError`) names the stage that did not end in time.

    Every method blocks only the calling greenlet, until its reply arrives. The connection is made by
    the first request (or :meth:`connect`); when it breaks, the requests in flight on it fail with
    :class:`MuxConnectionError` and the next request reconnects. A greenlet interrupted while it waits
    (``gevent.Timeout``, ``kill``) gives up its request: the late reply is dropped, never handed to
    another request. Space and index names are resolved through ``_vspace``/``_vindex`` (cached, flushed
    when the server's schema version changes; a request built from a stale name is retried). After
    ``os.fork()`` the child opens its own connection on first use and never touches the parent's socket.
    One mux belongs to one thread's gevent hub.

    Not supported (tarantool-python features): ``on_push`` callbacks (pushed messages are skipped), the
    1.6 ``call_16`` mode, SSL, ``crud_*`` helpers, ``space()`` objects, ``encoding=None``.
    """

    def __init__(
        self,
        host: Optional[str],
        port: Union[int, str],
        user: Optional[str] = None,
        password: Optional[str] = None,
        *,
        connections: int = 1,
        timeout: Optional[float] = 30.0,
        max_in_flight: int = 1024,
        connect_timeout: Optional[float] = 10.0,
        name: Optional[str] = None,
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
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.connections = check_int("connections", connections, minimum=1, maximum=MAX_MUX_CONNECTIONS)
        self.timeout = check_seconds("timeout", timeout, allow_zero=False)
        self.max_in_flight = check_int("max_in_flight", max_in_flight, minimum=1)
        self.connect_timeout = check_seconds("connect_timeout", connect_timeout, allow_zero=False)
        self.name = name or f"mux-{id(self):x}"
        self._packer = msgpack.Packer(use_bin_type=True, default=self._pack_ext)
        self._pack = self._packer.pack
        self._version_id = 0
        self._schema = Schema(self)
        self._space_ids: Dict[Any, int] = {}
        self._index_ids: Dict[Tuple[int, Any], int] = {}
        self._requests = 0
        self._connect_errors = 0
        self._retired = [0, 0, 0, 0, 0]  # counters of connections dropped after a fork
        self._setup()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> TarantoolMux:
        """Build a mux from ``tarantool://[user[:password]@]host[:port][?option=value&...]``, the URL
        :meth:`greenpool.TarantoolPool.from_url` takes.

        The port defaults to 3301; user and password are percent-decoded. Query options: ``connections``,
        ``max_in_flight``, ``timeout``, ``connect_timeout`` (seconds; ``none`` waits forever) and ``name``.
        ``kwargs`` override what the URL says. Never blocks (the first request connects).

        Raises ``ValueError`` naming the scheme, option or value that is wrong (never showing the password).
        """
        options = parse_url(url, _URL_OPTIONS)
        options.update(kwargs)
        return cls(**options)

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
        self._conns = [_Conn(shared, self._address) for _ in range(self.connections)]
        self._conn = self._conns[0] if self.connections == 1 else None
        self._rr = 0
        self._sync = 0
        self._markers: Deque[Tuple[float, int]] = deque()
        self._thread: Optional[int] = None
        self._hub: Any = None
        self._loop: Any = None
        self._timers: List[Any] = []
        self._finalizer = weakref.finalize(self, _finalize, shared, self._conns, self._timers)

    def _bind(self) -> None:
        """Tie the mux to the current thread's hub on first use; refuse any other thread after that."""
        ident = _green.claim_thread(self._thread, self.name, "Create one TarantoolMux per thread.")
        if self._thread is None:
            self._thread = ident
            self._hub = _green.get_hub()
            self._loop = self._hub.loop
            if self.timeout is not None:
                tick = min(max(self.timeout / 10.0, 0.005), 0.5)
                timer = self._loop.timer(tick, tick, ref=False)
                timer.start(_sweep_soon, weakref.ref(self))
                self._timers.append(timer)

    def _after_fork(self) -> None:
        # The parent's sockets stay untouched: stop our watchers in the child's (reinitialised) loop and
        # close the child's copies of the descriptors; greenlets parked on them in the child stay parked.
        self._finalizer.detach()
        for timer in self._timers:
            timer.close()
        for conn in self._conns:
            for i, value in enumerate((conn.connects, conn.writes, conn.reads, conn.bytes_out, conn.bytes_in)):
                self._retired[i] += value
            conn.detach(close_socket=True)
        self._setup()

    # -------------------------------------------------------------- the request path

    def _request(self, code: int, body: bytes, schema_version: Optional[int], cls: Any) -> Any:
        """Send one request and park until its reply; return a ``cls`` response (or the body if ``cls`` is None).

        Beyond ``max_in_flight`` the request is queued (registered, not sent); a reply that frees a slot
        sends it. Either way the greenlet parks once and is resumed once, by its reply or its failure.
        """
        if self._generation != _green.fork_generation():
            self._after_fork()
        shared = self._shared
        if shared.closed:
            raise MuxClosed(0, f"{self.name} is closed")
        if self._thread != _green.thread_ident():
            self._bind()
        self._requests += 1
        conn = self._conn
        if conn is None:
            conn = self._conns[self._rr % self.connections]
            self._rr += 1
        if conn.state != _UP:
            self._connect(conn)
        self._sync = sync = self._sync + 1
        if schema_version is None:
            header = _HEADER.pack(0xCE, _HEADER_LEN + len(body), 0x82, 0, code, 1, 0xCF, sync)
        else:
            header = _HEADER_SV.pack(
                0xCE, _HEADER_SV_LEN + len(body), 0x83, 0, code, 1, 0xCF, sync, 5, 0xCF, schema_version
            )
        glet = _green.getcurrent()
        pending = conn.pending
        pending[sync] = glet
        if shared.in_flight < shared.max_in_flight and not shared.deferred:
            shared.in_flight += 1
            conn.send_soon(header, body)
        else:
            shared.deferred.append((glet, conn, pending, sync, header, body))
        switch = self._hub.switch
        try:
            value = switch()
            while pending.get(sync) is glet:  # resumed by something other than our reply: park again
                value = switch()
        except BaseException:
            if pending.get(sync) is glet:
                pending[sync] = None  # gave up: the reply will be dropped; the slot is freed when it comes
            raise
        if value.__class__ is not dict:
            raise value
        if cls is None:
            return value
        data = value.get(_DATA)
        if data is not None and data.__class__ is not list and not isinstance(data, (list, tuple)):
            data = [data]
        return cls(self, sync, value, data, shared.schema_version)

    def _sweep(self) -> None:
        """Periodic timer callback (in the hub): fail the requests that have waited ``timeout`` (for a slot,
        then for their reply)."""
        if self._generation != _green.fork_generation() or self.timeout is None:
            return
        now = _green.monotonic()
        markers = self._markers
        # Every request numbered below the marker's sync was made before the marker's time.
        markers.append((now, self._sync + 1))
        limit = 0
        deadline = now - self.timeout
        while markers and markers[0][0] <= deadline:
            limit = markers.popleft()[1]
        if not limit:
            return
        shared = self._shared
        for conn in self._conns:
            pending = conn.pending
            if not pending:
                continue
            expired = [(sync, glet) for sync, glet in pending.items() if sync < limit and glet is not None]
            for sync, glet in expired:
                if conn.pending is not pending:
                    break
                if pending.get(sync) is not glet:
                    continue
                pending[sync] = None
                shared.timeouts += 1
                if shared.is_queued(sync):
                    message = (
                        f"{self.name}: no in-flight slot freed within {self.timeout:.2f} s "
                        f"({shared.in_flight} requests in flight, max_in_flight={shared.max_in_flight})"
                    )
                else:
                    message = f"{self.name}: no reply within {self.timeout:.2f} s"
                _switch(glet, MuxTimeout(0, message))

    # -------------------------------------------------------------- connecting

    def connect(self) -> None:
        """Connect every socket now (otherwise each connects on first use); blocks up to ``connect_timeout``.

        Raises :class:`MuxConnectionError` (refused, timed out, authentication failed) or :class:`MuxClosed`.
        """
        if self._generation != _green.fork_generation():
            self._after_fork()
        if self._thread != _green.thread_ident():
            self._bind()
        for conn in self._conns:
            if conn.state != _UP:
                self._connect(conn)

    def _connect(self, conn: _Conn) -> None:
        """Bring ``conn`` up, or wait for the greenlet that is doing so; raise what the attempt raised."""
        while conn.state != _UP:
            if self._shared.closed:
                raise MuxClosed(0, f"{self.name} is closed")
            attempt = conn.connect_done
            if conn.state == _CONNECTING and attempt is not None:
                attempt[0].wait()
                error = attempt[1]
                if conn.state != _UP and isinstance(error, MuxConnectionError):
                    copy = type(error)(error.code, error.message)  # each waiter its own traceback
                    copy.errno = error.errno
                    raise copy
                continue
            attempt = conn.connect_done = [Event(), None]
            conn.state = _CONNECTING
            try:
                sock = self._open()
                if self._shared.closed:
                    sock.close()
                    raise MuxClosed(0, f"{self.name} was closed while connecting")
                conn.attach(sock, self._loop)
            except BaseException as exc:
                conn.state = _DOWN
                attempt[1] = exc
                self._connect_errors += 1
                raise
            finally:
                conn.connect_done = None
                attempt[0].set()

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
            self._version_id, salt = _parse_greeting(_read_exactly(gsock, _GREETING_SIZE), address)
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
        sock = _RawSocket(self._family, _socket_module.SOCK_STREAM, 0, fileno=fd)
        sock.setblocking(False)
        return sock

    def _authenticate(self, gsock: Any, salt: bytes, address: str) -> None:
        user = self.user
        scramble = _scramble(salt, self._password or "")
        body = self._pack({_USER_NAME: user, _TUPLE: ["chap-sha1", scramble]})
        header = _HEADER_SV.pack(0xCE, _HEADER_SV_LEN + len(body), 0x83, 0, _AUTH, 1, 0xCF, 0, 5, 0xCF, 0)
        gsock.sendall(header + body)
        prefix = _read_exactly(gsock, 5)
        length = msgpack.unpackb(prefix)
        unpacker = _new_unpacker()
        unpacker.feed(_read_exactly(gsock, length))
        reply_header = unpacker.unpack()
        code = reply_header.get(_REQUEST_TYPE, 0)
        if code:
            try:
                reply_body = unpacker.unpack()
            except msgpack.OutOfData:
                reply_body = {}
            message = reply_body.get(_ERROR_24, "") if isinstance(reply_body, dict) else ""
            error = MuxConnectionError(
                code & (_TYPE_ERROR - 1), f"authentication as {user!r} at {address} failed: {message}"
            )
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
            _check_space(space)
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
            _check_index(index)
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
        cls = MuxResponse
        if space.__class__ is int and not names:
            return self._request(code, self._pack(build(space)), None, cls)
        for attempt in (1, 2, 3):
            sid = self._space_id(space)
            payload = self._pack(build(sid))
            try:
                return self._request(code, payload, self._shared.schema_version, cls)
            except DatabaseError as exc:
                if exc.code != _ER_WRONG_SCHEMA_VERSION or isinstance(exc, NetworkError) or attempt == 3:
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
        self._request(_PING, b"", None, None)
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
        _check_space(space_name)
        _check_index(index)
        offset = check_int("offset", offset)
        limit = check_int("limit", limit)
        if iterator is None:
            iterator = 0
            if key is None or (isinstance(key, (list, tuple)) and len(key) == 0):
                iterator = 2
        elif isinstance(iterator, str):
            if iterator.upper() not in ITERATORS:
                raise ValueError(f"iterator must be one of {', '.join(ITERATORS)} or a number, got {iterator!r}")
            iterator = ITERATORS[iterator.upper()]
        else:
            iterator = check_int("iterator", iterator)
        key = wrap_key(key, select=True)
        it = iterator

        def build(sid: int) -> Dict[int, Any]:
            iid = self._index_id(sid, index)
            return {_SPACE_ID: sid, _INDEX_ID: iid, _OFFSET: offset, _LIMIT: limit, _ITERATOR: it, _KEY: key}

        return self._space_request(_SELECT, space_name, build, isinstance(index, str))

    def insert(self, space_name: Union[str, int], values: Sequence[Any]) -> Response:
        """INSERT ``values`` (a list or tuple) into a space; a duplicate key raises ``DatabaseError``.
        Returns a ``Response`` holding the inserted tuple."""
        return self._store(_INSERT, space_name, values)

    def replace(self, space_name: Union[str, int], values: Sequence[Any]) -> Response:
        """REPLACE ``values`` (a list or tuple) in a space. Returns a ``Response`` holding the new tuple."""
        return self._store(_REPLACE, space_name, values)

    def _store(self, code: int, space_name: Any, values: Any) -> Any:
        if values.__class__ is not list and not isinstance(values, (list, tuple)):
            _check_values("values", values)
        if space_name.__class__ is int:
            return self._request(code, self._pack({_SPACE_ID: space_name, _TUPLE: values}), None, MuxResponse)
        sid = self._space_ids.get(space_name) if space_name.__class__ is str else None
        if sid is not None:
            payload = self._pack({_SPACE_ID: sid, _TUPLE: values})
            try:
                return self._request(code, payload, self._shared.schema_version, MuxResponse)
            except DatabaseError as exc:
                if exc.code != _ER_WRONG_SCHEMA_VERSION or isinstance(exc, NetworkError):
                    raise
                self._shared.on_schema()
        _check_space(space_name)
        return self._space_request(code, space_name, lambda sid: {_SPACE_ID: sid, _TUPLE: values})

    def delete(self, space_name: Union[str, int], key: Any, *, index: Union[str, int] = 0) -> Response:
        """DELETE the tuple with ``key`` on ``index`` (name or id). Returns a ``Response`` with the deleted tuple."""
        _check_space(space_name)
        _check_index(index)
        key = wrap_key(key)

        def build(sid: int) -> Dict[int, Any]:
            return {_SPACE_ID: sid, _INDEX_ID: self._index_id(sid, index), _KEY: key}

        return self._space_request(_DELETE, space_name, build, isinstance(index, str))

    def update(
        self, space_name: Union[str, int], key: Any, op_list: Sequence[Any], *, index: Union[str, int] = 0
    ) -> Response:
        """UPDATE the tuple with ``key`` by ``op_list`` (``[('+', 2, 1), ('=', 'value', x)]``, fields by number
        as tarantool-python takes them, or by name). Returns a ``Response`` with the updated tuple."""
        _check_space(space_name)
        _check_index(index)
        _check_ops(op_list)
        key = wrap_key(key)

        def build(sid: int) -> Dict[int, Any]:
            return {_SPACE_ID: sid, _INDEX_ID: self._index_id(sid, index), _KEY: key, _TUPLE: self._ops(sid, op_list)}

        return self._space_request(_UPDATE, space_name, build, _names_in(index, op_list))

    def upsert(
        self,
        space_name: Union[str, int],
        tuple_value: Sequence[Any],
        op_list: Sequence[Any],
        *,
        index: Union[str, int] = 0,
    ) -> Response:
        """UPSERT: insert ``tuple_value``, or apply ``op_list`` to the existing tuple. Returns an empty ``Response``."""
        _check_space(space_name)
        _check_index(index)
        _check_values("tuple_value", tuple_value)
        _check_ops(op_list)

        def build(sid: int) -> Dict[int, Any]:
            iid = self._index_id(sid, index)
            return {_SPACE_ID: sid, _INDEX_ID: iid, _TUPLE: tuple_value, _OPS: self._ops(sid, op_list)}

        return self._space_request(_UPSERT, space_name, build, _names_in(index, op_list))

    def call(self, func_name: str, *args: Any) -> Response:
        """CALL a stored Lua function with ``args`` (one list or tuple argument is taken as the argument list).
        Returns a ``Response`` whose data are the function's return values."""
        if not isinstance(func_name, str):
            raise TypeError(f"func_name must be a str, got {func_name!r} ({type(func_name).__name__})")
        arguments = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return self._request(_CALL, self._pack({_FUNCTION_NAME: func_name, _TUPLE: arguments}), None, MuxResponse)

    def eval(self, expr: str, *args: Any) -> Response:
        """EVAL a Lua expression with ``args`` (available as ``...``). Returns a ``Response`` of its results."""
        if not isinstance(expr, str):
            raise TypeError(f"expr must be a str, got {expr!r} ({type(expr).__name__})")
        arguments = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return self._request(_EVAL, self._pack({_EXPR: expr, _TUPLE: arguments}), None, MuxResponse)

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
        body = self._pack({_SQL_TEXT: query, _SQL_BIND: bind})
        return self._request(_EXECUTE, body, None, MuxResponseExecute)

    # -------------------------------------------------------------- closing and introspection

    def close(self) -> None:
        """Close the sockets; idempotent, never blocks.

        Requests in flight and greenlets waiting for a slot fail with :class:`MuxClosed` (from the hub, at its
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
        for conn in self._conns:
            pending = conn.detach(close_socket=True)
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
        """Return a snapshot as a plain dict.

        Gauges: ``name``, ``connections`` (sockets configured), ``connected`` (sockets up), ``in_flight``,
        ``max_in_flight``, ``waiting`` (greenlets queued for an in-flight slot). Totals since creation:
        ``requests`` (started), ``replies``, ``error_replies`` (``DatabaseError`` raised), ``timeouts``,
        ``failed`` (by a lost connection or ``close()``), ``dropped`` (late replies of requests whose greenlet
        gave up), ``connects``, ``connect_errors``, ``sends`` and ``recvs`` (system calls: ``requests / sends``
        is the average batch), ``bytes_sent``, ``bytes_received``.
        """
        if self._generation != _green.fork_generation():
            self._after_fork()
        shared = self._shared
        retired = self._retired
        conns = self._conns
        return {
            "name": self.name,
            "connections": len(conns),
            "connected": sum(1 for conn in conns if conn.state == _UP),
            "in_flight": shared.in_flight,
            "max_in_flight": shared.max_in_flight,
            "waiting": shared.queued(),
            "requests": self._requests,
            "replies": shared.replies,
            "error_replies": shared.error_replies,
            "timeouts": shared.timeouts,
            "failed": shared.failed,
            "dropped": shared.dropped,
            "connects": retired[0] + sum(conn.connects for conn in conns),
            "connect_errors": self._connect_errors,
            "sends": retired[1] + sum(conn.writes for conn in conns),
            "recvs": retired[2] + sum(conn.reads for conn in conns),
            "bytes_sent": retired[3] + sum(conn.bytes_out for conn in conns),
            "bytes_received": retired[4] + sum(conn.bytes_in for conn in conns),
        }

    def __repr__(self) -> str:
        state = "closed" if self._shared.closed else f"connected={sum(c.state == _UP for c in self._conns)}"
        user = f" user={self.user!r}" if self.user else ""
        return (
            f"<{type(self).__name__} {self.name} {_format_address(self._address)}{user} {state}/"
            f"{len(self._conns)} in_flight={self._shared.in_flight}>"
        )
