"""The contenders the harness runs side by side, and the servers they talk to.

A *target* knows how to reach one server and which operation to run (:class:`RedisTarget`: ``ping``,
``get``, ``set``; :class:`TarantoolTarget`: ``replace``, ``select`` on the ``tester`` space). A *contender*
turns a target, a ``max_connections`` and a greenlet count into a :class:`stress.harness.Workload`:

- ``greenpool``: greenpool's pool (``greenpool.GeventPool`` / ``greenpool.TarantoolPool``), one client
  shared by every greenlet;
- ``redis-blocking`` / ``redis-blocking-gevent``: redis-py's ``BlockingConnectionPool`` with its default
  ``queue.LifoQueue`` / with ``gevent.queue.LifoQueue``;
- ``ceiling``: ``max_connections`` greenlets, each with a dedicated connection behind a "pool" that does
  nothing: what a zero-cost pool could reach;
- ``mux`` (Redis): ``greenpool.RedisMuxPool``, whose plain commands share one auto-pipelined socket (its
  checkouts never wait, so its wait figures are near zero);
- ``mux`` (Tarantool): one ``greenpool.TarantoolMux`` (``connections=1`` unless asked otherwise) shared
  by every greenlet, whatever ``max_connections`` says. It has no checkout, so it records no checkout
  waits (:attr:`Contender.has_checkout` is false); a request that times out (``MuxTimeout``) counts as a
  failed operation, like a failed checkout;
- ``asynctnt`` (Tarantool, by default only when asynctnt and uvloop are installed): one asynctnt connection
  on uvloop shared by as many coroutines as there are greenlets, whatever ``max_connections`` says, in a
  subprocess (:mod:`stress.asynctnt_worker`); no checkout either, a request timeout counts as failed, and
  its RSS figures are the subprocess's.

Every Redis contender runs the same code path (``redis.Redis`` command methods, with the pool's
``get_connection`` timed); only the pool differs. Connections opened are counted by a subclass of the
connection class. :meth:`Contender.measure` runs one contender once; a contender that turns out not to be
able to run raises :class:`ContenderUnavailable` from it. Depends on redis-py, tarantool-python (imported
lazily), gevent, the harness and :mod:`stress.asynctnt_worker` (standard library only).
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import unquote, urlparse

from greenpool.errors import PoolError, PoolTimeout

from . import asynctnt_worker
from .harness import CheckoutFailed, Progress, RunStats, Workload, clock, run_workload

__all__ = [
    "REDIS_CONTENDERS",
    "REDIS_OPS",
    "TARANTOOL_CONTENDERS",
    "TARANTOOL_OPS",
    "AsynctntTarantool",
    "Contender",
    "ContenderUnavailable",
    "MuxTarantool",
    "RedisTarget",
    "TarantoolTarget",
    "alternate",
    "redact_url",
]

REDIS_OPS = ("ping", "get", "set")
TARANTOOL_OPS = ("replace", "select")
#: How many distinct keys the get/set/replace/select operations touch (greenlet i uses key i % KEYS).
KEYS = 1000


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for reports, logs and JSON)."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


# ---------------------------------------------------------------------- targets


class RedisTarget:
    """A Redis server (from a ``redis://``, ``rediss://`` or ``unix://`` URL) and the operation to run."""

    kind = "redis"

    def __init__(self, url: str, op: str = "ping", value_size: int = 100) -> None:
        from redis.connection import Connection, parse_url

        kwargs: Dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        for key in ("max_connections", "timeout"):
            kwargs.pop(key, None)
        self.connection_class: Any = kwargs.pop("connection_class", Connection)
        self.connection_kwargs = kwargs
        self.url = url
        self.op = op
        self.value = b"x" * value_size
        self.keys = [f"greenpool:stress:{i}" for i in range(KEYS)]

    def admin(self) -> Any:
        """A plain client for setting up and for the server's version (closed by the caller)."""
        import redis

        pool = redis.ConnectionPool(connection_class=self.connection_class, **self.connection_kwargs)
        return redis.Redis(connection_pool=pool)

    def prepare_server(self) -> str:
        """Write the keys ``get`` reads; return the server's name and version."""
        client = self.admin()
        try:
            if self.op == "get":
                client.mset({key: self.value for key in self.keys})
            version = client.info("server").get("redis_version", "?")
        finally:
            client.connection_pool.disconnect()
        return f"redis-server {version}"

    def counting_class(self, counter: List[int]) -> Any:
        """A subclass of the connection class that counts the sockets it opens in ``counter[0]``."""
        base = self.connection_class

        def _connect(conn: Any) -> Any:
            counter[0] += 1
            return base._connect(conn)

        return type(f"Counted{base.__name__}", (base,), {"_connect": _connect})

    def op_for(self, client: Any, index: int) -> Callable[[], Any]:
        """The operation greenlet ``index`` runs through ``client`` (a ``redis.Redis``)."""
        key = self.keys[index % KEYS]
        if self.op == "get":
            return partial(client.get, key)
        if self.op == "set":
            return partial(client.set, key, self.value)
        return client.ping  # type: ignore[no-any-return]

    def describe(self) -> str:
        size = f" ({len(self.value)} B values)" if self.op != "ping" else ""
        return f"redis {self.op.upper()}{size}"


class TarantoolTarget:
    """A Tarantool server (from a ``tarantool://user:password@host:port`` URL) and the operation to run."""

    kind = "tarantool"

    def __init__(self, url: str, op: str = "replace", value_size: int = 1500) -> None:
        parts = urlparse(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 3301
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.op = op
        self.payload = "x" * value_size
        self.space = "tester"

    def connect(self, connect_now: bool = True) -> Any:
        import tarantool

        return tarantool.Connection(
            self.host, self.port, user=self.user, password=self.password, connect_now=connect_now
        )

    def prepare_server(self) -> str:
        """Write the tuples ``select`` reads; return the server's name and version."""
        conn = self.connect()
        try:
            if self.op == "select":
                for key in range(KEYS):
                    conn.replace(self.space, (key, self.payload))
            version = conn.eval("return box.info.version").data[0]
        finally:
            conn.close()
        return f"tarantool {version}"

    def action_for(self, index: int) -> Callable[[Any], Any]:
        """What greenlet ``index`` does with a ``tarantool.Connection``."""
        key = index % KEYS
        if self.op == "select":
            return lambda tnt: tnt.select(self.space, key)
        row = (key, self.payload)
        return lambda tnt: tnt.replace(self.space, row)

    def describe(self) -> str:
        return f"tarantool {self.op} ({len(self.payload)} B tuples)"


# ---------------------------------------------------------------------- contenders


class ContenderUnavailable(Exception):
    """Raised by :meth:`Contender.measure` when the contender cannot run after all (the message says why)."""


class Contender:
    """One way of sharing connections among greenlets; see the module docstring for the kinds."""

    #: Name used by ``--pools``, in tables and in JSON.
    name = ""
    #: One line for the help text.
    help = ""
    #: False for a contender without checkouts (its wait figures are not applicable and are reported as None).
    has_checkout = True

    @property
    def default(self) -> bool:
        """False for a contender that runs only when ``--pools`` names it."""
        return True

    def unavailable(self) -> Optional[str]:
        """Why this contender cannot run here (``None`` when it can)."""
        return None

    def workload(self, target: Any, max_connections: int, greenlets: int, timeout: float, stats: RunStats) -> Workload:
        """Build the pool(s) and one operation per worker greenlet; nothing connects yet."""
        raise NotImplementedError

    def measure(
        self,
        target: Any,
        max_connections: int,
        greenlets: int,
        timeout: float,
        duration: float,
        progress: Optional[Progress] = None,
        label: str = "",
    ) -> Dict[str, Any]:
        """Run this contender once and return the figures :func:`stress.harness.run_workload` returns.

        Every contender starts warm: ``max_connections`` operations (fewer with fewer greenlets) first run once
        at the same time, unmeasured, so that the connections are open before the window. Blocks for that, the
        spawn, ``duration`` seconds of measurement and the drain (at most ``timeout + 10`` seconds each). Raises
        :class:`ContenderUnavailable` when the contender turns out not to be able to run.
        """
        stats = RunStats()
        workload = self.workload(target, max_connections, greenlets, timeout, stats)
        warm = min(len(workload.ops), max_connections)
        return run_workload(
            workload, stats, duration, drain_timeout=timeout + 10.0, progress=progress, label=label, warm=warm
        )


def _import_error(module: str, attribute: str) -> Optional[str]:
    try:
        getattr(importlib.import_module(module), attribute)
    except Exception as exc:  # a module still being written may fail with anything
        return f"{module}.{attribute} is not available ({type(exc).__name__}: {exc})"
    return None


def _is_checkout_failure(exc: BaseException) -> bool:
    # redis-py's pools raise ConnectionError("No connection available."); greenpool's errors are PoolErrors.
    return isinstance(exc, PoolError) or str(exc).startswith("No connection available")


def _timed_checkout(pool: Any, stats: RunStats) -> None:
    """Make ``pool.get_connection`` record each checkout's wait, and raise CheckoutFailed when it fails."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    get = pool.get_connection
    record = stats.waits.append

    def get_connection(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            conn = get()
        except RedisConnectionError as exc:
            record(clock() - started)
            if _is_checkout_failure(exc):
                raise CheckoutFailed(str(exc)) from exc
            raise
        record(clock() - started)
        return conn

    pool.get_connection = get_connection


class _RedisPoolContender(Contender):
    def make_pool(self, target: RedisTarget, connection_class: Any, max_connections: int, timeout: float) -> Any:
        raise NotImplementedError

    def workload(
        self, target: RedisTarget, max_connections: int, greenlets: int, timeout: float, stats: RunStats
    ) -> Workload:
        import redis

        opened = [0]
        pool = self.make_pool(target, target.counting_class(opened), max_connections, timeout)
        _timed_checkout(pool, stats)
        client = redis.Redis(connection_pool=pool)
        ops = [target.op_for(client, i) for i in range(greenlets)]
        return Workload(ops, pool.disconnect, lambda: opened[0])


class GreenpoolRedis(_RedisPoolContender):
    name = "greenpool"
    help = "greenpool.GeventPool (fair FIFO hand-off)"
    #: Where the pool class lives.
    module, class_name = "greenpool.redis", "GeventPool"

    def unavailable(self) -> Optional[str]:
        return _import_error(self.module, self.class_name)

    def make_pool(self, target: RedisTarget, connection_class: Any, max_connections: int, timeout: float) -> Any:
        pool_class = getattr(importlib.import_module(self.module), self.class_name)
        return pool_class(
            max_connections=max_connections,
            timeout=timeout,
            connection_class=connection_class,
            **target.connection_kwargs,
        )


class GreenpoolRedisMux(GreenpoolRedis):
    name = "mux"
    help = "greenpool.RedisMuxPool, one auto-pipelined socket shared by every greenlet"
    module, class_name = "greenpool.redis_mux", "RedisMuxPool"


class RedisBlocking(_RedisPoolContender):
    name = "redis-blocking"
    help = "redis.BlockingConnectionPool with its default queue.LifoQueue"

    def queue_class(self) -> Any:
        """The ``queue_class`` to pass, or ``None`` for redis-py's default."""
        return None

    def make_pool(self, target: RedisTarget, connection_class: Any, max_connections: int, timeout: float) -> Any:
        from redis import BlockingConnectionPool

        extra: Dict[str, Any] = {}
        queue_class = self.queue_class()
        if queue_class is not None:
            extra["queue_class"] = queue_class
        return BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=max_connections,
            timeout=timeout,
            connection_class=connection_class,
            **extra,
            **target.connection_kwargs,
        )


class RedisBlockingGevent(RedisBlocking):
    name = "redis-blocking-gevent"
    help = "redis.BlockingConnectionPool with queue_class=gevent.queue.LifoQueue"

    def queue_class(self) -> Any:
        import gevent.queue

        return gevent.queue.LifoQueue


def _dedicated_pool_class() -> Any:
    from redis.connection import ConnectionPool

    class DedicatedPool(ConnectionPool):
        """A "pool" of one connection that hands it out without any bookkeeping (the zero-cost pool)."""

        def __init__(self, connection_class: Any, **connection_kwargs: Any) -> None:
            super().__init__(connection_class=connection_class, max_connections=1, **connection_kwargs)
            self.connection = connection_class(**self.connection_kwargs)

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            return self.connection

        def release(self, connection: Any) -> None:
            pass

        def disconnect(self, inuse_connections: bool = True) -> None:
            self.connection.disconnect()

    return DedicatedPool


class RedisCeiling(Contender):
    name = "ceiling"
    help = "max_connections greenlets, each with a dedicated connection (no pool)"

    def workload(
        self, target: RedisTarget, max_connections: int, greenlets: int, timeout: float, stats: RunStats
    ) -> Workload:
        import redis

        opened = [0]
        dedicated = _dedicated_pool_class()
        connection_class = target.counting_class(opened)
        pools = [dedicated(connection_class, **target.connection_kwargs) for _ in range(max_connections)]
        ops = []
        for index, pool in enumerate(pools):
            _timed_checkout(pool, stats)
            ops.append(target.op_for(redis.Redis(connection_pool=pool), index))

        def close() -> None:
            for pool in pools:
                pool.disconnect()

        return Workload(ops, close, lambda: opened[0])


class GreenpoolTarantool(Contender):
    name = "greenpool"
    help = "greenpool.TarantoolPool (fair FIFO hand-off)"

    def unavailable(self) -> Optional[str]:
        return _import_error("greenpool.tarantool", "TarantoolPool")

    def workload(
        self, target: TarantoolTarget, max_connections: int, greenlets: int, timeout: float, stats: RunStats
    ) -> Workload:
        from greenpool.tarantool import TarantoolPool

        pool = TarantoolPool(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            max_connections=max_connections,
            timeout=timeout,
        )
        record = stats.waits.append

        def make_op(action: Callable[[Any], Any]) -> Callable[[], None]:
            def op() -> None:
                started = clock()
                entered = False
                try:
                    with pool.connection() as tnt:
                        entered = True
                        record(clock() - started)
                        action(tnt)
                except PoolTimeout as exc:
                    if entered:
                        raise
                    record(clock() - started)
                    raise CheckoutFailed(str(exc)) from exc

            return op

        def opened() -> Optional[int]:
            get_stats = getattr(pool, "get_stats", None)
            if get_stats is None:
                return None
            return int(get_stats().get("connections_num", 0))

        ops = [make_op(target.action_for(i)) for i in range(greenlets)]
        return Workload(ops, pool.close, opened)


class TarantoolCeiling(Contender):
    name = "ceiling"
    help = "max_connections greenlets, each with a dedicated tarantool.Connection (no pool)"

    def workload(
        self, target: TarantoolTarget, max_connections: int, greenlets: int, timeout: float, stats: RunStats
    ) -> Workload:
        conns = [target.connect(connect_now=False) for _ in range(max_connections)]
        opened = [0]
        record = stats.waits.append

        def make_op(conn: Any, action: Callable[[Any], Any]) -> Callable[[], None]:
            def op() -> None:
                started = clock()
                if conn.is_closed():
                    opened[0] += 1
                    conn.connect()
                record(clock() - started)
                action(conn)

            return op

        def close() -> None:
            for conn in conns:
                conn.close()

        ops = [make_op(conn, target.action_for(i)) for i, conn in enumerate(conns)]
        return Workload(ops, close, lambda: opened[0])


class MuxTarantool(Contender):
    name = "mux"
    help = "one greenpool.TarantoolMux shared by every greenlet (no checkout; --shared-connections sockets)"
    has_checkout = False

    def __init__(self, connections: int = 1) -> None:
        self.connections = connections

    def unavailable(self) -> Optional[str]:
        return _import_error("greenpool.tarantool_mux", "TarantoolMux")

    def workload(
        self, target: TarantoolTarget, max_connections: int, greenlets: int, timeout: float, stats: RunStats
    ) -> Workload:
        from greenpool.tarantool_mux import MuxTimeout, TarantoolMux

        mux = TarantoolMux(
            target.host,
            target.port,
            user=target.user,
            password=target.password,
            shared_connections=self.connections,
            socket_timeout=timeout,
        )

        def make_op(action: Callable[[Any], Any]) -> Callable[[], None]:
            def op() -> None:
                try:
                    action(mux)
                except MuxTimeout as exc:
                    raise CheckoutFailed(str(exc)) from exc

            return op

        ops = [make_op(target.action_for(i)) for i in range(greenlets)]
        return Workload(ops, mux.close, lambda: int(mux.get_stats()["mux_connects"]))


class AsynctntTarantool(Contender):
    name = "asynctnt"
    help = (
        "one asynctnt connection on uvloop, one coroutine per greenlet, in a subprocess "
        f"(a default only when installed: {asynctnt_worker.INSTALL})"
    )
    has_checkout = False

    @property
    def default(self) -> bool:
        return asynctnt_worker.missing() is None

    def unavailable(self) -> Optional[str]:
        return asynctnt_worker.missing()

    def measure(
        self,
        target: TarantoolTarget,
        max_connections: int,
        greenlets: int,
        timeout: float,
        duration: float,
        progress: Optional[Progress] = None,
        label: str = "",
    ) -> Dict[str, Any]:
        """Run ``greenlets`` coroutines on one asynctnt connection in a subprocess, with the target's operation
        and keys (coroutine ``i`` uses key ``i % KEYS``), without a request timeout: asynctnt's own halves its
        throughput (measured: 5000 coroutines, replace of 1.5 KB, 81k/s without, 35k/s with ``timeout=1``), and
        the contender shows asynctnt at its fastest. ``timeout`` is unused.

        Blocks for the subprocess (``duration`` plus its start, connect and drain). Raises
        :class:`ContenderUnavailable` when asynctnt or uvloop is missing or the subprocess fails.
        """
        spec = asynctnt_worker.Spec(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            concurrency=greenlets,
            seconds=duration,
            op=target.op,
            space=target.space,
            value_size=len(target.payload),
            timeout=None,
            keyspace=KEYS,
            key_stride=1,
            key_step=0,
        )
        if progress is not None:
            progress.show(f"{label}  {duration:.1f} s in a subprocess")
        try:
            result = asynctnt_worker.run(spec)
        except asynctnt_worker.WorkerFailed as exc:
            raise ContenderUnavailable(str(exc)) from exc
        finally:
            if progress is not None:
                progress.done()
        figures: Dict[str, Any] = {"greenlets": result["concurrency"]}
        for key in ("elapsed_s", "ok", "ok_per_s", "failed", "errors", "success_pct"):
            figures[key] = result[key]
        figures["checkouts"] = None
        figures.update(dict.fromkeys(("wait_p50_ms", "wait_p99_ms", "wait_max_ms")))
        figures["connections_opened"] = 1
        for key in ("rss_before_mb", "rss_peak_mb", "rss_growth_mb", "cpu_us_per_op", "first_error"):
            figures[key] = result[key]
        return figures


REDIS_CONTENDERS: Dict[str, Contender] = {
    c.name: c for c in (GreenpoolRedis(), RedisBlocking(), RedisBlockingGevent(), RedisCeiling(), GreenpoolRedisMux())
}
TARANTOOL_CONTENDERS: Dict[str, Contender] = {
    c.name: c for c in (GreenpoolTarantool(), MuxTarantool(), TarantoolCeiling(), AsynctntTarantool())
}


def alternate(names: List[str], round_index: int) -> List[str]:
    """The order of the contenders in round ``round_index``: as given in even rounds, reversed in odd ones."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))
