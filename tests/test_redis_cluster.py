"""Tests of ``greenpool.redis_cluster`` against a real 3+3 Redis Cluster (``redis_cluster_servers`` fixture of
``conftest.py``, built by ``stress/topologies.py``): every node gets the pool, a checkout timeout is not a node
failure, cross-node pipelines do not hold-and-wait, ``ASKING`` on the multiplexer goes with its command, and
the combined stats.
"""

from __future__ import annotations

from typing import Any, Callable, List

import gevent
import gevent.event
import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

import greenpool
from greenpool.redis import RedisPoolTimeout
from greenpool.redis_cluster import (
    ClusterGeventPool,
    ClusterMuxPool,
    ClusterPoolTimeout,
    check_cluster_pools,
    cluster_stats,
    redis_cluster,
)
from tests import helpers


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """:func:`tests.helpers.wait_until`, with this file's longer default (fail-overs take seconds)."""
    helpers.wait_until(predicate, timeout)


@pytest.mark.parametrize("multiplexed", [False, True], ids=["gevent", "mux"])
def test_every_node_gets_the_pool_with_its_settings(redis_cluster_servers: Any, multiplexed: bool) -> None:
    servers = redis_cluster_servers
    host, port = servers.startup_nodes[0]
    rc = redis_cluster([f"{host}:{port}"], max_connections=3, timeout=2.0, multiplexed=multiplexed)
    try:
        for i in range(50):
            rc.set(f"key{i}", i)
        assert [rc.get(f"key{i}") for i in range(50)] == [str(i).encode() for i in range(50)]
        kind = ClusterMuxPool if multiplexed else ClusterGeventPool
        check_cluster_pools(rc, kind)
        pools = [node.redis_connection.connection_pool for node in rc.get_nodes()]
        assert len(pools) >= 3
        assert all(pool.max_connections == 3 and pool.timeout == 2.0 for pool in pools)
        stats = cluster_stats(rc)
        assert set(stats["nodes"]) == {node.name for node in rc.get_nodes()}
        assert stats["total"]["pool_max"] == 3 * len(pools)
    finally:
        rc.close()


def test_a_plain_cluster_client_fails_the_check(redis_cluster_servers: Any) -> None:
    host, port = redis_cluster_servers.startup_nodes[0]
    rc = RedisCluster(host, port)
    try:
        with pytest.raises(TypeError, match="do not use a GeventPool"):
            check_cluster_pools(rc)
    finally:
        rc.close()


def test_a_checkout_timeout_is_not_a_node_failure(redis_cluster_servers: Any) -> None:
    host, port = redis_cluster_servers.startup_nodes[0]
    rc = redis_cluster([(host, port)], max_connections=1, timeout=0.05)
    try:
        rc.set("{k}a", 1)  # opens the node's one connection
        pool = rc.get_node_from_key("{k}a").redis_connection.connection_pool
        holder = gevent.spawn(rc.blpop, ["{k}list"], 1)  # holds it for a second
        wait_until(lambda: pool.get_stats()["in_use"] == 1)
        with pytest.raises(ClusterPoolTimeout) as info:
            rc.get("{k}a")
        assert isinstance(info.value, MaxConnectionsError) and isinstance(info.value, RedisPoolTimeout)
        assert isinstance(info.value, greenpool.PoolTimeout)
        holder.join(10)
        assert holder.dead and holder.exception is None  # its connection was not closed under it
        stats = pool.get_stats()
        assert stats["connections_num"] == 1 and stats["connections_lost"] == 0
        assert rc.get("{k}a") == b"1"
    finally:
        rc.close()


def test_cross_node_pipelines_do_not_hold_and_wait(redis_cluster_servers: Any) -> None:
    host, port = redis_cluster_servers.startup_nodes[0]
    rc = redis_cluster([(host, port)], max_connections=2, timeout=20.0)
    errors: List[BaseException] = []
    done = [0]

    def worker(w: int) -> None:
        for n in range(5):
            pipe = rc.pipeline(transaction=False)
            for k in range(12):  # keys on every master
                pipe.set(f"p{w}:{n}:{k}", k)
            try:
                assert pipe.execute() == [True] * 12
            except Exception as exc:  # every error is a failure of the test
                errors.append(exc)
                return
            done[0] += 1

    try:
        greenlets = [gevent.spawn(worker, w) for w in range(40)]
        gevent.joinall(greenlets, timeout=60)
        assert all(g.dead for g in greenlets)
        assert errors == [] and done[0] == 200
        total = cluster_stats(rc)["total"]
        assert total["requests_timeouts"] == 0
        assert all(s["pool_size"] <= 2 for s in cluster_stats(rc)["nodes"].values())
    finally:
        rc.close()


def _node_id(client: redis.Redis) -> str:
    return str(client.execute_command("CLUSTER", "MYID").decode())


def test_asking_on_the_multiplexer_goes_with_its_command(redis_cluster_servers: Any) -> None:
    servers = redis_cluster_servers
    host, port = servers.startup_nodes[0]
    rc = redis_cluster([(host, port)], max_connections=4, timeout=5.0, multiplexed=True)
    source_node = rc.get_node_from_key("{ask}")
    slot = rc.keyslot("{ask}")
    target_node = next(n for n in rc.get_primaries() if n.name != source_node.name)
    source = redis.Redis(source_node.host, source_node.port)
    target = redis.Redis(target_node.host, target_node.port)
    errors: List[BaseException] = []
    try:
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))

        def worker(w: int) -> None:
            for n in range(20):
                try:
                    rc.set(f"{{ask}}:{w}:{n}", n)  # new keys of a migrating slot: ASK to the target
                except Exception as exc:  # every error is a failure of the test
                    errors.append(exc)
                    return

        greenlets = [gevent.spawn(worker, w) for w in range(50)]
        gevent.joinall(greenlets, timeout=60)
        assert all(g.dead for g in greenlets)
        assert errors == [], [str(e) for e in errors[:3]]
        target.execute_command("ASKING")
        assert target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 50 * 20
        assert source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        for client in (source, target):
            client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            client.close()
        rc.close()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="startup_nodes or url"):
        redis_cluster()
    with pytest.raises(ValueError, match="startup_nodes"):
        redis_cluster(["nowhere"])
    with pytest.raises(TypeError, match="pool class"):
        redis_cluster(["127.0.0.1:7000"], connection_pool_class=ClusterGeventPool)
    with pytest.raises(ValueError, match="max_connections"):
        redis_cluster(["127.0.0.1:7000"], max_connections=0)


@pytest.mark.parametrize("multiplexed", [False, True], ids=["gevent", "mux"])
def test_a_killed_master_under_load_errs_only_on_its_slots_and_its_slots_come_back(
    redis_cluster_servers: Any, multiplexed: bool
) -> None:
    servers = redis_cluster_servers
    host, port = servers.startup_nodes[0]
    rc = redis_cluster([(host, port)], max_connections=4, timeout=10.0, multiplexed=multiplexed, socket_timeout=5.0)
    victim = servers.masters()[0]
    victim_name = f"{servers.members[victim].host}:{servers.members[victim].port}"
    keys = [f"key{i}" for i in range(150)]
    on_victim = {k for k in keys if rc.get_node_from_key(k).name == victim_name}
    assert on_victim and len(on_victim) < len(keys)
    other_errors: List[BaseException] = []
    victim_ok_after_kill = [0]
    done = [0]
    killed = gevent.event.Event()
    stop = gevent.event.Event()

    def worker(key: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                rc.set(key, n)
                done[0] += 1
                if key in on_victim and killed.is_set():
                    victim_ok_after_kill[0] += 1
            except Exception as exc:  # errors on the killed master's slots are expected for a while
                if key not in on_victim:
                    other_errors.append(exc)
                gevent.sleep(0.01)
            n += 1

    try:
        greenlets = [gevent.spawn(worker, k) for k in keys]
        wait_until(lambda: done[0] >= 200)
        servers.kill(victim)
        killed.set()
        # A replica takes over (2 node timeouts of 1 s, then the election): its slots serve again.
        wait_until(lambda: victim_ok_after_kill[0] > 0, timeout=30)
        stop.set()
        gevent.joinall(greenlets, timeout=20)
        assert all(g.dead for g in greenlets)
        assert other_errors == [], [repr(e) for e in other_errors[:3]]
        assert all(s["pool_size"] <= 4 for s in cluster_stats(rc)["nodes"].values())
    finally:
        stop.set()
        rc.close()


def test_the_harness_slot_migration_scenario_runs_and_checks(tmp_path: Any) -> None:
    import json

    out = tmp_path / "cluster.json"
    argv = ["cluster", "--fault", "migrate", "--greenlets", "50", "--duration", "3", "--check", "--json", str(out)]
    helpers.run_harness([*argv, "--pools", "greenpool,greenpool-mux"])
    for name, [run] in json.loads(out.read_text())["results"].items():
        # Half of a master's slots moved under load: ASK and MOVED followed, nothing lost or misrouted.
        assert run["slots_moved"] > 1000 and run["ok"] > 0, name
        assert run["errors"] == run["wrong_replies"] == run["lost_acked"] == 0, (name, run)
        assert run["acked"] >= 50, name  # each greenlet's writes, every one read back with its value


def test_the_harness_master_kill_scenario_runs_and_checks(tmp_path: Any) -> None:
    import json

    out = tmp_path / "cluster.json"
    argv = ["cluster", "--greenlets", "50", "--duration", "4", "--check", "--json", str(out)]
    helpers.run_harness([*argv, "--pools", "greenpool,greenpool-mux"])
    for name, [run] in json.loads(out.read_text())["results"].items():
        # A master kill -9ed under load: no error on the other masters' slots, every write read back afterwards
        # (acknowledged by the master alone, so one the replica had not received may be lost: not checked).
        assert run["ok"] > 0 and run["acked"] >= 50, (name, run)
        assert run["errors_other_slots"] == run["wrong_replies"] == 0, (name, run)


@pytest.mark.parametrize(
    "imports",
    [
        "import greenpool\nfirst = greenpool.redis_cluster\nimport greenpool.redis_cluster",
        "import greenpool.redis_cluster",
    ],
    ids=["package-attribute-first", "module-first"],
)
def test_redis_cluster_is_callable_whichever_import_came_first(imports: str) -> None:
    import subprocess
    import sys

    code = imports + (
        "\nfrom greenpool import redis_cluster\nimport greenpool\n"
        "assert redis_cluster is greenpool.redis_cluster and callable(redis_cluster)\n"
        "assert greenpool.redis_cluster.cluster_stats and greenpool.redis_cluster.ClusterGeventPool\n"
        "try:\n    redis_cluster()\nexcept TypeError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "startup_nodes or url" in out.stdout
