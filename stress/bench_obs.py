"""What observability costs, side by side: ``python -m stress.bench_obs``.

Two scenarios against one private ``redis-server`` (or ``--url``), PING by default:

- **one greenlet** through a dedicated connection (no pool) and through ``GeventPool`` without any listener
  or exporter, with a do-nothing ``checkout``/``checkin`` listener, and with ``greenpool.otel`` on; the
  target: ``GeventPool`` alone >= 0.95x the dedicated connection;
- **many greenlets** (``--greenlets``, default 5000, the harness's seed scenario) through ``GeventPool`` at
  ``--max-connections`` (default 10), without exporter, with ``greenpool.otel`` (its default: read when
  collected) and with ``greenpool.otel`` ``histograms=True`` (wait and use time recorded per checkout);
  the target: the default exporter loses < 5 %.

The exporters record into the OpenTelemetry SDK (a ``MeterProvider`` with an in-memory reader, collected
once at the end of each run). Every round runs each contender once, in alternating order, and each ratio
is the median over the rounds of the ratio within one round, so that the contenders of one round share the
machine's load. Each run also reports this process's CPU time per operation (spawn and drain included,
alike for every contender), which other processes on a shared machine disturb far less than ok/s.
Depends on gevent, redis-py, the OpenTelemetry SDK, ``greenpool`` and the harness.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from greenpool import events

from .contenders import Contender, GreenpoolRedis, RedisCeiling, RedisTarget, alternate
from .harness import RunStats, run_workload
from .servers import RedisServer


class _Observed(GreenpoolRedis):
    """``GeventPool`` with something attached by ``attach(pool)``."""

    def __init__(self, name: str, attach: Callable[[Any], Any]) -> None:
        self.name = name
        self._attach = attach
        self.collect: Optional[Callable[[], Any]] = None

    def make_pool(self, target: RedisTarget, connection_class: Any, max_connections: int, timeout: float) -> Any:
        pool = super().make_pool(target, connection_class, max_connections, timeout)
        self.collect = self._attach(pool)
        return pool


def _noop_listeners(pool: Any) -> None:
    events.listen(pool, "checkout", lambda conn, wait: None)
    events.listen(pool, "checkin", lambda conn, held: None)


def _otel(histograms: bool) -> Callable[[Any], Callable[[], Any]]:
    def attach(pool: Any) -> Callable[[], Any]:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from greenpool.otel import instrument

        reader = InMemoryMetricReader()
        instrument(pool, meter_provider=MeterProvider(metric_readers=[reader]), histograms=histograms)
        return reader.get_metrics_data

    return attach


def _run(contender: Contender, target: RedisTarget, size: int, greenlets: int, duration: float) -> Tuple[float, float]:
    """Run once; return (ok/s, this process's CPU microseconds per successful operation)."""
    stats = RunStats()
    workload = contender.workload(target, size, greenlets, 1.0, stats)
    cpu = time.process_time()
    figures = run_workload(workload, stats, duration, drain_timeout=10.0)
    collect = getattr(contender, "collect", None)
    if collect is not None:
        collect()  # one collection per run, as a periodic reader would do
    cpu = time.process_time() - cpu
    if figures["errors"]:
        raise RuntimeError(f"{contender.name}: {figures['first_error']}")
    return float(figures["ok_per_s"]), cpu * 1e6 / max(1, int(stats.ok))


def _rounds(
    contenders: List[Contender], base: str, target: RedisTarget, sizes: Dict[str, int], greenlets: int, args: Any
) -> Dict[str, Any]:
    per_round: Dict[str, List[float]] = {c.name: [] for c in contenders}
    cpu_round: Dict[str, List[float]] = {c.name: [] for c in contenders}
    by_name = {c.name: c for c in contenders}
    for index in range(args.rounds):
        for name in alternate(list(by_name), index):
            size = sizes.get(name, args.max_connections)
            rate, cpu = _run(by_name[name], target, size, greenlets, args.duration)
            per_round[name].append(rate)
            cpu_round[name].append(cpu)
            print(f"  round {index + 1}: {name:<22} {rate:>10,.0f} ok/s {cpu:8.1f} us CPU/op", file=sys.stderr)
    out: Dict[str, Any] = {}
    for name, rates in per_round.items():
        ratios = [rate / b for rate, b in zip(rates, per_round[base]) if b]
        cpu_ratios = [c / b for c, b in zip(cpu_round[name], cpu_round[base]) if b]
        out[name] = {
            "ok_per_s_median": round(statistics.median(rates), 1),
            f"vs_{base}_median": round(statistics.median(ratios), 3),
            f"vs_{base}_rounds": [round(r, 3) for r in ratios],
            "cpu_us_per_op_median": round(statistics.median(cpu_round[name]), 2),
            f"cpu_vs_{base}_median": round(statistics.median(cpu_ratios), 3),
        }
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.bench_obs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="Redis server (default: start a private redis-server)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run (default 2)")
    parser.add_argument("--greenlets", type=int, default=5000, help="greenlets of the many-greenlet scenario")
    parser.add_argument("--max-connections", type=int, default=10, help="pool size (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each scenario (default 5)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    args = parser.parse_args(argv)

    server = None if args.url else RedisServer()
    url = args.url or server.start().url  # type: ignore[union-attr]
    try:
        target = RedisTarget(url)
        print("one greenlet:", file=sys.stderr)
        single = _rounds(
            [
                RedisCeiling(),
                GreenpoolRedis(),
                _Observed("greenpool+listeners", _noop_listeners),
                _Observed("greenpool+otel", _otel(False)),
            ],
            "ceiling",
            target,
            {"ceiling": 1},
            1,
            args,
        )
        print(f"{args.greenlets} greenlets:", file=sys.stderr)
        many = _rounds(
            [
                GreenpoolRedis(),
                _Observed("greenpool+otel", _otel(False)),
                _Observed("greenpool+otel-hist", _otel(True)),
            ],
            "greenpool",
            target,
            {},
            args.greenlets,
            args,
        )
    finally:
        if server is not None:
            server.stop()
    result = {"one_greenlet": single, "many_greenlets": many, "rounds": args.rounds, "duration_s": args.duration}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
