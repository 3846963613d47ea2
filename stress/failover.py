"""Failover scenarios of the harness: ``python -m stress replicaset|sentinel|cluster``.

Each run starts a fresh private topology (:mod:`stress.topologies`), runs ``--greenlets`` greenlets that write
(and check the reply of) one key after another for ``--duration`` seconds through one contender, and fails the
topology over a third of the way in: a switchover of the Tarantool replica set, ``SENTINEL FAILOVER`` (or, with
``--fault kill``, ``kill -9`` of the master), ``kill -9`` of a Redis Cluster master. Contenders run side by
side, in an order that rotates each round (``--rounds``). Reported per run: ok/s, errors (before the fault,
during the outage, after recovery), the outage (longest stretch without a successful write), replies that
went to the wrong caller, connections the servers accepted per node, and acknowledged writes lost.

Depends on :mod:`stress.topologies`, gevent, redis-py, tarantool-python and greenpool.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import gevent
import gevent.event

from .rounds import EXIT_MISSED
from .topologies import RedisClusterServers, RedisSentinelServers, TarantoolReplicaSetServers

__all__ = ["COMMANDS", "add_command", "run"]

COMMANDS = ("replicaset", "sentinel", "cluster")

CONTENDERS: Dict[str, Tuple[str, ...]] = {
    "replicaset": ("greenpool", "greenpool-mux", "tarantool-pool"),
    "sentinel": ("greenpool", "greenpool-mux", "redis-py"),
    "cluster": ("greenpool", "greenpool-mux", "redis-py"),
}


_HELPS = {
    "replicaset": "a Tarantool replica set switched over mid-run: TarantoolReplicaSet vs tarantool.ConnectionPool",
    "sentinel": "a Sentinel-managed Redis failed over mid-run: GeventSentinelPool vs SentinelConnectionPool",
    "cluster": "a Redis Cluster master killed mid-run: greenpool pools per node vs redis-py's",
}


def add_command(commands: Any, name: str) -> argparse.ArgumentParser:
    """Add the failover command ``name`` to the harness's subparsers; return its parser."""
    sub = commands.add_parser(name, help=_HELPS[name], description=_HELPS[name] + ".")
    sub.add_argument("--greenlets", type=int, default=1000, help="greenlets writing in a loop (default 1000)")
    duration = 15.0 if name == "sentinel" else 9.0  # the sentinels demote the old master ~10 s after a failover
    sub.add_argument(
        "--duration",
        type=float,
        default=duration,
        help=f"seconds per run; the fault at a third (default {duration:g})",
    )
    sub.add_argument("--rounds", type=int, default=1, help="runs of every contender, interleaved (default 1)")
    sub.add_argument("--max-connections", type=int, default=10, help="connections per node (default 10)")
    sub.add_argument("--timeout", type=float, default=5.0, help="checkout timeout in seconds (default 5)")
    sub.add_argument(
        "--pools",
        type=lambda text: [p for p in text.split(",") if p],
        default=list(CONTENDERS[name]),
        help=f"contenders, comma-separated (default {','.join(CONTENDERS[name])})",
    )
    if name in ("sentinel", "cluster"):
        wait_ms = 10 if name == "sentinel" else 0  # see the cluster's op for why not there
        sub.add_argument(
            "--wait-ms",
            type=int,
            default=wait_ms,
            help="each write is followed by WAIT 1 <ms> and counts as acknowledged when a replica has it "
            f"(default {wait_ms}; 0: no WAIT, a write the master acknowledged counts)",
        )
    if name == "sentinel":
        sub.add_argument("--fault", choices=("failover", "kill"), default="failover", help="default failover")
        sub.add_argument(
            "--replicas",
            type=int,
            default=1,
            help="replicas of the master (default 1: until the old master rejoins, ~10 s after a failover, WAIT "
            "finds no replica; with 2 the other replica follows the new master at once, but writes it confirmed "
            "on the old master in between are lost, so --check does not count them)",
        )
    if name == "cluster":
        sub.add_argument(
            "--fault",
            choices=("kill", "migrate"),
            default="kill",
            help="kill: kill -9 of a master (default); migrate: redis-cli --cluster reshard of half of a "
            "master's slots to another master, keys and all (ASK and MOVED under load)",
        )
    sub.add_argument("--json", metavar="FILE", help="write every figure here")
    sub.add_argument(
        "--check", action="store_true", help="exit 3 unless greenpool had 0 errors after recovery and 0 wrong"
    )
    sub.add_argument("--url", help="not supported: these scenarios start and fail over their own servers")
    sub.add_argument("--plot", help="not supported by the failover scenarios")
    return sub


# ---------------------------------------------------------------------- one run


class Recorder:
    """Successes and errors with their times (relative to the start), and the checks' findings."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.ok_times: List[float] = []
        self.errors: List[Tuple[float, str]] = []
        self.wrong = 0
        self.acked: Dict[Any, Any] = {}

    def now(self) -> float:
        return time.monotonic() - self.start


def _summary(rec: Recorder, fault_at: float, duration: float) -> Dict[str, Any]:
    times = sorted(rec.ok_times)
    gaps = [b - a for a, b in zip([0.0, *times], [*times, duration])]
    outage = max(gaps) if gaps else duration
    after_fault = [t for t in times if t >= fault_at]
    # Recovery: the first success after which no error came any more (or the first success after the fault).
    last_error = max((t for t, _ in rec.errors), default=None)
    recovered_at = next((t for t in after_fault if last_error is None or t > last_error), None)
    kinds: Dict[str, int] = {}
    for _, kind in rec.errors:
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "ok": len(times),
        "ok_per_s": round(len(times) / duration, 1),
        "errors": len(rec.errors),
        "errors_before_fault": sum(1 for t, _ in rec.errors if t < fault_at),
        "error_kinds": kinds,
        "outage_s": round(outage, 3),
        "recovered_after_s": None if recovered_at is None else round(recovered_at - fault_at, 3),
        "wrong_replies": rec.wrong,
    }


def _drive(
    greenlets: int, duration: float, op: Callable[[int, int, Recorder], None], fault: Callable[[], None]
) -> Tuple[Recorder, float]:
    """Run ``op(worker, n, rec)`` in a loop in ``greenlets`` greenlets for ``duration`` s; ``fault()`` at a third."""
    rec = Recorder()
    stop = gevent.event.Event()

    def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with gevent.Timeout(10.0):
                    op(w, n, rec)
                rec.ok_times.append(rec.now())
            except gevent.Timeout:
                rec.errors.append((rec.now(), "no reply within 10 s"))
            except Exception as exc:
                rec.errors.append((rec.now(), type(exc).__name__))
                gevent.sleep(0.01)  # as a client would before trying again; keeps a dead server from spinning
            n += 1

    workers = [gevent.spawn(worker, w) for w in range(greenlets)]
    gevent.sleep(duration / 3)
    fault_at = rec.now()
    fault()
    gevent.sleep(max(0.0, duration - rec.now()))
    stop.set()
    gevent.joinall(workers, timeout=15)
    gevent.killall([w for w in workers if not w.dead], block=True, timeout=5)
    return rec, fault_at


# ---------------------------------------------------------------------- replica set


def _tnt_connections(servers: TarantoolReplicaSetServers) -> Dict[str, int]:
    out = {}
    for member, address in zip(servers.members, servers.addresses):
        try:
            out[address] = int(member.eval("return box.stat.net().CONNECTIONS.total")[0])
        except Exception:
            out[address] = -1
    return out


def _run_replicaset(contender: str, args: argparse.Namespace) -> Dict[str, Any]:
    from tarantool import Mode

    with TarantoolReplicaSetServers(3) as servers:
        user, password = servers.user, servers.password
        if contender.startswith("greenpool"):
            from greenpool import TarantoolReplicaSet

            client: Any = TarantoolReplicaSet(
                servers.addresses,
                user,
                password,
                max_connections=args.max_connections,
                timeout=args.timeout,
                refresh_interval=1.0,
                multiplexed=contender == "greenpool-mux",
            )
            replace = client.replace
            close = client.close
        else:
            import tarantool

            addrs = [{"host": a.split(":")[0], "port": int(a.split(":")[1])} for a in servers.addresses]
            client = tarantool.ConnectionPool(addrs, user=user, password=password, refresh_delay=1.0)

            def replace(space: str, values: Any, mode: Any = Mode.RW) -> Any:
                return client.replace(space, values, mode=mode)

            close = client.close
        before = _tnt_connections(servers)

        def op(w: int, n: int, rec: Recorder) -> None:
            key, token = w * 10_000_000 + n, f"{w}:{n}"
            reply = replace("tester", (key, token), mode=Mode.RW).data
            if reply != [[key, token]]:
                rec.wrong += 1
                raise AssertionError("a reply for another caller")
            rec.acked[key] = token

        try:
            rec, fault_at = _drive(args.greenlets, args.duration, op, lambda: servers.switchover(1))
        finally:
            close()
        after = _tnt_connections(servers)
        out = _summary(rec, fault_at, args.duration)
        out["connections_per_node"] = {a: after[a] - before[a] for a in after}
        # Every acknowledged write must be on the new master.
        lost = 0
        keys = list(rec.acked)
        for i in range(0, len(keys), 2000):
            chunk = keys[i : i + 2000]
            found = servers.members[1].eval(
                "local out = {} for _, k in ipairs(...) do local t = box.space.tester:get(k) "
                "out[#out + 1] = t and t[2] or box.NULL end return out",
                chunk,
            )[0]
            lost += sum(1 for k, v in zip(chunk, found) if v != rec.acked[k])
        out["acked"] = len(rec.acked)
        out["lost_acked"] = lost
        return out


# ---------------------------------------------------------------------- redis helpers


def _redis_connections(addresses: List[Tuple[str, int]]) -> Dict[str, int]:
    import redis

    out = {}
    for host, port in addresses:
        try:
            client = redis.Redis(host, port, socket_timeout=2)
            out[f"{host}:{port}"] = int(client.info("stats")["total_connections_received"])
            client.close()
        except Exception:
            out[f"{host}:{port}"] = -1
    return out


def _delta(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    """Connections each server accepted between two :func:`_redis_connections`, less the second's own."""
    return {a: after[a] - before[a] - 1 for a in after if before.get(a, -1) >= 0 and after[a] >= 0}


def _write(client: Any, key: str, value: str, wait_ms: int, rec: Recorder, **wait_options: Any) -> None:
    """``SET key value``; record it in ``rec.acked`` once acknowledged: when ``WAIT 1 wait_ms`` says a replica has
    it too, as users who care about failovers write, or, with ``wait_ms`` 0, when the master answered. ``WAIT``
    counts the writes of its own connection only, so it goes in one pipeline (one connection) with the ``SET``;
    ``wait_options`` go with it (the cluster's ``target_nodes``)."""
    if not wait_ms:
        client.set(key, value)
    else:
        pipe = client.pipeline(transaction=False)
        pipe.set(key, value)
        pipe.execute_command("WAIT", 1, wait_ms, **wait_options)
        if pipe.execute()[1] < 1:
            return
    rec.acked[key] = value


# ---------------------------------------------------------------------- sentinel


def _run_sentinel(contender: str, args: argparse.Namespace) -> Dict[str, Any]:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    with RedisSentinelServers(replicas=args.replicas, sentinels=3) as servers:
        sentinel = Sentinel(servers.sentinel_addresses, sentinel_kwargs={"socket_timeout": 1.0})
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 10)
        kwargs: Dict[str, Any] = {"socket_timeout": 5.0, "retry": retry}
        if contender.startswith("greenpool"):
            from greenpool import GeventSentinelMuxPool, GeventSentinelPool

            client = sentinel.master_for(
                "mymaster",
                connection_pool_class=GeventSentinelMuxPool if contender == "greenpool-mux" else GeventSentinelPool,
                max_connections=args.max_connections,
                timeout=args.timeout,
                **kwargs,
            )
        else:
            client = sentinel.master_for("mymaster", **kwargs)
        nodes = [(s.host, s.port) for s in [servers.master, *servers.replicas]]
        before = _redis_connections(nodes)

        def op(w: int, n: int, rec: Recorder) -> None:
            key, value = f"k{w}:{n}", f"{w}:{n}"  # a key per write: a later write cannot hide a lost one
            _write(client, key, value, args.wait_ms, rec)
            if client.echo(value) != value.encode():
                rec.wrong += 1
                raise AssertionError("a reply for another caller")

        def fault() -> None:
            if args.fault == "kill":
                servers.master.kill()
            else:
                servers.failover()

        try:
            rec, fault_at = _drive(args.greenlets, args.duration, op, fault)
        finally:
            client.close()
            sentinel.close()
        out = _summary(rec, fault_at, args.duration)
        out["connections_per_node"] = _delta(before, _redis_connections(nodes))  # before the checks connect
        # Every acknowledged write must be on the master the sentinels name now.
        check = redis.Redis(*servers.master_address(), socket_timeout=5)
        try:
            out["lost_acked"] = _lost(rec.acked, check.mget)
        finally:
            check.close()
        out["acked"] = len(rec.acked)
        return out


# ---------------------------------------------------------------------- cluster


def _run_cluster(contender: str, args: argparse.Namespace) -> Dict[str, Any]:
    from redis.cluster import ClusterNode, RedisCluster

    with RedisClusterServers(masters=3, replicas=1) as servers:
        host, port = servers.startup_nodes[0]
        if contender == "redis-py":
            client: Any = RedisCluster(
                startup_nodes=[ClusterNode(host, port)], max_connections=args.max_connections, socket_timeout=5.0
            )
        else:
            from greenpool import redis_cluster

            client = redis_cluster(
                [(host, port)],
                max_connections=args.max_connections,
                timeout=args.timeout,
                multiplexed=contender == "greenpool-mux",
                socket_timeout=5.0,
            )
        before = _redis_connections(servers.startup_nodes)
        victim = servers.masters()[0]
        victim_address = f"{servers.members[victim].host}:{servers.members[victim].port}"
        victim_slots = set()
        for slot_range in client.cluster_slots().items():
            (lo, hi), info = slot_range
            if f"{info['primary'][0]}:{info['primary'][1]}" == victim_address:
                victim_slots.update(range(lo, hi + 1))
        victim_errors: List[float] = []
        other_errors: List[float] = []

        def op(w: int, n: int, rec: Recorder) -> None:
            key, value = f"{{k{w}}}:{n}", f"{w}:{n}"  # a key per write, all of a greenlet's in one slot
            try:
                # WAIT goes to the key's node, with the SET. A SET that meets ASK or MOVED runs elsewhere than its
                # WAIT: harmless in a migration, which loses no write, and after a kill a stale route leads to the
                # dead node, which confirms nothing. But when redis-py retries the pipeline (after the kill) it
                # sends the keyless WAIT to every master: the retry holds a connection on each while the promoted
                # replica, which has no replica, runs WAIT to its timeout. Hence the default --wait-ms 0 here.
                target = {"target_nodes": client.get_node_from_key(key)} if args.wait_ms else {}
                _write(client, key, value, args.wait_ms, rec, **target)
                if client.get(key) != value.encode():
                    rec.wrong += 1
                    raise AssertionError("a reply for another caller")
            except Exception:
                (victim_errors if client.keyslot(key) in victim_slots else other_errors).append(rec.now())
                raise

        moved = [0]

        def fault() -> None:
            if args.fault == "kill":
                servers.kill(victim)
                return
            # Half of the first master's slots, with their keys, move to the second one under load.
            output = servers.reshard(victim, servers.masters()[1], len(victim_slots) // 2)
            moved[0] = sum(1 for line in output.splitlines() if line.startswith("Moving slot"))  # not the plan

        try:
            rec, fault_at = _drive(args.greenlets, args.duration, op, fault)
        finally:
            client.close()
        live = [a for i, a in enumerate(servers.startup_nodes) if i != victim or args.fault != "kill"]
        out = _summary(rec, fault_at, args.duration)
        out["connections_per_node"] = _delta(before, _redis_connections(live))  # before the checks connect
        # Every acknowledged write must be where the cluster now says its key is (without WAIT a kill -9 may lose
        # the writes its replica had not received yet: Redis Cluster replicates asynchronously).
        out["acked"] = len(rec.acked)
        servers.wait_settled()  # a slow box may end the run before the killed master's replica took over
        out["lost_acked"] = _lost_in_cluster(*live[0], rec.acked)
        if args.fault == "migrate":
            out["slots_moved"] = moved[0]
        out["errors_other_slots"] = len(other_errors)
        out["victim_slots_last_error_s"] = round(max(victim_errors) - fault_at, 3) if victim_errors else None
        return out


def _lost_in_cluster(host: str, port: int, acked: Dict[str, str]) -> int:
    """How many acknowledged writes (``acked``: key -> value) the cluster reachable at ``host:port`` lacks."""
    from redis.cluster import ClusterNode, RedisCluster

    check = RedisCluster(startup_nodes=[ClusterNode(host, port)], socket_timeout=5.0)
    try:
        return _lost(acked, check.mget_nonatomic)
    finally:
        check.close()


def _lost(acked: Dict[str, str], mget: Callable[[List[str]], List[Any]]) -> int:
    """How many acknowledged writes (``acked``: key -> value; each write has a key of its own) ``mget`` does not
    find with their value."""
    keys, lost = list(acked), 0
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        lost += sum(1 for k, v in zip(chunk, mget(chunk)) if v is None or v.decode() != acked[k])
    return lost


RUNNERS: Dict[str, Callable[[str, argparse.Namespace], Dict[str, Any]]] = {
    "replicaset": _run_replicaset,
    "sentinel": _run_sentinel,
    "cluster": _run_cluster,
}


# ---------------------------------------------------------------------- driving and reporting


def _median(values: List[Any]) -> Any:
    values = [v for v in values if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def _table(results: Dict[str, List[Dict[str, Any]]]) -> str:
    header = (
        f"{'contender':<16} {'ok/s':>9} {'errors':>7} {'before':>6} {'outage s':>9} {'recovered s':>11} "
        f"{'wrong':>6} {'conns/node max':>14} {'lost acked':>10}"
    )
    lines = [header, "-" * len(header)]
    for name, runs in results.items():
        conns = [max(r["connections_per_node"].values(), default=0) for r in runs]
        row = {
            "ok_per_s": _median([r["ok_per_s"] for r in runs]),
            "errors": _median([r["errors"] for r in runs]),
            "before": _median([r["errors_before_fault"] for r in runs]),
            "outage": _median([r["outage_s"] for r in runs]),
            "recovered": _median([r["recovered_after_s"] for r in runs]),
            "wrong": sum(r["wrong_replies"] for r in runs),
            "conns": _median(conns),
            "lost": _median([r.get("lost_acked", 0) for r in runs]),
        }

        def fmt(value: Any, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        lines.append(
            f"{name:<16} {fmt(row['ok_per_s'], '9.1f')} {fmt(row['errors'], '7g')} {fmt(row['before'], '6g')} "
            f"{fmt(row['outage'], '9.3f')} {fmt(row['recovered'], '11.3f')} {row['wrong']:>6} "
            f"{fmt(row['conns'], '14g')} {fmt(row['lost'], '10g')}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run one failover command (see the module docstring); return the exit status."""
    if args.url:
        sys.stderr.write(f"{args.command}: --url is not supported: the scenario starts and fails over its servers\n")
        return 2
    if args.plot:
        sys.stderr.write(f"{args.command}: --plot is not supported by the failover scenarios\n")
        return 2
    unknown = [p for p in args.pools if p not in CONTENDERS[args.command]]
    counts = [args.greenlets, args.rounds, args.max_connections, getattr(args, "replicas", 1)]
    if unknown or min(counts) < 1 or args.duration <= 0 or getattr(args, "wait_ms", 0) < 0:
        sys.stderr.write(f"{args.command}: bad arguments (contenders: {', '.join(CONTENDERS[args.command])})\n")
        return 2
    runner = RUNNERS[args.command]
    results: Dict[str, List[Dict[str, Any]]] = {name: [] for name in args.pools}
    for round_no in range(args.rounds):
        order = args.pools[round_no % len(args.pools) :] + args.pools[: round_no % len(args.pools)]
        for name in order:
            sys.stderr.write(f"round {round_no + 1}/{args.rounds}: {name} ...\n")
            started = time.monotonic()
            result = runner(name, args)
            result["wall_s"] = round(time.monotonic() - started, 1)
            results[name].append(result)
    cluster_fault = "slot migration" if getattr(args, "fault", "") == "migrate" else "kill -9 of a master"
    fault = {"replicaset": "switchover", "sentinel": getattr(args, "fault", ""), "cluster": cluster_fault}
    print(
        f"{args.command}: {args.greenlets} greenlets, {args.duration:g} s per run, fault ({fault[args.command]}) at "
        f"{args.duration / 3:.1f} s, max_connections {args.max_connections}/node, {args.rounds} round(s), medians"
    )
    print(_table(results))
    for name, runs in results.items():
        kinds: Dict[str, int] = {}
        for r in runs:
            for kind, count in r["error_kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + count
        extra = ""
        if args.command == "cluster" and args.fault == "migrate":
            extra = f"; slots moved {[r['slots_moved'] for r in runs]}"
        elif args.command == "cluster":
            extra = f"; errors on other slots {[r['errors_other_slots'] for r in runs]}"
            extra += f"; last error on the killed master's slots at +{[r['victim_slots_last_error_s'] for r in runs]} s"
        print(f"  {name}: errors by kind {kinds or '{}'}{extra}")
    if args.json:
        with open(args.json, "w") as out:
            document = {"command": args.command, "args": {k: v for k, v in vars(args).items() if k != "func"}}
            document.update(results=results, python=platform.python_version(), cores=_cores())
            json.dump(document, out, indent=2, default=str)
    if args.check:
        return 0 if _checked(args, results) else EXIT_MISSED
    return 0


def _checked(args: argparse.Namespace, results: Dict[str, List[Dict[str, Any]]]) -> bool:
    """greenpool's runs: no reply to the wrong caller, no acknowledged write lost, and no error at all (a
    switchover, ``SENTINEL FAILOVER``, a slot migration) or none on the slots of the masters that stayed up (a
    killed cluster master)."""
    ok = True
    fault = getattr(args, "fault", "")
    for name, runs in results.items():
        if not name.startswith("greenpool"):
            continue
        for r in runs:
            errors = r["errors"]
            if args.command == "cluster" and fault == "kill":
                errors = r["errors_other_slots"]
            elif args.command == "sentinel" and fault == "kill":
                errors = 0  # a killed master: the outage is measured, not required to be error-free
            if r["wrong_replies"] or (r.get("lost_acked") and _acked_must_survive(args)) or errors:
                sys.stderr.write(f"check failed for {name}: {r}\n")
                ok = False
    return ok


def _acked_must_survive(args: argparse.Namespace) -> bool:
    """Whether the fault must keep every acknowledged write: a switchover, a failover or a slot migration does; a
    ``kill -9`` does when a replica confirmed each write (``WAIT``), not when the master alone did (Redis
    replicates asynchronously, whatever the pool); a Sentinel failover with two replicas does not (below)."""
    if getattr(args, "replicas", 1) > 1:
        # A second replica follows the old master until the sentinels move it, after the promotion: what it
        # confirmed there in between is gone when it follows the new master (asynchronous replication).
        return False
    return getattr(args, "fault", "") != "kill" or bool(args.wait_ms)


def _cores() -> Optional[int]:
    import os

    return os.cpu_count()
