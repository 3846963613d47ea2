"""Start and stop groups of private servers: a Tarantool replica set (and, later here, Redis topologies).

Each member is a :mod:`stress.servers` server (free loopback port, own temporary directory, SIGTERM when the
process that started it dies); the members start at once and the group waits, bounded, until
every one answers. Used by the tests' fixtures and the harness's failover scenarios. Depends on
``stress.servers``, the standard library, and tarantool-python for the replica set's switchover.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .servers import TarantoolServer, free_port

__all__ = ["TarantoolReplicaSetServers", "TARANTOOL_REPLICASET_INIT"]

TARANTOOL_REPLICASET_INIT = Path(__file__).with_name("tarantool_replicaset.lua")


def _start_all(servers: Sequence[Any], timeout: float) -> None:
    """Launch every server, then wait (at most ``timeout`` s) until all answer; on failure stop them all and raise.

    Launching and waiting happen in this thread: Linux sends PDEATHSIG when the *thread* that started a child
    ends, so the servers must not be started from short-lived threads.
    """
    try:
        for server in servers:
            server.launching = True
            try:
                server.start()
            finally:
                server.launching = False
        deadline = time.monotonic() + timeout
        waiting = list(servers)
        while waiting:
            for server in list(waiting):
                if server.proc.poll() is not None:
                    raise RuntimeError(
                        f"{server.binary} on port {server.port} exited with {server.proc.returncode}:\n"
                        f"{server.log_tail()}"
                    )
                try:
                    if server._ready():
                        waiting.remove(server)
                except OSError:
                    pass
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"{[server.port for server in waiting]} did not answer within {timeout} s")
            time.sleep(0.02)
    except BaseException:
        for server in servers:
            server.close()
        raise


class _Launchable:
    """A server whose ``start()`` returns as soon as the process runs while ``launching`` is set."""

    launching = False

    def _ready(self) -> bool:
        return self.launching or bool(super()._ready())  # type: ignore[misc]


class ReplicaSetMember(_Launchable, TarantoolServer):
    """One instance of a :class:`TarantoolReplicaSetServers`: full-mesh replication to ``peers``."""

    start_timeout = 30.0

    def __init__(self, port: int, peers: List[str], read_only: bool) -> None:
        super().__init__(port)
        self.peers = peers
        self.read_only = read_only

    def _command(self, binary: str) -> List[str]:
        return [binary, str(TARANTOOL_REPLICASET_INIT)]

    def _env(self) -> Dict[str, str]:
        env = super()._env()
        env["TARANTOOL_REPLICATION"] = ",".join(self.peers)
        env["TARANTOOL_READ_ONLY"] = "1" if self.read_only else "0"
        return env

    def eval(self, code: str, *args: Any, timeout: float = 5.0) -> Any:
        """Run Lua ``code`` on this instance (as the test user) and return the reply's data, within ``timeout``."""
        import tarantool

        conn = tarantool.Connection(
            self.host,
            self.port,
            user=self.user,
            password=self.password,
            socket_timeout=timeout,
            connection_timeout=timeout,
            reconnect_max_attempts=0,
            fetch_schema=False,
        )
        try:
            return conn.eval(code, args).data
        finally:
            conn.close()


class TarantoolReplicaSetServers:
    """``size`` tarantool instances in one replica set (full-mesh ``box.cfg`` replication); member 0 starts as the
    master, the others read-only. ``start()`` blocks until every member has the schema (at most 30 s).

    ``switchover(new)`` makes member ``new`` the master gracefully, as an operator would: the old master turns
    read-only, ``new`` catches up with it, then ``new`` turns writable. ``kill(i)``/``start_member(i)`` crash and
    restart one member on its port.
    """

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        ports = [free_port() for _ in range(size)]
        while len(set(ports)) < size:  # pragma: no cover - the kernel handed the same port twice
            ports = [free_port() for _ in range(size)]
        peers = [f"127.0.0.1:{port}" for port in ports]
        self.members = [ReplicaSetMember(port, peers, read_only=index != 0) for index, port in enumerate(ports)]
        self.master_index = 0

    @property
    def addresses(self) -> List[str]:
        """``host:port`` of every member, the master first (at start)."""
        return [f"{member.host}:{member.port}" for member in self.members]

    @property
    def user(self) -> str:
        return self.members[0].user

    @property
    def password(self) -> str:
        return self.members[0].password

    def start(self) -> TarantoolReplicaSetServers:
        _start_all(self.members, 30.0)
        return self

    def start_member(self, index: int) -> None:
        self.members[index].start()

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def switchover(self, new: int, timeout: float = 10.0) -> float:
        """Make member ``new`` the master; return the seconds during which no member was writable.

        Raises ``RuntimeError`` when ``new`` has not caught up with the old master within ``timeout``.
        """
        old = self.master_index
        if new == old:
            return 0.0
        started = time.monotonic()
        old_member, new_member = self.members[old], self.members[new]
        old_id, lsn = old_member.eval("box.cfg{read_only = true} return box.info.id, box.info.lsn")
        wait = (
            "local id, lsn, timeout = ... local fiber = require('fiber') local deadline = fiber.clock() + timeout "
            "while (box.info.vclock[id] or 0) < lsn do if fiber.clock() > deadline then return false end "
            "fiber.sleep(0.005) end box.cfg{read_only = false} return true"
        )
        if not new_member.eval(wait, old_id, lsn, timeout, timeout=timeout + 5)[0]:
            raise RuntimeError(f"member {new} did not catch up with member {old} (lsn {lsn}) within {timeout} s")
        self.master_index = new
        return time.monotonic() - started

    def close(self) -> None:
        for member in self.members:
            member.close()

    def __enter__(self) -> TarantoolReplicaSetServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _main() -> None:  # pragma: no cover - a manual check: python -m stress.topologies
    started = time.monotonic()
    with TarantoolReplicaSetServers() as rs:
        print("replica set up in", round(time.monotonic() - started, 2), "s:", rs.addresses)
        print([m.eval("return box.info.ro, box.info.status") for m in rs.members])
        print("switchover took", round(rs.switchover(1), 3), "s")
        print([m.eval("return box.info.ro") for m in rs.members])


if __name__ == "__main__":  # pragma: no cover
    _main()
