"""greenpool: fair, interruption-safe connection pools for gevent.

``Pool`` (the generic core), ``deadline`` (a request deadline the pools can see) and the errors import with
gevent alone; ``GeventPool`` and ``RedisMuxPool`` (redis-py), ``TarantoolPool`` and ``TarantoolMux``
(tarantool-python) are imported on first access, so their clients are only needed by those who use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from greenpool._deadline import deadline, remaining
from greenpool.errors import (
    ConnectTimeout,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiting,
    UnknownConnection,
    WrongThread,
)
from greenpool.pool import Pool, PooledConnection

if TYPE_CHECKING:
    from greenpool.redis import GeventPool
    from greenpool.redis_cluster import redis_cluster
    from greenpool.redis_mux import RedisMuxPool
    from greenpool.redis_sentinel import GeventSentinelMuxPool, GeventSentinelPool
    from greenpool.tarantool import TarantoolPool
    from greenpool.tarantool_mux import TarantoolMux
    from greenpool.tarantool_replicaset import TarantoolReplicaSet

__version__ = "0.1.0"

__all__ = [
    "ConnectTimeout",
    "GeventPool",
    "GeventSentinelMuxPool",
    "GeventSentinelPool",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PooledConnection",
    "RedisMuxPool",
    "TarantoolMux",
    "TarantoolPool",
    "TarantoolReplicaSet",
    "TooManyWaiting",
    "UnknownConnection",
    "WrongThread",
    "deadline",
    "remaining",
    "redis_cluster",
]

_LAZY = {
    "GeventPool": "greenpool.redis",
    "RedisMuxPool": "greenpool.redis_mux",
    "TarantoolPool": "greenpool.tarantool",
    "TarantoolMux": "greenpool.tarantool_mux",
    "TarantoolReplicaSet": "greenpool.tarantool_replicaset",
    "GeventSentinelPool": "greenpool.redis_sentinel",
    "redis_cluster": "greenpool.redis_cluster",
    "GeventSentinelMuxPool": "greenpool.redis_sentinel",
}

#: The extra that installs the client library each lazily imported module needs.
_EXTRAS = {"redis": "redis", "hiredis": "redis", "tarantool": "tarantool", "msgpack": "tarantool"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'greenpool' has no attribute {name!r}")
    import importlib

    try:
        imported = importlib.import_module(module)
        # greenpool.redis_cluster is a module callable as its function: importing the module makes it the
        # package's attribute anyway, so it is that attribute from the start.
        value = imported if module == f"greenpool.{name}" else getattr(imported, name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        extra = _EXTRAS.get(missing)
        if extra is None:
            raise
        raise ImportError(
            f"greenpool.{name} needs {missing}, which is not installed: pip install 'greenpool[{extra}]'",
            name=exc.name,
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(__all__) | {"__version__"})
