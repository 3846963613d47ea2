"""Bad-input fuzzing of the public constructors and ``from_url`` (hypothesis).

Whatever it is given, a constructor either builds an idle pool (no connection opened) or raises
``TypeError``/``ValueError``; it never raises anything else and never leaves a socket, a timer or a
greenlet behind.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Callable, Dict

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from greenpool import GeventPool, Pool, RedisMuxPool, TarantoolMux, TarantoolPool
from stress.servers import free_port

# Nothing listens there: a constructor that tried to connect would fail loudly.
PORT = free_port()

ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=6),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()),
)

POOL_OPTIONS = ("timeout", "check_after_idle", "max_lifetime", "max_idle", "leak_threshold", "max_waiting", "name")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def build(make: Callable[[], Any]) -> None:
    """Build with ``make``: only TypeError/ValueError may escape, and nothing may be left open."""
    before = open_fds()
    try:
        pool = make()
    except (TypeError, ValueError) as exc:
        event(f"refused: {type(exc).__name__}")
    else:
        event("built")
        stats = pool.get_stats()
        assert stats["pool_size" if "pool_size" in stats else "mux_sockets_up"] == 0, stats
        del pool
    gc.collect()
    assert open_fds() <= before


def options(draw: Callable[[Any], Any], names: tuple) -> Dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
    return {name: draw(ANY) for name in chosen}


@FUZZ
@given(st.data())
def test_pool_constructor(data: st.DataObject) -> None:
    kwargs = options(data.draw, (*POOL_OPTIONS, "max_connections", "min_connections", "keep_on", "check", "close"))
    build(lambda: Pool(object, **kwargs))


@FUZZ
@given(st.data())
def test_gevent_pool_constructor(data: st.DataObject) -> None:
    kwargs = options(data.draw, (*POOL_OPTIONS, "max_connections", "min_connections", "queue_class"))
    build(lambda: GeventPool(host="127.0.0.1", port=PORT, **kwargs))


@FUZZ
@given(st.data())
def test_tarantool_pool_constructor(data: st.DataObject) -> None:
    kwargs = options(
        data.draw,
        (*POOL_OPTIONS, "max_connections", "min_connections", "socket_timeout", "connection_timeout", "user"),
    )
    kwargs.setdefault("user", None)
    host = data.draw(st.one_of(st.just("127.0.0.1"), ANY))
    port = data.draw(st.one_of(st.just(PORT), ANY))
    build(lambda: TarantoolPool(host, port, **kwargs))


@FUZZ
@given(st.data())
def test_tarantool_mux_constructor(data: st.DataObject) -> None:
    kwargs = options(
        data.draw,
        ("shared_connections", "timeout", "socket_timeout", "max_in_flight", "connect_timeout", "name", "user"),
    )
    host = data.draw(st.one_of(st.just("127.0.0.1"), ANY))
    port = data.draw(st.one_of(st.just(PORT), ANY))
    build(lambda: TarantoolMux(host, port, **kwargs))


def url_text(scheme: str) -> st.SearchStrategy[str]:
    query_value = st.one_of(st.text(max_size=6), st.integers(-5, 10**6).map(str), st.sampled_from(["none", "1.5"]))
    query = st.lists(
        st.tuples(
            st.sampled_from(
                [*POOL_OPTIONS, "max_connections", "min_connections", "db", "shared_connections", "max_in_flight", "x"]
            ),
            query_value,
        ),
        max_size=4,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
    host = st.one_of(st.just("127.0.0.1"), st.text(max_size=8))
    port = st.one_of(st.just(str(PORT)), st.text(max_size=6), st.integers(-10, 10**6).map(str))
    structured = st.builds(lambda h, p, q: f"{scheme}://{h}:{p}/?{q}", host, port, query)
    return st.one_of(structured, st.text(max_size=40), st.builds(lambda t: f"{scheme}://{t}", st.text(max_size=30)))


@FUZZ
@given(url_text("redis"))
def test_gevent_pool_from_url(url: str) -> None:
    build(lambda: GeventPool.from_url(url))


@FUZZ
@given(url_text("tarantool"))
def test_tarantool_pool_from_url(url: str) -> None:
    build(lambda: TarantoolPool.from_url(url))


@FUZZ
@given(url_text("redis"))
def test_redis_mux_pool_from_url(url: str) -> None:
    build(lambda: RedisMuxPool.from_url(url))


@FUZZ
@given(url_text("tarantool"))
def test_tarantool_mux_from_url(url: str) -> None:
    build(lambda: TarantoolMux.from_url(url))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0?max_connections=abc", "redis://h?timeout=-1"])
def test_known_bad_redis_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        GeventPool.from_url(url)
