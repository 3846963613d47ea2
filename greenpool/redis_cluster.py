"""``greenpool.redis_cluster``: a ``redis.cluster.RedisCluster`` whose every node uses a greenpool pool.

``redis_cluster(startup_nodes, max_connections=10, timeout=1.0)`` builds redis-py's cluster client with
:class:`ClusterGeventPool` (a :class:`greenpool.GeventPool`) as every node's pool, or, with
``multiplexed=True``, :class:`ClusterMuxPool` (a :class:`greenpool.RedisMuxPool`), and checks that every node
really got one (:func:`check_cluster_pools`). ``max_connections`` and ``timeout`` apply per node.

Why not ``RedisCluster(..., connection_pool_class=GeventPool)`` alone:

- A pool's checkout timeout is not a node failure. redis-py's cluster code treats every ``ConnectionError`` as
  one (it closes the node's connections and refreshes the topology), except ``MaxConnectionsError`` (redis-py
  #3684). The pools here raise :class:`ClusterPoolTimeout`, both greenpool's ``RedisPoolTimeout`` and redis-py's
  ``MaxConnectionsError``, so a busy node stays a healthy node.
- redis-py refreshes the topology under a lock while other greenlets wait for that lock holding a node's
  connection (after ``CLUSTERDOWN``); the refresh takes a connection of its own rather than wait for theirs.
- Settings redis-py's cluster does not pass on to node pools (``min_connections``, ``check_after_idle``, the
  multiplexer's ``shared_connections`` and ``max_in_flight``, ...) are baked into a pool class made for this
  cluster.
- Cluster pipelines take one connection per node, in the order of their commands, and hold them while they
  wait for the next: with a bounded pool per node, two pipelines can each hold what the other waits for
  until the checkout times out. :class:`ClusterGeventPool` hands out checkouts that take their connections
  on first use, all of a greenlet's at once in one global order (no cycle, so no such wait); with
  ``multiplexed=True`` a pipeline's plain commands go over the nodes' shared sockets and take no connection.
  ``ASKING`` (during a slot migration) takes a dedicated connection on the multiplexer and its command follows
  on the same one, so no other greenlet's command can consume it.

Depends on ``greenpool.redis`` and ``greenpool.redis_mux`` and redis-py's ``redis.cluster``.
"""

from __future__ import annotations

import inspect
import sys
import threading
import types
import weakref
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import redis

if int(redis.__version__.split(".")[0]) < 8:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"greenpool.redis_cluster needs redis-py 8 or newer (found {redis.__version__}): pip install 'redis>=8'"
    )

from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import MaxConnectionsError

from greenpool import _green
from greenpool._validate import check_int
from greenpool.redis import GeventPool, RedisPoolTimeout
from greenpool.redis import _address as _address_of
from greenpool.redis_mux import RedisMuxPool

__all__ = [
    "ClusterGeventPool",
    "ClusterMuxPool",
    "ClusterPoolTimeout",
    "check_cluster_pools",
    "cluster_stats",
    "redis_cluster",
]


class ClusterPoolTimeout(RedisPoolTimeout, MaxConnectionsError):
    """A node's pool had no connection within ``timeout`` (also redis-py's ``MaxConnectionsError``, which its
    cluster code does not take for a node failure: the node keeps its connections and the topology is not
    refreshed). The caller gets it as it is, as a ``redis.exceptions.ConnectionError``."""


class _Checkout:
    """What :meth:`ClusterGeventPool.get_connection` returns: a connection taken from the pool on first use.

    redis-py's cluster pipelines call ``get_connection()`` on every node they need before they write to any
    of them. Taking the connections there, one node after another in the order of the commands, would
    hold one node's connection while waiting for the next (hold-and-wait: two pipelines can each hold what
    the other waits for). Instead, the first use of any of a greenlet's checkouts takes the connections of
    all of that greenlet's pending checkouts of the cluster at once, in one global order (by node address),
    so no two greenlets ever wait for each other in a cycle.
    """

    __slots__ = ("_conn", "_glet", "_pool")

    def __init__(self, pool: ClusterGeventPool, glet: Any) -> None:
        self._pool = pool
        self._glet = glet
        self._conn: Any = None

    def _real(self) -> Any:
        conn = self._conn
        if conn is None:
            self._pool._take_pending(self._glet)
            conn = self._conn
        return conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    # Read by redis-py without sending anything (errors, metrics): served without taking a connection.
    host = property(lambda self: self._pool.connection_kwargs.get("host", "localhost"))
    port = property(lambda self: self._pool.connection_kwargs.get("port", 6379))
    db = property(lambda self: self._pool.connection_kwargs.get("db", 0))

    def disconnect(self, *args: Any) -> None:
        if self._conn is not None:
            self._conn.disconnect(*args)

    def should_reconnect(self) -> bool:
        # Read by redis-py's client in a ``finally`` clause, also after taking the connection failed.
        return self._conn is not None and bool(self._conn.should_reconnect())

    def __repr__(self) -> str:
        state = "taken" if self._conn is not None else "pending"
        return f"<{type(self).__name__} {state} of {self._pool._core_settings['name']!r}>"


class ClusterGeventPool(GeventPool):
    """A :class:`greenpool.GeventPool` for one node of a cluster.

    Its checkout timeout raises :class:`ClusterPoolTimeout`; :meth:`get_connection` never blocks and returns a
    checkout that takes its connection on first use, together with the greenlet's other pending checkouts of
    the cluster, in one global order (see :class:`_Checkout`). The settings of :func:`redis_cluster` are baked
    into a subclass made per cluster (``_defaults``, and ``_pending``, the cluster's pending checkouts by
    greenlet), since redis-py passes node pools only the arguments it knows.
    """

    _defaults: ClassVar[Dict[str, Any]] = {}
    _pending: Any = None
    #: A weak reference to the cluster's ``NodesManager``, set by :func:`redis_cluster`.
    _nodes_manager: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**self._defaults, **kwargs})
        if type(self)._pending is None:
            type(self)._pending = weakref.WeakKeyDictionary()
        self._order = str(_address_of(self.connection_kwargs))
        self._overflow: Set[int] = set()

    def _refreshing_here(self) -> bool:
        """Whether this greenlet runs redis-py's topology refresh (``NodesManager.initialize``) now."""
        ref = type(self)._nodes_manager
        manager = ref() if ref is not None else None
        return manager is not None and getattr(manager, "_initializing_thread_id", None) == threading.get_ident()

    def _take(self) -> Any:
        """A connection for a checkout: from the pool, or, for the topology refresh, a connection of its own.

        redis-py refreshes the topology holding its initialization lock, while greenlets that hold a node's
        connection wait for that lock (after ``CLUSTERDOWN``, say): were the refresh to wait for one of those
        connections, both would wait until the checkout timed out. So the refresh (one greenlet at a time, one
        node at a time) opens a connection beyond ``max_connections`` and closes it when done.
        """
        if self._refreshing_here():
            conn = self._new_connection()
            self._overflow.add(id(conn))
            return conn
        return GeventPool.get_connection(self)

    def reset(self) -> None:
        super().reset()
        self._pool.timeout_error = ClusterPoolTimeout

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Return a checkout at once (never blocks); its first use blocks as :meth:`GeventPool.get_connection`
        does, up to ``timeout`` (then :class:`ClusterPoolTimeout`), for it and the greenlet's other pending
        checkouts of this cluster."""
        glet = _green.getcurrent()
        checkout = _Checkout(self, glet)
        self._pending.setdefault(glet, []).append(checkout)
        return checkout

    def _take_pending(self, glet: Any) -> None:
        pending = self._pending.pop(glet, [])
        pending.sort(key=lambda c: c._pool._order)
        for i, checkout in enumerate(pending):
            try:
                checkout._conn = checkout._pool._take()
            except BaseException:
                rest = [c for c in pending[i + 1 :] if c._conn is None]
                if rest:
                    self._pending.setdefault(glet, []).extend(rest)
                raise

    def release(self, connection: Any) -> None:
        """End a checkout: its connection (if it took one) goes back to its pool; never blocks."""
        if not isinstance(connection, _Checkout):
            super().release(connection)
            return
        conn, connection._conn = connection._conn, None
        if conn is not None:
            pool = connection._pool
            if id(conn) in pool._overflow:
                pool._overflow.discard(id(conn))
                conn.disconnect()
            else:
                GeventPool.release(pool, conn)
            return
        pending = self._pending.get(connection._glet)
        if pending is not None:
            try:
                pending.remove(connection)
            except ValueError:
                pass
            if not pending:
                self._pending.pop(connection._glet, None)


class ClusterMuxPool(RedisMuxPool):
    """A :class:`greenpool.RedisMuxPool` for one node of a cluster (see :class:`ClusterGeventPool`)."""

    _defaults: ClassVar[Dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**self._defaults, **kwargs})

    def reset(self) -> None:
        super().reset()
        self._pool.timeout_error = ClusterPoolTimeout


def _node_pool_class(
    multiplexed: bool,
    shared_connections: int,
    max_in_flight: int,
    connect_timeout: Optional[float],
    pool_kwargs: Dict[str, Any],
    max_connections: int,
    timeout: Optional[float],
) -> Any:
    """The node pool class, with the settings baked in; raises on a bad setting here, not on the first node
    redis-py creates."""
    settings = dict(pool_kwargs)
    if connect_timeout is not None:
        settings["connect_timeout"] = connect_timeout
    if multiplexed:
        settings["shared_connections"] = shared_connections
        settings["max_in_flight"] = max_in_flight
    base: Type[GeventPool] = ClusterMuxPool if multiplexed else ClusterGeventPool
    pool_class: Any = type(base.__name__, (base,), {"_defaults": settings, "__module__": __name__})
    pool_class(max_connections=max_connections, timeout=timeout).disconnect()
    return pool_class


def _node(value: Any) -> ClusterNode:
    if isinstance(value, ClusterNode):
        return value
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and port.isdigit():
            return ClusterNode(host, int(port))  # type: ignore[no-untyped-call]
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return ClusterNode(value[0], value[1])  # type: ignore[no-untyped-call]
    raise ValueError(f"startup_nodes: expected 'host:port', (host, port) or a ClusterNode, got {value!r}")


def redis_cluster(
    startup_nodes: Optional[Sequence[Union[str, Tuple[str, int], ClusterNode]]] = None,
    *,
    url: Optional[str] = None,
    max_connections: int = 10,
    timeout: Optional[float] = 1.0,
    multiplexed: bool = False,
    shared_connections: int = 1,
    max_in_flight: int = 1024,
    connect_timeout: Optional[float] = None,
    min_connections: int = 0,
    check_after_idle: Optional[float] = 1.0,
    pool_kwargs: Optional[Dict[str, Any]] = None,
    **cluster_kwargs: Any,
) -> RedisCluster:
    """Build a ``redis.cluster.RedisCluster`` whose every node uses a greenpool pool, and check that it does.

    - ``startup_nodes`` (``"host:port"``, ``(host, port)`` or ``ClusterNode``) or ``url`` (``redis://host:port``):
      where to learn the topology (one is enough).
    - ``max_connections``, ``timeout``: each node pool's limit of open (dedicated) connections and checkout
      wait; a timeout raises :class:`ClusterPoolTimeout` (not a node failure for redis-py).
    - ``multiplexed``: use :class:`ClusterMuxPool` (plain commands and pipelines over ``shared_connections``
      auto-pipelined sockets per node, at most ``max_in_flight`` commands in flight).
    - ``connect_timeout``: bound on a whole connect (redis-py's ``socket_connect_timeout``); ``min_connections``,
      ``check_after_idle`` and ``pool_kwargs`` (any other :class:`GeventPool` keyword) go to every node pool.
    - ``cluster_kwargs``: ``RedisCluster``'s own (``socket_timeout``, ``password``, ``read_from_replicas``,
      ``retry``, ``decode_responses``, ...).

    Blocks while redis-py connects to a startup node and loads the topology (its ``socket_connect_timeout``).
    Raises what ``RedisCluster`` raises, ``ValueError``/``TypeError`` for bad arguments, and ``TypeError`` if a
    node did not get the pool (:func:`check_cluster_pools`).
    """
    if (startup_nodes is None) == (url is None):
        raise TypeError("redis_cluster() takes startup_nodes or url (one of them)")
    if "connection_pool_class" in cluster_kwargs:
        raise TypeError("redis_cluster() chooses the node pool class itself (multiplexed=True for RedisMuxPool)")
    check_int("max_connections", max_connections, minimum=1)  # per node: no "0 means redis-py's default" here
    pool_class = _node_pool_class(
        multiplexed,
        shared_connections,
        max_in_flight,
        connect_timeout,
        {"min_connections": min_connections, "check_after_idle": check_after_idle, **(pool_kwargs or {})},
        max_connections,
        timeout,
    )
    kwargs = dict(cluster_kwargs, connection_pool_class=pool_class, max_connections=max_connections, timeout=timeout)
    if url is not None:
        cluster = RedisCluster.from_url(url, **kwargs)
    else:
        nodes = [_node(node) for node in startup_nodes or ()]
        if not nodes:
            raise ValueError("startup_nodes must name at least one node")
        cluster = RedisCluster(startup_nodes=nodes, **kwargs)
    pool_class._nodes_manager = weakref.ref(cluster.nodes_manager)
    try:
        check_cluster_pools(cluster, pool_class)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _node_pools(cluster: RedisCluster) -> List[Tuple[str, Any]]:
    nodes = cluster.get_nodes()  # type: ignore[no-untyped-call]
    return [(node.name, getattr(node.redis_connection, "connection_pool", None)) for node in nodes]


def check_cluster_pools(cluster: RedisCluster, pool_class: Type[Any] = GeventPool) -> None:
    """Raise ``TypeError`` naming every node of ``cluster`` whose pool is not a ``pool_class``; never blocks."""
    wrong = [
        f"{name} ({type(pool).__name__})" for name, pool in _node_pools(cluster) if not isinstance(pool, pool_class)
    ]
    if wrong:
        raise TypeError(f"these cluster nodes do not use a {pool_class.__name__}: {', '.join(wrong)}")


def cluster_stats(cluster: RedisCluster) -> Dict[str, Any]:
    """Every node's pool stats (``get_stats()``) by node name, and ``total``: the numeric figures summed
    (percentiles: the largest). Never blocks."""
    nodes: Dict[str, Dict[str, Any]] = {}
    total: Dict[str, Union[int, float]] = {}
    for name, pool in _node_pools(cluster):
        if not hasattr(pool, "get_stats"):
            continue
        stats = pool.get_stats()
        nodes[name] = stats
        for key, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key.startswith("wait_p") or key.endswith("_max_ms"):
                total[key] = max(total.get(key, 0), value)
            else:
                total[key] = total.get(key, 0) + value
    return {"nodes": nodes, "total": total}


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`redis_cluster`. Importing ``greenpool.redis_cluster`` makes the module the
    package's attribute of that name, so ``greenpool.redis_cluster`` and ``from greenpool import redis_cluster``
    are this module whichever was imported first; calling it builds the client, and its other names
    (``cluster_stats``, ``ClusterGeventPool``, ...) stay reachable through it."""

    def __call__(self, *args: Any, **kwargs: Any) -> RedisCluster:
        return redis_cluster(*args, **kwargs)


__signature__ = inspect.signature(redis_cluster)
sys.modules[__name__].__class__ = _CallableModule
