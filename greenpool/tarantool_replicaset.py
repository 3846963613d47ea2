"""``greenpool.TarantoolReplicaSet``: one fair pool per instance of a Tarantool replica set, routed by role.

A replica set is a master (``box.info.ro == false``) and read-only replicas. :class:`TarantoolReplicaSet`
keeps a :class:`greenpool.TarantoolPool` per instance and a background greenlet that learns each instance's
role (``box.info.ro`` and ``box.info.status``, as tarantool-python's ``ConnectionPool`` reads them) every
``refresh_interval`` seconds, and at once after a request met ``ER_READONLY`` or a network error. Requests name
a ``mode`` (tarantool-python's ``tarantool.Mode``: ``ANY``, ``RW``, ``RO``, ``PREFER_RW``, ``PREFER_RO``, or
their names as strings) and go to an instance in that role, the least busy first. A write that finds no master
(during a switchover) waits for one, within the request's ``timeout``, instead of failing; a write the server
refused with ``ER_READONLY`` (it did not run) is sent again to the new master; a write that met a network error
is never sent again (it may have run).

It is not built on ``tarantool.ConnectionPool``, whose per-instance threads, under gevent, share one reply
queue between greenlets. Each request here runs on a connection checked out of one instance's pool, so its
reply can only reach its caller.

Depends on ``greenpool.tarantool`` (the per-instance pools), ``greenpool._green``, ``greenpool._validate``,
gevent and tarantool-python.
"""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import tarantool
from gevent import joinall
from gevent.event import Event
from tarantool import Mode
from tarantool.error import DatabaseError, NetworkError, PoolTopologyError

from greenpool import _green
from greenpool._validate import check_credentials, check_name, check_seconds
from greenpool.pool import UNSET, PooledConnection
from greenpool.tarantool import TarantoolPool, TarantoolPoolClosed, TarantoolPoolTimeout

__all__ = [
    "ER_READONLY",
    "MASTER",
    "Mode",
    "NoInstanceAvailable",
    "REPLICA",
    "TarantoolReplicaSet",
    "UNAVAILABLE",
]

#: Tarantool's error code for "Can't modify data because this instance is in read-only mode".
ER_READONLY = 7

#: Roles reported by :meth:`TarantoolReplicaSet.roles` and in the stats.
MASTER = "master"
REPLICA = "replica"
UNAVAILABLE = "unavailable"

#: While a request waits for a role no instance has, the instances are probed this often.
_URGENT_INTERVAL = 0.05


class NoInstanceAvailable(TarantoolPoolTimeout, PoolTopologyError):  # type: ignore[misc]
    """No instance in the requested mode became available within the request's ``timeout`` (also a
    :class:`greenpool.PoolTimeout` and tarantool-python's ``PoolTopologyError``, which ``ConnectionPool``'s users
    already catch). No request reached a server."""


def _pool_arguments(
    max_connections: int, timeout: Optional[float], connect_timeout: Optional[float], socket_timeout: Optional[float]
) -> Dict[str, Any]:
    """The arguments of one instance's :class:`TarantoolPool`."""
    return {
        "max_connections": max_connections,
        "timeout": timeout,
        "connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
    }


def _mux_arguments(
    shared_connections: int, max_in_flight: int, socket_timeout: Optional[float], connect_timeout: Optional[float]
) -> Dict[str, Any]:
    """The arguments of one instance's :class:`TarantoolMux`."""
    return {
        "shared_connections": shared_connections,
        "max_in_flight": max_in_flight,
        "socket_timeout": socket_timeout,
        "connect_timeout": connect_timeout,
    }


def _mux_stats(mux: Any) -> Dict[str, Any]:
    """The multiplexer's ``mux_*`` figures."""
    return {k: v for k, v in mux.get_stats().items() if k.startswith("mux_")}


def _mode(value: Any) -> Mode:
    if isinstance(value, Mode):
        return value
    if isinstance(value, str) and value.upper() in Mode.__members__:
        return Mode[value.upper()]
    raise ValueError(f"mode must be a tarantool.Mode or one of {', '.join(Mode.__members__)}, got {value!r}")


def _address(value: Any) -> Tuple[str, int]:
    """``"host:port"``, ``(host, port)`` or ``{"host": ..., "port": ...}`` -> ``(host, port)``."""
    host: Any
    port: Any
    if isinstance(value, str):
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"addresses: expected 'host:port', got {value!r}")
        port = int(port_text)
    elif isinstance(value, tuple) and len(value) == 2:
        host, port = value
    elif isinstance(value, dict) and set(value) <= {"host", "port"} and "port" in value:
        host, port = value.get("host", "127.0.0.1"), value["port"]
    else:
        raise TypeError(f"addresses: expected 'host:port', (host, port) or {{'host', 'port'}}, got {value!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"addresses: host must be a non-empty str, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"addresses: port must be an int in 1..65535, got {port!r}")
    return host, port


def _readonly_refusal(exc: BaseException) -> bool:
    """The server refused the request because it is read-only: the request did not run."""
    return (
        isinstance(exc, DatabaseError) and not isinstance(exc, NetworkError) and getattr(exc, "code", 0) == ER_READONLY
    )


class _Instance:
    """One member: its pool, its last known role, a dedicated probe connection and its counters."""

    def __init__(self, host: str, port: int, pool: TarantoolPool, mux: Any = None) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.pool = pool
        self.mux = mux
        self.role = UNAVAILABLE
        self.status = "unknown"
        self.marked_at = 0.0  # when a request last demoted it (a probe that started earlier is stale)
        self.probe_conn: Any = None
        self.probe_generation = 0  # the fork generation (greenpool._green) the probe connection was made in
        self.role_changes = 0
        self.readonly_refusals = 0
        self.network_errors = 0
        self.probes_failed = 0
        self.requests = 0

    def set_role(self, role: str) -> None:
        if role != self.role:
            self.role = role
            self.role_changes += 1

    def load(self) -> float:
        pool = self.pool
        return (pool.in_use + pool.waiting) / max(pool.max_connections, 1)

    def close_probe(self) -> None:
        conn, self.probe_conn = self.probe_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a broken socket
                pass


class _Lease:
    """The context manager :meth:`TarantoolReplicaSet.connection` returns."""

    def __init__(self, rs: TarantoolReplicaSet, mode: Mode, timeout: Optional[float]) -> None:
        self._rs = rs
        self._mode = mode
        self._timeout = timeout
        self._inner: Optional[PooledConnection[Any]] = None
        self._instance: Optional[_Instance] = None

    def __enter__(self) -> Any:
        end = self._rs._end_of(self._timeout)
        self._instance = self._rs._choose(self._mode, end)
        self._inner = self._instance.pool.connection(timeout=self._rs._left(end))
        return self._inner.__enter__()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        assert self._inner is not None and self._instance is not None
        if exc is not None:
            self._rs._after_error(self._instance, exc)
        self._inner.__exit__(exc_type, exc, tb)


def _request(method: str, default_mode: Mode, idempotent: bool) -> Callable[..., Any]:
    def helper(self: TarantoolReplicaSet, *args: Any, mode: Any = default_mode, **kwargs: Any) -> Any:
        return self._run(method, _mode(mode), idempotent, args, kwargs)

    helper.__name__ = helper.__qualname__ = method
    helper.__doc__ = (
        f"Run ``tarantool.Connection.{method}(*args, **kwargs)`` on an instance in ``mode`` (default "
        f"``Mode.{default_mode.name}``) and return its result.\n\n"
        "Blocks up to the set's ``timeout`` in all, waiting for an instance in the mode (a write waits for a "
        "master during a switchover) and for a connection of its pool, then up to ``socket_timeout`` for the "
        "reply. Raises :class:`NoInstanceAvailable` when the time runs out, what tarantool-python raises "
        "otherwise. An ``ER_READONLY`` refusal (the request did not run) is retried on the new master in modes "
        "``RW`` and ``PREFER_RW``; a network error is raised, and the request is not sent again"
        + (" except that this read-only request is tried once more on another instance." if idempotent else ".")
    )
    return helper


class TarantoolReplicaSet:
    """Pools over every instance of a Tarantool replica set, routing each request by the instances' roles.

    ``TarantoolReplicaSet(addresses, user=None, password=None, max_connections=10, timeout=30.0, ...)``:

    - ``addresses``: the instances, each ``"host:port"``, ``(host, port)`` or ``{"host": ..., "port": ...}``.
    - ``user``, ``password``: credentials for every instance (never shown in ``repr``, stats or errors).
    - ``max_connections``: the hard limit of open connections *per instance*.
    - ``timeout``: seconds a request may wait in all for an instance in its mode and a connection of its pool
      (``None``: forever, ``0``: never waits); then :class:`NoInstanceAvailable` or the pool's
      :class:`greenpool.tarantool.TarantoolPoolTimeout`.
    - keyword-only: ``connect_timeout`` (bound on a whole connect, default 10 s), ``socket_timeout`` (bound on
      one reply, default ``None``), ``multiplexed`` (the helpers go through a :class:`greenpool.TarantoolMux`
      per instance, with ``shared_connections`` sockets and at most ``max_in_flight`` requests in flight;
      ``connection()`` still checks out of the pool), ``refresh_interval`` (seconds between role probes, default 1),
      ``probe_timeout`` (bound on one probe, default 1 s), ``name``, and any other :class:`TarantoolPool`
      keyword (``min_connections``, ``check_after_idle``, ``max_lifetime``, ...), given to every instance's pool.

    Roles are probed by one dedicated connection per instance (``call('box.info')``: the user needs to be allowed
    to call it), outside the pools, so a busy pool never delays a probe. An instance is a master when it
    answers ``ro == false`` and ``status == "running"``, a replica when ``ro == true`` and running, unavailable
    otherwise. Nothing connects before the first request (or :meth:`refresh`). After ``os.fork()`` the child
    uses pools and probe connections of its own; the parent's are left to the parent.

    Modes: ``RW`` the master only, ``RO`` replicas only, ``ANY`` either, ``PREFER_RW`` the master or else a
    replica, ``PREFER_RO`` a replica or else the master. Helpers' defaults: writes (``insert``, ``replace``,
    ``update``, ``upsert``, ``delete``) and ``call``/``eval``/``execute`` go to ``RW`` (a stored function may
    write; pass ``mode=Mode.RO`` or ``Mode.ANY`` for a read-only one), ``select`` and ``ping`` to ``ANY``.
    """

    def __init__(
        self,
        addresses: Sequence[Union[str, Tuple[str, int], Dict[str, Any]]],
        user: Optional[str] = None,
        password: Optional[str] = None,
        max_connections: int = 10,
        timeout: Optional[float] = 30.0,
        *,
        connect_timeout: Optional[float] = 10.0,
        socket_timeout: Optional[float] = None,
        refresh_interval: float = 1.0,
        probe_timeout: float = 1.0,
        multiplexed: bool = False,
        shared_connections: int = 1,
        max_in_flight: int = 1024,
        name: Optional[str] = None,
        **pool_kwargs: Any,
    ) -> None:
        if isinstance(addresses, (str, bytes)) or not isinstance(addresses, Sequence) or not addresses:
            raise TypeError(f"addresses must be a non-empty list of instances, got {addresses!r}")
        parsed = [_address(address) for address in addresses]
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"addresses: an instance is listed twice in {[f'{h}:{p}' for h, p in parsed]!r}")
        check_credentials(user, password)
        self.timeout = check_seconds("timeout", timeout)
        self.refresh_interval = check_seconds("refresh_interval", refresh_interval, allow_none=False, allow_zero=False)
        self.probe_timeout: float = check_seconds("probe_timeout", probe_timeout, allow_none=False, allow_zero=False)  # type: ignore[assignment]
        self.connect_timeout = check_seconds("connect_timeout", connect_timeout, allow_zero=False)
        self.name = check_name(name) or f"tarantool replica set {parsed[0][0]}:{parsed[0][1]}+{len(parsed) - 1}"
        self.user = user
        arguments = _pool_arguments(max_connections, timeout, connect_timeout, socket_timeout)
        mux_arguments = _mux_arguments(shared_connections, max_in_flight, socket_timeout, connect_timeout)
        self.multiplexed = bool(multiplexed)
        self._instances: List[_Instance] = []
        for host, port in parsed:
            label = f"tarantool {host}:{port}"
            pool = TarantoolPool(host, port, user, password, name=label, **arguments, **pool_kwargs)
            mux = None
            if self.multiplexed:
                from greenpool.tarantool_mux import TarantoolMux

                mux = TarantoolMux(host, port, user, password, name=f"{label} (mux)", **mux_arguments)
            self._instances.append(_Instance(host, port, pool, mux))
        self._probe = self._prober(user, password)
        self._turn = itertools.count()
        self._changed = Event()  # set (and replaced) after every probe round
        self._wake = Event()
        self._urgent = 0  # requests waiting for a role no instance has
        self._refresher: Any = None
        self._closed = False
        self._rounds = 0
        self._counters = self._new_counters()

    # ------------------------------------------------------------------ roles

    def _prober(self, user: Optional[str], password: Optional[str]) -> Callable[[_Instance], Tuple[str, str]]:
        """Return the probe: a closure, so the password shows in no ``repr``."""
        connect_timeout = self.connect_timeout
        probe_timeout = self.probe_timeout

        def probe(instance: _Instance) -> Tuple[str, str]:
            generation = _green.fork_generation()
            if instance.probe_conn is not None and instance.probe_generation != generation:
                # Made before a fork, its socket is the parent's too: close this process's copy of it (the
                # parent's stays open) and never read from it here, or the two would take each other's replies.
                instance.close_probe()
            if instance.probe_conn is None:
                conn = tarantool.Connection(
                    instance.host,
                    instance.port,
                    user=user,
                    password=password,
                    connect_now=False,
                    socket_timeout=probe_timeout,
                    connection_timeout=connect_timeout,
                    reconnect_max_attempts=0,
                    reconnect_delay=0.0,
                    fetch_schema=False,
                )
                try:
                    conn.connect()
                except BaseException:
                    conn.close()
                    raise
                instance.probe_conn = conn
                instance.probe_generation = generation
            info = instance.probe_conn.call("box.info").data[0]
            status = str(info.get("status", "unknown"))
            if status != "running":
                return UNAVAILABLE, status
            return (REPLICA if info["ro"] else MASTER), status

        return probe

    def _probe_one(self, instance: _Instance, started: float) -> None:
        bound = (self.connect_timeout or 0.0) + self.probe_timeout
        try:
            with _green.Timeout(bound):
                role, status = self._probe(instance)
        except BaseException as exc:
            instance.close_probe()
            instance.probes_failed += 1
            if not isinstance(exc, (Exception, _green.Timeout)):
                raise
            role, status = UNAVAILABLE, "no answer"
        if instance.marked_at > started:
            return  # a request demoted it while we asked: that news is newer; the next round asks again
        instance.status = status
        instance.set_role(role)

    def refresh(self) -> Dict[str, str]:
        """Probe every instance now (concurrently) and return their roles. Blocks at most ``connect_timeout`` +
        ``probe_timeout``; never raises for an instance that does not answer (it becomes unavailable)."""
        started = _green.monotonic()
        greenlets = [_green.spawn(self._probe_one, instance, started) for instance in self._instances]
        joinall(greenlets)
        self._rounds += 1
        changed, self._changed = self._changed, Event()
        changed.set()
        return self.roles()

    def roles(self) -> Dict[str, str]:
        """The last known role of every instance (``"master"``, ``"replica"``, ``"unavailable"``), by address."""
        return {instance.name: instance.role for instance in self._instances}

    def _refresh_loop(self) -> None:
        while not self._closed:
            self.refresh()
            self._wake.wait(_URGENT_INTERVAL if self._urgent else self.refresh_interval)
            self._wake.clear()

    def _start_refresher(self) -> None:
        refresher = self._refresher
        if refresher is None or refresher.dead:
            self._refresher = _green.spawn(self._refresh_loop)

    def _wake_refresher(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ choosing an instance

    def _candidates(self, mode: Mode) -> List[_Instance]:
        masters = [i for i in self._instances if i.role == MASTER]
        replicas = [i for i in self._instances if i.role == REPLICA]
        if mode is Mode.RW:
            return masters
        if mode is Mode.RO:
            return replicas
        if mode is Mode.PREFER_RW:
            return masters or replicas
        if mode is Mode.PREFER_RO:
            return replicas or masters
        return masters + replicas

    def _end_of(self, timeout: Any) -> Optional[float]:
        if timeout is UNSET:
            timeout = self.timeout
        elif timeout is not None:
            timeout = check_seconds("timeout", timeout)
        return None if timeout is None else _green.monotonic() + timeout

    @staticmethod
    def _left(end: Optional[float]) -> Optional[float]:
        return None if end is None else max(0.0, end - _green.monotonic())

    def _choose(self, mode: Mode, end: Optional[float]) -> _Instance:
        """Return the least busy instance in ``mode``, waiting (until ``end``) for one to appear."""
        if self._closed:
            raise TarantoolPoolClosed(f"{self.name} is closed")
        self._start_refresher()
        if self._rounds == 0:
            self._changed.wait(self._left(end))  # the first probe round
        waited_since = None
        while True:
            candidates = self._candidates(mode)
            if candidates:
                break
            if self._closed:
                raise TarantoolPoolClosed(f"{self.name} is closed")
            left = self._left(end)
            if left is not None and left <= 0:
                self._counters["no_instance"] += 1
                raise NoInstanceAvailable(
                    f"{self.name}: no instance in mode {mode.name} within the timeout; roles: {self.roles()}"
                )
            if waited_since is None:
                waited_since = _green.monotonic()
                self._counters["role_waits"] += 1
            self._urgent += 1
            try:
                self._wake_refresher()
                self._changed.wait(left)
            finally:
                self._urgent -= 1
        if waited_since is not None:
            waited_ms = (_green.monotonic() - waited_since) * 1000.0
            self._counters["role_wait_max_ms"] = max(self._counters["role_wait_max_ms"], waited_ms)
        if len(candidates) == 1:
            chosen = candidates[0]
        else:
            start = next(self._turn) % len(candidates)
            rotated = candidates[start:] + candidates[:start]
            chosen = min(rotated, key=_Instance.load)
        chosen.requests += 1
        return chosen

    def _after_error(self, instance: _Instance, exc: BaseException) -> None:
        """Demote the instance on the news a failed request brings, and ask for a probe round at once."""
        if _readonly_refusal(exc):
            instance.readonly_refusals += 1
            if instance.role == MASTER:
                instance.marked_at = _green.monotonic()
                instance.set_role(REPLICA)
            self._wake_refresher()
        elif isinstance(exc, (NetworkError, OSError)):
            instance.network_errors += 1
            instance.marked_at = _green.monotonic()
            instance.set_role(UNAVAILABLE)
            self._wake_refresher()

    # ------------------------------------------------------------------ requests

    def connection(self, mode: Any = Mode.ANY, timeout: Optional[float] = UNSET) -> _Lease:
        """Return a context manager that checks out a ``tarantool.Connection`` to an instance in ``mode``.

        ``with rs.connection(mode=Mode.RW) as tnt:`` blocks up to ``timeout`` (default: the set's) in all for an
        instance in the mode and a connection of its pool; raises :class:`NoInstanceAvailable` or the pool's
        timeout error. An ``ER_READONLY`` or network error that leaves the block starts a probe round at once;
        nothing is retried (the block is yours). The pool's rules apply to the connection (any error but a
        server's reply closes it).
        """
        return _Lease(self, _mode(mode), timeout)

    def _run(self, method: str, mode: Mode, idempotent: bool, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        end = self._end_of(UNSET)
        tried_again = False
        while True:
            instance = self._choose(mode, end)
            try:
                if instance.mux is not None:
                    return getattr(instance.mux, method)(*args, **kwargs)
                with instance.pool.connection(timeout=self._left(end)) as conn:
                    return getattr(conn, method)(*args, **kwargs)
            except BaseException as exc:
                self._after_error(instance, exc)
                if _readonly_refusal(exc) and mode in (Mode.RW, Mode.PREFER_RW):
                    self._counters["readonly_retries"] += 1
                    mode = Mode.RW  # it did not run: send it to the master once one is known
                    continue
                if idempotent and not tried_again and isinstance(exc, NetworkError) and len(self._instances) > 1:
                    tried_again = True
                    self._counters["network_retries"] += 1
                    continue
                raise

    insert = _request("insert", Mode.RW, False)
    replace = _request("replace", Mode.RW, False)
    update = _request("update", Mode.RW, False)
    upsert = _request("upsert", Mode.RW, False)
    delete = _request("delete", Mode.RW, False)
    call = _request("call", Mode.RW, False)
    eval = _request("eval", Mode.RW, False)
    execute = _request("execute", Mode.RW, False)
    select = _request("select", Mode.ANY, True)
    ping = _request("ping", Mode.ANY, True)

    # ------------------------------------------------------------------ stats and lifetime

    @staticmethod
    def _new_counters() -> Dict[str, float]:
        return {"no_instance": 0, "role_waits": 0, "role_wait_max_ms": 0.0, "readonly_retries": 0, "network_retries": 0}

    def _instance_stats(self, instance: _Instance, pool_stats: Dict[str, Union[int, float, str]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"address": instance.name, "role": instance.role, "status": instance.status}
        out.update(pool_stats)
        if instance.mux is not None:
            out.update(_mux_stats(instance.mux))
        out.update(
            role_changes=instance.role_changes,
            readonly_refusals=instance.readonly_refusals,
            network_errors=instance.network_errors,
            probes_failed=instance.probes_failed,
            routed=instance.requests,
        )
        return out

    def get_stats(self) -> Dict[str, Any]:
        """Return ``{"name", "master", "probe_rounds", <set counters>, "instances": {address: stats}}``; each
        instance's stats are its pool's (:meth:`greenpool.Pool.get_stats`) plus ``role``, ``status``,
        ``role_changes``, ``readonly_refusals``, ``network_errors``, ``probes_failed`` and ``routed`` (requests
        sent to it). Set counters: ``no_instance`` (requests that found no instance in time), ``role_waits``
        (requests that waited for a role), ``role_wait_max_ms``, ``readonly_retries``, ``network_retries``."""
        return self._stats(pop=False)

    def pop_stats(self) -> Dict[str, Any]:
        """Return :meth:`get_stats` and reset the totals to zero."""
        return self._stats(pop=True)

    def _stats(self, pop: bool) -> Dict[str, Any]:
        instances = {}
        for instance in self._instances:
            pool_stats = instance.pool.pop_stats() if pop else instance.pool.get_stats()
            instances[instance.name] = self._instance_stats(instance, pool_stats)
            if pop:
                instance.role_changes = instance.readonly_refusals = instance.network_errors = 0
                instance.probes_failed = instance.requests = 0
        masters = [i.name for i in self._instances if i.role == MASTER]
        out: Dict[str, Any] = {"name": self.name, "master": masters[0] if masters else "", "probe_rounds": self._rounds}
        out.update(self._counters)
        if pop:
            self._counters = self._new_counters()
        out["instances"] = instances
        return out

    @property
    def pools(self) -> Dict[str, TarantoolPool]:
        """Every instance's pool, by address."""
        return {instance.name: instance.pool for instance in self._instances}

    def close(self) -> None:
        """Stop probing, close the probe connections and every pool. Requests waiting for a role get
        :class:`greenpool.tarantool.TarantoolPoolClosed`. Never blocks."""
        self._closed = True
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.kill(block=False)
        for instance in self._instances:
            instance.close_probe()
            instance.pool.close()
            if instance.mux is not None:
                instance.mux.close()
        changed, self._changed = self._changed, Event()
        changed.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TarantoolReplicaSet:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        roles = " ".join(f"{i.name}={i.role}" for i in self._instances)
        state = "closed" if self._closed else roles
        user = f" user={self.user!r}" if self.user else ""
        return f"<{type(self).__name__} {self.name}{user} {state}>"
