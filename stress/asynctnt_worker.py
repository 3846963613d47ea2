"""The asynctnt contender: one asynctnt connection on uvloop shared by N coroutines, in a subprocess.

asyncio and gevent's monkey-patching do not mix, so the coroutines run in a fresh interpreter
(``python -m stress.asynctnt_worker``; installed, ``greenpool.stress.asynctnt_worker``) that patches nothing
and imports no greenpool pool (installed, the package's ``__init__`` imports gevent). :func:`run` starts it,
hands it a :class:`Spec` as JSON on stdin (never on the command line: the spec holds the password), blocks
until it exits and returns the figures it printed as one JSON line. The worker connects, starts the
coroutines, waits until every one of them has started, lets them run ``warmup`` unmeasured seconds, then
measures ``seconds``: completed requests (``ok``), requests that timed out (``failed``), other errors, its
own RSS and CPU time. The connection does not reconnect by itself: an unreachable server fails the worker
at once, a connection lost during the run shows as errors.

Used by the main harness (the ``asynctnt`` contender of ``python -m stress tarantool``, see
:mod:`stress.contenders`, which runs every contender in rounds). asynctnt and uvloop are optional
(``pip install 'greenpool[bench]'``): :func:`missing` tells without importing them, and :func:`run` raises
:class:`AsynctntUnavailable` when they are missing or the worker cannot import them. Depends on the
standard library (asynctnt and uvloop in the worker only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from typing import Any, Dict, List, Optional

from .figures import PACKAGE, cpu_seconds, outcome, python_path, rss_bytes

__all__ = ["INSTALL", "AsynctntUnavailable", "Spec", "WorkerFailed", "missing", "run"]

#: The command that installs what the worker needs.
INSTALL = "pip install 'greenpool[bench]'"
#: The modules the worker imports.
MODULES = ("asynctnt", "uvloop")
#: Exit status of a worker that cannot import asynctnt or uvloop.
EXIT_UNAVAILABLE = 3
#: Seconds the worker may take beyond warm-up, measurement and one request timeout (start, connect, drain).
SLACK_S = 60.0


class WorkerFailed(RuntimeError):
    """The worker could not run or did not report (the message says why; it never holds the password)."""


class AsynctntUnavailable(WorkerFailed):
    """asynctnt or uvloop is not installed, or cannot be imported (the message names :data:`INSTALL`)."""


@dataclass
class Spec:
    """What the worker runs: ``concurrency`` coroutines, each calling ``op`` on ``space`` in a loop.

    Coroutine ``i`` starts at key ``(i * key_stride) % keyspace`` and adds ``key_step`` after each request
    (``key_step=0``: always the same key). ``replace`` writes ``(key, "x" * value_size)``; ``select`` reads
    ``key``. ``timeout`` is the request timeout in seconds (``None``: none); a request that times out counts
    as failed.
    """

    host: str
    port: int
    user: Optional[str]
    password: Optional[str] = field(repr=False)
    concurrency: int
    seconds: float
    warmup: float = 0.0
    op: str = "replace"
    space: str = "tester"
    value_size: int = 1500
    timeout: Optional[float] = None
    keyspace: int = 1000
    key_stride: int = 1
    key_step: int = 0


def missing() -> Optional[str]:
    """Why the worker cannot run here (asynctnt or uvloop not installed), or ``None``; imports neither."""
    absent = [name for name in MODULES if find_spec(name) is None]
    if not absent:
        return None
    verb = "is" if len(absent) == 1 else "are"
    return f"{' and '.join(absent)} {verb} not installed; install the bench extra: {INSTALL}"


def run(spec: Spec) -> Dict[str, Any]:
    """Run the worker for ``spec``; block until it exits and return its figures.

    The figures: ``concurrency``, ``elapsed_s``, ``ok``, ``ok_per_s``, ``failed``, ``errors``,
    ``success_pct``, ``first_error``, ``rss_before_mb``, ``rss_peak_mb``, ``rss_growth_mb`` (the worker's own
    process) and ``cpu_us_per_op``. Blocks for ``warmup + seconds`` plus the start, the connect and the drain,
    at most :data:`SLACK_S` seconds more. Raises :class:`AsynctntUnavailable` when asynctnt or uvloop is
    missing, :class:`WorkerFailed` when the worker fails otherwise (server unreachable, bad credentials,
    no report in time).
    """
    reason = missing()
    if reason:
        raise AsynctntUnavailable(reason)
    env = dict(os.environ)
    env["PYTHONPATH"] = python_path(env)
    limit = spec.warmup + spec.seconds + (spec.timeout or 0.0) + SLACK_S
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"{PACKAGE}.asynctnt_worker"],
            input=json.dumps(asdict(spec)),
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise WorkerFailed(f"the asynctnt worker did not finish within {limit:.0f} s") from None
    problem = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if proc.returncode == EXIT_UNAVAILABLE:
        raise AsynctntUnavailable(problem)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise WorkerFailed(f"the asynctnt worker failed: {problem}")
    figures: Dict[str, Any] = json.loads(lines[-1])
    return figures


# ---------------------------------------------------------------------- the worker process


class _Counts:
    __slots__ = ("errors", "failed", "first_error", "ok", "ready", "running")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors = 0
        self.first_error: Optional[str] = None
        self.ready = 0
        self.running = True


async def _measure(asynctnt: Any, spec: Spec) -> Dict[str, Any]:
    import asyncio

    conn = asynctnt.Connection(
        host=spec.host,
        port=spec.port,
        username=spec.user,
        password=spec.password,
        request_timeout=-1.0 if spec.timeout is None else spec.timeout,
        reconnect_timeout=0,  # fail at once when the server is unreachable; a lost connection shows as errors
    )
    await conn.connect()
    counts = _Counts()
    all_ready = asyncio.Event()
    start = asyncio.Event()
    payload = "x" * spec.value_size

    async def worker(index: int) -> None:
        key = (index * spec.key_stride) % spec.keyspace
        counts.ready += 1
        if counts.ready == spec.concurrency:
            all_ready.set()
        await start.wait()
        while counts.running:
            try:
                if spec.op == "select":
                    await conn.select(spec.space, [key])
                else:
                    await conn.replace(spec.space, [key, payload])
            except asyncio.TimeoutError:
                counts.failed += 1
            except Exception as exc:
                counts.errors += 1
                if counts.first_error is None:
                    counts.first_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0)  # a request that fails at once must not starve the others
            else:
                counts.ok += 1
            key = (key + spec.key_step) % spec.keyspace

    rss_before = rss_bytes()
    tasks = [asyncio.ensure_future(worker(i)) for i in range(spec.concurrency)]
    try:
        await all_ready.wait()
        start.set()
        if spec.warmup > 0:
            await asyncio.sleep(spec.warmup)
            counts.ok = counts.failed = counts.errors = 0
            counts.first_error = None
        rss_peak = rss_bytes()
        started, cpu = time.perf_counter(), cpu_seconds()
        deadline = started + spec.seconds
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            await asyncio.sleep(min(0.1, deadline - now))
            rss_peak = max(rss_peak, rss_bytes())
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        ok, failed, errors, first_error = counts.ok, counts.failed, counts.errors, counts.first_error
        counts.running = False
        rss_peak = max(rss_peak, rss_bytes())
        await asyncio.wait(tasks, timeout=(spec.timeout or 0.0) + 10.0)
    finally:
        counts.running = False
        start.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conn.disconnect()
    mib = 1024.0 * 1024.0
    return {
        "concurrency": spec.concurrency,
        **outcome(ok, failed, errors, elapsed),
        "first_error": first_error,
        "rss_before_mb": round(rss_before / mib, 1),
        "rss_peak_mb": round(rss_peak / mib, 1),
        "rss_growth_mb": round(max(0, rss_peak - rss_before) / mib, 1),
        "cpu_us_per_op": round(cpu / max(ok, 1) * 1e6, 2),
    }


def main(argv: Optional[List[str]] = None) -> int:
    """The worker: read a :class:`Spec` as JSON on stdin, run it, print the figures as one JSON line.

    Returns 0; :data:`EXIT_UNAVAILABLE` (with one line on stderr naming :data:`INSTALL`) when asynctnt or
    uvloop cannot be imported. Any other failure propagates (a traceback on stderr, exit status 1).
    """
    spec = Spec(**json.loads(sys.stdin.read()))
    try:
        import asynctnt
        import uvloop
    except ImportError as exc:
        sys.stderr.write(f"{exc.name or 'asynctnt'} cannot be imported ({exc}); install the bench extra: {INSTALL}\n")
        return EXIT_UNAVAILABLE
    figures = uvloop.run(_measure(asynctnt, spec))
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
