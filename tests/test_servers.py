"""Tests of the server launchers in ``stress.servers`` that the tests and the harness share."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Starts a private server, prints its pid and directory, then waits to be killed.
CHILD = """
import sys, time
from stress.servers import RedisServer
server = RedisServer().start()
print(server.proc.pid, server.dir, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is a Linux feature")
def test_a_server_does_not_outlive_the_process_that_started_it() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    pid = 0
    directory = ""
    try:
        assert child.stdout is not None
        pid_text, directory = child.stdout.readline().split(maxsplit=1)
        pid = int(pid_text)
        assert _alive(pid)
        child.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can stop the server now
        child.wait()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the server outlived the process that started it"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)  # leave nothing behind, even when the test fails
        if directory:
            shutil.rmtree(directory.strip(), ignore_errors=True)


def test_ports_are_never_handed_out_twice_and_a_cluster_moves_off_a_taken_port() -> None:
    import socket

    from stress.servers import free_port
    from stress.topologies import RedisClusterServers

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    cluster = RedisClusterServers()
    taken = cluster.members[0].port
    with socket.socket() as squatter:  # another process takes a port between free_port() and the bind
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with cluster:
            assert taken not in [port for _, port in cluster.startup_nodes]
            assert len(cluster.masters()) == 3
