"""The two extra Redis scenarios the harness prints by default.

- :func:`single_greenlet`: one greenlet, no contention: each pool against a single dedicated connection
  (the pool's fixed cost per operation shows as the ratio; target >= 0.95 for greenpool).
- :func:`memory_per_waiter`: RSS growth per greenlet blocked in a greenpool checkout, minus the growth per
  greenlet blocked on a plain ``gevent.event.Event`` (what the pool itself costs per waiter; target
  <= 1 KiB). Each measure runs in a fresh subprocess (``python -c`` + :func:`probe_main`), so that memory
  freed by earlier runs cannot hide the growth and one kind of waiter cannot reuse the other's.

Depends on the harness, the contenders, redis-py and (for the probe) ``greenpool.redis``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Union

from .contenders import Contender, RedisCeiling, RedisTarget, alternate
from .figures import PACKAGE, python_path
from .harness import Progress, RunStats, rss_bytes, run_workload
from .rounds import median, median_ratio

__all__ = ["memory_per_waiter", "probe_main", "single_greenlet"]

#: Environment variable the memory probe reads the Redis URL from (never on its command line).
URL_ENV = "GREENPOOL_STRESS_REDIS_URL"


def single_greenlet(
    target: RedisTarget,
    contenders: List[Contender],
    duration: float,
    timeout: float,
    rounds: int = 2,
    progress: Optional[Progress] = None,
) -> Dict[str, Any]:
    """Run one greenlet through each pool and through one dedicated connection, in alternating order.

    Each contender runs once per round for ``duration / 2`` seconds (order A B C, then C B A, so drift affects
    them alike), in ``max(rounds, 2)`` rounds. Returns ``{"dedicated_ok_per_s": ..., "pools": {name:
    {"ok_per_s": ..., "vs_dedicated": ..., "vs_dedicated_per_round": [...]}}}``: medians over the rounds,
    ``vs_dedicated`` the median of the per-round ratios. Blocks for about
    ``rounds * (len(contenders) + 1) * duration / 2``.
    """
    dedicated = RedisCeiling()
    runners: Dict[str, Contender] = {"dedicated": dedicated}
    runners.update((c.name, c) for c in contenders if not isinstance(c, RedisCeiling))
    rates: Dict[str, List[float]] = {name: [] for name in runners}
    half = max(duration / 2.0, 0.2)
    count = max(rounds, 2)
    for round_index in range(count):
        for name in alternate(list(runners), round_index):
            stats = RunStats()
            # max_connections 1 for the dedicated connection; the pools may open as many as they like.
            size = 1 if name == "dedicated" else 10
            workload = runners[name].workload(target, size, 1, timeout, stats)
            label = f"single greenlet, round {round_index + 1}/{count}: {name:<21}"
            figures = run_workload(
                workload, stats, half, drain_timeout=timeout + 5.0, progress=progress, label=label, warm=1
            )
            rates[name].append(figures["ok"] / figures["elapsed_s"] if figures["elapsed_s"] else 0.0)
    base = rates.pop("dedicated")
    return {
        "duration_s": round(half, 3),
        "rounds": count,
        "dedicated_ok_per_s": round(median(base) or 0.0, 1),
        "pools": {
            name: {
                "ok_per_s": round(median(mine) or 0.0, 1),
                "vs_dedicated": median_ratio(zip(mine, base)),
                "vs_dedicated_per_round": [round(a / b, 3) if b else None for a, b in zip(mine, base)],
            }
            for name, mine in rates.items()
        },
    }


def memory_per_waiter(url: str, waiters: int, timeout: float = 60.0) -> Dict[str, Any]:
    """Measure greenpool's memory per waiting greenlet in fresh interpreters; blocks up to ``timeout`` each.

    Four probe processes run in turn (Event, pool, pool, Event), each parking ``waiters`` greenlets after the
    same set-up and warm-up; the figures are averaged per kind. Returns ``{"waiters",
    "event_bytes_per_greenlet", "pool_bytes_per_greenlet", "bytes_per_waiter"}`` (the last is the pool's
    own cost: pool minus Event), or ``{"waiters", "error"}`` when a probe failed.
    """
    growth: Dict[str, List[float]] = {"event": [], "pool": []}
    for mode in ("event", "pool", "pool", "event"):
        result = _probe(url, mode, waiters, timeout)
        if isinstance(result, str):
            return {"waiters": waiters, "error": result}
        growth[mode].append(result)
    event = sum(growth["event"]) / len(growth["event"]) / waiters
    pool = sum(growth["pool"]) / len(growth["pool"]) / waiters
    return {
        "waiters": waiters,
        "event_bytes_per_greenlet": round(event, 1),
        "pool_bytes_per_greenlet": round(pool, 1),
        "bytes_per_waiter": round(pool - event, 1),
    }


def _probe(url: str, mode: str, waiters: int, timeout: float) -> Union[float, str]:
    """Run one probe process; return the RSS growth in bytes, or an error message."""
    code = f"from gevent import monkey; monkey.patch_all(); from {PACKAGE}.extras import probe_main; probe_main()"
    env = dict(os.environ)
    env[URL_ENV] = url
    env["PYTHONPATH"] = python_path(env)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, mode, str(waiters)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the memory probe did not finish within {timeout:.0f} s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the memory probe failed: {tail}"
    return float(json.loads(lines[-1])["growth"])


def _park(count: int, block: Any) -> int:
    """Spawn ``count`` greenlets that each call ``block()``; return the RSS growth once all are blocked."""
    import gevent

    ready = [0]

    def run() -> None:
        ready[0] += 1
        block()

    before = rss_bytes()
    for _ in range(count):
        gevent.spawn(run)
    while ready[0] < count:
        gevent.sleep(0.01)
    # Each greenlet counts itself and blocks without switching in between, so all of them are parked now.
    gevent.sleep(0.01)
    return rss_bytes() - before


def probe_main() -> None:
    """Entry point of a memory probe process (already monkey-patched): ``MODE WAITERS`` on the command line.

    Sets up the same things whatever the mode (a GeventPool whose only connection is held, an Event),
    warms both waiting paths up, then parks ``WAITERS`` greenlets on the Event (``event``) or in a
    checkout (``pool``) and prints ``{"growth": bytes}`` as one JSON line.
    """
    from gevent.event import Event

    from greenpool.redis import GeventPool

    mode, waiters = sys.argv[1], int(sys.argv[2])
    target = RedisTarget(os.environ[URL_ENV])
    pool = GeventPool(max_connections=1, timeout=3600, **target.connection_kwargs)
    held: Optional[Any] = pool.get_connection()  # every later checkout waits
    event = Event()

    def wait_in_pool() -> None:
        try:
            pool.get_connection()
        except Exception:
            pass

    # Warm both paths up (first-call allocations, code objects) before measuring.
    _park(50, event.wait)
    _park(50, wait_in_pool)
    gc.collect()
    gc.disable()
    growth = _park(waiters, event.wait if mode == "event" else wait_in_pool)
    sys.stdout.write(json.dumps({"growth": growth}) + "\n")
    sys.stdout.flush()
    del held
    os._exit(0)  # the parked greenlets and the held connection go with the process
