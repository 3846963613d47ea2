"""What every harness command shares around its measurements: the server it talks to, the versions and the
machine it records, and the time stamps of its JSON.

:func:`server` yields the user's server (``--url``) or starts a private one on a free loopback port
(:mod:`stress.servers`) and stops it afterwards. Depends on gevent, greenpool and :mod:`stress.servers`
(imported when a private server is started).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import time
from typing import Any, Dict, Iterator, List, Optional

from .contenders import redact_url

__all__ = ["cpu_share", "load_average", "machine", "now", "server", "versions"]


@contextlib.contextmanager
def server(kind: str, url: Optional[str]) -> Iterator[Dict[str, str]]:
    """Yield ``{"url": ..., "where": ...}`` for the server at ``url``, or for a private ``kind`` server
    (``redis`` or ``tarantool``) started here and stopped when the block ends."""
    if url:
        yield {"url": url, "where": redact_url(url)}
        return
    from .servers import RedisServer, TarantoolServer

    launched: Any = RedisServer() if kind == "redis" else TarantoolServer()
    with launched:
        yield {"url": launched.url, "where": f"{launched.host}:{launched.port} (private, stopped afterwards)"}


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(server_name: str) -> Dict[str, Any]:
    """The versions a report records: Python, gevent, greenlet, greenpool, the clients, and ``server_name``."""
    import gevent

    import greenpool

    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "greenlet": _version("greenlet"),
        "greenpool": greenpool.__version__,
        "redis-py": _version("redis"),
        "hiredis": _version("hiredis"),
        "tarantool-python": _version("tarantool"),
        "server": server_name,
    }


def machine() -> Dict[str, Any]:
    """The core count and platform a report records (plus the load average before the run, where known)."""
    info: Dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()}
    load = load_average()
    if load is not None:
        info["load_average"] = load
    return info


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages, or ``None`` where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_share(seconds: float = 0.3) -> float:
    """The share of one core (percent) this process got while it spun for ``seconds``: about 100 on an idle
    box, less when other processes compete for the cores. Blocks (without yielding) for ``seconds``."""
    from .figures import cpu_seconds

    started, cpu = time.perf_counter(), cpu_seconds()
    while time.perf_counter() - started < seconds:
        pass
    return round(100.0 * (cpu_seconds() - cpu) / (time.perf_counter() - started), 1)


def now() -> str:
    """The UTC time now, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
