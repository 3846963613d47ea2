"""``greenpool.TarantoolPool``: a fair, per-process pool of tarantool-python connections.

``TarantoolPool`` is a :class:`greenpool.Pool` whose connections are ``tarantool.Connection`` objects:
``with pool.connection() as tnt:`` checks one out, and the one-call helpers (``pool.select(...)``,
``pool.replace(...)``, ``pool.call(...)``, ...) check out, run one request and release. The health check is
``ping()``; a reply from the server (``tarantool.error.DatabaseError``) leaves the connection in the pool,
anything else (``NetworkError``, ``gevent.Timeout``, a killed greenlet) closes it, so a late reply can never
reach the next request. The pool's own errors also subclass ``tarantool.error.Error``.

tarantool-python talks through the ``socket`` module, so it cooperates with gevent only once
``gevent.monkey.patch_all()`` has run; :class:`SocketNotPatchedWarning` says so otherwise.

Depends on ``greenpool.pool`` (the core), ``greenpool._validate`` and tarantool-python (``tarantool``),
which is imported when this module is (``greenpool.TarantoolPool`` imports it on first access).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import operator
import socket
import sys
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

from gevent import monkey

from greenpool import _green
from greenpool._tarantool_url import parse_url, url_bool, url_int, url_seconds, url_str
from greenpool._validate import (
    check_address,
    check_credentials,
    check_int,
    check_name,
    check_seconds,
    check_sizes,
    merge_synonym,
)
from greenpool.errors import ConnectTimeout, PoolClosed, PoolTimeout, TooManyWaiting
from greenpool.pool import Pool

try:
    import tarantool
    from tarantool.error import DatabaseError, NetworkError, SslError
    from tarantool.error import Error as TarantoolError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("greenpool.TarantoolPool needs tarantool-python: pip install 'greenpool[tarantool]'") from exc

__all__ = [
    "CONNECTION_DEFAULTS",
    "SocketNotPatchedWarning",
    "TarantoolConnectTimeout",
    "TarantoolPool",
    "TarantoolPoolClosed",
    "TarantoolPoolTimeout",
    "TarantoolTooManyWaiting",
]

#: ``tarantool.Connection`` arguments the pool sets unless you pass your own (as ``**connection_kwargs`` or
#: URL options): connect inside the checkout that creates the connection (``connect_now``); when a request
#: finds its connection broken (e.g. the server restarted), reconnect once at once and, if that fails, raise
#: ``NetworkError`` (``reconnect_max_attempts=0``, ``reconnect_delay=0``), so the pool closes the connection
#: and a later checkout makes a new one, instead of the greenlet sleeping through tarantool-python's ten
#: attempts (that failed attempt also emits tarantool-python's ``NetworkWarning``); give up a new connection
#: that is not ready after 10 s (``connection_timeout``), a bound greenpool puts on the whole connect, TCP
#: connect, TLS handshake, greeting, IPROTO_ID, authentication and schema load (tarantool-python's own bounds
#: only the TCP connect), with :class:`TarantoolConnectTimeout`; ``connection_timeout=None`` removes it, and a
#: server that accepts and never answers then hangs the checkout. ``socket_timeout`` stays ``None``
#: (tarantool-python's default): a request waits for its reply as long as it takes; bound it with
#: ``socket_timeout`` or a ``gevent.Timeout`` (either closes the connection when it fires). A ``socket_timeout``
#: that expires while connecting also raises :class:`TarantoolConnectTimeout`, naming it.
CONNECTION_DEFAULTS: Dict[str, Any] = {
    "connect_now": True,
    "reconnect_max_attempts": 0,
    "reconnect_delay": 0.0,
    "connection_timeout": 10.0,
}


class TarantoolPoolTimeout(PoolTimeout, TarantoolError):  # type: ignore[misc]
    """No connection became available within the checkout timeout (also a ``tarantool.error.Error``).

    It is not a ``DatabaseError``: no request reached the server.
    """


class TarantoolConnectTimeout(ConnectTimeout, NetworkError):  # type: ignore[misc]
    """A new connection was not ready within ``connection_timeout``, or tarantool-python's ``socket_timeout``
    expired while it connected (also a ``tarantool.error.NetworkError``); the message names the server, the
    setting and the stage (TCP connect, TLS handshake, greeting, IPROTO_ID, authentication, schema)."""


class TarantoolPoolClosed(PoolClosed, TarantoolError):  # type: ignore[misc]
    """The pool was closed (also a ``tarantool.error.Error``)."""


class TarantoolTooManyWaiting(TooManyWaiting, TarantoolError):  # type: ignore[misc]
    """The checkout was refused because ``max_waiting`` greenlets already wait (also a ``tarantool.error.Error``)."""


class _RememberingUtil:
    """``ctypes.util`` whose ``find_library`` remembers its answers (the rest is the real module's)."""

    def __init__(self, util: Any) -> None:
        self._util = util
        self.found: Dict[str, Optional[str]] = {}

    def find_library(self, name: str) -> Optional[str]:
        try:
            return self.found[name]
        except KeyError:
            path: Optional[str] = self._util.find_library(name)
            self.found[name] = path
            return path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._util, name)


class _CtypesView:
    """What tarantool-python's ``connection`` module sees as ``ctypes``: the real module, except that
    ``util.find_library`` remembers its answers.

    ``tarantool.Connection()`` looks libc up on every call, and ``ctypes.util.find_library`` runs ``ldconfig -p``
    in a child process each time: a fork and an exec per new connection, and, whenever the connect is
    interrupted while it reads the child's output (the connect bound, a killed greenlet), a child left blocked
    on its pipe for good. Under a pool that opens and replaces connections, that is thousands of processes.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self.util = _RememberingUtil(real.util)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _remember_library_lookups() -> Optional[_RememberingUtil]:
    module = sys.modules.get("tarantool.connection")
    if module is None:  # pragma: no cover - tarantool-python's layout changed
        return None
    view = getattr(module, "ctypes", None)
    if isinstance(view, _CtypesView):
        return view.util
    if view is not ctypes:  # pragma: no cover - tarantool-python's layout changed
        return None
    view = _CtypesView(ctypes)
    setattr(module, "ctypes", view)  # noqa: B010 - the module is typed without this attribute
    return view.util


_LIBRARY_LOOKUPS = _remember_library_lookups()


class SocketNotPatchedWarning(RuntimeWarning):
    """The ``socket`` module is not monkey-patched by gevent, so tarantool-python blocks the whole process."""


_UNPATCHED_MESSAGE = (
    "the socket module is not monkey-patched by gevent, so every tarantool-python request blocks the whole "
    "process (all greenlets) while it waits for the server. Call gevent.monkey.patch_all() at the very start "
    "of the program, before importing tarantool or greenpool.tarantool."
)

_warned_unpatched = False


def _warn_if_unpatched() -> None:
    """Warn once per process when ``socket`` is not patched, pointing at the caller outside greenpool."""
    global _warned_unpatched
    if _warned_unpatched or monkey.is_module_patched("socket"):
        return
    _warned_unpatched = True
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("greenpool"):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]
    warnings.warn(_UNPATCHED_MESSAGE, SocketNotPatchedWarning, stacklevel=level)


def _keeps_connection(exc: BaseException) -> bool:
    """A reply from the server (``DatabaseError``) leaves the connection usable; a ``NetworkError`` (a
    ``DatabaseError`` subclass) or anything else (``gevent.Timeout``, a kill, a client-side error that may
    have left half a request on the socket) does not."""
    return isinstance(exc, DatabaseError) and not isinstance(exc, NetworkError)


def _detach(conn: Any) -> None:
    """In a fork's child: close the child's copy of the socket. ``Connection.close()`` only closes the file
    descriptor (no shutdown, nothing sent), so the parent's connection is untouched."""
    conn.close()


#: The socket of a tarantool-python connection (``None`` once closed), watched by the core while it is idle.
_socket_of = operator.attrgetter("_socket")


class _CheckTimedOut(Exception):
    """The idle check's ping got no reply within the bound (the core then closes the connection)."""


def _pinger(bound: Optional[float]) -> Callable[[Any], Any]:
    """Return the pool's ``check``: a ping that gives up after ``bound`` seconds (``None``: no bound).

    With the default ``socket_timeout=None`` a ping to a stopped server would wait forever; bounded, the
    connection is closed and the checkout goes on with another or a new one.
    """

    def check(conn: Any) -> Any:
        def expired(interruption: BaseException) -> BaseException:
            return _CheckTimedOut(f"no reply to the idle check's ping within {bound} s")

        return _green.call_within(bound, lambda: conn.ping(notime=True), expired)

    return check


def _address(host: Optional[str], port: Union[int, str]) -> str:
    """``host:port``, or the socket path when ``host`` is None (never credentials)."""
    return f"{host}:{port}" if host is not None else str(port)


def _connector(
    host: Optional[str], port: Union[int, str], user: Optional[str], password: Optional[str], kwargs: Dict[str, Any]
) -> Callable[[], Any]:
    """Return the pool's ``create``: a closure, so the password shows in no ``repr`` and no cycle holds the pool.

    The connection is built unconnected and then connected here, within ``connection_timeout`` for the whole
    connect (``None``: no bound), so that a connect that does not end in time, or that tarantool-python gives up
    at its ``socket_timeout`` (and reports as "Lost connection to server during query"), raises
    :class:`TarantoolConnectTimeout` naming the stage; and so that a connect that fails or is interrupted by a
    ``gevent.Timeout`` or a kill (which tarantool-python does not clean up) closes its socket at once.
    """
    options = dict(kwargs)
    connect_now = options.pop("connect_now", True)
    bound = options.get("connection_timeout")
    where = _address(host, port)
    # The steps of tarantool.Connection.connect(), in order (see greenpool._green.stage_of).
    stages = (
        ("connect_tcp", "TCP connect"),
        ("connect_unix", "unix socket connect"),
        ("wrap_socket_ssl", "TLS handshake"),
        ("handshake", "greeting"),
        ("_check_features", "IPROTO_ID"),
        ("authenticate", "authentication"),
        ("load_schema", "schema"),
    )

    def expired(interruption: BaseException) -> TarantoolConnectTimeout:
        stage = _green.stage_of(interruption, "tarantool", stages, "connect")
        message = _green.connect_timeout_message(where, bound or 0.0, "connection_timeout", stage)
        return TarantoolConnectTimeout(message)

    def connect() -> Any:
        conn = tarantool.Connection(host, port, user=user, password=password, connect_now=False, **options)
        if connect_now:
            try:
                try:
                    _green.call_within(bound, conn.connect, expired)
                except (NetworkError, SslError) as exc:
                    if isinstance(exc, TarantoolConnectTimeout) or not any(
                        isinstance(link, socket.timeout) for link in _green.exception_chain(exc)
                    ):
                        raise
                    # tarantool-python's own socket timeout: connection_timeout in its TCP connect, else socket_timeout.
                    stage = _green.stage_of(exc, "tarantool", stages, "connect", chained=True)
                    socket_stage = stage in ("TCP connect", "unix socket connect")
                    setting = "connection_timeout" if socket_stage else "socket_timeout"
                    message = _green.connect_timeout_message(where, options.get(setting) or 0.0, setting, stage)
                    raise TarantoolConnectTimeout(message) from exc
            except BaseException:
                conn.close()
                raise
        return conn

    return connect


def _helper(method: str) -> Callable[..., Any]:
    """Return a pool method that runs ``tarantool.Connection.<method>`` on a pooled connection."""

    def helper(self: Pool[Any], *args: Any, **kwargs: Any) -> Any:
        with self.connection() as conn:
            return getattr(conn, method)(*args, **kwargs)

    helper.__name__ = helper.__qualname__ = method
    helper.__doc__ = (
        f"Run ``tarantool.Connection.{method}(*args, **kwargs)`` on a pooled connection and return its result.\n\n"
        "Blocks up to the pool's ``timeout`` for a connection (then raises :class:`TarantoolPoolTimeout`), plus "
        "``connection_timeout`` while it creates one (then :class:`TarantoolConnectTimeout`), then for the reply, "
        "up to ``socket_timeout``. Raises what tarantool-python raises: an error reply from the server keeps the "
        "connection, a ``NetworkError`` or an interruption (``gevent.Timeout``, a kill) closes it."
    )
    return helper


def _connection_parameters() -> Tuple[str, ...]:
    params = inspect.signature(tarantool.Connection.__init__).parameters
    return tuple(name for name in params if name not in ("self", "host", "port", "user", "password"))


_CONNECTION_PARAMETERS = _connection_parameters()


def _check_connection_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    merge_synonym(kwargs, "connection_timeout", "connect_timeout")
    if "socket_fd" in kwargs:
        raise ValueError("socket_fd cannot be pooled: a pool opens many connections; pass host and port instead")
    unknown = sorted(name for name in kwargs if name not in _CONNECTION_PARAMETERS)
    if unknown:
        raise TypeError(
            f"unexpected argument(s) {', '.join(unknown)}: TarantoolPool accepts the pool's settings and the "
            f"arguments of tarantool.Connection ({', '.join(_CONNECTION_PARAMETERS)})"
        )
    for name in ("socket_timeout", "connection_timeout"):
        if name in kwargs:
            check_seconds(name, kwargs[name], allow_zero=False)
    if "reconnect_max_attempts" in kwargs:
        check_int("reconnect_max_attempts", kwargs["reconnect_max_attempts"])
    if "reconnect_delay" in kwargs:
        check_seconds("reconnect_delay", kwargs["reconnect_delay"], allow_none=False)
    if "connect_now" in kwargs and not isinstance(kwargs["connect_now"], bool):
        raise TypeError(f"connect_now must be a bool, got {kwargs['connect_now']!r}")
    return {**CONNECTION_DEFAULTS, **kwargs}


class TarantoolPool(Pool[Any]):
    """A fair, bounded pool of ``tarantool.Connection`` objects for one process and one gevent hub.

    ``TarantoolPool(host, port, user=None, password=None, max_connections=10, timeout=30.0, ...)``:

    - ``host``, ``port``: the server (``host=None`` and ``port="/path/to.sock"`` for a unix socket).
    - ``user``, ``password``: credentials (``None``: the guest user). The password is never shown in
      ``repr``, stats, logs or the pool's error messages.
    - ``max_connections``: the hard limit of open connections; ``min_connections`` are kept open.
    - ``timeout``: seconds a checkout (and so each helper) waits for a connection before raising
      :class:`TarantoolPoolTimeout`; ``None`` waits forever, ``0`` never waits.
    - keyword-only: ``check_after_idle`` (ping a connection on checkout when it has been idle this long),
      ``max_lifetime``, ``max_idle``, ``leak_threshold``, ``max_waiting``, ``queue_policy``, ``name``
      (default ``"tarantool host:port"``, shown in errors, logs and stats): see :class:`greenpool.Pool`.
    - ``**connection_kwargs``: passed to ``tarantool.Connection`` (``socket_timeout``, ``connection_timeout``,
      ``transport="ssl"`` and the ``ssl_*`` files, ``fetch_schema``, ...) over :data:`CONNECTION_DEFAULTS`.
      An unknown name raises ``TypeError`` here, not at the first checkout. ``connect_timeout`` is accepted
      as greenpool's name for ``connection_timeout`` (giving both with different values raises ``TypeError``).

    Connections are created lazily, in the greenlet whose checkout needs one (it blocks while it connects,
    authenticates and loads the schema; a failure raises tarantool-python's ``NetworkError`` to that caller
    and frees the slot). A connection idle longer than ``check_after_idle`` (or whose socket the server closed
    or wrote to while it was idle) is pinged before it is handed out; a ping that fails, or gets no reply
    within ``connection_timeout``, closes it and the checkout goes on with another or a new one.
    After ``os.fork()`` the child's pool starts empty and never touches the parent's connections.

    **Bounds.** A checkout waits at most ``timeout`` for a connection, plus ``connection_timeout`` (default
    10 s; ``None``: no bound) while it creates one: the whole connect, TCP connect, TLS handshake, greeting,
    IPROTO_ID, authentication and schema load, or :class:`TarantoolConnectTimeout` (a ``NetworkError``) names
    the server, the setting and the stage; a ``socket_timeout`` that expires while connecting raises it too.
    Each reply takes at most ``socket_timeout`` (default ``None``: no bound); the ping that checks an idle
    connection, at most ``connection_timeout``. The bounds need gevent's patched ``socket`` module, as
    everything else here does.
    """

    timeout_error = TarantoolPoolTimeout
    closed_error = TarantoolPoolClosed
    too_many_waiting_error = TarantoolTooManyWaiting

    def __init__(
        self,
        host: Optional[str],
        port: Union[int, str],
        user: Optional[str] = None,
        password: Optional[str] = None,
        max_connections: int = 10,
        timeout: Optional[float] = 30.0,
        *,
        min_connections: int = 0,
        check_after_idle: Optional[float] = 1.0,
        max_lifetime: Optional[float] = None,
        max_idle: Optional[float] = None,
        leak_threshold: Optional[float] = None,
        max_waiting: int = 0,
        queue_policy: str = "adaptive",
        name: Optional[str] = None,
        **connection_kwargs: Any,
    ) -> None:
        check_address(host, port)
        check_credentials(user, password)
        min_connections, max_connections = check_sizes(
            min_connections, max_connections, min_name="min_connections", max_name="max_connections"
        )
        self.host = host
        self.port = port
        self.user = user
        self._connection_kwargs = _check_connection_kwargs(connection_kwargs)
        super().__init__(
            _connector(host, port, user, password, self._connection_kwargs),
            None,
            _pinger(self._connection_kwargs["connection_timeout"]),
            max_connections=max_connections,
            min_connections=min_connections,
            timeout=timeout,
            check_after_idle=check_after_idle,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            leak_threshold=leak_threshold,
            max_waiting=max_waiting,
            queue_policy=queue_policy,
            keep_on=_keeps_connection,
            detach=_detach,
            socket=_socket_of,
            name=check_name(name) or f"tarantool {_address(host, port)}",
        )
        _warn_if_unpatched()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> TarantoolPool:
        """Build a pool from ``tarantool://[user[:password]@]host[:port][?option=value&...]``.

        The port defaults to 3301; user and password are percent-decoded. Query options: the pool's
        (``max_connections``, ``min_connections``, ``timeout``, ``check_after_idle``, ``max_lifetime``,
        ``max_idle``, ``leak_threshold``, ``max_waiting``, ``queue_policy``, ``name``) and ``tarantool.Connection``'s
        ``socket_timeout``, ``connection_timeout``, ``reconnect_max_attempts``, ``reconnect_delay``,
        ``connect_now``, ``fetch_schema``, ``transport``, ``ssl_key_file``, ``ssl_cert_file``, ``ssl_ca_file``,
        ``ssl_ciphers``, ``auth_type`` (``connect_timeout`` is accepted for ``connection_timeout``).
        :class:`greenpool.TarantoolMux`'s ``shared_connections`` and ``max_in_flight`` are accepted and do not
        apply here, so one URL can configure both classes. Seconds accept ``none``; booleans
        ``true/false/1/0/yes/no/on/off``.
        ``kwargs`` override what the URL says. Never blocks (no connection is made here).

        Raises ``ValueError`` naming the scheme, option or value that is wrong (never showing the password).
        """
        options = parse_url(url, _URL_OPTIONS)
        for name in _MUX_URL_OPTIONS:
            options.pop(name, None)
        options.update(kwargs)
        return cls(**options)

    # ------------------------------------------------------------------ connections

    def release(self, conn: Any, discard: bool = False) -> None:
        """Return a checked-out connection; never blocks.

        As :meth:`greenpool.Pool.release`, and a connection that was closed meanwhile (``tnt.close()``, or
        tarantool-python closed it after a failed reconnect) is discarded rather than kept.
        """
        if not discard and self.owns(conn) and conn.is_closed():
            discard = True
        super().release(conn, discard=discard)

    # ------------------------------------------------------------------ one-call helpers

    insert = _helper("insert")
    replace = _helper("replace")
    select = _helper("select")
    update = _helper("update")
    upsert = _helper("upsert")
    delete = _helper("delete")
    call = _helper("call")
    eval = _helper("eval")
    execute = _helper("execute")
    ping = _helper("ping")

    def __repr__(self) -> str:
        address = _address(self.host, self.port)
        address = "" if address in self.name else f" {address}"
        user = f" user={self.user!r}" if self.user else ""
        state = "closed" if self.closed else f"size={self.size}/{self.max_connections} idle={self.idle}"
        return f"<{type(self).__name__} {self.name}{address}{user} {state} in_use={self.in_use} waiting={self.waiting}>"


# ---------------------------------------------------------------------- URL options

_URL_OPTIONS: Dict[str, Callable[[str, str], Any]] = {
    "max_connections": url_int,
    "min_connections": url_int,
    "max_waiting": url_int,
    "queue_policy": url_str,
    "timeout": url_seconds,
    "check_after_idle": url_seconds,
    "max_lifetime": url_seconds,
    "max_idle": url_seconds,
    "leak_threshold": url_seconds,
    "name": url_str,
    "socket_timeout": url_seconds,
    "connection_timeout": url_seconds,
    "connect_timeout": url_seconds,
    "reconnect_max_attempts": url_int,
    "reconnect_delay": url_seconds,
    "connect_now": url_bool,
    "fetch_schema": url_bool,
    "transport": url_str,
    "ssl_key_file": url_str,
    "ssl_cert_file": url_str,
    "ssl_ca_file": url_str,
    "ssl_ciphers": url_str,
    "auth_type": url_str,
    # TarantoolMux's, accepted so that one URL configures both; they do not apply to a pool.
    "shared_connections": url_int,
    "max_in_flight": url_int,
}
_MUX_URL_OPTIONS = ("shared_connections", "max_in_flight")
