"""Tests of ``greenpool.TarantoolReplicaSet`` against a real 3-instance replica set (``tarantool_replicaset``
fixture of ``conftest.py``, built by ``stress/topologies.py``): role discovery, routing by mode, a switchover
under load (every reply to its caller, every acknowledged write on the new master), writes that wait for a
master, ``ER_READONLY`` retried and network errors not, argument checks and secrets.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import gevent
import gevent.event
import pytest
from tarantool import Mode
from tarantool.error import NetworkError, PoolTopologyError

import greenpool
from greenpool.tarantool import TarantoolPoolTimeout
from greenpool.tarantool_replicaset import MASTER, REPLICA, NoInstanceAvailable, TarantoolReplicaSet
from tests.helpers import in_forked_child, wait_until

INSTANCE_ID = "return box.info.id"


def make_rs(servers: Any, **kw: Any) -> TarantoolReplicaSet:
    kw.setdefault("timeout", 10.0)
    kw.setdefault("refresh_interval", 0.2)
    return TarantoolReplicaSet(servers.addresses, servers.user, servers.password, **kw)


def instance_id(servers: Any, index: int) -> int:
    return int(servers.members[index].eval(INSTANCE_ID)[0])


def test_roles_are_discovered_and_requests_routed_by_mode(tarantool_replicaset: Any) -> None:
    servers = tarantool_replicaset
    with make_rs(servers) as rs:
        assert rs.ping() is not None
        assert rs.roles() == dict(zip(servers.addresses, [MASTER, REPLICA, REPLICA]))
        master_id = instance_id(servers, 0)
        assert rs.eval(INSTANCE_ID).data[0] == master_id  # call/eval default to RW
        replica_ids = {instance_id(servers, 1), instance_id(servers, 2)}
        seen = {rs.eval(INSTANCE_ID, mode=Mode.RO).data[0] for _ in range(20)}
        assert seen == replica_ids  # reads spread over both replicas
        assert rs.eval(INSTANCE_ID, mode="prefer_ro").data[0] in replica_ids
        assert rs.eval(INSTANCE_ID, mode="PREFER_RW").data[0] == master_id
        with rs.connection(mode=Mode.RO) as tnt:
            assert tnt.eval("return box.info.ro").data[0] is True
        with rs.connection(mode=Mode.RW) as tnt:
            assert tnt.eval("return box.info.ro").data[0] is False
        rs.replace("tester", (1, "one"))
        stats = rs.get_stats()
        assert stats["master"] == servers.addresses[0]
        assert [s["role"] for s in stats["instances"].values()] == [MASTER, REPLICA, REPLICA]
        assert all(s["pool_size"] >= 1 for s in stats["instances"].values())


@pytest.mark.parametrize("multiplexed", [False, True], ids=["pool", "mux"])
def test_switchover_under_load_every_reply_to_its_caller_and_writes_on_the_new_master(
    tarantool_replicaset: Any, multiplexed: bool
) -> None:
    servers = tarantool_replicaset
    stop = gevent.event.Event()
    errors: List[BaseException] = []
    wrong: List[Any] = []
    acked: Dict[int, int] = {}  # id -> the instance that ran the write
    reads = [0]

    def writer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            key = worker * 100_000 + n
            try:
                reply = rs.eval(
                    "local k, v = ... box.space.tester:replace{k, v} return k, v, box.info.id", (key, f"w{worker}-{n}")
                ).data
            except Exception as exc:
                errors.append(exc)
                return
            if reply[0] != key or reply[1] != f"w{worker}-{n}":
                wrong.append(reply)
            acked[key] = reply[2]
            n += 1

    def reader(worker: int) -> None:
        n = 0
        while not stop.is_set():
            token = f"r{worker}-{n}"
            try:
                reply = rs.call("echo", (token,), mode=Mode.ANY).data
            except Exception as exc:
                errors.append(exc)
                return
            if reply != [token]:
                wrong.append(reply)
            reads[0] += 1
            n += 1

    with make_rs(servers, max_connections=5, multiplexed=multiplexed) as rs:
        greenlets = [gevent.spawn(writer, w) for w in range(1, 21)] + [gevent.spawn(reader, w) for w in range(20)]
        wait_until(lambda: len(acked) >= 200 or bool(errors))
        servers.switchover(1)
        new_id = instance_id(servers, 1)
        before = len(acked)
        wait_until(lambda: len(acked) >= before + 200 or bool(errors))
        stop.set()
        gevent.joinall(greenlets, timeout=10)
        assert all(g.dead for g in greenlets)
        assert errors == []
        assert wrong == []
        assert new_id in set(acked.values())  # writes landed on the new master
        assert rs.get_stats()["master"] == servers.addresses[1]
        # Every acknowledged write is on the new master.
        conn = servers.members[1]
        count = conn.eval("local n = 0 for _ in box.space.tester:pairs() do n = n + 1 end return n")[0]
        assert count == len(acked)
        assert reads[0] > 0
        if multiplexed:  # the helpers went through the multiplexers, not the pools
            instances = rs.get_stats()["instances"].values()
            assert sum(s["mux_requests"] for s in instances) >= len(acked) + reads[0]
            assert all(s["pool_size"] == 0 for s in instances)


def test_a_write_waits_for_a_master_within_its_timeout(tarantool_replicaset: Any) -> None:
    servers = tarantool_replicaset
    with make_rs(servers, refresh_interval=5.0) as rs:
        rs.ping()
        servers.members[0].eval("box.cfg{read_only = true}")
        result: List[Any] = []
        writer = gevent.spawn(lambda: result.append(rs.eval("box.space.tester:replace{7} return box.info.id")))
        wait_until(lambda: rs.get_stats()["role_waits"] >= 1)  # it found no master and waits
        assert not writer.dead
        servers.members[2].eval("box.cfg{read_only = false}")
        writer.join(10)
        assert writer.dead and writer.exception is None
        assert result[0].data[0] == instance_id(servers, 2)
        stats = rs.get_stats()
        assert stats["readonly_retries"] >= 1
        assert stats["instances"][servers.addresses[0]]["readonly_refusals"] >= 1


def test_no_master_within_the_timeout_raises_no_instance_available(tarantool_replicaset: Any) -> None:
    servers = tarantool_replicaset
    with make_rs(servers, timeout=0.3) as rs:
        rs.ping()
        servers.members[0].eval("box.cfg{read_only = true}")
        started = time.monotonic()
        with pytest.raises(NoInstanceAvailable) as info:
            rs.insert("tester", (9, "x"))
        assert time.monotonic() - started < 5.0
        assert isinstance(info.value, PoolTopologyError)
        assert isinstance(info.value, TarantoolPoolTimeout)
        assert isinstance(info.value, greenpool.PoolTimeout)
        assert "RW" in str(info.value)
        assert rs.select("tester", 9) is not None  # reads still served by the replicas
        assert servers.members[1].eval("return box.space.tester:get(9)") == []
        assert rs.get_stats()["no_instance"] == 1


def test_a_write_that_met_a_network_error_is_not_sent_again(tarantool_replicaset: Any) -> None:
    servers = tarantool_replicaset
    with make_rs(servers, socket_timeout=0.2) as rs:
        rs.ping()
        # Counts its runs as it starts, then outlives the reply's bound: a second run would count before the
        # helper gave up for the second time.
        slow_write = "rawset(_G, 'runs', (rawget(_G, 'runs') or 0) + 1) require('fiber').sleep(0.6)"
        with pytest.raises(NetworkError):
            rs.eval(slow_write)
        assert servers.members[0].eval("return rawget(_G, 'runs')") == [1]
        assert rs.get_stats()["instances"][servers.addresses[0]]["network_errors"] == 1
        wait_until(lambda: rs.roles()[servers.addresses[0]] == MASTER)  # the probe brings it back


def test_a_killed_replica_is_left_out_and_reads_go_on(tarantool_replicaset: Any) -> None:
    servers = tarantool_replicaset
    with make_rs(servers) as rs:
        rs.ping()
        servers.kill(2)
        wait_until(lambda: rs.roles()[servers.addresses[2]] == "unavailable")
        replica_id = instance_id(servers, 1)
        assert {rs.eval(INSTANCE_ID, mode=Mode.RO).data[0] for _ in range(10)} == {replica_id}
        servers.start_member(2)
        wait_until(lambda: rs.roles()[servers.addresses[2]] == REPLICA)


def test_bad_arguments_name_the_argument_and_secrets_stay_hidden() -> None:
    with pytest.raises(TypeError, match="addresses"):
        TarantoolReplicaSet([])
    with pytest.raises(ValueError, match="listed twice"):
        TarantoolReplicaSet(["127.0.0.1:3302", ("127.0.0.1", 3302)])
    with pytest.raises(ValueError, match="host:port"):
        TarantoolReplicaSet(["localhost"])
    with pytest.raises(ValueError, match="refresh_interval"):
        TarantoolReplicaSet(["127.0.0.1:3302"], refresh_interval=0)
    with TarantoolReplicaSet(["127.0.0.1:3302"], "u", "sekret-pw") as rs:
        with pytest.raises(ValueError, match=r"mode.*'bogus'"):
            rs.select("tester", mode="bogus")
        assert "sekret-pw" not in repr(rs)
        assert "sekret-pw" not in repr(rs.get_stats())
    with pytest.raises(TypeError, match="unexpected argument"):
        TarantoolReplicaSet(["127.0.0.1:3302"], no_such_option=1)
    assert greenpool.TarantoolReplicaSet is TarantoolReplicaSet


def test_the_harness_replicaset_scenario_runs_and_checks(tmp_path: Any) -> None:

    from stress.cli import main

    out = tmp_path / "rs.json"
    argv = ["replicaset", "--greenlets", "20", "--duration", "1.5", "--pools", "greenpool", "--check", "--json"]
    assert main([*argv, str(out)]) == 0
    [run] = json.loads(out.read_text())["results"]["greenpool"]
    assert run["ok"] > 0 and run["wrong_replies"] == 0 and run["lost_acked"] == 0 and run["errors"] == 0
    assert set(run["connections_per_node"]) and run["acked"] == run["ok"]


def test_a_forked_child_probes_on_connections_of_its_own(tarantool_replicaset: Any) -> None:
    servers = tarantool_replicaset
    session = "return box.session.id()"
    with make_rs(servers) as rs:
        assert rs.refresh() == dict(zip(servers.addresses, [MASTER, REPLICA, REPLICA]))
        probes = [i.probe_conn for i in rs._instances]
        parent_sessions = [conn.eval(session).data[0] for conn in probes]

        def child() -> Dict[str, Any]:
            report: Dict[str, Any] = {"roles": rs.refresh()}
            report["sessions"] = [i.probe_conn.eval(session).data[0] for i in rs._instances]
            report["master"] = rs.eval(INSTANCE_ID).data[0]
            return report

        report = in_forked_child(child)
        assert report["roles"] == rs.roles() and report["master"] == instance_id(servers, 0)
        # New probe connections in the child: on every instance, a session other than the parent's probe's.
        assert all(child != parent for child, parent in zip(report["sessions"], parent_sessions)), report
        # The parent's probe connections were left open and in step: the same sessions answer.
        assert rs.refresh() == dict(zip(servers.addresses, [MASTER, REPLICA, REPLICA]))
        assert [i.probe_conn for i in rs._instances] == probes
        assert [conn.eval(session).data[0] for conn in probes] == parent_sessions
