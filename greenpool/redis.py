"""``greenpool.GeventPool``: a redis-py connection pool built on the fair core :class:`greenpool.Pool`.

``redis.Redis(connection_pool=GeventPool(host=..., port=..., max_connections=10, timeout=1))`` takes the place
of ``redis.BlockingConnectionPool``: same constructor arguments and defaults, the same ``ConnectionPool``
contract (``get_connection()``, ``release()``, ``disconnect()``, ``reset()``, ``from_url()``, ...), with the
core's fairness, interruption safety, idle checks and statistics. Also defines the checkout errors, which are
both greenpool errors and ``redis.exceptions.ConnectionError``.

Depends on redis-py (>= 5.3), ``greenpool.pool`` and ``greenpool._redis_metrics`` (redis-py 8's own metrics);
imported only when ``greenpool.GeventPool`` is first used.
"""

from __future__ import annotations

import logging
import operator
import os
import sys
import weakref
from queue import LifoQueue
from typing import Any, Callable, ClassVar, Dict, FrozenSet, List, Mapping, Optional, Set, Union

from redis.connection import (
    AbstractConnection,
    CacheProxyConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    parse_url,
)
from redis.event import AfterConnectionReleasedEvent
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from greenpool import _green
from greenpool._log import RateLimited
from greenpool._validate import (
    check_callable,
    check_choice,
    check_int,
    check_name,
    check_seconds,
    merge_synonym,
)
from greenpool._waitqueue import POLICIES
from greenpool.errors import ConnectTimeout, PoolClosed, PoolError, PoolTimeout, TooManyWaiting
from greenpool.pool import Pool
from greenpool.stats import HistogramSnapshot

try:
    from greenpool._redis_metrics import follow as _follow_redis_metrics
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the redis-py version
    if not (exc.name or "").startswith("redis.observability"):
        raise

    def _follow_redis_metrics(pool: Any) -> None:
        """redis-py before 8 has no observability package: there are no redis-py metrics to record."""


__all__ = ["GeventPool", "RedisConnectTimeout", "RedisPoolClosed", "RedisPoolTimeout", "RedisTooManyWaiting"]

logger = logging.getLogger("greenpool.redis")


class RedisPoolTimeout(PoolTimeout, RedisConnectionError):
    """No connection became available within ``timeout`` ("No connection available. ...")."""


class RedisConnectTimeout(ConnectTimeout, RedisTimeoutError):
    """A new connection was not ready within the connect bound (also a ``redis.exceptions.TimeoutError``, what
    redis-py raises for its own connect timeouts); the message names the server, the setting and the stage."""


class RedisPoolClosed(PoolClosed, RedisConnectionError):
    """The checkout waited on a pool that :meth:`GeventPool.reset` replaced."""


class RedisTooManyWaiting(TooManyWaiting, RedisConnectionError):
    """The checkout was refused at once because ``max_waiting`` greenlets were already waiting."""


class _CorePool(Pool[Any]):
    timeout_error = RedisPoolTimeout
    closed_error = RedisPoolClosed
    too_many_waiting_error = RedisTooManyWaiting


# Keyword-only settings that GeventPool adds to BlockingConnectionPool's, and how to read them from a URL.
_URL_EXTRAS: Dict[str, Callable[[str], Any]] = {
    "connect_timeout": float,  # greenpool's name for socket_connect_timeout
    "min_connections": int,
    "check_after_idle": float,
    "max_lifetime": float,
    "max_idle": float,
    "leak_threshold": float,
    "max_waiting": int,
    "queue_policy": str,
    "name": str,
}


class GeventPool(ConnectionPool):
    """A fair, interruption-safe drop-in for ``redis.BlockingConnectionPool`` under gevent.

    Arguments are those of ``BlockingConnectionPool`` with the same defaults:

    - ``max_connections`` (default 50): the hard limit of open connections. As with redis-py, ``None`` or
      ``0`` means redis-py's own ``ConnectionPool`` default, and a negative or non-int value raises
      ``ValueError('"max_connections" must be a positive integer')``. Setting :attr:`max_connections` later
      resizes the pool (see :meth:`resize`).
    - ``timeout`` (default 20 s; ``None`` waits forever, ``0`` never waits): how long :meth:`get_connection`
      blocks when every connection is in use.
    - ``connection_class`` (default ``redis.Connection``; ``SSLConnection`` or ``UnixDomainSocketConnection``
      work too) and ``**connection_kwargs`` (``host``, ``port``, ``db``, ``username``, ``password``,
      ``protocol``, ``health_check_interval``, ``client_name``, ``parser_class``, ``retry``, ``ssl_*`` ...),
      passed to each connection as redis-py does. ``ssl=True`` selects ``SSLConnection``, as it does for
      ``redis.Redis``. ``connect_timeout`` is accepted as greenpool's name for redis-py's
      ``socket_connect_timeout`` (the same setting; giving both with different values raises ``TypeError``).
      A ``connection_class`` without redis-py's ``is_connected`` works as with redis-py's pools: its
      ``connect()`` is called on every checkout (it must return at once when connected).
    - ``queue_class``: accepted for compatibility and ignored. Idle connections always live on the core's
      ``gevent.queue.LifoQueue``, whatever the import order of redis and gevent.

    Keyword-only settings of the core pool (see :class:`greenpool.Pool`): ``min_connections`` (kept open),
    ``check_after_idle`` (default 1 s), ``max_lifetime``, ``max_idle``, ``leak_threshold``, ``max_waiting``
    (``0``: no limit), ``queue_policy`` (``"adaptive"``, ``"fifo"`` or ``"lifo"``), ``name`` (shown in errors,
    logs and stats; never contains credentials).

    Checkouts are served first come, first served while the pool keeps up: a greenlet that releases a
    connection and asks again queues behind those already waiting. Under overload (waiters giving up before
    their turn would come) the default ``queue_policy="adaptive"`` serves the newest waiters first, and a
    checkout inside :func:`greenpool.deadline` that cannot be served in time fails at once.

    **Dirty connections.** redis-py's own pools poll every connection they hand out (``can_read()``, a
    system call per checkout) to catch one that still holds the reply of an interrupted command. This pool
    makes that state impossible instead, at no cost on the hot path:

    1. redis-py's ``Connection`` disconnects itself when anything, ``BaseException`` included, interrupts
       ``send_packed_command()`` or ``read_response()``; a disconnected connection reconnects on its next
       checkout, so no half-read reply survives inside it.
    2. redis-py calls :meth:`release` in a ``finally`` clause. When it runs while a ``BaseException`` that is
       not an ``Exception`` propagates (``gevent.Timeout``, ``GreenletExit``, ``KeyboardInterrupt``), the
       holder was interrupted at an unknown point (between a send and its read, in a pipeline, in a
       transaction), so the connection is closed and its slot freed rather than reused.

    Liveness is checked without touching the hot path either: a connection idle for ``check_after_idle``
    seconds or more is polled on checkout (one non-blocking ``can_read()``), and after a command failed
    with a connection error (e.g. the server restarted) every idle connection is polled once on its next
    checkout. A closed one is reconnected, so dead connections do not poison the pool. Data waiting on an
    idle connection means it is dirty, unless it may be a RESP3 push message (client-side cache or
    maintenance notifications enabled), as redis-py decides.

    A checkout that times out raises :class:`RedisPoolTimeout`, both a :class:`greenpool.PoolTimeout` and a
    ``redis.exceptions.ConnectionError`` whose message starts with "No connection available.".

    **Bounds.** A checkout waits at most ``timeout`` for a connection, plus the connect bound while it makes a
    new one: the whole connect (TCP connect, TLS handshake, HELLO/AUTH/CLIENT/SELECT, redis-py's connect retries)
    ends within ``socket_connect_timeout`` (redis-py's default 5 s; passed as ``None``, ``socket_timeout``; 10 s
    when both are ``None``) or raises :class:`RedisConnectTimeout`, a :class:`greenpool.ConnectTimeout` and a
    ``redis.exceptions.TimeoutError`` that names the server, the setting and the stage. Each reply then takes at
    most ``socket_timeout`` (redis-py's default 5 s; ``None``: no bound).
    """

    #: Settings :meth:`from_url` reads from the query string besides redis-py's, and how to parse them.
    _url_extras: ClassVar[Mapping[str, Callable[[str], Any]]] = _URL_EXTRAS

    def __init__(
        self,
        max_connections: Optional[int] = 50,
        timeout: Optional[float] = 20,
        connection_class: Any = Connection,
        queue_class: Any = LifoQueue,
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
        self._timeout = check_seconds("timeout", timeout)
        check_callable("connection_class", connection_class, allow_none=False)
        self.queue_class = check_callable("queue_class", queue_class)
        check_name(name)
        merge_synonym(connection_kwargs, "socket_connect_timeout", "connect_timeout")
        if connection_kwargs.pop("ssl", False):
            if connection_class is Connection:
                connection_class = SSLConnection
            elif not (isinstance(connection_class, type) and issubclass(connection_class, SSLConnection)):
                raise ValueError(f"ssl=True needs an SSLConnection connection_class, got {connection_class!r}")
        self._core_settings: Dict[str, Any] = {
            "min_connections": check_int("min_connections", min_connections),
            "check_after_idle": check_seconds("check_after_idle", check_after_idle),
            "max_lifetime": check_seconds("max_lifetime", max_lifetime, allow_zero=False),
            "max_idle": check_seconds("max_idle", max_idle, allow_zero=False),
            "leak_threshold": check_seconds("leak_threshold", leak_threshold, allow_zero=False),
            "max_waiting": check_int("max_waiting", max_waiting),
            "queue_policy": check_choice("queue_policy", queue_policy, POLICIES),
            "name": name or _default_name(connection_kwargs),
        }
        self._own_dispatcher = connection_kwargs.get("event_dispatcher") is None
        # The release event matters only with a caller's dispatcher, or once re_auth_callback() handed tokens out.
        self._release_hook = not self._own_dispatcher
        self._is_connected = _connected_check(connection_class)
        self._should_reconnect = hasattr(connection_class, "should_reconnect")
        # The base class validates what it knows (max_connections too, with its own message and default), sets
        # connection_class, connection_kwargs, max_connections, cache, _lock and the maintenance-notification
        # plumbing, then calls reset().
        super().__init__(connection_class=connection_class, max_connections=max_connections, **connection_kwargs)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> GeventPool:
        """Return a pool configured from a URL (parsed by redis-py's own ``parse_url``).

        ``redis://[[username]:[password]]@host:port/db``, ``rediss://...`` (TLS) and ``unix:///path.sock``
        are understood; query-string values win over ``kwargs``. Besides redis-py's options
        (``max_connections`` and ``timeout`` included), the query string may set ``connect_timeout``,
        ``min_connections``, ``check_after_idle``, ``max_lifetime``, ``max_idle``, ``leak_threshold``,
        ``max_waiting``, ``queue_policy`` and ``name``. Raises ``ValueError`` for a value that does not parse.
        Never blocks.
        """
        url_options: Dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        for key, cast in cls._url_extras.items():
            value = url_options.get(key)
            if isinstance(value, str):
                try:
                    url_options[key] = cast(value)
                except ValueError:
                    raise ValueError(f"Invalid value for {key!r} in connection URL: {value!r}") from None
        if "connection_class" in kwargs:
            url_options["connection_class"] = kwargs["connection_class"]
        kwargs.update(url_options)
        return cls(**kwargs)

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Start over with an empty pool; never blocks.

        Idle connections of the previous pool are disconnected; connections checked out from it are
        disconnected when released; greenlets still waiting on it get :class:`RedisPoolClosed`.
        """
        old: Optional[_CorePool] = getattr(self, "_pool", None)
        settings = self._core_settings
        ref = weakref.ref(self)
        self._pool = _CorePool(
            lambda: _deref(ref)._new_connection(),
            _disconnect,
            lambda conn: _deref(ref)._usable(conn),
            detach=_disconnect,  # in a fork's child, redis-py closes only the child's copy of the socket
            socket=_socket_of,  # idle connections are watched: a server that closes one is noticed at once
            max_connections=int(self._max_connections),
            timeout=self._timeout,
            **settings,
        )
        self._suspects: Set[int] = set()
        if old is not None:
            self._pool._stats.events = old._stats.events  # the listeners (greenpool.events) stay with the pool
            old.close()
        else:
            self._reconnect_log = RateLimited(logger)
        self.pid = os.getpid()
        _LIVE_POOLS.add(self)
        _follow_redis_metrics(self)  # redis-py's own connection metrics, while its observability is on

    def _checkpid(self) -> None:
        # The core resets itself in a fork's child (its pool starts empty and never touches the parent's
        # sockets) and the fork hook below refreshes ``pid``: nothing to do per call, no system call.
        pass

    def _after_fork(self) -> None:
        self._suspects = set()
        self.pid = os.getpid()

    @property
    def max_connections(self) -> int:
        """The hard limit of open connections; setting it resizes the pool as :meth:`resize` does."""
        return self._max_connections

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        if "_pool" not in self.__dict__:  # redis-py's constructor, before reset() builds the core pool
            self._max_connections = value
        else:
            self.resize(max_connections=value)

    @property
    def min_connections(self) -> int:
        """Connections kept open even when idle (see :meth:`resize`)."""
        return int(self._core_settings["min_connections"])

    def resize(self, *, max_connections: Optional[int] = None, min_connections: Optional[int] = None) -> None:
        """Change the size limits (keyword-only; ``None`` keeps a limit as it is); never blocks.

        Growing ``max_connections`` lets waiting greenlets connect at once; shrinking it disconnects surplus
        idle connections now and surplus checked-out ones when they are released. Raises ``ValueError`` or
        ``TypeError`` naming the argument (and changes nothing) for a bad size or ``min_connections`` above
        ``max_connections``. The limits survive :meth:`reset`.
        """
        pool = self._pool
        pool.resize(max_connections=max_connections, min_connections=min_connections)
        self._max_connections = pool.max_connections
        self._core_settings["min_connections"] = pool.min_connections

    @property
    def timeout(self) -> Optional[float]:
        """Seconds :meth:`get_connection` waits for a connection (``None``: forever)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        seconds = check_seconds("timeout", value)
        if "_pool" in self.__dict__:
            self._pool.timeout = seconds
        self._timeout = seconds

    # ------------------------------------------------------------------ checkout and release

    def make_connection(self) -> Any:
        """Create a new, not yet connected, connection object (no I/O, not counted by the pool)."""
        connection = self.connection_class(**self.connection_kwargs)
        if self.cache is not None:
            connection = CacheProxyConnection(connection, self.cache, self._lock)
        return connection

    def _new_connection(self, connection: Any = None) -> Any:
        """Connect ``connection`` (by default a new one, for the core pool's ``create``) and return it.

        The whole connect (TCP connect, TLS handshake, the HELLO/AUTH/CLIENT/SELECT handshake and redis-py's own
        connect retries) must end within the connect bound, the connection's ``socket_connect_timeout``
        (redis-py's default 5 s; passed as ``None``, ``socket_timeout``), or 10 s when both are ``None``; then,
        or when redis-py times out itself while connecting, it raises :class:`RedisConnectTimeout` naming the
        setting and the stage. On any failure the connection is disconnected, so no socket is left open.
        """
        if connection is None:
            connection = self.make_connection()
        kwargs = self.connection_kwargs
        # redis-py's connections set socket_connect_timeout to socket_timeout when it is passed as None.
        connect_setting = (
            "socket_timeout" if kwargs.get("socket_connect_timeout", 0) is None else "socket_connect_timeout"
        )
        bound, setting = getattr(connection, "socket_connect_timeout", None), connect_setting
        if bound is None:
            bound, setting = 10.0, "the default: socket_connect_timeout and socket_timeout are None"
        address = _address(kwargs)
        name = self._core_settings["name"]
        where = name if address in name else f"{name} ({address})"
        socket_stage = "unix socket connect" if kwargs.get("path") else "TCP connect"
        stages = (
            ("call_with_retry", "waiting to retry after a failed attempt"),
            ("_connect", socket_stage),
            ("_wrap_socket_with_ssl", "TLS handshake"),
            ("on_connect_check_health", "handshake (HELLO/AUTH/CLIENT/SELECT)"),
        )

        def expired(interruption: BaseException) -> RedisConnectTimeout:
            stage = _green.stage_of(interruption, "redis", stages, "connect")
            return RedisConnectTimeout(_green.connect_timeout_message(where, bound, setting, stage))

        try:
            try:
                _green.call_within(bound, connection.connect, expired)
            except RedisTimeoutError as exc:
                if isinstance(exc, RedisConnectTimeout):
                    raise
                # redis-py's own socket timeout, before the bound (with its retries spent).
                stage = _green.stage_of(exc, "redis", stages, "connect", chained=True)
                own = "socket_connect_timeout" if stage == socket_stage else "socket_timeout"
                seconds = getattr(connection, own, None) or 0.0
                own = connect_setting if own == "socket_connect_timeout" else own
                raise RedisConnectTimeout(_green.connect_timeout_message(where, seconds, own, stage)) from exc
        except BaseException:
            connection.disconnect()
            raise
        return connection

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Check a connection out, connected and ready for a command.

        Blocks, in the order ``queue_policy`` sets (first come first served while the pool keeps up), for up to
        ``timeout`` seconds while every connection is in use, then, when it makes a new connection, for up to
        the connect bound (``socket_connect_timeout``, see the class docstring). Raises
        :class:`RedisPoolTimeout` when the wait runs out (or at once, as :meth:`greenpool.Pool.acquire` says,
        for a deadline that cannot be met or a newcomer refused under overload), :class:`RedisConnectTimeout`
        when the connect does, :class:`RedisTooManyWaiting` when ``max_waiting`` greenlets already wait, and what
        connecting raises (``redis.exceptions.ConnectionError``, ``AuthenticationError``, ...); a connection
        that fails to connect is closed and its slot freed. An idle connection that was disconnected (by
        :meth:`disconnect`, or after an error) reconnects here within the same connect bound. The arguments
        are accepted, and ignored, for callers of redis-py before 5.3 (without a deprecation warning).
        """
        pool = self._pool
        connection = pool.acquire()
        try:
            if self._suspects:
                self._verify_suspect(connection)
            if not self._is_connected(connection):
                if self._is_connected is not _never_connected:
                    self._reconnect_log.log(logging.INFO, "%s: reconnecting an idle connection", self._pool.name)
                self._new_connection(connection)
        except BaseException:
            pool.release(connection, discard=True)
            raise
        return connection

    def release(self, connection: Any) -> None:
        """Return a connection checked out by :meth:`get_connection`; never blocks.

        The connection goes to the oldest waiting greenlet, or onto the idle stack. It is closed instead
        (and its slot freed) when this runs while a ``BaseException`` that is not an ``Exception`` propagates
        (the holder was interrupted, see the class docstring). A connection this pool did not hand out in
        this process (another pool's, one from before a fork or a :meth:`reset`) is disconnected and never
        enters the pool. Releasing a connection a second time while it is idle does nothing; like every
        redis-py pool, this one cannot tell a late second release from the next holder's, so do not.
        """
        pool = self._pool
        if not pool.owns(connection):
            if connection not in pool.idle_connections():
                connection.disconnect()
            return
        exc = sys.exc_info()[1]
        discard = (exc is not None and not isinstance(exc, Exception)) or connection.pid != self.pid
        if not discard:
            try:
                if self._should_reconnect and connection.should_reconnect():
                    connection.disconnect()
                elif exc is not None and not self._is_connected(connection):
                    self._suspect_idle(exc)
                if self._release_hook:
                    self._release_event(connection)
            except BaseException:
                pool.release(connection, discard=True)
                raise
        pool.release(connection, discard=discard)

    def _release_event(self, connection: Any) -> None:
        if self._own_dispatcher:
            # The pool's own dispatcher has one listener for this event, which does just this.
            connection.re_auth()
        else:
            dispatcher: Any = self._event_dispatcher
            dispatcher.dispatch(AfterConnectionReleasedEvent(connection))  # type: ignore[no-untyped-call]

    def _usable(self, connection: Any) -> bool:
        """Idle check: False for a connection the server closed, or one holding unexpected data."""
        if not self._is_connected(connection):
            return True
        if not connection.can_read(timeout=0):  # raises ConnectionError when the server closed it
            return True
        # Data is waiting, or the server closed the socket. Only a RESP3 push message may legitimately wait on an
        # idle connection: client-side cache invalidations, or maintenance notifications, which redis-py 8.2 and
        # newer read and apply here (raising ConnectionError if the server closed the socket), as its pools do.
        if self.cache is not None:
            return True
        handle = getattr(connection, "handle_pending_push_notifications", None)
        enabled = getattr(self, "maint_notifications_enabled", None)
        if handle is None or enabled is None or not enabled():
            return False  # redis-py before 8.2 reconnects whatever the data is: so does this pool
        handle()
        return True

    def _verify_suspect(self, connection: Any) -> None:
        key = id(connection)
        if key in self._suspects:
            self._suspects.discard(key)
            try:
                usable = self._usable(connection)
            except Exception:
                usable = False
            if not usable:
                connection.disconnect()

    def _suspect_idle(self, exc: BaseException) -> None:
        # A command failed with a connection error and left its connection disconnected (the server may have
        # restarted): poll each idle connection once, on its next checkout.
        if isinstance(exc, RedisConnectionError) and not isinstance(exc, PoolError):
            self._suspects.update(id(conn) for conn in self._pool.idle_connections())

    # ------------------------------------------------------------------ redis-py pool API

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Disconnect the idle connections, and with ``inuse_connections`` the checked-out ones too.

        The connection objects stay in the pool and reconnect on their next use; a checked-out connection
        disconnected while a command runs on it makes that command fail with a ``ConnectionError``.
        Never blocks.
        """
        self._checkpid()
        for connection in self._pool.idle_connections():
            connection.disconnect()
        if inuse_connections:
            for connection in self._pool.in_use_connections():
                connection.disconnect()

    def close(self) -> None:
        """Disconnect every connection, idle and checked out, as redis-py's ``ConnectionPool.close()`` does;
        never blocks.

        ``Redis.close()`` calls this for a pool the client owns. The pool stays usable: the next checkout
        reconnects; a command running on a checked-out connection fails with a ``ConnectionError``.
        """
        self.disconnect()

    def set_in_maintenance(self, in_maintenance: bool) -> None:
        """Record whether a maintenance (``MOVING``) notification is being handled, as
        ``BlockingConnectionPool`` does. This pool needs no lock for it (one pool, one hub); never blocks."""
        self._in_maintenance = bool(in_maintenance)

    def __enter__(self) -> GeventPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """``with pool:`` closes it on the way out, as redis-py 8's pools do (the pool stays usable)."""
        self.close()

    def __repr__(self) -> str:
        """redis-py's pool ``repr``, with every credential redacted whatever redis-py's version does."""
        shown = ",".join(
            f"{key}={'<REDACTED>' if key in _SECRET_KEYS else value}"
            for key, value in self.connection_kwargs.items()
            if key not in _OMITTED_KEYS
        )
        connection_class = self.connection_class
        return (
            f"<{type(self).__module__}.{type(self).__name__}"
            f"(<{connection_class.__module__}.{connection_class.__name__}({shown})>)>"
        )

    def set_retry(self, retry: Any) -> None:
        """Use ``retry`` for new connections and for every connection open now."""
        self.connection_kwargs.update({"retry": retry})
        for connection in self._pool.idle_connections() + self._pool.in_use_connections():
            connection.retry = retry

    def re_auth_callback(self, token: Any) -> None:
        """Apply a new credential token (called by redis-py's streaming credential providers).

        Idle connections are disconnected and authenticate again, with the provider's current credentials,
        on their next checkout (no I/O here: they could be checked out meanwhile); connections in use
        re-authenticate with ``token`` when released. Never blocks.
        """
        for connection in self._pool.idle_connections():
            connection.disconnect()
        self._release_hook = True
        for connection in self._pool.in_use_connections():
            connection.set_re_auth_token(token)

    def _get_pool_lock(self) -> Any:
        return self._lock

    def _get_free_connections(self) -> List[Any]:
        return self._pool.idle_connections()

    def _get_in_use_connections(self) -> Set[Any]:
        return set(self._pool.in_use_connections())

    # ------------------------------------------------------------------ greenpool extras

    def get_stats(self) -> Dict[str, Union[int, float, str]]:
        """Return the core pool's statistics (see :meth:`greenpool.Pool.get_stats`); never blocks."""
        return self._pool.get_stats()

    def pop_stats(self) -> Dict[str, Union[int, float, str]]:
        """Return :meth:`get_stats` and reset its totals to zero."""
        return self._pool.pop_stats()

    def get_histograms(self) -> Dict[str, HistogramSnapshot]:
        """Return the core pool's duration histograms (see :meth:`greenpool.Pool.get_histograms`)."""
        return self._pool.get_histograms()

    def prewarm(self) -> None:
        """Open connections until ``min_connections`` are open; blocks while they connect.

        Raises what connecting raises. The pool also tops itself up in the background.
        """
        self._pool.prewarm()


#: Connection arguments never shown in ``repr`` (redis-py 8 redacts these too; earlier versions showed them).
_SECRET_KEYS = frozenset({"password", "username", "ssl_password", "credential_provider"}) | getattr(
    ConnectionPool, "SENSITIVE_REPR_KEYS", frozenset()
)
_OMITTED_KEYS: FrozenSet[str] = getattr(ConnectionPool, "OMIT_REPR_KEYS", frozenset())

#: Every GeventPool of this process; their ``pid`` is refreshed in a fork's child.
_LIVE_POOLS: weakref.WeakSet[GeventPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_LIVE_POOLS):
        pool._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _deref(ref: weakref.ReferenceType[GeventPool]) -> GeventPool:
    pool = ref()
    if pool is None:  # pragma: no cover - the core pool only runs these while its GeventPool is alive
        raise ReferenceError("the GeventPool was garbage-collected")
    return pool


def _connected_check(connection_class: Any) -> Callable[[Any], bool]:
    """How to tell whether a connection of ``connection_class`` is connected, on every checkout.

    redis-py 8's ``is_connected``; before it (redis-py 5.3 to 7), whether a socket is set. A class with
    neither reads as never connected, so its ``connect()`` (which returns at once when connected) runs on
    every checkout, as redis-py's own pools do.
    """
    if hasattr(connection_class, "is_connected"):
        return _is_connected_attr
    if isinstance(connection_class, type) and issubclass(connection_class, AbstractConnection):
        return _has_socket
    return _never_connected


_is_connected_attr: Callable[[Any], bool] = operator.attrgetter("is_connected")


def _has_socket(connection: Any) -> bool:
    return getattr(connection, "_sock", None) is not None


def _never_connected(connection: Any) -> bool:
    return False


def _disconnect(connection: Any) -> None:
    connection.disconnect()


#: The socket of a redis-py connection (``None`` while disconnected), watched by the core while it is idle.
_socket_of = operator.attrgetter("_sock")


def _address(kwargs: Dict[str, Any]) -> str:
    """Where the connections go, ``host:port`` or the socket path, from their arguments (no credentials)."""
    path = kwargs.get("path")
    return str(path) if path else f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _default_name(kwargs: Dict[str, Any]) -> str:
    """A pool name from where it connects, without credentials."""
    return f"redis {_address(kwargs)}/{kwargs.get('db', 0)}"
