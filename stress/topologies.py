"""Start and stop groups of private servers: a Tarantool replica set, a Redis Sentinel set, a Redis Cluster.

Each member is a :mod:`stress.servers` server (free loopback port, own temporary directory, SIGTERM when the
process that started it dies); the members start at once and the group waits, bounded, until
every one answers. Used by the tests' fixtures and the harness's failover scenarios. Depends on
``stress.servers``, the standard library, and tarantool-python for the replica set's switchover.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from .servers import RedisServer, TarantoolServer, free_port

__all__ = ["RedisClusterServers", "RedisSentinelServers", "TarantoolReplicaSetServers", "TARANTOOL_REPLICASET_INIT"]

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


def _poll(done: Callable[[], Any], timeout: float, interval: float, failure: str) -> None:
    """Block (sleeping ``interval`` between looks) until ``done()`` is true; raise ``RuntimeError(failure ...)``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure} within {timeout} s")
        time.sleep(interval)


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


def _redis_cli(action: str, *args: str, timeout: float) -> str:
    """Run ``redis-cli --cluster ACTION ARGS... --cluster-yes`` in a child process; return its output.

    Blocks until it exits, at most ``timeout`` seconds. Raises ``RuntimeError`` with the install command when
    ``redis-cli`` is missing, and with its output when it fails."""
    import shutil
    import subprocess

    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not installed. Install it with: apt-get install -y redis-tools")
    command = [cli, "--cluster", action, *args, "--cluster-yes"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster {action} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def _redis_command(host: str, port: int, *args: str, timeout: float = 5.0) -> Any:
    """Send one command to a Redis (or Sentinel) with redis-py and return its reply."""
    import redis

    client = redis.Redis(host, port, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


class _LaunchableRedis(_Launchable, RedisServer):
    """A redis-server that starts a replica's sync at once (no 5 s wait for more replicas to share it)."""

    def _command(self, binary: str) -> List[str]:
        return [*super()._command(binary), "--repl-diskless-sync-delay", "0"]


class SentinelServer(_Launchable, RedisServer):
    """A ``redis-server --sentinel`` monitoring ``service`` on ``master_port`` (quorum ``quorum``)."""

    def __init__(self, master_port: int, service: str, quorum: int, down_after_ms: int) -> None:
        super().__init__()
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.log_path}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def _command(self, binary: str) -> List[str]:
        return [binary, str(self.config), "--sentinel"]


class RedisSentinelServers:
    """A Redis master, ``replicas`` replicas and ``sentinels`` sentinels monitoring it as ``service``.

    ``start()`` blocks until every sentinel sees the replicas and the other sentinels (hello messages go out
    every 2 s, so about 2-4 s), so that a failover can run at once. ``failover()`` runs ``SENTINEL FAILOVER`` and
    waits for the new master; ``kill_master()`` crashes the master (the sentinels promote a replica after
    ``down_after_ms``).
    """

    def __init__(
        self, replicas: int = 1, sentinels: int = 3, service: str = "mymaster", down_after_ms: int = 1000
    ) -> None:
        self.service = service
        self.master = _LaunchableRedis()
        self.replicas = [
            _LaunchableRedis(extra=["--replicaof", "127.0.0.1", str(self.master.port)]) for _ in range(replicas)
        ]
        quorum = sentinels // 2 + 1
        self.sentinels = [SentinelServer(self.master.port, service, quorum, down_after_ms) for _ in range(sentinels)]

    @property
    def servers(self) -> List[Any]:
        return [self.master, *self.replicas, *self.sentinels]

    @property
    def sentinel_addresses(self) -> List[Any]:
        return [(s.host, s.port) for s in self.sentinels]

    def master_address(self) -> Any:
        """The master's ``(host, port)`` as the first sentinel sees it."""
        host, port = _redis_command(
            "127.0.0.1", self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        )
        return host, int(port)

    def _settled(self) -> bool:
        nreplicas, nsentinels = len(self.replicas), len(self.sentinels) - 1
        for sentinel in self.sentinels:
            state = _redis_command("127.0.0.1", sentinel.port, "SENTINEL", "MASTER", self.service)
            info = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
            if int(info["num-slaves"]) < nreplicas or int(info["num-other-sentinels"]) < nsentinels:
                return False
            if "s_down" in info["flags"] or "o_down" in info["flags"]:
                return False
            # A sentinel promotes only a replica it has itself talked to lately (else NOGOODSLAVE).
            for state in _redis_command("127.0.0.1", sentinel.port, "SENTINEL", "REPLICAS", self.service):
                replica = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
                if replica["flags"] != "slave" or replica.get("master-link-status") != "ok":
                    return False
                if int(replica.get("info-refresh", 10**9)) > 5000:
                    return False
        for replica in self.replicas:
            role = _redis_command("127.0.0.1", replica.port, "ROLE")
            if role[0] != "slave" or role[3] != "connected":
                return False
        return True

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Block until every sentinel sees every replica and sentinel (at most ``timeout`` s)."""
        _poll(self._settled, timeout, 0.05, "the sentinels did not settle")

    def start(self) -> RedisSentinelServers:
        _start_all([self.master, *self.replicas], 15.0)
        try:
            _start_all(self.sentinels, 15.0)
            self.wait_settled()
        except BaseException:
            self.close()
            raise
        return self

    def failover(self, timeout: float = 15.0) -> Any:
        """Run ``SENTINEL FAILOVER`` and block until the sentinels name a new master; return its address."""
        old = self.master_address()
        _redis_command("127.0.0.1", self.sentinels[0].port, "SENTINEL", "FAILOVER", self.service)
        _poll(lambda: self.master_address() != old, timeout, 0.02, "no new master")
        return self.master_address()

    def server_at(self, address: Any) -> Any:
        return next(s for s in [self.master, *self.replicas] if (s.host, s.port) == tuple(address))

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> RedisSentinelServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ClusterMember(_Launchable, RedisServer):
    """A redis-server with ``--cluster-enabled yes`` (its node table in its own directory)."""

    def __init__(self, node_timeout_ms: int) -> None:
        super().__init__()
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = free_port()  # port + 10000 may be past 65535

    def _command(self, binary: str) -> List[str]:
        return [
            *super()._command(binary),
            *("--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")),
            *("--cluster-node-timeout", str(self.node_timeout_ms), "--repl-diskless-sync-delay", "0"),
            *("--cluster-port", str(self.bus_port)),
            *("--cluster-replica-validity-factor", "0"),  # a replica may always take over (tests kill masters)
        ]


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each (``redis-cli --cluster create``).

    ``start()`` blocks until every node reports ``cluster_state:ok`` and every replica is in sync (a few
    seconds). ``kill(i)`` crashes member ``i``; with ``node_timeout_ms`` (default 1000) a replica of a killed
    master takes over about 2 node timeouts later.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters!r}")
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self.members = [ClusterMember(node_timeout_ms) for _ in range(masters * (replicas + 1))]

    @property
    def startup_nodes(self) -> List[Any]:
        return [(m.host, m.port) for m in self.members]

    def _info(self, member: Any) -> Dict[str, str]:
        text = _redis_command(member.host, member.port, "CLUSTER", "INFO")
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).split() if ":" in line)

    def nodes(self) -> List[Dict[str, Any]]:
        """``CLUSTER NODES`` as the first live member sees it: id, address, flags, master id, slots."""
        for member in self.members:
            if member.proc is None or member.proc.poll() is not None:
                continue
            text = _redis_command(member.host, member.port, "CLUSTER", "NODES")
            if isinstance(text, bytes):
                text = text.decode()
            nodes = []
            for line in str(text).splitlines():
                fields = line.split()
                if len(fields) >= 8:
                    nodes.append(
                        {
                            "id": fields[0],
                            "address": fields[1].split("@")[0],
                            "flags": fields[2],
                            "master_id": fields[3],
                        }
                    )
            return nodes
        raise RuntimeError("no cluster member is running")

    def masters(self) -> List[int]:
        """The indexes of the members that are masters now (as a live member sees it)."""
        flagged = {n["address"] for n in self.nodes() if "master" in n["flags"] and "fail" not in n["flags"]}
        return [i for i, m in enumerate(self.members) if f"{m.host}:{m.port}" in flagged]

    def _settled(self, replicas: int) -> bool:
        in_sync = 0
        for member in self.members:
            if member.proc is None or member.proc.poll() is not None:
                continue
            if self._info(member).get("cluster_state") != "ok":
                return False
            role = _redis_command(member.host, member.port, "ROLE")
            if role[0] == "slave":
                if role[3] != "connected":
                    return False
                in_sync += 1
        return in_sync >= replicas

    def wait_settled(self, timeout: float = 30.0, replicas: int = 0) -> None:
        """Block until every live node says ``cluster_state:ok``, every replica is in sync and at least
        ``replicas`` members are replicas (a node assigned to replicate may still call itself a master for a
        moment after ``redis-cli --cluster create``); at most ``timeout`` seconds."""
        _poll(lambda: self._settled(replicas), timeout, 0.05, "the cluster did not settle")

    def start(self) -> RedisClusterServers:
        for attempt in range(3):
            try:
                _start_all(self.members, 15.0)
                break
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                # Another process took one of the ports between free_port() and the bind. Nothing refers to
                # the members' ports before the cluster is created: start afresh on new ones.
                self.members = [ClusterMember(self.node_timeout_ms) for _ in self.members]
        try:
            addresses = [f"{m.host}:{m.port}" for m in self.members]
            _redis_cli("create", *addresses, "--cluster-replicas", str(self.replicas_per_master), timeout=60)
            self.wait_settled(replicas=len(self.members) - len(self.members) // (self.replicas_per_master + 1))
        except BaseException:
            self.close()
            raise
        return self

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def reshard(self, source: int, target: int, slots: int) -> str:
        """Move ``slots`` hash slots with their keys from master ``source`` to master ``target`` (member indexes)
        with ``redis-cli --cluster reshard``, in a child process (so a busy event loop here does not slow it):
        clients meet ``ASK`` and ``MOVED`` meanwhile. Blocks until it is done (at most 120 s); returns its output."""
        src, dst = self.members[source], self.members[target]
        src_id = _redis_command(src.host, src.port, "CLUSTER", "MYID")
        dst_id = _redis_command(dst.host, dst.port, "CLUSTER", "MYID")
        return _redis_cli(
            "reshard",
            f"{src.host}:{src.port}",
            *("--cluster-from", src_id, "--cluster-to", dst_id, "--cluster-slots", str(slots)),
            timeout=120,
        )

    def close(self) -> None:
        for member in self.members:
            member.close()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _main() -> None:  # pragma: no cover - a manual check: python -m stress.topologies
    started = time.monotonic()
    with RedisClusterServers() as cluster:
        print("cluster up in", round(time.monotonic() - started, 2), "s; masters", cluster.masters())
    started = time.monotonic()
    with RedisSentinelServers() as ss:
        print("sentinel set up in", round(time.monotonic() - started, 2), "s; master", ss.master_address())
        t = time.monotonic()
        print("failover to", ss.failover(), "in", round(time.monotonic() - t, 2), "s")
    started = time.monotonic()
    with TarantoolReplicaSetServers() as rs:
        print("replica set up in", round(time.monotonic() - started, 2), "s:", rs.addresses)
        print([m.eval("return box.info.ro, box.info.status") for m in rs.members])
        print("switchover took", round(rs.switchover(1), 3), "s")
        print([m.eval("return box.info.ro") for m in rs.members])


if __name__ == "__main__":  # pragma: no cover
    _main()
