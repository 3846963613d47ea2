"""redis-py's own connection metrics, recorded for ``GeventPool`` as redis-py's pools record them.

With redis-py's observability enabled (``redis.observability``: ``get_observability_instance().init(
OTelConfig())``), ``BlockingConnectionPool`` records ``db.client.connection.count`` (idle/used),
``db.client.connection.create_time``, ``db.client.connection.wait_time`` and ``.timeouts`` from inside the
methods ``GeventPool`` overrides. :func:`follow` makes a ``GeventPool`` record the same metrics through
redis-py's own recorder (so they land in the same instruments, labelled with the same pool name as
``redis.observability.attributes.get_pool_name`` gives), from the core pool's events
(:mod:`greenpool.events`).

Cost: nothing while observability is off; the pool listens only while it is on. Observability is looked
up when the pool is created and each time redis-py's ``ObservabilityInstance.init()`` runs.

Depends on redis-py (>= 8.0, its ``redis.observability`` package) and ``greenpool.events``.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

from redis.observability import recorder
from redis.observability.attributes import ConnectionState, get_pool_name

from greenpool import events

__all__ = ["RedisPoolMetrics", "follow"]

#: Every GeventPool created, so that a later ``init()`` of redis-py's observability reaches them.
_FOLLOWED: weakref.WeakSet[Any] = weakref.WeakSet()


class RedisPoolMetrics:
    """The listeners that record one ``GeventPool``'s figures through redis-py's recorder.

    The connection counts are reported as changes of what the pool holds (idle and in use), computed from
    the pool's state at each event rather than from the events themselves, so a listener attached while
    connections are out (or an event missed) cannot leave the counts wrong.
    """

    def __init__(self, pool: Any) -> None:
        self._ref = weakref.ref(pool)
        self.pool_name = get_pool_name(pool)
        self.idle = 0
        self.used = 0

    def attach(self) -> None:
        pool = self._ref()
        if pool is None:
            return
        events.listen(pool, "checkout", self.checkout)
        events.listen(pool, "checkin", self.sync)
        events.listen(pool, "close", self.sync)
        events.listen(pool, "connect", self.connect)
        events.listen(pool, "timeout", self.timeout)
        self.sync()

    def detach(self) -> None:
        pool = self._ref()
        if pool is None:
            return
        for name, fn in (
            ("checkout", self.checkout),
            ("checkin", self.sync),
            ("close", self.sync),
            ("connect", self.connect),
            ("timeout", self.timeout),
        ):
            if fn in events.listeners(pool, name):
                events.remove(pool, name, fn)

    def sync(self, *_: Any) -> None:
        """Report the change in idle and used connections since the last report."""
        pool = self._ref()
        if pool is None:
            return
        core = pool._pool
        idle, used = core.idle, core.in_use
        if idle != self.idle:
            recorder.record_connection_count(self.pool_name, ConnectionState.IDLE, idle - self.idle)
            self.idle = idle
        if used != self.used:
            recorder.record_connection_count(self.pool_name, ConnectionState.USED, used - self.used)
            self.used = used

    def checkout(self, conn: Any, wait: float) -> None:
        self.sync()
        recorder.record_connection_wait_time(self.pool_name, wait)

    def connect(self, conn: Any, seconds: float) -> None:
        pool = self._ref()
        if pool is not None:
            recorder.record_connection_create_time(pool, seconds)

    def timeout(self, waited: float, reason: str) -> None:
        recorder.record_connection_timeout(self.pool_name)


def _update(pool: Any) -> None:
    """Attach the recorder's listeners to ``pool`` when observability is on, detach them when it is off."""
    current: Optional[RedisPoolMetrics] = getattr(pool, "_redis_metrics", None)
    if recorder.is_enabled():
        if current is None:
            pool._redis_metrics = current = RedisPoolMetrics(pool)
            current.attach()
    elif current is not None:
        current.detach()
        pool._redis_metrics = None


def follow(pool: Any) -> None:
    """Record ``pool``'s metrics through redis-py's recorder while redis-py's observability is enabled.

    Called by ``GeventPool`` when it is created; never blocks."""
    _FOLLOWED.add(pool)
    _update(pool)


def _on_observability_init() -> None:
    """redis-py's ``ObservabilityInstance.init()`` ran: look again, for every pool."""
    for pool in list(_FOLLOWED):
        try:
            _update(pool)
        except Exception:  # pragma: no cover - never let a metrics hook break redis-py's init()
            events.logger.exception("greenpool: could not follow redis-py's observability for %r", pool)


def _register() -> None:
    # redis-py calls these hooks from ObservabilityInstance.init(), after the new configuration is in place
    # (a private hook: without it, a pool sees the observability enabled when the pool was created).
    try:
        from redis.observability.providers import _register_reset_hook
    except ImportError:  # pragma: no cover - redis-py versions without the hook
        return
    _register_reset_hook(_on_observability_init)


_register()
