"""What the exporters (``greenpool.otel``, ``greenpool.prometheus``) export, read through one narrow interface.

Every pool class is read the same way: ``get_stats()`` (a dict of documented keys; the keys a pool does not
have are skipped) and, when the pool has it, ``get_histograms()`` (cumulative bucketed durations). So a
multiplexer that reports its shared sockets under the ``mux_*`` keys is exported as soon as it has them,
and a new pool class needs nothing here. :data:`FIGURES` maps each key to its name in each ecosystem: the
OpenTelemetry ``db.client.connection.*`` semantic conventions where one exists, ``greenpool.*`` otherwise;
Prometheus names in base units with ``_total`` counters.

Depends on nothing but the standard library and ``greenpool.stats``.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

from greenpool.stats import HistogramSnapshot

__all__ = ["FIGURES", "HISTOGRAMS", "Figure", "HistogramFigure", "pool_name", "read", "system_of"]


class Figure(NamedTuple):
    """One figure of ``get_stats()`` as the exporters publish it."""

    key: str  #: the ``get_stats()`` key
    counter: bool  #: a running total (monotonic) rather than a gauge
    otel: str  #: OpenTelemetry instrument name
    prometheus: str  #: Prometheus metric name (counters without their ``_total``, which the client adds)
    unit: str  #: OpenTelemetry unit
    scale: float  #: factor from the stats' unit to the exported one (ms to s)
    help: str


def _f(key: str, counter: bool, otel: str, prometheus: str, unit: str, help: str, scale: float = 1.0) -> Figure:
    return Figure(key, counter, otel, prometheus, unit, scale, help)


#: The figures exported, in order. ``db.client.connection.count`` (idle/used) is built from ``pool_available``
#: and ``in_use`` by each exporter.
FIGURES: Tuple[Figure, ...] = (
    _f("pool_max", False, "db.client.connection.max", "greenpool_connections_max", "{connection}",
       "The hard limit of open connections (max_connections)."),
    _f("pool_min", False, "db.client.connection.idle.min", "greenpool_connections_min", "{connection}",
       "Connections kept open even when idle (min_connections)."),
    _f("requests_waiting", False, "db.client.connection.pending_requests", "greenpool_pending_requests",
       "{request}", "Checkouts waiting for a connection."),
    _f("requests_timeouts", True, "db.client.connection.timeouts", "greenpool_checkout_timeouts", "{timeout}",
       "Checkouts that timed out waiting for a connection."),
    _f("requests_num", True, "greenpool.checkouts", "greenpool_checkouts", "{checkout}", "Checkouts asked for."),
    _f("requests_errors", True, "greenpool.checkout.errors", "greenpool_checkout_errors", "{checkout}",
       "Checkouts that failed (timed out, refused, or the connection could not be made)."),
    _f("requests_rejected", True, "greenpool.checkout.rejected", "greenpool_checkouts_rejected", "{checkout}",
       "Checkouts refused at once because max_waiting greenlets already waited."),
    _f("requests_shed", True, "greenpool.checkout.shed", "greenpool_checkouts_shed", "{checkout}",
       "Checkouts refused because their deadline could not be met, or at once under overload."),
    _f("connections_num", True, "greenpool.connections.created", "greenpool_connections_created",
       "{connection}", "Connections made."),
    _f("connections_errors", True, "greenpool.connections.errors", "greenpool_connection_errors",
       "{connection}", "Attempts to make a connection that failed."),
    _f("connections_lost", True, "greenpool.connections.lost", "greenpool_connections_lost", "{connection}",
       "Connections found broken or discarded by their holder."),
    _f("connections_closed", True, "greenpool.connections.closed", "greenpool_connections_closed",
       "{connection}", "Connections closed."),
    _f("queue_mode_switches", True, "greenpool.queue.mode_switches", "greenpool_queue_mode_switches",
       "{switch}", "Switches of the adaptive queue policy between FIFO and LIFO."),
    # The shared sockets of the multiplexers (RedisMuxPool, TarantoolMux).
    _f("mux_shared_connections", False, "greenpool.mux.shared_connections", "greenpool_mux_shared_connections",
       "{connection}", "Auto-pipelined sockets the multiplexer keeps open (configured)."),
    _f("mux_sockets_up", False, "greenpool.mux.sockets_up", "greenpool_mux_sockets_up", "{connection}",
       "Auto-pipelined sockets connected now."),
    _f("mux_in_flight", False, "greenpool.mux.in_flight", "greenpool_mux_in_flight", "{request}",
       "Commands sent on the shared sockets and not answered yet."),
    _f("mux_max_in_flight", False, "greenpool.mux.max_in_flight", "greenpool_mux_max_in_flight", "{request}",
       "The limit of commands in flight."),
    _f("mux_waiting", False, "greenpool.mux.waiting", "greenpool_mux_waiting", "{request}",
       "Greenlets waiting for an in-flight permit."),
    _f("mux_requests", True, "greenpool.mux.requests", "greenpool_mux_requests", "{request}",
       "Commands sent on the shared sockets."),
    _f("mux_replies", True, "greenpool.mux.replies", "greenpool_mux_replies", "{reply}", "Replies received."),
    _f("mux_error_replies", True, "greenpool.mux.error_replies", "greenpool_mux_error_replies", "{reply}",
       "Error replies received."),
    _f("mux_timeouts", True, "greenpool.mux.timeouts", "greenpool_mux_timeouts", "{request}",
       "Commands whose reply did not come in time."),
    _f("mux_failed", True, "greenpool.mux.failed", "greenpool_mux_failed", "{request}",
       "Commands failed by a lost socket or a close."),
    _f("mux_dropped", True, "greenpool.mux.dropped", "greenpool_mux_dropped", "{reply}",
       "Late replies of commands whose caller gave up."),
    _f("mux_connects", True, "greenpool.mux.connects", "greenpool_mux_connects", "{connection}",
       "Shared sockets connected."),
    _f("mux_connect_errors", True, "greenpool.mux.connect_errors", "greenpool_mux_connect_errors",
       "{connection}", "Shared socket connects that failed."),
    _f("mux_reads", True, "greenpool.mux.reads", "greenpool_mux_reads", "{call}", "recv system calls."),
    _f("mux_writes", True, "greenpool.mux.writes", "greenpool_mux_writes", "{call}", "send system calls."),
)  # fmt: skip


class HistogramFigure(NamedTuple):
    """One histogram of ``get_histograms()`` as the exporters publish it (in seconds)."""

    key: str
    otel: str
    prometheus: str
    help: str


HISTOGRAMS: Tuple[HistogramFigure, ...] = (
    HistogramFigure("wait", "db.client.connection.wait_time", "greenpool_checkout_wait_seconds",
                    "The time it took to obtain a connection from the pool."),
    HistogramFigure("connect", "db.client.connection.create_time", "greenpool_connection_create_seconds",
                    "The time it took to make a new connection."),
    HistogramFigure("usage", "db.client.connection.use_time", "greenpool_connection_use_seconds",
                    "The time between checking a connection out and releasing it."),
    HistogramFigure("reply", "greenpool.mux.reply_time", "greenpool_mux_reply_seconds",
                    "Per send on a multiplexer's shared socket: the time until its replies had arrived."),
)  # fmt: skip


def system_of(pool: Any) -> Optional[str]:
    """``"redis"`` or ``"tarantool"`` from the pool's class (OpenTelemetry's ``db.system.name``), else None."""
    for cls in type(pool).__mro__:
        module = cls.__module__
        if module.startswith("greenpool.redis"):
            return "redis"
        if module.startswith("greenpool.tarantool"):
            return "tarantool"
    return None


def pool_name(pool: Any) -> str:
    """The pool's name (never holds credentials): its ``name`` setting or the default one."""
    name = getattr(pool, "name", None)
    if isinstance(name, str):
        return name
    return str(pool.get_stats().get("name", f"pool-{id(pool):x}"))


def read(pool: Any) -> Tuple[Dict[str, Any], Dict[str, HistogramSnapshot]]:
    """``(get_stats(), get_histograms())`` of any pool; ``{}`` for histograms it does not have."""
    stats = pool.get_stats()
    get_histograms = getattr(pool, "get_histograms", None)
    histograms = get_histograms() if get_histograms is not None else {}
    return stats, histograms
