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
