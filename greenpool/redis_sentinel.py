"""``greenpool.GeventSentinelPool``: the fair pool for a Sentinel-managed Redis master (or its replicas).

``Sentinel.master_for(service, connection_pool_class=GeventSentinelPool, max_connections=20, timeout=1)`` (and
``slave_for``) gives a ``redis.Redis`` whose connections come from a :class:`greenpool.GeventPool` and go to the
address the sentinels name. redis-py passes ``service_name`` and ``sentinel_manager`` positionally, as it does
to its own ``SentinelConnectionPool``; everything else is :class:`GeventPool`'s.

What it adds to redis-py's ``SentinelConnectionPool``:

- **Bounded sentinel queries.** A new connection asks the sentinels where to go only when the last answer is
  older than ``discovery_ttl`` seconds or a connection to that address failed; one discovery is in flight at a
  time and the greenlets that need an answer meanwhile wait for it and share it; a discovery ends within
  ``discovery_timeout`` seconds. So a failover that breaks every connection at once costs a few sentinel
  queries, not one per greenlet (redis-py's sentinels' own pools then stay at one connection each).
- **No connection to an old master is kept.** While the pool is used, the master's address is asked again in
  the background once it is older than ``discovery_ttl`` (a ``SENTINEL FAILOVER`` leaves the old master
  writable for seconds, until the sentinels turn it into a replica); when the sentinels name a new master,
  idle connections are closed, and so are those in use on the old master (a failover pauses its writes);
  a connection that still points at another address is closed when it is released or checked out;
  ``READONLY`` replies, "UNBLOCKED" errors and ``WAIT``'s "cannot be used with
  replica instances" (a demoted master) close the connection, drop the cached answer, and raise
  ``ConnectionError`` (redis-py's client retries it per its ``retry`` policy).

Depends on ``greenpool.redis`` (the pool), ``greenpool._green``, gevent and redis-py's ``redis.sentinel``.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import redis
from gevent import sleep
from gevent.event import AsyncResult

if int(redis.__version__.split(".")[0]) < 8:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"greenpool.redis_sentinel needs redis-py 8 or newer (found {redis.__version__}): pip install 'redis>=8'"
    )

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.sentinel import (
    MasterNotFoundError,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
    SlaveNotFoundError,
)

from greenpool import _green
from greenpool._redis_checkout import MuxConnection
from greenpool._validate import check_seconds
from greenpool.redis import GeventPool
from greenpool.redis_mux import RedisMuxPool

__all__ = ["GeventSentinelMuxPool", "GeventSentinelPool", "SentinelDiscovery"]

#: What a demoted master answers a blocked client (redis-py 8 names it; earlier versions do not).
DEMOTED_MASTER_UNBLOCKED_ERROR = "UNBLOCKED force unblock from blocking operation, instance state changed"

Address = Tuple[Any, Any]

#: Two discoveries never start closer together than this (seconds), however often connections fail.
_MIN_DISCOVERY_GAP = 0.05


class SentinelDiscovery:
    """Where a service's master and replicas are, as the sentinels last said; one question in flight at a time.

    ``master()`` and ``replicas()`` return the cached answer while it is younger than ``ttl`` seconds and not
    invalidated; otherwise one caller asks the sentinels (``sentinel_manager.discover_master`` /
    ``discover_slaves``) and every caller that comes meanwhile waits for that answer (or error) and shares it.
    A question ends within ``timeout`` seconds (then ``MasterNotFoundError``). Blocks the calling greenlet only.
    """

    def __init__(self, sentinel_manager: Any, service_name: str, ttl: float, timeout: Optional[float]) -> None:
        self.sentinel_manager = sentinel_manager
        self.service_name = service_name
        self.ttl = ttl
        self.timeout = timeout
        self._answers: Dict[str, Tuple[Any, float]] = {}  # kind -> (answer, monotonic time)
        self._flights: Dict[str, AsyncResult] = {}  # kind -> AsyncResult of the question in flight
        self._last_started = -1e9
        self._last_master: Optional[Address] = None
        self._refreshing = False  # a background refresh of the master's address is on its way
        self.queries = 0
        self.shared = 0
        self.failures = 0
        self.changes = 0
        self.on_master_change: Any = None

    def invalidate(self, address: Optional[Address] = None) -> None:
        """Forget the master's address (only if it is ``address``, when given) and the replicas'."""
        cached = self._answers.get("master")
        if cached is not None and (address is None or tuple(cached[0]) == tuple(address)):
            del self._answers["master"]
        self._answers.pop("replicas", None)

    @property
    def known_master(self) -> Optional[Address]:
        """The master's address as last learnt (even if since invalidated), or None."""
        return self._last_master

    def refresh_master_soon(self) -> None:
        """When the master's address is older than ``ttl`` and nobody asks, ask in a new greenlet; never blocks."""
        cached = self._answers.get("master")
        if cached is None or self._refreshing or "master" in self._flights:
            return
        if _green.monotonic() - cached[1] < self.ttl:
            return
        self._refreshing = True
        _green.spawn(self._refresh_master)

    def _refresh_master(self) -> None:
        try:
            self.master()
        except Exception:  # counted in failures; the next connect asks again
            pass
        finally:
            self._refreshing = False

    def master(self) -> Address:
        return self._ask("master", lambda: self.sentinel_manager.discover_master(self.service_name))  # type: ignore[no-any-return]

    def replicas(self) -> List[Address]:
        return self._ask("replicas", lambda: list(self.sentinel_manager.discover_slaves(self.service_name)))  # type: ignore[no-any-return]

    def _ask(self, kind: str, question: Any) -> Any:
        cached = self._answers.get(kind)
        now = _green.monotonic()
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        flight = self._flights.get(kind)
        if flight is not None:
            self.shared += 1
            return flight.get()  # the asker's question ends within self.timeout, and then this does too
        flight = self._flights[kind] = AsyncResult()
        try:
            gap = self._last_started + _MIN_DISCOVERY_GAP - now
            if gap > 0:
                sleep(gap)
            self._last_started = _green.monotonic()
            self.queries += 1
            answer = self._within(question)
        except BaseException as exc:
            self.failures += 1
            shared = (
                exc
                if isinstance(exc, Exception)
                else MasterNotFoundError(
                    f"the discovery of {self.service_name!r} was interrupted ({type(exc).__name__})"
                )
            )
            flight.set_exception(shared)
            raise
        else:
            self._answers[kind] = (answer, _green.monotonic())
            if kind == "master":
                previous, self._last_master = self._last_master, answer
                if previous is not None and tuple(previous) != tuple(answer):
                    self.changes += 1
                    if self.on_master_change is not None:
                        self.on_master_change(answer)
            flight.set(answer)
            return answer
        finally:
            self._flights.pop(kind, None)

    def _within(self, question: Any) -> Any:
        def expired(interruption: BaseException) -> BaseException:
            return MasterNotFoundError(
                f"the sentinels did not answer about {self.service_name!r} within {self.timeout} s"
            )

        return _green.call_within(self.timeout, question, expired)


class _Proxy:
    """What a ``SentinelManagedConnection`` asks of its ``connection_pool``: no strong reference to the pool."""

    def __init__(self, pool: GeventSentinelPool, is_master: bool, check_connection: bool) -> None:
        self._pool_ref = weakref.ref(pool)
        self.is_master = is_master
        self.check_connection = check_connection
        self.service_name = pool.service_name
        self.discovery = pool.discovery

    def get_master_address(self) -> Address:
        return self.discovery.master()

    def rotate_slaves(self) -> Iterator[Address]:
        pool = self._pool_ref()
        replicas = self.discovery.replicas()
        if replicas:
            start = pool._next_replica() if pool is not None else 0
            for i in range(len(replicas)):
                yield replicas[(start + i) % len(replicas)]
        try:
            yield self.discovery.master()
        except MasterNotFoundError:
            pass
        raise SlaveNotFoundError(f"No slave found for {self.service_name!r}")

    rotate_replicas = rotate_slaves

    def invalidate(self, address: Optional[Address]) -> None:
        self.discovery.invalidate(address)


#: Error replies only a replica gives, beyond the READONLY and UNBLOCKED redis-py already handles.
_REPLICA_REPLIES = ("WAIT cannot be used with replica instances",)


class _Redirected:
    """Mixed into redis-py's sentinel connections: a failed connect or a demoted master drops the cached answer."""

    connection_pool: Any
    host: Any
    port: Any

    def connect_to(self, address: Address) -> None:
        try:
            super().connect_to(address)  # type: ignore[misc]
        except (RedisConnectionError, OSError):
            self.connection_pool.invalidate(address)
            raise

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py reconnects a dropped connection here directly when a command is sent on it again (a client
        # retry after "The previous master is now a slave"), bypassing SentinelManagedConnection.connect():
        # without this, the retry would go back to the demoted master's address.
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super().connect_check_health(*args, **kwargs)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except RedisConnectionError:
            # Among them redis-py's "The previous master is now a slave" (a READONLY or UNBLOCKED reply).
            self.connection_pool.invalidate((self.host, self.port))
            raise
        except ResponseError as exc:
            if not (self.connection_pool.is_master and str(exc).startswith(_REPLICA_REPLIES)):
                raise
            # Only a replica says this: the master we talk to was demoted. As redis-py does for READONLY.
            self.disconnect()  # type: ignore[attr-defined]
            self.connection_pool.invalidate((self.host, self.port))
            raise RedisConnectionError("The previous master is now a slave") from exc


class GreenSentinelConnection(_Redirected, SentinelManagedConnection):
    """redis-py's ``SentinelManagedConnection`` that tells the pool's discovery when its address went bad."""


class GreenSentinelSSLConnection(_Redirected, SentinelManagedSSLConnection):
    """The TLS variant of :class:`GreenSentinelConnection`."""


class GeventSentinelPool(GeventPool):
    """A :class:`GeventPool` whose connections go where the sentinels say: pass it to ``Sentinel.master_for`` /
    ``slave_for`` as ``connection_pool_class``.

    ``GeventSentinelPool(service_name, sentinel_manager, max_connections=50, timeout=20, ...)``:
    ``sentinel_manager`` is the ``redis.sentinel.Sentinel``; ``is_master`` (``master_for`` sets True,
    ``slave_for`` False) and ``check_connection`` (PING after connecting) are redis-py's; ``discovery_ttl``
    (default 1 s) is how long an answer of the sentinels is reused for new connections, ``discovery_timeout``
    (default 5 s) bounds one discovery; the rest is :class:`GeventPool`'s (``min_connections``,
    ``check_after_idle``, ``name``, ...) and the connections' (``socket_timeout``, ``password``, ``ssl``, ...).

    **Bounds.** A checkout waits at most ``timeout`` for a connection, plus the connect bound
    (``socket_connect_timeout``, see :class:`GeventPool`) while it makes one, the discovery included. Raises
    what :class:`GeventPool` raises, and ``MasterNotFoundError`` / ``SlaveNotFoundError`` (redis-py's, both
    ``ConnectionError``) when the sentinels name no usable server.
    """

    def __init__(
        self,
        service_name: str,
        sentinel_manager: Any,
        max_connections: Optional[int] = 50,
        timeout: Optional[float] = 20,
        connection_class: Any = None,
        *,
        is_master: bool = True,
        check_connection: bool = False,
        discovery_ttl: float = 1.0,
        discovery_timeout: Optional[float] = 5.0,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(service_name, str) or not service_name:
            raise TypeError(f"service_name must be a non-empty str, got {service_name!r}")
        if not hasattr(sentinel_manager, "discover_master"):
            raise TypeError(f"sentinel_manager must be a redis.sentinel.Sentinel, got {sentinel_manager!r}")
        self.service_name = service_name
        self.sentinel_manager = sentinel_manager
        self.is_master = bool(is_master)
        self.check_connection = bool(check_connection)
        ttl = check_seconds("discovery_ttl", discovery_ttl, allow_none=False)
        bound = check_seconds("discovery_timeout", discovery_timeout, allow_zero=False)
        self.discovery = SentinelDiscovery(sentinel_manager, service_name, ttl or 0.0, bound)
        ref = weakref.ref(self)
        self.discovery.on_master_change = lambda address: _on_master_change(ref, address)
        self._replica_turn = 0
        if connection_class is None:
            connection_class = GreenSentinelSSLConnection if kwargs.pop("ssl", False) else GreenSentinelConnection
        role = "master" if self.is_master else "replica"
        # The connections find the discovery through ``connection_pool`` (redis-py's name for it), given to the
        # base class so that a connection made while it initialises (the multiplexer's template) has it too.
        kwargs["connection_pool"] = _Proxy(self, self.is_master, self.check_connection)
        name = name or f"redis sentinel {service_name} ({role})"
        super().__init__(max_connections, timeout, connection_class, name=name, **kwargs)

    _watcher: Any = None

    def _watch(self) -> None:
        """Ask again where the master is when the answer is older than ``discovery_ttl`` (never blocks), and keep
        a greenlet doing so while connections are in use or awaited: a failover pauses writes on the old master,
        and a pool whose every connection waits there makes no checkout that would notice the new one."""
        self.discovery.refresh_master_soon()
        watcher = self._watcher
        if watcher is None or watcher.dead:
            self._watcher = _green.spawn(_watch_master, weakref.ref(self), max(self.discovery.ttl, 0.05))

    def _next_replica(self) -> int:
        self._replica_turn += 1
        return self._replica_turn

    @property
    def master_address(self) -> Optional[Address]:
        """The master's address as last learnt from the sentinels (None before the first connect)."""
        return self.discovery.known_master

    def get_master_address(self) -> Address:
        """Ask (or reuse the shared answer, see :class:`SentinelDiscovery`) where the master is."""
        return self.discovery.master()

    def rotate_slaves(self) -> Iterator[Address]:
        """The replicas, round-robin, then the master (as redis-py's pool does)."""
        proxy: _Proxy = self.connection_kwargs["connection_pool"]
        return proxy.rotate_slaves()

    def _stale(self, connection: Any) -> bool:
        """A master connection that points anywhere but at the master last named by the sentinels."""
        if not self.is_master or connection.host is None or not connection.is_connected:
            return False
        known = self.discovery.known_master
        return known is not None and (connection.host, connection.port) != tuple(known)

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Check a connection out (see :meth:`GeventPool.get_connection`); one that points at an old master is
        disconnected first and so reconnects to the current one (asking the sentinels if need be)."""
        if self.is_master:
            self._watch()
        connection = super().get_connection()
        if self._stale(connection):
            try:
                connection.disconnect()
                self._new_connection(connection)
            except BaseException:
                self._pool.release(connection, discard=True)
                raise
        return connection

    def release(self, connection: Any) -> None:
        """Return a connection (see :meth:`GeventPool.release`); one that points at an old master is closed."""
        if self._pool.owns(connection) and self._stale(connection):
            connection.disconnect()
        super().release(connection)

    def get_stats(self) -> Dict[str, Union[int, float, str]]:
        """The pool's stats plus the discovery's: ``sentinel_queries`` (questions asked), ``sentinel_shared``
        (callers that shared a question in flight), ``sentinel_failures``, ``master_changes``, ``master``."""
        out: Dict[str, Union[int, float, str]] = dict(super().get_stats())
        d = self.discovery
        known = d.known_master
        out.update(
            sentinel_queries=d.queries,
            sentinel_shared=d.shared,
            sentinel_failures=d.failures,
            master_changes=d.changes,
            master=f"{known[0]}:{known[1]}" if known else "",
        )
        return out

    def __repr__(self) -> str:
        role = "master" if self.is_master else "replica"
        return f"<{type(self).__name__} service={self.service_name!r} ({role}) {self._pool!r}>"


class _SentinelMuxConnection(MuxConnection):
    """A multiplexer checkout whose shared socket may point at a demoted master: a ``READONLY`` (or other
    replica-only) reply drops the cached answer, closes the shared sockets (the commands in flight on them fail
    with ``ConnectionError``, which redis-py's client retries) and raises ``ConnectionError`` itself."""

    __slots__ = ()

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        mux: Any = self._mux
        try:
            return super().read_response(disable_decoding, **kwargs)
        except ReadOnlyError as exc:
            mux._demoted()
            raise RedisConnectionError("The previous master is now a slave") from exc
        except ResponseError as exc:
            if not str(exc).startswith((*_REPLICA_REPLIES, DEMOTED_MASTER_UNBLOCKED_ERROR)):
                raise
            mux._demoted()
            raise RedisConnectionError("The previous master is now a slave") from exc


class GeventSentinelMuxPool(GeventSentinelPool, RedisMuxPool):
    """:class:`GeventSentinelPool` with the multiplexer: plain commands share ``shared_connections`` (default 1)
    auto-pipelined sockets to the master (at most ``max_in_flight`` in flight), as :class:`greenpool.RedisMuxPool`
    does; the rest take a dedicated connection from the fair pool. Pass it to ``master_for`` as
    ``connection_pool_class``.

    The shared sockets connect to the address the sentinels name (the same shared discovery); when the
    sentinels name a new master they are closed (their commands in flight fail with ``ConnectionError``, which
    redis-py's client retries per its ``retry``), and a ``READONLY`` reply on them starts a new discovery.
    """

    def __init__(
        self,
        service_name: str,
        sentinel_manager: Any,
        *args: Any,
        shared_connections: int = 1,
        max_in_flight: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            service_name,
            sentinel_manager,
            *args,
            shared_connections=shared_connections,
            max_in_flight=max_in_flight,
            **kwargs,
        )

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Return a checkout proxy at once (never blocks), as :meth:`greenpool.RedisMuxPool.get_connection`."""
        if self.is_master:
            self._watch()
        return _SentinelMuxConnection(self)

    def _stale(self, connection: Any) -> bool:
        if isinstance(connection, MuxConnection):
            return False  # the shared sockets are closed when the master changes
        return super()._stale(connection)

    def _demoted(self) -> None:
        """A shared socket's server answered as a replica: forget it and close the shared sockets."""
        self.discovery.invalidate(self.discovery.known_master)
        self.disconnect(inuse_connections=False)


def _watch_master(ref: Any, period: float) -> None:
    """While the pool lives and is busy (connections in use or awaited), refresh the master's address every
    ``period`` seconds; end once it has been idle for a period (the next checkout starts it again)."""
    while True:
        sleep(period)
        pool = ref()
        if pool is None:
            return
        core = pool._pool
        if not (core.in_use or core.waiting):
            pool._watcher = None
            return
        pool.discovery.refresh_master_soon()
        del pool, core


def _on_master_change(ref: Any, address: Address) -> None:
    """The sentinels named a new master: close the idle connections (they point at the old one), and those in
    use that point elsewhere. A failover pauses writes on the old master (``CLIENT PAUSE WRITE``), so a command
    in flight there would otherwise hold its connection until ``socket_timeout`` while the pool's other
    callers wait; closed, it fails with ``ConnectionError`` at once, which redis-py's client retries (per its
    ``retry``) on the new master."""
    pool = ref()
    if pool is None:
        return
    pool.disconnect(inuse_connections=False)
    for connection in pool._pool.in_use_connections():
        if connection.host is not None and (connection.host, connection.port) != tuple(address):
            connection.disconnect()
