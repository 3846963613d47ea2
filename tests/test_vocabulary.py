"""One vocabulary for every pool class, and the redis-py drop-in to the letter.

The README's vocabulary table says which name each concept has in each class; these tests hold the classes to
it (new names, the client libraries' names accepted beside them, old names deprecated), and hold
``GeventPool`` to ``redis.BlockingConnectionPool``'s behaviour where a difference was found. Real servers come
from ``tests/conftest.py``; the core's tests use a small fake connection class.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from typing import Any, Dict, Iterator

import pytest
import redis
from redis.connection import Connection

import greenpool
from greenpool import GeventPool, Pool, TarantoolPool
from tests.test_redis import server_kwargs


class Conn:
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def gevent_pool(redis_server: Any) -> Iterator[GeventPool]:
    pool = GeventPool(max_connections=2, timeout=5, **server_kwargs(redis_server))
    yield pool
    pool.disconnect()


# ---------------------------------------------------------------------- sizes: one name everywhere


def test_pool_sizes_are_max_connections_and_min_connections() -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=3, min_connections=1)
    assert (pool.max_connections, pool.min_connections) == (3, 1)
    assert pool.get_stats()["pool_max"] == 3
    pool.close()


def test_pool_old_size_names_still_work_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="'max_size' is deprecated, use 'max_connections'"):
        pool: Pool[Conn] = Pool(Conn, max_size=4)
    assert pool.max_connections == 4
    with pytest.warns(DeprecationWarning, match="'min_size' is deprecated, use 'min_connections'"):
        assert pool.min_size == 0
    with pytest.warns(DeprecationWarning, match="'max_size'"):
        assert pool.max_size == 4
    pool.close()


def test_pool_old_and_new_size_names_together_must_agree() -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="max_connections=3, max_size=4"):
        Pool(Conn, max_connections=3, max_size=4)


def test_resize_is_keyword_only() -> None:
    pool: Pool[Conn] = Pool(Conn, max_connections=2)
    with pytest.raises(TypeError):
        pool.resize(5)  # type: ignore[misc]
    pool.resize(max_connections=5)
    assert (pool.max_connections, pool.min_connections) == (5, 0)
    pool.resize(min_connections=2)
    assert (pool.max_connections, pool.min_connections) == (5, 2)
    with pytest.raises(ValueError, match="min_connections must be <= max_connections"):
        pool.resize(max_connections=1)
    assert (pool.max_connections, pool.min_connections) == (5, 2)
    pool.close()


def test_gevent_pool_resizes_and_max_connections_assignment_resizes(gevent_pool: GeventPool) -> None:
    held = [gevent_pool.get_connection(), gevent_pool.get_connection()]
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        gevent_pool.timeout = 0
        gevent_pool.get_connection()
    gevent_pool.max_connections = 3
    assert gevent_pool.max_connections == 3 == gevent_pool.get_stats()["pool_max"]
    held.append(gevent_pool.get_connection())  # the third slot exists now
    gevent_pool.resize(max_connections=1, min_connections=0)
    for conn in held:
        gevent_pool.release(conn)
    assert gevent_pool.get_stats()["pool_size"] == 1  # the surplus was closed on release
    gevent_pool.reset()
    assert gevent_pool.get_stats()["pool_max"] == 1  # the limits survive reset()
    with pytest.raises(TypeError):
        gevent_pool.resize(4)  # type: ignore[misc]


def test_tarantool_pool_sizes_and_default_name(tarantool_server: Any) -> None:
    pool = TarantoolPool(tarantool_server.host, tarantool_server.port, max_connections=3, min_connections=1)
    try:
        assert (pool.max_connections, pool.min_connections) == (3, 1)
        assert pool.name == f"tarantool {tarantool_server.host}:{tarantool_server.port}"
        assert repr(pool).count(f"{tarantool_server.host}:{tarantool_server.port}") == 1
    finally:
        pool.close()


# ---------------------------------------------------------------------- connect_timeout and its synonyms


def test_gevent_pool_connect_timeout_is_socket_connect_timeout() -> None:
    pool = GeventPool(connect_timeout=2.5)
    assert pool.connection_kwargs["socket_connect_timeout"] == 2.5
    assert "connect_timeout" not in pool.connection_kwargs
    assert GeventPool(connect_timeout=2, socket_connect_timeout=2).connection_kwargs["socket_connect_timeout"] == 2
    with pytest.raises(TypeError, match=r"socket_connect_timeout=1.*connect_timeout=2"):
        GeventPool(connect_timeout=2, socket_connect_timeout=1)


def test_gevent_pool_url_reads_connect_timeout() -> None:
    pool = GeventPool.from_url("redis://127.0.0.1:1/0?connect_timeout=2.5&max_connections=3")
    assert pool.connection_kwargs["socket_connect_timeout"] == 2.5
    assert pool.max_connections == 3


def test_tarantool_pool_connect_timeout_is_connection_timeout() -> None:
    pool = TarantoolPool("127.0.0.1", 1, connect_timeout=2.5)
    assert pool._connection_kwargs["connection_timeout"] == 2.5
    with pytest.raises(TypeError, match=r"connection_timeout=1.*connect_timeout=2"):
        TarantoolPool("127.0.0.1", 1, connect_timeout=2, connection_timeout=1)
    with pytest.raises(ValueError, match="connection_timeout"):
        TarantoolPool("127.0.0.1", 1, connect_timeout=-1)


def test_tarantool_pool_url_reads_the_multiplexer_options_too() -> None:
    url = "tarantool://127.0.0.1:3302?max_connections=4&connect_timeout=3&shared_connections=2&max_in_flight=64"
    pool = TarantoolPool.from_url(url)
    assert pool.max_connections == 4
    assert pool._connection_kwargs["connection_timeout"] == 3.0


# ---------------------------------------------------------------------- the package


def test_dir_lists_the_public_names_and_the_lazy_classes() -> None:
    names = dir(greenpool)
    for name in ("GeventPool", "RedisMuxPool", "TarantoolPool", "TarantoolMux", "Pool", "deadline"):
        assert name in names
    assert "Any" not in names and "TYPE_CHECKING" not in names


@pytest.mark.parametrize(
    ("blocked", "name", "extra"),
    [("redis", "GeventPool", "redis"), ("redis", "RedisMuxPool", "redis"), ("tarantool", "TarantoolPool", "tarantool")],
)
def test_a_missing_client_names_the_extra_to_install(blocked: str, name: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import greenpool\n"
        "try:\n"
        f"    greenpool.{name}\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert f"pip install 'greenpool[{extra}]'" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------------- BlockingConnectionPool, to the letter


def public_methods(cls: type) -> Dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and not isinstance(member, type)
    }


def test_every_public_method_of_blocking_connection_pool_is_there_with_its_arguments() -> None:
    theirs = public_methods(redis.BlockingConnectionPool)
    ours = public_methods(GeventPool)
    missing = sorted(set(theirs) - set(ours))
    assert not missing, f"GeventPool lacks {missing}"
    for name, method in theirs.items():
        try:
            expected = inspect.signature(method).parameters
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            continue
        got = inspect.signature(ours[name]).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in got.values())
        for param in expected.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            assert param.name in got or takes_kwargs, f"GeventPool.{name} lacks the argument {param.name!r}"


class DelegatingConnection:
    """A connection class with redis-py's connection methods but no ``is_connected`` (it delegates)."""

    def __init__(self, **kwargs: Any) -> None:
        self._conn = Connection(**kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "is_connected":
            raise AttributeError(name)
        return getattr(self._conn, name)


@pytest.mark.parametrize("pool_class", [redis.BlockingConnectionPool, GeventPool])
def test_a_connection_class_without_is_connected_works_as_in_redis_py(redis_server: Any, pool_class: type) -> None:
    pool = pool_class(connection_class=DelegatingConnection, max_connections=2, **server_kwargs(redis_server))
    client = redis.Redis(connection_pool=pool)
    try:
        assert client.ping() is True
        pool.disconnect()
        assert client.ping() is True  # connect() runs again on checkout
    finally:
        pool.disconnect()


def test_close_disconnects_checked_out_connections_too_as_redis_py_does(redis_server: Any) -> None:
    for pool_class in (redis.BlockingConnectionPool, GeventPool):
        pool = pool_class(max_connections=2, **server_kwargs(redis_server))
        idle = pool.get_connection()
        held = pool.get_connection()
        pool.release(idle)
        pool.close()
        assert idle._sock is None and held._sock is None, pool_class.__name__
        pool.release(held)
        assert redis.Redis(connection_pool=pool).ping() is True  # still usable: it reconnects
        pool.disconnect()


def test_set_in_maintenance_is_accepted(gevent_pool: GeventPool) -> None:
    gevent_pool.set_in_maintenance(True)
    gevent_pool.set_in_maintenance(False)
    assert redis.Redis(connection_pool=gevent_pool).ping() is True


def test_no_deprecation_warning_on_the_hot_path(gevent_pool: GeventPool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = redis.Redis(connection_pool=gevent_pool)
        assert client.ping() is True
        gevent_pool.resize(max_connections=3)
        assert gevent_pool.min_connections == 0
