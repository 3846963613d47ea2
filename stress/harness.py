"""The run engine of the contention harness: drive one workload for a fixed time and measure it.

A :class:`Workload` is one callable per worker greenlet (each call is one operation: checkout, command,
release) plus how to count the connections it opened and how to close it. :func:`run_workload` spawns
the greenlets, waits until every one of them has started and is parked on a start event (so spawn cost
is not measured), opens the measurement window, samples the process's RSS (and draws a progress line
on stderr when asked), closes the window after ``duration`` seconds, and lets every greenlet finish
before it returns the figures of the window as a plain dict.

Operations signal a failed checkout by raising :class:`CheckoutFailed`; they record each checkout's wait
(failed ones included) in :attr:`RunStats.waits`. Depends on gevent and ``greenpool.stats`` (percentiles).
"""

from __future__ import annotations

import gc
from array import array
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, TextIO

import gevent
from gevent.event import Event

from greenpool.stats import percentile

from .figures import cpu_seconds, outcome, rss_bytes

__all__ = ["CheckoutFailed", "Progress", "RunStats", "Workload", "rss_bytes", "run_workload", "summarize_waits"]

#: The clock every figure of the harness is measured with.
clock = perf_counter


class CheckoutFailed(Exception):
    """Raised by an operation whose checkout failed (timed out, refused); its wait is already recorded."""


class RunStats:
    """Counters one run's operations update: successes, failed checkouts, other errors, checkout waits (s)."""

    __slots__ = ("errors", "failed", "first_error", "ok", "waits")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors = 0
        self.first_error: Optional[str] = None
        self.waits: array[float] = array("d")

    def reset(self) -> None:
        """Forget everything counted so far (after the unmeasured warm-up)."""
        self.ok = self.failed = self.errors = 0
        self.first_error = None
        del self.waits[:]


class Workload:
    """What one run drives.

    ``ops``: one zero-argument callable per worker greenlet, called in a loop; ``opened()``: how many
    connections were opened so far (``None`` when unknown); ``close()``: release everything (called once,
    after every worker has finished).
    """

    def __init__(
        self,
        ops: List[Callable[[], Any]],
        close: Callable[[], None],
        opened: Callable[[], Optional[int]],
    ) -> None:
        self.ops = ops
        self.close = close
        self.opened = opened


class Progress:
    """Progress of a long run on a stream (stderr).

    On a terminal, one line redrawn in place (``\\r``). Anywhere else (a pipe, a file) plain lines: at most one
    every ``interval`` seconds, plus the last state of each task when it ends (:meth:`done`), so that ``make
    stress | tee`` shows where the run is without a line longer than the text. Disabled, it writes nothing.
    """

    def __init__(self, stream: TextIO, enabled: bool = True, interval: float = 5.0) -> None:
        self.stream = stream
        self.enabled = enabled
        self.interval = interval
        try:
            self._tty = enabled and stream.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._width = 0
        self._pending: Optional[str] = None
        self._last_line = float("-inf")

    def show(self, text: str) -> None:
        """The current state of the task: redrawn on a terminal, written as a line on a pipe at most every
        ``interval`` seconds (the latest state is kept for :meth:`done`)."""
        if not self.enabled:
            return
        if self._tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            now = clock()
            if now - self._last_line < self.interval:
                self._pending = text
                return
            self._last_line = now
            self._pending = None
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """One line that stays (a phase starting), on a terminal and on a pipe alike."""
        if not self.enabled:
            return
        self.done()
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = clock()

    def done(self) -> None:
        """End the task: erase the line on a terminal; on a pipe, write its last state if not written yet."""
        if not self.enabled:
            return
        if self._tty:
            if self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self._width = 0
        elif self._pending is not None:
            self.stream.write(self._pending + "\n")
            self._pending = None
            self._last_line = clock()
        else:
            return
        self.stream.flush()


def _warm_up(ops: List[Callable[[], Any]], timeout: float) -> None:
    """Run each of ``ops`` once, all at the same time; errors are left for the measured window to show."""

    def call(op: Callable[[], Any]) -> None:
        try:
            op()
        except Exception:  # the window counts and reports the same failure
            pass

    greenlets = [gevent.spawn(call, op) for op in ops]
    gevent.joinall(greenlets, timeout=timeout)
    gevent.killall([g for g in greenlets if not g.dead], block=True, timeout=5.0)


def summarize_waits(waits: Any) -> Dict[str, float]:
    """Checkout wait percentiles, in milliseconds, of a sequence of waits in seconds."""
    values = sorted(wait * 1000.0 for wait in waits)
    return {
        "wait_p50_ms": percentile(values, 50),
        "wait_p99_ms": percentile(values, 99),
        "wait_max_ms": round(values[-1], 3) if values else 0.0,
    }


class _State:
    __slots__ = ("ready", "running")

    def __init__(self) -> None:
        self.ready = 0
        self.running = True


def run_workload(
    workload: Workload,
    stats: RunStats,
    duration: float,
    *,
    drain_timeout: float,
    progress: Optional[Progress] = None,
    label: str = "",
    warm: int = 0,
) -> Dict[str, Any]:
    """Run ``workload`` for ``duration`` seconds of measured time and return the window's figures.

    With ``warm``, the first ``warm`` operations first run once each, at the same time and unmeasured, so that
    the connections they need are open before the window (every contender starts warm; a failure there shows
    in the window). Blocks for the warm-up (at most ``drain_timeout``), the spawn, the window, and the drain:
    after the window closes, the workers finish the operation they are in (a checkout may wait up to the
    pool's timeout); any still running after ``drain_timeout`` seconds is killed. ``workload.close()`` is
    always called. The returned dict holds ``greenlets``, ``elapsed_s``, ``ok``, ``ok_per_s``, ``failed``,
    ``errors``, ``success_pct``, ``checkouts``, ``wait_p50_ms``/``wait_p99_ms``/``wait_max_ms`` (all checkouts
    of the window, failed ones included), ``connections_opened``, ``rss_before_mb``, ``rss_peak_mb``,
    ``rss_growth_mb``, ``cpu_us_per_op`` (this process's CPU time in the window per completed operation) and
    ``first_error`` (the first operation error other than a failed checkout, or ``None``).
    """
    ops = workload.ops
    count = len(ops)
    state = _State()
    all_ready = Event()
    start = Event()

    def worker(op: Callable[[], Any]) -> None:
        state.ready += 1
        if state.ready == count:
            all_ready.set()
        start.wait()
        while state.running:
            try:
                op()
            except CheckoutFailed:
                stats.failed += 1
            except Exception as exc:
                stats.errors += 1
                if stats.first_error is None:
                    stats.first_error = f"{type(exc).__name__}: {exc}"
                gevent.sleep(0)  # an operation that fails at once must not starve the other greenlets
            else:
                stats.ok += 1

    workers: List[gevent.Greenlet] = []
    try:
        if warm:
            _warm_up(ops[:warm], drain_timeout)
            stats.reset()
        gc.collect()
        rss_before = rss_bytes()
        workers = [gevent.spawn(worker, op) for op in ops]
        all_ready.wait()
        rss_peak = rss_bytes()
        started = clock()
        cpu_started = cpu_seconds()
        deadline = started + duration
        start.set()
        while True:
            now = clock()
            if now >= deadline:
                break
            gevent.sleep(min(0.1, deadline - now))
            rss_peak = max(rss_peak, rss_bytes())
            if progress is not None and progress.enabled:
                elapsed = clock() - started
                rate = stats.ok / elapsed if elapsed > 0 else 0.0
                progress.show(
                    f"{label}  {min(elapsed, duration):4.1f}/{duration:.1f} s  {rate:>10,.0f} ok/s  "
                    f"{stats.failed:,} failed"
                )
        state.running = False
        elapsed = clock() - started
        cpu = cpu_seconds() - cpu_started
        ok, failed, errors, checkouts = stats.ok, stats.failed, stats.errors, len(stats.waits)
        rss_peak = max(rss_peak, rss_bytes())
        gevent.joinall(workers, timeout=drain_timeout)
    finally:
        state.running = False
        start.set()
        alive = [g for g in workers if not g.dead]
        if alive:
            gevent.killall(alive, block=True, timeout=5.0)
        if progress is not None:
            progress.done()
        workload.close()
    figures: Dict[str, Any] = {"greenlets": count, **outcome(ok, failed, errors, elapsed), "checkouts": checkouts}
    figures.update(summarize_waits(stats.waits[:checkouts]))
    figures["connections_opened"] = workload.opened()
    mib = 1024.0 * 1024.0
    figures["rss_before_mb"] = round(rss_before / mib, 1)
    figures["rss_peak_mb"] = round(rss_peak / mib, 1)
    figures["rss_growth_mb"] = round(max(0, rss_peak - rss_before) / mib, 1)
    figures["cpu_us_per_op"] = round(cpu * 1e6 / ok, 1) if ok else None
    figures["first_error"] = stats.first_error
    return figures
