"""Shared fixtures: real servers started on free loopback ports, and small helpers.

``redis_server`` / ``tarantool_server`` (one per test session) start a private server, unless
``GREENPOOL_REDIS_URL`` / ``GREENPOOL_TARANTOOL_URL`` name one (e.g. the docker-compose services).
``fresh_redis`` / ``fresh_tarantool`` always start a private server for one test (tests that kill it).
A missing server binary fails loudly with the install command (``stress.servers.ServerMissing``).
"""

from __future__ import annotations

# The suite runs monkey-patched (the Makefile starts it with `python -m gevent.monkey --module pytest`);
# patch here too for a plain `pytest` run, as early as a conftest can.
from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import os
from typing import Iterator, Optional
from urllib.parse import urlparse

import pytest

from stress.servers import RedisServer, TarantoolServer


class ExternalServer:
    """A server the user runs (from its URL); it cannot be killed or restarted by the tests."""

    def __init__(self, url: str) -> None:
        parts = urlparse(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.user: Optional[str] = parts.username
        self.password: Optional[str] = parts.password
        self.unix_path = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    url = os.environ.get("GREENPOOL_REDIS_URL")
    if url:
        yield ExternalServer(url)
        return
    server = RedisServer(unix_socket=True)
    with server:
        yield server


@pytest.fixture(scope="session")
def tarantool_server() -> Iterator[object]:
    url = os.environ.get("GREENPOOL_TARANTOOL_URL")
    if url:
        yield ExternalServer(url)
        return
    server = TarantoolServer()
    with server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    with server:
        yield server


@pytest.fixture
def fresh_tarantool() -> Iterator[TarantoolServer]:
    server = TarantoolServer()
    with server:
        yield server


# ---------------------------------------------------------------------- fault-suite summary table

_FAULT_ROWS: list = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props = dict(report.user_properties)
    if "scenario" not in props:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        # A scenario may name its backend itself (the connect faults name the pool class).
        props.setdefault("backend", "tarantool" if "[tarantool]" in report.nodeid else "redis")
        props["passed"] = report.outcome
        _FAULT_ROWS.append(props)


def pytest_terminal_summary(terminalreporter: object) -> None:
    if not _FAULT_ROWS:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write("")
    header = f"{'scenario':<23} {'backend':<13} {'result':<7} {'recovery s':>10} {'lost writes':>11} {'max wait s':>10}"
    write("fault scenarios")
    write(header)
    write("-" * len(header))
    for row in _FAULT_ROWS:
        recovery = "-" if row.get("recovery_s") is None else f"{row['recovery_s']:.3f}"
        lost = "-" if row.get("lost_writes") is None else str(row["lost_writes"])
        wait = "-" if row.get("max_wait_s") is None else f"{row['max_wait_s']:.3f}"
        write(f"{row['scenario']:<23} {row['backend']:<13} {row['passed']:<7} {recovery:>10} {lost:>11} {wait:>10}")


# ---------------------------------------------------------------------- several servers (stress/topologies.py)


@pytest.fixture
def tarantool_replicaset() -> Iterator[object]:
    """A private 3-instance Tarantool replica set (member 0 the master), for one test (tests switch roles)."""
    from stress.topologies import TarantoolReplicaSetServers

    servers = TarantoolReplicaSetServers(3)
    with servers:
        yield servers


@pytest.fixture
def redis_sentinel_set() -> Iterator[object]:
    """A private Redis master, 1 replica and 3 sentinels (service ``mymaster``), for one test (tests fail over)."""
    from stress.topologies import RedisSentinelServers

    servers = RedisSentinelServers(replicas=1, sentinels=3)
    with servers:
        yield servers


@pytest.fixture
def redis_cluster_servers() -> Iterator[object]:
    """A private Redis Cluster, 3 masters and 3 replicas, for one test (tests migrate slots, kill masters)."""
    from stress.topologies import RedisClusterServers

    servers = RedisClusterServers(masters=3, replicas=1)
    with servers:
        yield servers
