"""Throughput of ``TarantoolMux`` against ``TarantoolPool`` and asynctnt: ``python -m stress.bench_mux``.

Each contender runs K concurrent workers that REPLACE 1.5 KB tuples in a loop against one private
``tarantool`` (started here, or ``--tarantool-url``), for K = 10, 100, 1000 and 5000 by default:

- ``mux``: one :class:`greenpool.tarantool_mux.TarantoolMux` shared by K greenlets;
- ``pool``: :class:`greenpool.tarantool.TarantoolPool` (10 tarantool-python connections) shared by K
  greenlets; if that module is missing, 10 tarantool-python connections handed out through a
  ``gevent.queue.Queue``;
- ``asynctnt``: one ``asynctnt`` connection and K coroutines on uvloop, in a subprocess (skipped with a
  message when asynctnt or uvloop is not installed: ``pip install asynctnt uvloop``).

The contenders of one K run back to back (``--rounds`` times, best kept), so they share the box's load.
Printed per K: ops/s and client CPU microseconds per op for each, and the ratios mux/asynctnt and mux/pool.

The contender functions (:func:`run_mux`, :func:`run_pool`, :func:`run_asynctnt`) take a server address and
return a :class:`Result`, so the main harness can import them. Depends on gevent (the process is
monkey-patched, for tarantool-python), ``greenpool`` and ``stress.servers``; asynctnt/uvloop optionally.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlparse

import gevent

from stress.servers import TarantoolServer

__all__ = ["Result", "Server", "run_asynctnt", "run_mux", "run_pool"]

PAYLOAD = "x" * 1500
#: Keys cycle through this many tuples (about 30 MB of tuples at most).
KEYSPACE = 20_000
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


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _drive(name: str, k: int, replace: Callable[[int, List[Any]], Any], seconds: float, warmup: float) -> Result:
    """Run ``k`` greenlets calling ``replace(worker, tuple)`` in a loop; count the ops after ``warmup``."""
    state = {"ops": 0, "errors": 0, "stop": False}

    def worker(i: int) -> None:
        key = (i * 7919) % KEYSPACE
        while not state["stop"]:
            key = (key + 1) % KEYSPACE
            try:
                replace(i, [key, PAYLOAD])
            except Exception:
                state["errors"] += 1
            else:
                state["ops"] += 1

    workers = [gevent.spawn(worker, i) for i in range(k)]
    gevent.sleep(warmup)
    state["ops"] = state["errors"] = 0
    start, cpu = time.perf_counter(), _cpu_seconds()
    gevent.sleep(seconds)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    ops, errors = state["ops"], state["errors"]
    state["stop"] = True
    gevent.joinall(workers, timeout=60)
    return Result(name, k, ops / elapsed, cpu / max(ops, 1) * 1e6, errors)


def run_mux(server: Server, k: int, seconds: float = 2.0, warmup: float = 0.5, connections: int = 1) -> Result:
    """K greenlets share one :class:`~greenpool.tarantool_mux.TarantoolMux`."""
    from greenpool.tarantool_mux import TarantoolMux

    with TarantoolMux(server.host, server.port, server.user, server.password, connections=connections) as mux:
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
    """One asynctnt connection and K coroutines on uvloop, in a subprocess; None (with a message) if unavailable."""
    command = [sys.executable, "-m", "stress.bench_mux", "--asynctnt-worker"]
    command += [json.dumps({"server": server.__dict__, "k": k, "seconds": seconds, "warmup": warmup})]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120 + seconds)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        print(f"asynctnt contender skipped: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")
        return None
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Result("asynctnt", k, data["ops_per_s"], data["cpu_us_per_op"], data["errors"])


def _asynctnt_worker(spec: Dict[str, Any]) -> None:
    """Runs in the subprocess (not monkey-patched: asyncio only): print one JSON line."""
    try:
        import asyncio

        import asynctnt
        import uvloop
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is not installed (pip install asynctnt uvloop)") from None
    server, k = spec["server"], spec["k"]

    async def main() -> Dict[str, Any]:
        conn = asynctnt.Connection(
            host=server["host"], port=server["port"], username=server["user"], password=server["password"]
        )
        await conn.connect()
        state = {"ops": 0, "errors": 0, "stop": False}

        async def worker(i: int) -> None:
            key = (i * 7919) % KEYSPACE
            while not state["stop"]:
                key = (key + 1) % KEYSPACE
                try:
                    await conn.replace(SPACE, [key, PAYLOAD])
                except Exception:
                    state["errors"] += 1
                else:
                    state["ops"] += 1

        tasks = [asyncio.ensure_future(worker(i)) for i in range(k)]
        await asyncio.sleep(spec["warmup"])
        state["ops"] = state["errors"] = 0
        start, cpu = time.perf_counter(), _cpu_seconds()
        await asyncio.sleep(spec["seconds"])
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        ops, errors = state["ops"], state["errors"]
        state["stop"] = True
        await asyncio.gather(*tasks)
        await conn.disconnect()
        return {"ops_per_s": ops / elapsed, "cpu_us_per_op": cpu / max(ops, 1) * 1e6, "errors": errors}

    uvloop.install()
    print(json.dumps(asyncio.run(main())))


def _server_from_url(url: str) -> Server:
    parts = urlparse(url)
    return Server(parts.hostname or "127.0.0.1", parts.port or 3301, parts.username, parts.password)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.bench_mux", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="10,100,1000,5000", help="concurrency levels (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per contender and K, best kept (default: 2)")
    parser.add_argument("--contenders", default="mux,pool,asynctnt", help="default: %(default)s")
    parser.add_argument("--connections", type=int, default=1, help="sockets of the mux (default: 1)")
    parser.add_argument("--tarantool-url", default=os.environ.get("GREENPOOL_TARANTOOL_URL"))
    parser.add_argument("--asynctnt-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.asynctnt_worker:
        _asynctnt_worker(json.loads(args.asynctnt_worker))
        return 0
    ks = [int(k) for k in args.ks.split(",")]
    contenders = args.contenders.split(",")
    launched = None
    if args.tarantool_url:
        server = _server_from_url(args.tarantool_url)
    else:
        launched = TarantoolServer().start()
        server = Server(launched.host, launched.port, launched.user, launched.password)
    runners: Dict[str, Callable[[int], Optional[Result]]] = {
        "mux": lambda k: run_mux(server, k, args.seconds, args.warmup, args.connections),
        "pool": lambda k: run_pool(server, k, args.seconds, args.warmup),
        "asynctnt": lambda k: run_asynctnt(server, k, args.seconds, args.warmup),
    }
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"replace of 1.5 KB tuples, {args.seconds:g} s per run, best of {args.rounds}; cpu = client us/op")
        print(f"{os.cpu_count()} cores, load average {load} before the run: figures are indicative")
        header = f"{'K':>5} " + "".join(f"{name + ' ops/s':>15} {'cpu':>6} " for name in contenders)
        print(header + f"{'mux/asynctnt':>13} {'mux/pool':>9}")
        for k in ks:
            best: Dict[str, Result] = {}
            for round_ in range(args.rounds):
                # Alternate the order, so that no contender always runs first (or last) after a change of K.
                for name in contenders if round_ % 2 == 0 else contenders[::-1]:
                    if name == "asynctnt" and "asynctnt" in best and best["asynctnt"] is None:
                        continue
                    result = runners[name](k)
                    if result is None:
                        contenders = [c for c in contenders if c != name]
                        continue
                    if name not in best or result.ops_per_s > best[name].ops_per_s:
                        best[name] = result
            row = f"{k:>5} "
            for name in contenders:
                res = best.get(name)
                row += f"{res.ops_per_s:>15,.0f} {res.cpu_us_per_op:>6.1f} " if res else f"{'-':>15} {'-':>6} "
            ratios = []
            for other in ("asynctnt", "pool"):
                if "mux" in best and other in best:
                    ratios.append(f"{best['mux'].ops_per_s / best[other].ops_per_s:.2f}x")
                else:
                    ratios.append("-")
            print(row + f"{ratios[0]:>13} {ratios[1]:>9}", flush=True)
            for res in best.values():
                if res.errors:
                    print(f"  {res.name}: {res.errors} failed requests at K={k}")
                if res.note:
                    print(f"  {res.name}: {res.note}")
    finally:
        if launched is not None:
            launched.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
