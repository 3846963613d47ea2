"""``greenpool.GeventPool`` over TLS: a throwaway CA and server certificate made with the ``openssl`` CLI, a private
TLS-only redis-server, and connections made with ``ssl=True``, ``rediss://`` and ``connection_class=SSLConnection``;
an interrupted read discards its connection, an interrupted TLS handshake leaves no socket open.

Depends on ``stress.servers.RedisServer`` and the ``openssl`` binary (installed with the servers by ``make test``).
"""

from __future__ import annotations

import gc
import shutil
import signal
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator
from urllib.parse import quote

import gevent
import pytest
import redis
from redis._parsers import _HiredisParser, _RESP2Parser
from redis.connection import SSLConnection

from greenpool import GeventPool
from stress.servers import RedisServer


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed. Install it with: apt-get install -y openssl (or `make test`)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """A CA and a server certificate for 127.0.0.1 / localhost, valid for a day."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=greenpool CA", cwd=d
    )
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
        cwd=d,
    )  # fmt: skip
    return {"cert": str(d / "server.crt"), "key": str(d / "server.key"), "ca": str(d / "ca.crt")}


@pytest.fixture(scope="module")
def tls_server(certs: Dict[str, str]) -> Iterator[RedisServer]:
    server = RedisServer(tls=certs)
    with server:
        yield server


@pytest.mark.parametrize(
    "parser_class", [pytest.param(_HiredisParser, id="hiredis"), pytest.param(_RESP2Parser, id="python")]
)
def test_ssl_true(tls_server: RedisServer, certs: Dict[str, str], parser_class: Any) -> None:
    pool = GeventPool(
        host=tls_server.host,
        port=tls_server.port,
        ssl=True,
        ssl_ca_certs=certs["ca"],
        parser_class=parser_class,
        max_connections=3,
        timeout=5,
    )
    assert pool.connection_class is SSLConnection
    r = redis.Redis(connection_pool=pool)
    assert r.set("tls", "yes") is True
    assert r.get("tls") == b"yes"
    with r.pipeline() as pipe:
        assert pipe.incr("tls-n").incr("tls-n").execute() == [1, 2]
    r.delete("tls-n")
    assert pool.get_stats()["in_use"] == 0
    pool.disconnect()


def test_rediss_url_and_connection_class(tls_server: RedisServer, certs: Dict[str, str]) -> None:
    url = f"rediss://localhost:{tls_server.port}/0?ssl_ca_certs={quote(certs['ca'])}&max_connections=3&timeout=1"
    pool = GeventPool.from_url(url)
    assert pool.connection_class is SSLConnection and pool.max_connections == 3 and pool.timeout == 1
    assert redis.Redis(connection_pool=pool).ping() is True
    explicit = GeventPool(
        connection_class=SSLConnection, host=tls_server.host, port=tls_server.port, ssl_ca_certs=certs["ca"]
    )
    assert redis.Redis(connection_pool=explicit).ping() is True
    pool.disconnect()
    explicit.disconnect()


def test_untrusted_certificate_frees_the_slot(tls_server: RedisServer) -> None:
    pool = GeventPool(host=tls_server.host, port=tls_server.port, ssl=True, max_connections=1, timeout=1)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(connection_pool=pool).ping()  # the test CA is not trusted
    stats = pool.get_stats()
    assert stats["pool_size"] == 0 and stats["in_use"] == 0 and stats["connections_errors"] == 1


def tls_pool(server: RedisServer, certs: Dict[str, str]) -> GeventPool:
    return GeventPool(
        host=server.host, port=server.port, ssl=True, ssl_ca_certs=certs["ca"], max_connections=1, timeout=5
    )


def test_interrupted_tls_read_is_discarded(tls_server: RedisServer, certs: Dict[str, str]) -> None:
    pool = tls_pool(tls_server, certs)
    r = redis.Redis(connection_pool=pool)
    # Connected first, so that the timeout below interrupts the read and nothing else, however slow the machine
    # (the TCP connect and TLS handshake would otherwise share its 50 ms: see the test after this one).
    assert r.ping() is True
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            r.blpop(["tls-never"], 5)  # the server answers in 5 s: the timeout lands in the read
    stats = pool.get_stats()
    assert stats["pool_size"] == 0 and stats["in_use"] == 0 and stats["connections_lost"] == 1
    r.rpush("tls-q", "x")
    assert r.lpop("tls-q") == b"x"  # the next reply is its own, not the late BLPOP one
    pool.disconnect()


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server for the block: its kernel still completes TCP connects, the TLS handshake hangs."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10  # the signal is delivered asynchronously: wait until it took effect
        while _state(server.proc.pid) != "T":
            assert time.monotonic() < deadline, "the server did not stop"
            gevent.sleep(0.005)
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("when", ["new-connection", "reconnect"])
def test_interrupted_tls_handshake_leaves_no_socket_open(
    tls_server: RedisServer, certs: Dict[str, str], when: str
) -> None:
    # redis-py holds the socket of a connect in a local variable until the handshake is done, and ssl, gevent and
    # redis-py close it only for an OSError: the pool must close it when a gevent.Timeout stops the handshake, or
    # it is left open to the garbage collector ("ResourceWarning: unclosed <socket ...>").
    pool = tls_pool(tls_server, certs)
    r = redis.Redis(connection_pool=pool)
    if when == "reconnect":
        assert r.ping() is True
        pool.disconnect()  # idle and disconnected: the next checkout reconnects it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with stopped(tls_server):
            try:
                with gevent.Timeout(0.3):
                    r.ping()
            except gevent.Timeout as exc:
                # Drop the traceback now: a socket that only its frames held is collected in this block.
                exc.__traceback__ = None
            else:
                pytest.fail("the ping answered while the server was stopped")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    stats = pool.get_stats()
    assert stats["pool_size"] == 0 and stats["in_use"] == 0
    assert r.ping() is True  # the server is back: a new connection works
    pool.disconnect()
