"""The engine of the overload scenario: requests of K commands under one deadline, driven three ways.

A :class:`Client` is one contender's connections, ready to serve: ``command(index)`` runs command number
``index`` through one checkout (so a connection is released between the commands of a request) and says
whether its reply is the one expected; ``deadline(seconds)`` is the context manager a request runs in
(``gevent.Timeout``, or ``greenpool.deadline`` where the core offers it). Every function here closes the
client it is given before it returns.

- :func:`open_loop`: arrivals at a fixed rate, the shape of a web server. A generator greenlet spawns one
  request greenlet at each intended start time ``t0 + n / rate``; when it wakes up late it spawns every
  request that is due at once (catching up, never skipping), and each request's latency counts from its
  intended start, not from when it got to run (no coordinated omission, as wrk2 measures). A request is
  *good* when all K commands returned the expected reply within the deadline measured from that intended
  start. The generator runs in the same process as the pools, as a gevent server's accept loop does: the
  share of the wall time it spends spawning, and the process's CPU time, are figures of every run.
- :func:`closed_loop`: a fixed number of greenlets running the same requests back to back (the capacity).
- :func:`soak`: greenlets running single commands, each under its own random deadline (interruptions at
  every point of a command, replies verified).

Depends on gevent, ``greenpool.stats`` (percentiles), :mod:`stress.harness` and :mod:`stress.figures`.
"""

from __future__ import annotations

import gc
import itertools
import math
import random
from array import array
from typing import Any, Callable, Dict, List, Optional

import gevent
from gevent import Timeout
from greenlet import GreenletExit

from greenpool.stats import percentile

from .figures import cpu_seconds, run_queue_seconds
from .harness import Progress, RunStats, Workload, clock, run_workload

__all__ = [
    "DRAIN_S",
    "Client",
    "DeadlineMissed",
    "MismatchedReply",
    "closed_loop",
    "open_loop",
    "soak",
    "warm_up",
]

#: Seconds a run waits, beyond the deadline, for its last requests before it kills those still running.
DRAIN_S = 2.0
#: Seconds the warm-up (:func:`warm_up`) may take before the greenlets still connecting are killed.
WARM_TIMEOUT_S = 10.0
#: The generator may spawn its requests until ``duration * HARD_STOP`` seconds after its start; requests it
#: could not spawn by then count as ``unsent`` (a process too busy to run its own accept loop).
HARD_STOP = 2.0


class MismatchedReply(Exception):
    """A command returned something other than the value stored under its key (closed loop only)."""


class DeadlineMissed(Exception):
    """A closed-loop request's deadline fired (``gevent.Timeout`` is a BaseException the harness lets pass)."""


class Client:
    """One contender's connections, ready to serve requests.

    ``command(index) -> bool`` runs command number ``index`` (one checkout, one command, one release; the
    key is chosen from ``index``) and returns whether the reply was the expected one; ``deadline`` is called
    as ``deadline(seconds)`` and used as ``with deadline(seconds):``; ``opened()`` says how many connections
    were opened so far (``None`` when unknown); ``close()`` releases everything.
    """

    __slots__ = ("close", "command", "deadline", "opened")

    def __init__(
        self,
        command: Callable[[int], bool],
        deadline: Callable[[float], Any],
        opened: Callable[[], Optional[int]],
        close: Callable[[], None],
    ) -> None:
        self.command = command
        self.deadline = deadline
        self.opened = opened
        self.close = close


class _Tally:
    """What the requests of one open-loop run report (only the measured ones: ``index >= first``)."""

    __slots__ = ("errors", "first_error", "good", "late", "latencies", "mismatched", "mismatches", "start_lags")

    def __init__(self) -> None:
        self.good = 0
        self.late = 0
        self.mismatched = 0  # requests with at least one wrong reply
        self.mismatches = 0  # wrong replies
        self.errors: Dict[str, int] = {}
        self.first_error: Optional[str] = None
        self.latencies: array[float] = array("d")
        self.start_lags: array[float] = array("d")

    def error(self, kind: str, text: Optional[str] = None) -> None:
        """Count a failure of ``kind``; ``text`` (``"Kind: message"``) becomes ``first_error`` if none was kept."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if text is not None and self.first_error is None:
            self.first_error = text


def warm_up(client: Client, count: int) -> Optional[str]:
    """Open the client's connections before a run: ``count`` greenlets run one command each at the same time,
    without a deadline, so that a pool of ``count`` connections starts the run with all of them open (as a
    server's pool is when overload comes). Blocks until they are done, at most :data:`WARM_TIMEOUT_S`.
    Returns the first error (``"Kind: message"``), or ``None``.
    """
    if count < 1:
        return None
    failures: List[str] = []
    command = client.command

    def one(index: int) -> None:
        try:
            command(index)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    greenlets = [gevent.spawn(one, index) for index in range(count)]
    gevent.joinall(greenlets, timeout=WARM_TIMEOUT_S)
    alive = [g for g in greenlets if not g.dead]
    if alive:
        gevent.killall(alive, block=True, timeout=5.0)
        failures.append(f"warm-up: {len(alive)} command(s) still running after {WARM_TIMEOUT_S:g} s")
    return failures[0] if failures else None


def _share(before: Optional[float], after: Optional[float], elapsed: float) -> Optional[float]:
    if before is None or after is None or elapsed <= 0:
        return None
    return round(100.0 * (after - before) / elapsed, 1)


def _ms(values: Any, pct: float) -> Optional[float]:
    return percentile(sorted(v * 1000.0 for v in values), pct) if len(values) else None


def open_loop(
    client: Client,
    rate: float,
    *,
    commands: int,
    deadline: float,
    duration: float,
    warmup: float,
    warm: int = 0,
    progress: Optional[Progress] = None,
    label: str = "",
) -> Dict[str, Any]:
    """Offer ``rate`` requests per second for ``duration`` seconds; return the figures of the measured ones.

    First :func:`warm_up` opens ``warm`` connections. Request ``n`` is due at ``t0 + n / rate``; its greenlet
    runs ``commands`` commands inside ``client.deadline(deadline)``. Requests due in the first ``warmup``
    seconds load the pool but are not counted. Blocks for the warm-up, ``duration`` seconds, then until every
    request has finished (at most
    ``deadline + DRAIN_S`` more; requests still running then are killed and count as ``killed``).

    Returns ``offered_per_s``, ``requests`` (measured), ``good``, ``late`` (every reply right, but after the
    deadline), ``completed`` (all K commands returned), ``mismatched`` (requests with a wrong reply),
    ``mismatches`` (wrong replies), ``errors`` (requests that failed, by kind: ``deadline`` when the
    deadline fired, the exception's class name otherwise, ``unsent``/``killed``), ``goodput_per_s`` (good
    requests per second of the measured window), ``good_pct``, ``p50_ms``/``p99_ms`` (latency of the
    completed requests from their intended start; ``None`` when none completed), ``start_lag_p99_ms`` /
    ``start_lag_max_ms`` (how late the request greenlets started), ``gen_cpu_pct`` (the generator's own
    loop and spawns, as a share of the wall time it ran), ``proc_cpu_pct`` (the process's CPU time over the
    same wall time; 100 is one core), ``cpu_wait_pct`` (the share of that wall time the process was ready to
    run but waited for a core another process had; ``None`` off Linux), ``elapsed_s``, ``window_s``,
    ``unsent``, ``connections_opened`` (the warm-up's included), ``warm_error`` and ``first_error``.
    """
    if rate <= 0 or duration <= 0 or not 0 <= warmup < duration:
        raise ValueError(f"need rate > 0 and 0 <= warmup < duration, got {rate!r}, {warmup!r}, {duration!r}")
    total = max(1, round(rate * duration))
    first = min(total - 1, math.ceil(rate * warmup))
    interval = 1.0 / rate
    command = client.command
    cm = client.deadline
    tally = _Tally()
    live: Dict[int, gevent.Greenlet] = {}

    def request(n: int, intended: float) -> None:
        started = clock()
        base = n * commands
        bad = 0
        failure: Optional[str] = None
        text: Optional[str] = None
        try:
            with cm(deadline):
                for j in range(commands):
                    if not command(base + j):
                        bad += 1
            done = clock()
        except Timeout:
            failure = "deadline"
        except GreenletExit:
            failure = "killed"
        except Exception as exc:
            failure = type(exc).__name__
            if tally.first_error is None:
                # The text, not the exception: a local holding it would make a reference cycle through its
                # traceback (this frame), garbage that only the collector frees, for every failed request.
                text = f"{failure}: {exc}"
        finally:
            live.pop(n, None)
        if n < first:
            return
        tally.start_lags.append(started - intended)
        if bad:
            tally.mismatched += 1
            tally.mismatches += bad
        if failure is not None:
            tally.error(failure, text)
            return
        latency = done - intended
        tally.latencies.append(latency)
        if bad:
            return
        if latency <= deadline:
            tally.good += 1
        else:
            tally.late += 1

    warm_error = warm_up(client, warm)
    gc.collect()
    spawn = gevent.spawn
    sleep = gevent.sleep
    busy = 0.0
    sent = 0
    shown = 0.0
    t0 = clock()
    cpu0 = cpu_seconds()
    queued0 = run_queue_seconds()
    hard_stop = t0 + duration * HARD_STOP

    def generate() -> None:
        nonlocal busy, sent, shown
        while sent < total:
            now = clock()
            if now > hard_stop:
                break
            due = min(total, int((now - t0) * rate) + 1)
            if due > sent:
                for n in range(sent, due):
                    live[n] = spawn(request, n, t0 + n * interval)
                sent = due
                busy += clock() - now
            if progress is not None and progress.enabled and now - shown >= 0.25:
                shown = now
                progress.show(f"{label}  {min(now - t0, duration):4.1f}/{duration:.1f} s  {rate:>9,.0f} req/s offered")
            pause = t0 + sent * interval - clock()
            sleep(pause if pause > 0 else 0)

    try:
        # The generator runs in a greenlet of its own, as a server's accept loop does, so it spawns from a
        # shallow stack: gevent records each new greenlet's spawning stack (by default), a cost per request that
        # grows with the depth of the caller's stack, which here is the harness's, not a server's.
        generator = gevent.spawn(generate)
        try:
            generator.get()
        finally:
            generator.kill()
        ended = clock()
        cpu = cpu_seconds() - cpu0
        queued1 = run_queue_seconds()
        unsent = total - sent
        give_up = ended + deadline + DRAIN_S
        while live and clock() < give_up:
            sleep(0.005)
    finally:
        if live:
            gevent.killall(list(live.values()), block=True, timeout=5.0)
        if progress is not None:
            progress.done()
        opened = client.opened()
        client.close()
    for n in live:  # killed before they ever ran: their own bookkeeping never happened
        if n >= first:
            tally.error("killed")
    for _ in range(max(0, total - max(sent, first))):
        tally.error("unsent")
    measured = total - first
    window = duration - first * interval
    elapsed = ended - t0
    latencies = tally.latencies
    completed = len(latencies)
    return {
        "offered_per_s": round(measured / window, 1),
        "requests": measured,
        "good": tally.good,
        "late": tally.late,
        "completed": completed,
        "mismatched": tally.mismatched,
        "mismatches": tally.mismatches,
        "errors": dict(sorted(tally.errors.items())),
        "goodput_per_s": round(tally.good / window, 1),
        "good_pct": round(100.0 * tally.good / measured, 3),
        "p50_ms": _ms(latencies, 50),
        "p99_ms": _ms(latencies, 99),
        "start_lag_p99_ms": _ms(tally.start_lags, 99),
        "start_lag_max_ms": round(max(tally.start_lags) * 1000.0, 3) if len(tally.start_lags) else None,
        "gen_cpu_pct": round(100.0 * busy / elapsed, 1) if elapsed > 0 else None,
        "proc_cpu_pct": round(100.0 * cpu / elapsed, 1) if elapsed > 0 else None,
        "cpu_wait_pct": _share(queued0, queued1, elapsed),
        "elapsed_s": round(elapsed, 3),
        "window_s": round(window, 3),
        "unsent": unsent,
        "connections_opened": opened,
        "warm_error": warm_error,
        "first_error": tally.first_error,
    }


def closed_loop(
    client: Client,
    *,
    commands: int,
    deadline: float,
    greenlets: int,
    duration: float,
    warm: int = 0,
    progress: Optional[Progress] = None,
    label: str = "",
) -> Dict[str, Any]:
    """Run ``greenlets`` greenlets that each run the open loop's requests back to back; return their rate.

    First :func:`warm_up` opens ``warm`` connections.
    Each request is ``commands`` commands inside ``client.deadline(deadline)``, as in :func:`open_loop`.
    Blocks for the spawn, ``duration`` seconds and the drain (:func:`stress.harness.run_workload`). Returns
    ``req_per_s``, ``requests``, ``errors`` (failed requests: a fired deadline, a wrong reply, any error),
    ``first_error``, ``cpu_pct`` (process CPU over the window; 100 is one core), ``cpu_wait_pct`` (as
    :func:`open_loop`'s, over the spawn, window and drain) and ``connections_opened``.
    """
    command = client.command
    cm = client.deadline
    sequence = itertools.count()

    def op() -> None:
        base = next(sequence) * commands
        try:
            with cm(deadline):
                for j in range(commands):
                    if not command(base + j):
                        raise MismatchedReply(f"command {base + j} returned a reply for another key")
        except Timeout:
            raise DeadlineMissed(f"the {deadline * 1000:g} ms deadline fired") from None

    warm_error = warm_up(client, warm)
    stats = RunStats()
    workload = Workload([op] * greenlets, client.close, client.opened)
    cpu0, queued0, started = cpu_seconds(), run_queue_seconds(), clock()
    figures = run_workload(workload, stats, duration, drain_timeout=deadline + DRAIN_S, progress=progress, label=label)
    cpu, queued1, wall = cpu_seconds() - cpu0, run_queue_seconds(), clock() - started
    elapsed = figures["elapsed_s"]
    return {
        "greenlets": greenlets,
        "req_per_s": figures["ok_per_s"],
        "requests": figures["ok"],
        "errors": figures["errors"] + figures["failed"],
        "first_error": figures["first_error"],
        "warm_error": warm_error,
        # The CPU of the spawn and the drain is included; the window dominates.
        "cpu_pct": round(100.0 * cpu / elapsed, 1) if elapsed > 0 else None,
        "cpu_wait_pct": _share(queued0, queued1, wall),
        "elapsed_s": elapsed,
        "connections_opened": figures["connections_opened"],
    }


def soak(
    client: Client,
    *,
    greenlets: int,
    ops: int,
    min_deadline: float,
    max_deadline: float,
    seed: int,
    warm: int = 0,
    progress: Optional[Progress] = None,
    label: str = "",
) -> Dict[str, Any]:
    """``greenlets`` greenlets each run ``ops`` single commands, each inside ``client.deadline(d)`` with ``d``
    drawn uniformly from [``min_deadline``, ``max_deadline``] (the same draws for every contender given the
    same ``seed``). First :func:`warm_up` opens ``warm`` connections.

    Blocks until every greenlet is done (at most ``ops * max_deadline + DRAIN_S`` seconds plus the time the
    completed commands took; greenlets still running after ``ops * (max_deadline + 0.05) + DRAIN_S`` seconds
    are killed). Returns ``attempts``, ``completed`` (commands that returned the expected reply),
    ``mismatches`` (commands that returned another reply), ``errors`` (by kind, as :func:`open_loop`),
    ``first_error``, ``warm_error``, ``elapsed_s``, ``completed_per_s`` and ``connections_opened`` (the
    warm-up's included).
    """
    command = client.command
    cm = client.deadline
    tally = _Tally()
    done = [0]

    def worker(index: int) -> None:
        draw = random.Random(seed * 1_000_003 + index).uniform
        base = index * ops
        for j in range(ops):
            try:
                with cm(draw(min_deadline, max_deadline)):
                    right = command(base + j)
            except Timeout:
                tally.error("deadline")
                continue
            except GreenletExit:
                tally.error("killed")
                raise
            except Exception as exc:
                kind = type(exc).__name__
                tally.error(kind, f"{kind}: {exc}" if tally.first_error is None else None)
                gevent.sleep(0)  # a command that fails at once must not starve the other greenlets
                continue
            if right:
                tally.good += 1
            else:
                tally.mismatches += 1
        done[0] += 1

    warm_error = warm_up(client, warm)
    gc.collect()
    started = clock()
    workers: List[gevent.Greenlet] = []
    try:
        workers = [gevent.spawn(worker, i) for i in range(greenlets)]
        limit = started + ops * (max_deadline + 0.05) + DRAIN_S
        while done[0] < greenlets and clock() < limit:
            gevent.joinall(workers, timeout=0.25)
            if progress is not None and progress.enabled:
                progress.show(f"{label}  {clock() - started:5.1f} s  {tally.good:,} completed")
    finally:
        alive = [g for g in workers if not g.dead]
        if alive:
            gevent.killall(alive, block=True, timeout=5.0)
        if progress is not None:
            progress.done()
        opened = client.opened()
        client.close()
    elapsed = clock() - started
    return {
        "attempts": greenlets * ops,
        "completed": tally.good,
        "mismatches": tally.mismatches,
        "errors": dict(sorted(tally.errors.items())),
        "first_error": tally.first_error,
        "warm_error": warm_error,
        "elapsed_s": round(elapsed, 3),
        "completed_per_s": round(tally.good / elapsed, 1) if elapsed > 0 else 0.0,
        "connections_opened": opened,
    }
