"""The data and the contenders of the overload scenario (``python -m stress overload``).

The data: :class:`RedisData` (``KEYS`` keys, each with its own value, so that a reply meant for another
request shows as a mismatch) and :class:`TarantoolData` (as many tuples in the ``tester`` space, keys from
``TARANTOOL_KEY_BASE``, each with its own payload). Their ``command_for(handle)`` returns the
``command(index) -> bool`` of a :class:`stress.openloop.Client`: one ``get``/``set``/``ping`` through a
``redis.Redis`` (one checkout per command), or one ``select``/``replace`` through a pool's one-call helper or
a mux, and whether the reply is the expected one.

The contenders, each a :class:`OverloadContender` that builds a ``Client``:

- ``greenpool-<policy>``: ``GeventPool`` / ``TarantoolPool`` with ``queue_policy=<policy>``, one per policy
  the installed greenpool accepts (found at run time: :func:`queue_policies`). A greenpool without
  ``queue_policy`` has one contender, ``greenpool-fifo``: its pool, strict FIFO, built without the argument.
  The first is the default contender (the pool's default policy): the knee is found with it;
- ``greenpool-deadline``: the same pool with its default policy, each request inside
  ``greenpool.deadline(seconds)`` instead of ``gevent.Timeout(seconds)`` (only where the core offers it);
- Redis: ``redis-blocking`` / ``redis-blocking-gevent`` (redis-py's ``BlockingConnectionPool`` with its
  default queue / with ``gevent.queue.LifoQueue``, built as :mod:`stress.contenders` builds them) and ``mux``
  (``RedisMuxPool``);
- Tarantool: ``lifo-queue`` (tarantool-python connections behind a ``gevent.queue.LifoQueue``, the pool
  people write by hand, which barges as redis-py's do) and ``mux`` (one ``TarantoolMux``).

Depends on gevent, redis-py and tarantool-python (imported lazily), greenpool, :mod:`stress.contenders`
and :mod:`stress.openloop`.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import gevent

from .contenders import (
    KEYS,
    GreenpoolRedis,
    GreenpoolRedisMux,
    RedisBlocking,
    RedisBlockingGevent,
    RedisTarget,
    TarantoolTarget,
)
from .openloop import Client

__all__ = [
    "BASELINES",
    "KNOWN_POLICIES",
    "STATIC_NAMES",
    "OverloadContender",
    "RedisData",
    "SeedPolicy",
    "TarantoolData",
    "contenders_for",
    "greenpool_deadline",
    "queue_policies",
    "valid_name",
]

#: Queue policies tried on a pool class that takes ``queue_policy`` (plus its default and the core's list).
KNOWN_POLICIES = ("fifo", "adaptive")
#: Tarantool keys of the overload data start here (clear of the keys the closed-loop scenarios write).
TARANTOOL_KEY_BASE = 100_000
#: The barging pools greenpool is compared with, per server.
BASELINES = {"redis": ("redis-blocking", "redis-blocking-gevent"), "tarantool": ("lifo-queue",)}
#: Contender names ``--pools`` accepts before anything is imported (``greenpool-<policy>`` for any policy too).
_GREENPOOL_NAMES = ("greenpool-fifo", "greenpool-adaptive", "greenpool-deadline")
STATIC_NAMES = {
    "redis": (*_GREENPOOL_NAMES, "redis-blocking", "redis-blocking-gevent", "mux"),
    "tarantool": (*_GREENPOOL_NAMES, "lifo-queue", "mux"),
}
_POLICY_NAME = re.compile(r"^greenpool-[a-z][a-z0-9_]*$")


def valid_name(kind: str, name: str) -> bool:
    """Whether ``--pools`` may name ``name`` for ``kind`` (``redis`` or ``tarantool``)."""
    return name in STATIC_NAMES[kind] or bool(_POLICY_NAME.match(name))


# ---------------------------------------------------------------------- data


class RedisData(RedisTarget):
    """A Redis server and the request's command, on ``KEYS`` keys that each hold their own value."""

    def __init__(self, url: str, op: str = "get", value_size: int = 100) -> None:
        super().__init__(url, op, value_size)
        self.keys = [f"greenpool:overload:{i}" for i in range(KEYS)]
        self.values = [f"{i}:".encode().ljust(value_size, b"x") for i in range(KEYS)]

    def prepare_server(self) -> str:
        """Write the keys ``get`` reads; return the server's name and version."""
        client = self.admin()
        try:
            if self.op == "get":
                client.mset(dict(zip(self.keys, self.values)))
            version = client.info("server").get("redis_version", "?")
        finally:
            client.connection_pool.disconnect()
        return f"redis-server {version}"

    def command_for(self, client: Any) -> Callable[[int], bool]:
        """``command(index)``: one command through ``client`` (a ``redis.Redis``) on key ``index % KEYS``."""
        keys, values = self.keys, self.values
        if self.op == "get":
            get = client.get

            def command(index: int) -> bool:
                slot = index % KEYS
                return bool(get(keys[slot]) == values[slot])

        elif self.op == "set":
            put = client.set

            def command(index: int) -> bool:
                slot = index % KEYS
                return put(keys[slot], values[slot]) is True

        else:
            ping = client.ping

            def command(index: int) -> bool:
                return ping() is True

        return command

    def describe(self) -> str:
        size = f" ({len(self.values[0])} B values)" if self.op != "ping" else ""
        return f"redis {self.op.upper()}{size}"


class TarantoolData(TarantoolTarget):
    """A Tarantool server and the request's command, on ``KEYS`` tuples that each hold their own payload."""

    def __init__(self, url: str, op: str = "select", value_size: int = 1500) -> None:
        super().__init__(url, op, value_size)
        self.rows = [(TARANTOOL_KEY_BASE + i, f"{TARANTOOL_KEY_BASE + i}:".ljust(value_size, "x")) for i in range(KEYS)]

    def prepare_server(self) -> str:
        """Write the tuples ``select`` reads; return the server's name and version."""
        conn = self.connect()
        try:
            if self.op == "select":
                for row in self.rows:
                    conn.replace(self.space, row)
            version = conn.eval("return box.info.version").data[0]
        finally:
            conn.close()
        return f"tarantool {version}"

    def command_for(self, handle: Any) -> Callable[[int], bool]:
        """``command(index)``: one request through ``handle`` (a pool's one-call helpers, a mux, anything with
        ``select``/``replace``) on tuple ``index % KEYS``."""
        rows, space = self.rows, self.space
        if self.op == "select":
            select = handle.select

            def command(index: int) -> bool:
                key, payload = rows[index % KEYS]
                data = select(space, key).data
                return len(data) == 1 and data[0][0] == key and data[0][1] == payload

        else:
            replace = handle.replace

            def command(index: int) -> bool:
                key, payload = rows[index % KEYS]
                data = replace(space, (key, payload)).data
                return len(data) == 1 and data[0][0] == key and data[0][1] == payload

        return command

    def describe(self) -> str:
        return f"tarantool {self.op} ({len(self.payload)} B tuples)"


# ---------------------------------------------------------------------- what the core offers


def greenpool_deadline() -> Tuple[Optional[Callable[[float], Any]], Optional[str]]:
    """``(greenpool.deadline, None)`` where the core offers it, else ``(None, why not)``."""
    try:
        import greenpool

        found = getattr(greenpool, "deadline", None)
    except Exception as exc:  # a core being rewritten may fail with anything
        return None, f"greenpool.deadline could not be looked up ({type(exc).__name__}: {exc})"
    if found is None:
        return None, "this greenpool has no greenpool.deadline()"
    if not callable(found):
        return None, f"greenpool.deadline is not callable ({found!r})"
    return found, None


def _pool_class(kind: str) -> Any:
    module, name = ("greenpool.redis", "GeventPool") if kind == "redis" else ("greenpool.tarantool", "TarantoolPool")
    return getattr(importlib.import_module(module), name)


def _accepts(kind: str, pool_class: Any, policy: str) -> bool:
    """Whether ``pool_class`` takes ``queue_policy=policy``: built without connecting, then closed."""
    try:
        if kind == "redis":
            pool = pool_class(max_connections=1, queue_policy=policy)
        else:
            pool = pool_class("127.0.0.1", 1, max_connections=1, queue_policy=policy)
    except (TypeError, ValueError):
        return False
    try:
        # GeventPool passes unknown keywords on to the connections: taken there, the pool ignored it.
        return "queue_policy" not in (getattr(pool, "connection_kwargs", None) or {})
    finally:
        if kind == "redis":
            pool.disconnect()
        else:
            pool.close()


def queue_policies(kind: str) -> Tuple[List[str], Optional[str]]:
    """The queue policies the installed greenpool's pool for ``kind`` accepts, default first, and the default
    (``([], None)`` when the pool takes no ``queue_policy``).

    Candidates: the default in the constructor's signature, :data:`KNOWN_POLICIES` and the core's
    ``greenpool.pool.QUEUE_POLICIES`` if it has one; each is kept when a pool built with it (without
    connecting) takes it. Never blocks.
    """
    pool_class = _pool_class(kind)
    default: Optional[str] = None
    try:
        parameter = inspect.signature(pool_class).parameters.get("queue_policy")
    except (TypeError, ValueError):
        parameter = None
    if parameter is not None and isinstance(parameter.default, str):
        default = parameter.default
    candidates: List[str] = [default] if default else []
    candidates += list(KNOWN_POLICIES)
    try:
        core = importlib.import_module("greenpool.pool")
        candidates += [p for p in getattr(core, "QUEUE_POLICIES", ()) if isinstance(p, str)]
    except Exception:  # a core being rewritten may fail with anything
        pass
    accepted = [p for p in dict.fromkeys(candidates) if _accepts(kind, pool_class, p)]
    if not accepted:
        return [], None
    if default not in accepted:
        default = accepted[0]
    return accepted, default


# ---------------------------------------------------------------------- contenders


class OverloadContender:
    """One way of serving the requests; see the module docstring for the kinds."""

    #: Name used by ``--pools``, in tables and in JSON.
    name = ""
    #: One line for the help text and the JSON.
    help = ""
    #: The greenpool queue policy (``None`` for the others).
    policy: Optional[str] = None
    #: What each request runs in: ``gevent.Timeout`` or ``greenpool.deadline``.
    deadline_name = "gevent.Timeout"

    def unavailable(self) -> Optional[str]:
        """Why this contender cannot run here (``None`` when it can)."""
        return None

    def deadline(self) -> Callable[[float], Any]:
        return gevent.Timeout  # type: ignore[no-any-return]

    def client(self, data: Any, max_connections: int, timeout: float) -> Client:
        """Build the pool and its :class:`Client`; nothing connects yet."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "help": self.help, "policy": self.policy, "deadline": self.deadline_name}


class _RedisContender(OverloadContender):
    def make_pool(self, data: RedisData, connection_class: Any, max_connections: int, timeout: float) -> Any:
        raise NotImplementedError

    def client(self, data: RedisData, max_connections: int, timeout: float) -> Client:
        import redis

        opened = [0]
        pool = self.make_pool(data, data.counting_class(opened), max_connections, timeout)
        command = data.command_for(redis.Redis(connection_pool=pool))
        return Client(command, self.deadline(), lambda: opened[0], pool.disconnect)


class _GreenpoolPolicy(OverloadContender):
    """greenpool's pool with one queue policy (``policy=None``: built without ``queue_policy``), or, with
    ``use_deadline``, with its default policy and every request inside ``greenpool.deadline()``."""

    #: The pool class, for the help text.
    pool_name = ""

    def __init__(self, label: str, policy: Optional[str], use_deadline: bool = False, default: bool = False) -> None:
        self.policy = label
        self._policy = policy
        self._use_deadline = use_deadline
        if use_deadline:
            self.name = "greenpool-deadline"
            self.deadline_name = "greenpool.deadline"
            self.help = f"{self.pool_name} (its default policy, {label}), requests inside greenpool.deadline()"
        else:
            self.name = f"greenpool-{label}"
            self.help = f"{self.pool_name}, queue_policy={label!r}" if policy else f"{self.pool_name} (strict FIFO)"
            if default:
                self.help += " (the default)"

    def unavailable(self) -> Optional[str]:
        return greenpool_deadline()[1] if self._use_deadline else None

    def deadline(self) -> Callable[[float], Any]:
        if not self._use_deadline:
            return gevent.Timeout  # type: ignore[no-any-return]
        found, why = greenpool_deadline()
        if found is None:
            raise RuntimeError(why)
        return found

    def _extra(self) -> Dict[str, Any]:
        return {} if self._policy is None else {"queue_policy": self._policy}


class GreenpoolRedisPolicy(_GreenpoolPolicy, _RedisContender):
    pool_name = "GeventPool"

    def make_pool(self, data: RedisData, connection_class: Any, max_connections: int, timeout: float) -> Any:
        return _pool_class("redis")(
            max_connections=max_connections,
            timeout=timeout,
            connection_class=connection_class,
            **self._extra(),
            **data.connection_kwargs,
        )


class SeedPolicy(GreenpoolRedis):
    """The closed-loop harness's ``greenpool`` contender (:mod:`stress.contenders`) with one queue policy, for
    the seed scenario per policy."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.name = f"greenpool-{policy}"
        self.help = f"GeventPool, queue_policy={policy!r}"

    def make_pool(self, target: RedisTarget, connection_class: Any, max_connections: int, timeout: float) -> Any:
        return _pool_class("redis")(
            max_connections=max_connections,
            timeout=timeout,
            connection_class=connection_class,
            queue_policy=self.policy,
            **target.connection_kwargs,
        )


class _Wrapped(_RedisContender):
    """A closed-loop contender's pool (:mod:`stress.contenders`) in the overload scenario."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.help = inner.help

    def unavailable(self) -> Optional[str]:
        return self.inner.unavailable()  # type: ignore[no-any-return]

    def make_pool(self, data: RedisData, connection_class: Any, max_connections: int, timeout: float) -> Any:
        return self.inner.make_pool(data, connection_class, max_connections, timeout)


class GreenpoolTarantoolPolicy(_GreenpoolPolicy):
    pool_name = "TarantoolPool"

    def client(self, data: TarantoolData, max_connections: int, timeout: float) -> Client:
        pool = _pool_class("tarantool")(
            data.host,
            data.port,
            data.user,
            data.password,
            max_connections=max_connections,
            timeout=timeout,
            **self._extra(),
        )

        def opened() -> Optional[int]:
            return int(pool.get_stats().get("connections_num", 0))

        return Client(data.command_for(pool), self.deadline(), opened, pool.close)


class TarantoolMuxContender(OverloadContender):
    name = "mux"
    help = "one greenpool.TarantoolMux shared by every request (no checkout)"

    def unavailable(self) -> Optional[str]:
        try:
            importlib.import_module("greenpool.tarantool_mux")
        except Exception as exc:
            return f"greenpool.tarantool_mux is not available ({type(exc).__name__}: {exc})"
        return None

    def client(self, data: TarantoolData, max_connections: int, timeout: float) -> Client:
        from greenpool.tarantool_mux import TarantoolMux

        mux = TarantoolMux(data.host, data.port, user=data.user, password=data.password, socket_timeout=timeout)
        return Client(data.command_for(mux), self.deadline(), lambda: int(mux.get_stats()["mux_connects"]), mux.close)


class NoConnectionAvailable(Exception):
    """The hand-rolled LIFO pool found no connection within its timeout."""


class _LifoQueuePool:
    """``size`` tarantool-python connections behind a ``gevent.queue.LifoQueue``, made as redis-py's
    ``BlockingConnectionPool`` is: the queue starts with ``size`` placeholders (``None``: open a connection
    in this slot); a connection is put back after a request, or closed and its slot put back when the
    request was interrupted (its reply may still be on the way). A releasing greenlet that asks again takes
    the connection back before the woken waiter runs (barging)."""

    def __init__(self, data: TarantoolData, size: int, timeout: float) -> None:
        from gevent.queue import LifoQueue

        self.data = data
        self.timeout = timeout
        self.queue: Any = LifoQueue()
        for _ in range(size):
            self.queue.put(None)
        self.opened = 0
        self.conns: List[Any] = []

    def _connect(self) -> Any:
        import tarantool

        data = self.data
        conn = tarantool.Connection(
            data.host, data.port, user=data.user, password=data.password, reconnect_max_attempts=0, reconnect_delay=0
        )
        self.opened += 1
        self.conns.append(conn)
        return conn

    def _call(self, method: str, *args: Any) -> Any:
        from gevent.queue import Empty
        from tarantool.error import DatabaseError

        try:
            conn = self.queue.get(timeout=self.timeout)
        except Empty:
            raise NoConnectionAvailable(f"no connection available within {self.timeout:g} s") from None
        try:
            if conn is None:
                conn = self._connect()
            result = getattr(conn, method)(*args)
        except DatabaseError:
            self.queue.put(conn)
            raise
        except BaseException:
            if conn is not None:
                self.conns.remove(conn)
                conn.close()
            self.queue.put(None)
            raise
        self.queue.put(conn)
        return result

    def select(self, space: Any, key: Any) -> Any:
        return self._call("select", space, key)

    def replace(self, space: Any, row: Any) -> Any:
        return self._call("replace", space, row)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()


class LifoQueueTarantool(OverloadContender):
    name = "lifo-queue"
    help = "tarantool-python connections behind a gevent.queue.LifoQueue (a hand-rolled pool; it barges)"

    def client(self, data: TarantoolData, max_connections: int, timeout: float) -> Client:
        pool = _LifoQueuePool(data, max_connections, timeout)
        return Client(data.command_for(pool), self.deadline(), lambda: pool.opened, pool.close)


def contenders_for(kind: str) -> Tuple[List[OverloadContender], OverloadContender, Dict[str, Any]]:
    """Every contender for ``kind`` (``redis`` or ``tarantool``), the default greenpool contender (the first),
    and what was found: ``{"policies": [...], "default_policy": ..., "deadline": bool}``. Never blocks."""
    policies, default = queue_policies(kind)
    mine: Any = GreenpoolRedisPolicy if kind == "redis" else GreenpoolTarantoolPolicy
    greenpools: List[OverloadContender]
    if policies:
        greenpools = [mine(p, p, default=p == default) for p in policies]
    else:
        greenpools = [mine("fifo", None, default=True)]
    default_label = default or "fifo"
    deadline = mine(default_label, None, use_deadline=True)
    others: List[OverloadContender]
    if kind == "redis":
        others = [_Wrapped(RedisBlocking()), _Wrapped(RedisBlockingGevent()), _Wrapped(GreenpoolRedisMux())]
    else:
        others = [LifoQueueTarantool(), TarantoolMuxContender()]
    found = {"policies": policies, "default_policy": default_label, "deadline": deadline.unavailable() is None}
    return [*greenpools, deadline, *others], greenpools[0], found
