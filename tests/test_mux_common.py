"""What both multiplexers share: the same ``mux_*`` statistics keys, ``pop_stats()``, ``shared_connections``
(and its deprecated old name), the default names."""

from __future__ import annotations

from typing import Any

import gevent
import redis

from greenpool import RedisMuxPool, TarantoolMux


def test_both_multiplexers_report_the_same_mux_keys(redis_server: Any, tarantool_server: Any) -> None:
    r, t = redis_server, tarantool_server
    pool = RedisMuxPool(host=r.host, port=r.port, password=getattr(r, "password", None), shared_connections=2)
    mux = TarantoolMux(t.host, t.port, t.user, t.password, shared_connections=2)
    try:
        client = redis.Redis(connection_pool=pool)
        gevent.joinall([gevent.spawn(client.ping) for _ in range(4)], timeout=10, raise_error=True)
        gevent.joinall([gevent.spawn(mux.ping) for _ in range(4)], timeout=10, raise_error=True)
        redis_stats, tarantool_stats = pool.pop_stats(), mux.pop_stats()
        redis_keys = {key for key in redis_stats if key.startswith("mux_")} - {"mux_dedicated_checkouts"}
        assert redis_keys == {key for key in tarantool_stats if key.startswith("mux_")}
        for stats in (redis_stats, tarantool_stats):
            assert stats["mux_shared_connections"] == stats["mux_connects"] == stats["mux_sockets_up"] == 2
            assert stats["mux_requests"] == stats["mux_replies"] == 4 and stats["mux_waiting"] == 0
        for stats in (pool.get_stats(), mux.get_stats()):  # the totals start again; the gauges stay
            assert stats["mux_requests"] == stats["mux_connects"] == 0 and stats["mux_sockets_up"] == 2
    finally:
        pool.disconnect()
        mux.close()


def test_default_names() -> None:
    assert TarantoolMux("127.0.0.1", 3302).name == "tarantool 127.0.0.1:3302"
    assert TarantoolMux(None, "/tmp/tnt.sock").name == "tarantool /tmp/tnt.sock"
    assert RedisMuxPool(host="127.0.0.1", port=6380, db=2).get_stats()["name"] == "redis 127.0.0.1:6380/2"
