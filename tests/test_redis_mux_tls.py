"""``greenpool.RedisMuxPool`` over TLS: a private TLS-only redis-server (the CA and certificates of
``tests.test_redis_tls``), shared sockets multiplexed over TLS with redis-py's certificate checks, replies larger
than the read buffer, many greenlets on one socket, a server that goes away; and the error without hiredis.

Depends on ``stress.servers.RedisServer`` and the ``openssl`` binary (installed with the servers by ``make test``).
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterator
from urllib.parse import quote

import gevent
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from greenpool import GeventPool, RedisMuxPool
from stress.servers import RedisServer
from tests.test_redis_tls import certs, tls_server

__all__ = ["certs", "tls_server"]  # fixtures used here


def tls_pool(server: RedisServer, certs: Dict[str, str], **kwargs: Any) -> RedisMuxPool:
    options: Dict[str, Any] = {"max_connections": 50, "timeout": 5, "ssl": True, "ssl_ca_certs": certs["ca"]}
    options.update(kwargs)
    return RedisMuxPool(host=server.host, port=server.port, **options)


@pytest.fixture
def mux(tls_server: RedisServer, certs: Dict[str, str]) -> Iterator[RedisMuxPool]:
    pool = tls_pool(tls_server, certs)
    yield pool
    pool.disconnect()


def server_clients(server: RedisServer, certs: Dict[str, str]) -> int:
    """Clients connected to the server, this check's own connection left out."""
    checker = GeventPool(host=server.host, port=server.port, ssl=True, ssl_ca_certs=certs["ca"], max_connections=1)
    try:
        return int(redis.Redis(connection_pool=checker).info("clients")["connected_clients"]) - 1
    finally:
        checker.disconnect()


def test_plain_commands_share_one_tls_socket(mux: RedisMuxPool, tls_server: RedisServer, certs: Any) -> None:
    r = redis.Redis(connection_pool=mux)
    prefix = f"tls-mux:{uuid.uuid4().hex[:8]}:"
    assert r.ping() is True and r.set(prefix + "a", "1") is True and r.get(prefix + "a") == b"1"
    with r.pipeline(transaction=False) as pipe:
        assert pipe.incr(prefix + "n").incr(prefix + "n").get(prefix + "n").execute() == [1, 2, b"2"]
    stats = mux.get_stats()
    assert stats["mux_dedicated_checkouts"] == 0 and stats["mux_sockets_up"] == 1 and stats["mux_connects"] == 1
    assert stats["mux_requests"] == stats["mux_replies"] and server_clients(tls_server, certs) == 1


def test_300_greenlets_over_one_tls_socket_get_their_own_replies(
    tls_server: RedisServer, certs: Dict[str, str]
) -> None:
    # The case: TLS, 300 greenlets, one shared socket. Each greenlet reads back what it wrote.
    pool = tls_pool(tls_server, certs, shared_connections=1, max_connections=50)
    r = redis.Redis(connection_pool=pool)
    prefix = f"tls-300:{uuid.uuid4().hex[:8]}:"
    wrong = []

    def work(i: int) -> None:
        for n in range(20):
            value = f"{i}:{n}"
            r.set(f"{prefix}{i}", value)
            got = r.get(f"{prefix}{i}")
            if got != value.encode():
                wrong.append((i, n, got))

    try:
        greenlets = [gevent.spawn(work, i) for i in range(300)]
        gevent.joinall(greenlets, timeout=60, raise_error=True)
        assert all(g.successful() for g in greenlets) and wrong == []
        stats = pool.get_stats()
        assert stats["mux_requests"] == stats["mux_replies"] == 300 * 40 and stats["mux_failed"] == 0
        assert stats["mux_dedicated_checkouts"] == 0 and stats["pool_size"] == 0
        assert server_clients(tls_server, certs) <= 2
    finally:
        pool.disconnect()


def test_replies_larger_than_the_read_buffer_arrive_whole(mux: RedisMuxPool) -> None:
    # A TLS record holds 16 KB: a 1 MB value takes many reads, and the read buffer (256 KB) fills up while the
    # SSL object still holds decrypted data that no watcher sees.
    r = redis.Redis(connection_pool=mux)
    key = f"tls-big:{uuid.uuid4().hex[:8]}"
    big = bytes(range(256)) * 4096
    r.set(key, big)
    results = [gevent.spawn(r.get, key) for _ in range(4)]
    gevent.joinall(results, timeout=30, raise_error=True)
    assert all(g.value == big for g in results)
    assert mux.get_stats()["mux_dedicated_checkouts"] == 0


def test_the_certificate_is_checked_as_redis_py_checks_it(tls_server: RedisServer, certs: Dict[str, str]) -> None:
    # No CA given: the server's certificate (signed by the throwaway CA) does not verify.
    untrusting = tls_pool(tls_server, certs, ssl_ca_certs=None)
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        redis.Redis(connection_pool=untrusting, retry=None).ping()
    assert untrusting.get_stats()["mux_sockets_up"] == 0
    # redis-py's ssl_* arguments hold as they are: told not to check, it does not.
    trusting = tls_pool(tls_server, certs, ssl_ca_certs=None, ssl_cert_reqs="none", ssl_check_hostname=False)
    try:
        assert redis.Redis(connection_pool=trusting).ping() is True
        assert trusting.get_stats()["mux_sockets_up"] == 1
    finally:
        trusting.disconnect()


def test_rediss_url(tls_server: RedisServer, certs: Dict[str, str]) -> None:
    url = f"rediss://{tls_server.host}:{tls_server.port}/0?ssl_ca_certs={quote(certs['ca'])}&shared_connections=2"
    pool = RedisMuxPool.from_url(url)
    try:
        r = redis.Redis(connection_pool=pool)
        gevent.joinall([gevent.spawn(r.ping) for _ in range(10)], timeout=10, raise_error=True)
        stats = pool.get_stats()
        assert stats["mux_connects"] == 2 and stats["mux_dedicated_checkouts"] == 0
    finally:
        pool.disconnect()


def test_a_lost_tls_socket_fails_its_commands_and_the_next_one_reconnects(mux: RedisMuxPool) -> None:
    r = redis.Redis(connection_pool=mux, retry=None)
    assert r.ping() is True
    mux._sockets[0].sock.close()  # the TLS socket goes away under the hub's watchers' feet
    with pytest.raises(RedisConnectionError):
        gevent.with_timeout(10, r.ping)
    assert gevent.with_timeout(10, r.ping) is True
    assert mux.get_stats()["mux_connects"] == 2


def test_without_hiredis_the_error_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import greenpool.redis_mux

    monkeypatch.setattr(greenpool.redis_mux, "hiredis", None)
    with pytest.raises(ImportError, match="pip install hiredis"):
        RedisMuxPool(host="127.0.0.1", port=1)
