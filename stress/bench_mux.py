"""Throughput of ``TarantoolMux`` against ``TarantoolPool`` and asynctnt: ``python -m stress.bench_mux``.

Each contender runs K concurrent workers that REPLACE 1.5 KB tuples in a loop against one private
``tarantool`` (started here, or ``--tarantool-url``), for K = 10, 100, 1000 and 5000 by default:

- ``mux``: one :class:`greenpool.tarantool_mux.TarantoolMux` shared by K greenlets;
- ``pool``: :class:`greenpool.tarantool.TarantoolPool` (10 tarantool-python connections) shared by K
  greenlets; if that module is missing, 10 tarantool-python connections handed out through a
  ``gevent.queue.Queue``;
- ``asynctnt``: one ``asynctnt`` connection and K coroutines on uvloop, in a subprocess
  (:mod:`stress.asynctnt_worker`, shared with the main harness; skipped with a message when asynctnt or
  uvloop is not installed: ``pip install 'greenpool[bench]'``).

The contenders of one K run back to back, in alternating order, ``--rounds`` times (default 3), so that
the contenders of one round share the box's load. Printed per K: the median ops/s and client CPU
microseconds per op of each contender, and the ratios mux/asynctnt and mux/pool, each the median of the
per-round ratios (mux against the other contender measured in the same round), which a noisy round moves
less than a ratio of best figures would.

The contender functions (:func:`run_mux`, :func:`run_pool`, :func:`run_asynctnt`) take a server address and
return a :class:`Result`. Depends on gevent (the process is monkey-patched, for tarantool-python),
``greenpool``, ``stress.servers`` and ``stress.asynctnt_worker``; asynctnt/uvloop optionally.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import unquote, urlparse

import gevent

from stress import asynctnt_worker
from stress.figures import cpu_seconds
from stress.servers import TarantoolServer

__all__ = ["Result", "Server", "median_ratio", "run_asynctnt", "run_mux", "run_pool"]

PAYLOAD = "x" * 1500
#: Keys cycle through this many tuples (about 30 MB of tuples at most).
KEYSPACE = 20_000
#: Worker i starts at key (i * KEY_STRIDE) % KEYSPACE and takes the next key after each request.
KEY_STRIDE = 7919
SPACE = "tester"


@dataclass
class Server:
    """Where the contenders connect."""

    host: str
    port: int
    user: Optional[str]
    password: Optional[str]


@dataclass
class Result:
    """One contender at one concurrency: completed ops per second, client CPU per op, failed requests."""

    name: str
    k: int
    ops_per_s: float
    cpu_us_per_op: float
    errors: int = 0
    note: str = ""


def _drive(name: str, k: int, replace: Callable[[int, List[Any]], Any], seconds: float, warmup: float) -> Result:
    """Run ``k`` greenlets calling ``replace(worker, tuple)`` in a loop; count the ops after ``warmup``."""
    state = {"ops": 0, "errors": 0, "stop": False}

    def worker(i: int) -> None:
        key = (i * KEY_STRIDE) % KEYSPACE
        while not state["stop"]:
            try:
                replace(i, [key, PAYLOAD])
            except Exception:
                state["errors"] += 1
            else:
                state["ops"] += 1
            key = (key + 1) % KEYSPACE

    workers = [gevent.spawn(worker, i) for i in range(k)]
    gevent.sleep(warmup)
    state["ops"] = state["errors"] = 0
    start, cpu = time.perf_counter(), cpu_seconds()
    gevent.sleep(seconds)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    ops, errors = state["ops"], state["errors"]
    state["stop"] = True
    gevent.joinall(workers, timeout=60)
    return Result(name, k, ops / elapsed, cpu / max(ops, 1) * 1e6, errors)


def run_mux(server: Server, k: int, seconds: float = 2.0, warmup: float = 0.5, connections: int = 1) -> Result:
    """K greenlets share one :class:`~greenpool.tarantool_mux.TarantoolMux`."""
    from greenpool.tarantool_mux import TarantoolMux

    with TarantoolMux(server.host, server.port, server.user, server.password, shared_connections=connections) as mux:
        mux.ping()
        return _drive("mux", k, lambda i, values: mux.replace(SPACE, values), seconds, warmup)


def run_pool(server: Server, k: int, seconds: float = 2.0, warmup: float = 0.5, size: int = 10) -> Result:
    """K greenlets share ``TarantoolPool(max_connections=10)`` (or 10 connections behind a gevent queue)."""
    try:
        from greenpool.tarantool import TarantoolPool
    except ImportError:
        return _run_queue_pool(server, k, seconds, warmup, size)
    pool = TarantoolPool(server.host, server.port, server.user, server.password, max_connections=size, timeout=60)
    try:
        return _drive("pool", k, lambda i, values: pool.replace(SPACE, values), seconds, warmup)
    finally:
        pool.close()


def _run_queue_pool(server: Server, k: int, seconds: float, warmup: float, size: int) -> Result:
    import tarantool
    from gevent.queue import Queue

    idle: Any = Queue()
    conns = [
        tarantool.Connection(server.host, server.port, user=server.user, password=server.password) for _ in range(size)
    ]
    for conn in conns:
        idle.put(conn)

    def replace(i: int, values: List[Any]) -> Any:
        conn = idle.get()
        try:
            return conn.replace(SPACE, values)
        finally:
            idle.put(conn)

    try:
        result = _drive("pool", k, replace, seconds, warmup)
        result.note = "10 tarantool-python connections behind a gevent queue (greenpool.tarantool is missing)"
        return result
    finally:
        for conn in conns:
            conn.close()


def run_asynctnt(server: Server, k: int, seconds: float = 2.0, warmup: float = 0.5) -> Optional[Result]:
    """One asynctnt connection and K coroutines on uvloop, in a subprocess (:mod:`stress.asynctnt_worker`).

    Blocks for the subprocess. Returns None, after printing one line saying why, when asynctnt or uvloop is
    not installed or the subprocess fails.
    """
    spec = asynctnt_worker.Spec(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        concurrency=k,
        seconds=seconds,
        warmup=warmup,
        value_size=len(PAYLOAD),
        space=SPACE,
        keyspace=KEYSPACE,
        key_stride=KEY_STRIDE,
        key_step=1,
    )
    try:
        figures = asynctnt_worker.run(spec)
    except asynctnt_worker.WorkerFailed as exc:
        print(f"asynctnt contender skipped: {exc}")
        return None
    return Result("asynctnt", k, figures["ok_per_s"], figures["cpu_us_per_op"], figures["errors"] + figures["failed"])


def median_ratio(rounds: List[Dict[str, Result]], name: str, other: str) -> Optional[float]:
    """The median over ``rounds`` of ``name``'s ops/s divided by ``other``'s in the same round.

    Rounds where either did not run (or ``other`` did nothing) are left out; None when none is left.
    """
    ratios = [
        results[name].ops_per_s / results[other].ops_per_s
        for results in rounds
        if name in results and other in results and results[other].ops_per_s > 0
    ]
    return statistics.median(ratios) if ratios else None


def _median_result(results: List[Result]) -> Result:
    """One result holding the median ops/s and CPU per op of ``results``, and their errors summed."""
    first = results[0]
    return Result(
        first.name,
        first.k,
        statistics.median(r.ops_per_s for r in results),
        statistics.median(r.cpu_us_per_op for r in results),
        sum(r.errors for r in results),
        first.note,
    )


def _server_from_url(url: str) -> Server:
    parts = urlparse(url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return Server(parts.hostname or "127.0.0.1", parts.port or 3301, user, password)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark with ``argv`` (default ``sys.argv[1:]``), print the table; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stress.bench_mux", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ks", default="10,100,1000,5000", help="concurrency levels (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first (default: %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per contender and K; medians are printed (default: %(default)s)"
    )
    parser.add_argument("--contenders", default="mux,pool,asynctnt", help="default: %(default)s")
    parser.add_argument("--connections", type=int, default=1, help="sockets of the mux (default: 1)")
    parser.add_argument("--tarantool-url", default=os.environ.get("GREENPOOL_TARANTOOL_URL"))
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    columns = args.contenders.split(",")
    contenders = list(columns)  # those still running: one that cannot run is not tried again
    launched: Optional[TarantoolServer] = None
    if args.tarantool_url:
        server = _server_from_url(args.tarantool_url)
    else:
        launched = TarantoolServer()
        launched.start()
        server = Server(launched.host, launched.port, launched.user, launched.password)
    runners: Dict[str, Callable[[int], Optional[Result]]] = {
        "mux": lambda k: run_mux(server, k, args.seconds, args.warmup, args.connections),
        "pool": lambda k: run_pool(server, k, args.seconds, args.warmup),
        "asynctnt": lambda k: run_asynctnt(server, k, args.seconds, args.warmup),
    }
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"replace of 1.5 KB tuples, {args.seconds:g} s per run, {args.rounds} rounds; ops/s and cpu (client "
            "us/op): medians; ratios: median of the per-round ratios (both measured in the same round)"
        )
        print(f"{os.cpu_count()} cores, load average {load} before the run: figures are indicative")
        header = f"{'K':>5} " + "".join(f"{name + ' ops/s':>15} {'cpu':>6} " for name in columns)
        print(header + f"{'mux/asynctnt':>13} {'mux/pool':>9}")
        for k in ks:
            rounds: List[Dict[str, Result]] = []
            for round_ in range(args.rounds):
                results: Dict[str, Result] = {}
                # Alternate the order, so that no contender always runs first (or last) after a change of K.
                for name in contenders if round_ % 2 == 0 else contenders[::-1]:
                    result = runners[name](k)
                    if result is None:
                        contenders = [c for c in contenders if c != name]
                        continue
                    results[name] = result
                rounds.append(results)
            row = f"{k:>5} "
            summary: Dict[str, Result] = {}
            for name in columns:
                mine = [results[name] for results in rounds if name in results]
                if mine:
                    summary[name] = _median_result(mine)
            for name in columns:
                res = summary.get(name)
                row += f"{res.ops_per_s:>15,.0f} {res.cpu_us_per_op:>6.1f} " if res else f"{'-':>15} {'-':>6} "
            ratios = [median_ratio(rounds, "mux", other) for other in ("asynctnt", "pool")]
            shown = ["-" if ratio is None else f"{ratio:.2f}x" for ratio in ratios]
            print(row + f"{shown[0]:>13} {shown[1]:>9}", flush=True)
            for res in summary.values():
                if res.errors:
                    print(f"  {res.name}: {res.errors} failed requests at K={k} (all rounds)")
                if res.note:
                    print(f"  {res.name}: {res.note}")
    finally:
        if launched is not None:
            launched.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
