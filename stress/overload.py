"""``python -m stress overload``: the open-loop overload scenario; and ``python -m stress tune --deadline``.

One server, one process, in this order:

1. **Capacity.** The default greenpool contender (:func:`stress.overload_contenders.contenders_for`) in closed
   loop: 1, 2 and 4 greenlets per connection run the scenario's requests (inside the same deadline) back to
   back, each level once per round; the capacity is the best level's median. One greenlet per connection is
   the cheapest (nobody waits, no hand-off) but leaves a connection idle while its greenlet works between two
   commands; more greenlets keep the connections busy and pay for the hand-offs; which wins depends on the
   box, so all three are measured (a deadline that fires counts as a failure, so a long queue cannot win).
2. **Knee.** The highest offered rate at which the default contender keeps 99 % of its requests within the
   deadline, found by probes of ``--duration`` seconds starting at the capacity
   (:func:`stress.overload_report.find_knee`); ``--knee RATE`` skips the search.
3. **Open loop.** For each round, for each multiple of the knee (0.5, 0.9, 1, 1.5, 2, 4), every contender in
   alternating order (:func:`stress.contenders.alternate`) runs :func:`stress.openloop.open_loop` on a fresh
   pool whose connections are opened first (:func:`stress.openloop.warm_up`: a server's pool is warm when the
   load comes; every step warms its pools the same way).
4. **Soak.** 100 greenlets, 8 connections, 300 commands each, every command inside a deadline drawn from
   uniform(0.05 ms, 30 ms), every contender once per round (the same draws for all in a round).
5. **Seed.** On Redis, when the core offers a policy other than strict FIFO: the seed's closed loop (5000
   greenlets PING, max_connections 10, timeout 1 s, 3 s) with the default policy and with ``fifo``.

Each step prints its table when it ends; then the targets (:func:`stress.overload_report.targets`), the JSON
and the plot. Exit status: 0
after a report; 1 when the run cannot start; with ``--check``, :data:`stress.rounds.EXIT_MISSED` when a target
is missed. ``tune --deadline D`` (:func:`tune`) finds the knee at each ``--max-connections`` and recommends the
smallest size whose knee is within 5 % of the best. Depends on the other ``stress`` modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import overload_report as report
from . import session
from .contenders import alternate
from .harness import Progress
from .openloop import closed_loop, open_loop, soak
from .overload_contenders import (
    BASELINES,
    OverloadContender,
    RedisData,
    TarantoolData,
    contenders_for,
)
from .report import print_lines, write_json
from .rounds import exit_status, median, missed, summary

__all__ = ["DEFAULTS", "QUICK", "SEED", "SOAK", "run", "tune"]

#: The scenario's defaults (``python -m stress overload``).
DEFAULTS: Dict[str, Any] = {
    "commands": 3,
    "deadline": 0.1,
    "max_connections": 10,
    "timeout": 1.0,
    "multiples": (0.5, 0.9, 1.0, 1.5, 2.0, 4.0),
    "rounds": 3,
    "duration": 1.2,
    "op": {"redis": "get", "tarantool": "select"},
    "value_size": {"redis": 100, "tarantool": 1500},
}
#: What ``--quick`` changes (options given explicitly win).
QUICK: Dict[str, Any] = {"rounds": 1, "duration": 1.0, "soak_ops": 100, "seed": False}
#: Requests due in the first ``min(WARMUP_S, duration / 4)`` seconds of a run load the pool but are not counted.
WARMUP_S = 0.25
#: The closed-loop capacity runs this many greenlets per connection (each level, for this long per round) and
#: keeps the best level's median.
CAPACITY_LEVELS = (1, 2, 4)
CAPACITY_DURATION_S = 1.0
#: The random-deadline soak.
SOAK: Dict[str, Any] = {
    "greenlets": 100,
    "max_connections": 8,
    "ops": 300,
    "min_deadline": 0.05e-3,
    "max_deadline": 30e-3,
}
#: The seed's closed loop, run per policy on Redis.
SEED: Dict[str, Any] = {"greenlets": 5000, "max_connections": 10, "timeout": 1.0, "duration": 3.0}


def warmup_for(duration: float) -> float:
    """The unmeasured start of a run of ``duration`` seconds."""
    return min(WARMUP_S, duration / 4.0)


def _data(args: argparse.Namespace, url: str) -> Any:
    if args.kind == "redis":
        return RedisData(url, args.op, args.value_size)
    return TarantoolData(url, args.op, args.value_size)


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------- the steps


def measure_capacity(
    contender: OverloadContender, data: Any, args: argparse.Namespace, rounds: int, progress: Progress, size: int
) -> Dict[str, Any]:
    """The closed-loop capacity of ``contender`` at ``size`` connections: the best, over the concurrency levels
    of :data:`CAPACITY_LEVELS`, of the median over ``rounds`` rounds (the levels in alternating order)."""
    levels = [factor * size for factor in CAPACITY_LEVELS]
    duration = min(CAPACITY_DURATION_S, args.duration)
    results: Dict[int, List[Dict[str, Any]]] = {level: [] for level in levels}
    for index in range(rounds):
        for level in levels if index % 2 == 0 else levels[::-1]:  # alternating order, as alternate() does
            label = f"capacity {contender.name} max={size} {level} greenlets, round {index + 1}/{rounds}"
            results[level].append(
                closed_loop(
                    contender.client(data, size, args.timeout),
                    commands=args.commands,
                    deadline=args.deadline,
                    greenlets=level,
                    duration=duration,
                    warm=size,
                    progress=progress,
                    label=label,
                )
            )
    shown = []
    for level in levels:
        rates = summary([r["req_per_s"] for r in results[level]])
        shown.append(
            {
                "greenlets": level,
                "req_per_s": [r["req_per_s"] for r in results[level]],
                "median_req_per_s": rates["median"],
                "spread_pct": rates["spread_pct"],
                "cpu_pct": median(r["cpu_pct"] for r in results[level]),
                "cpu_wait_pct": median(r["cpu_wait_pct"] for r in results[level]),
                "errors": sum(r["errors"] for r in results[level]),
            }
        )
    best = max(shown, key=lambda level: level["median_req_per_s"] or 0.0)
    every = [r for level in levels for r in results[level]]
    return {
        "contender": contender.name,
        "max_connections": size,
        "duration_s": duration,
        "rounds": rounds,
        "levels": shown,
        "greenlets": best["greenlets"],
        "median_req_per_s": best["median_req_per_s"],
        "spread_pct": best["spread_pct"],
        "cpu_pct": best["cpu_pct"],
        "cpu_wait_pct": best["cpu_wait_pct"],
        "errors": sum(level["errors"] for level in shown),
        "first_error": next((r["first_error"] for r in every if r["first_error"]), None),
    }


def _probe(
    contender: OverloadContender, data: Any, args: argparse.Namespace, size: int, progress: Progress
) -> Callable[[float], Dict[str, Any]]:
    count = [0]

    def probe(rate: float) -> Dict[str, Any]:
        count[0] += 1
        label = f"knee {contender.name} max={size} probe {count[0]} at {rate:,.0f}/s"
        return open_loop(
            contender.client(data, size, args.timeout),
            rate,
            commands=args.commands,
            deadline=args.deadline,
            duration=args.duration,
            warmup=warmup_for(args.duration),
            warm=size,
            progress=progress,
            label=label,
        )

    return probe


def measure_knee(
    contender: OverloadContender,
    data: Any,
    args: argparse.Namespace,
    capacity: Optional[float],
    progress: Progress,
    size: int,
) -> Dict[str, Any]:
    """The knee of ``contender`` at ``size`` connections (or the ``--knee`` given)."""
    given = getattr(args, "knee", None)
    if given:
        return {"contender": contender.name, "req_per_s": given, "failed_at": None, "probes": [], "given": True}
    found = report.find_knee(_probe(contender, data, args, size, progress), capacity or 100.0)
    return {"contender": contender.name, **found, "given": False}


def run_open(
    contenders: List[OverloadContender],
    data: Any,
    args: argparse.Namespace,
    reference: float,
    progress: Progress,
) -> List[Dict[str, Any]]:
    """Every contender at every multiple of ``reference`` req/s, once per round, in alternating order."""
    runs: List[Dict[str, Any]] = []
    by_name = {c.name: c for c in contenders}
    total = args.rounds * len(args.multiples) * len(contenders)
    told: Set[str] = set()
    for round_index in range(args.rounds):
        for multiple_index, multiple in enumerate(args.multiples):
            order = alternate(list(by_name), round_index * len(args.multiples) + multiple_index)
            for name in order:
                rate = multiple * reference
                label = f"[{len(runs) + 1}/{total}] {name:<22} {multiple:g}x {rate:>8,.0f}/s"
                figures = open_loop(
                    by_name[name].client(data, args.max_connections, args.timeout),
                    rate,
                    commands=args.commands,
                    deadline=args.deadline,
                    duration=args.duration,
                    warmup=warmup_for(args.duration),
                    warm=args.max_connections,
                    progress=progress,
                    label=label,
                )
                run = {"contender": name, "round": round_index + 1, "multiple": multiple, "rate_per_s": round(rate, 1)}
                run["order"] = len(runs) + 1
                run.update(figures)
                runs.append(run)
                _tell(name, f"{multiple:g}x", figures, told)
    return runs


def _tell(name: str, where: str, figures: Dict[str, Any], told: Set[str]) -> None:
    """Say on stderr what must not go unnoticed: wrong replies (always), a failed warm-up (always), an
    unexpected error (once per contender)."""
    if figures["mismatches"]:
        _stderr(f"MISMATCHED REPLIES: {name} at {where}: {figures['mismatches']:,} wrong replies")
    if figures.get("warm_error"):
        _stderr(f"{name} at {where}: the warm-up failed: {figures['warm_error']}")
    if figures["first_error"] and name not in told:
        told.add(name)
        _stderr(f"{name} at {where}: first error: {figures['first_error']}")


def run_soak(
    contenders: List[OverloadContender], data: Any, args: argparse.Namespace, progress: Progress
) -> List[Dict[str, Any]]:
    """The random-deadline soak: every contender once per round, in alternating order."""
    runs: List[Dict[str, Any]] = []
    by_name = {c.name: c for c in contenders}
    told: Set[str] = set()
    total = args.rounds * len(contenders)
    for round_index in range(args.rounds):
        for name in alternate(list(by_name), round_index):
            label = f"soak [{len(runs) + 1}/{total}] {name:<22}"
            figures = soak(
                by_name[name].client(data, SOAK["max_connections"], args.timeout),
                greenlets=SOAK["greenlets"],
                ops=args.soak_ops,
                min_deadline=SOAK["min_deadline"],
                max_deadline=SOAK["max_deadline"],
                seed=round_index + 1,
                warm=SOAK["max_connections"],
                progress=progress,
                label=label,
            )
            runs.append({"contender": name, "round": round_index + 1, "order": len(runs) + 1, **figures})
            _tell(name, "soak", figures, told)
    return runs


def run_seed(url: str, policy: str, rounds: int, progress: Progress) -> List[Dict[str, Any]]:
    """The seed's closed loop with ``policy`` and with ``fifo``, once per round, in alternating order."""
    from .contenders import RedisTarget
    from .overload_contenders import SeedPolicy

    target = RedisTarget(url, "ping")
    contenders = {f"greenpool-{p}": SeedPolicy(p) for p in (policy, "fifo")}
    runs: List[Dict[str, Any]] = []
    for round_index in range(rounds):
        for name in alternate(list(contenders), round_index):
            figures = contenders[name].measure(
                target,
                SEED["max_connections"],
                SEED["greenlets"],
                SEED["timeout"],
                SEED["duration"],
                progress=progress,
                label=f"seed {name} round {round_index + 1}/{rounds}",
            )
            runs.append({"contender": name, "round": round_index + 1, **figures})
    return runs


# ---------------------------------------------------------------------- the command


def _choose(
    args: argparse.Namespace,
) -> Tuple[List[OverloadContender], OverloadContender, Dict[str, Any], Dict[str, str]]:
    """The contenders to run (``--pools``, else every one that can run here), the default one, what the core
    offers, and the contenders skipped with why (also said on stderr)."""
    every, default, found = contenders_for(args.kind)
    names = [c.name for c in every]
    skipped: Dict[str, str] = {}
    if args.pools:
        for name in args.pools:
            if name not in names:
                offered = ", ".join(found["policies"]) or "none: strict FIFO only"
                skipped[name] = f"this greenpool offers no such contender (queue policies: {offered})"
        chosen = [c for c in every if c.name in args.pools]
    else:
        chosen = every
    ready = []
    for contender in chosen:
        reason = contender.unavailable()
        if reason:
            skipped[contender.name] = reason
        else:
            ready.append(contender)
    for name, reason in skipped.items():
        _stderr(f"skipping {name}: {reason}")
    return ready, default, found, skipped


def _header(
    args: argparse.Namespace, data: Any, where: str, versions: Dict[str, Any], found: Dict[str, Any], cpu: float
) -> str:
    load = session.load_average()
    shown_load = "" if load is None else f", load average {', '.join(f'{x:.1f}' for x in load)}"
    shown_load += f" and {cpu:.0f} % of a core for a busy loop before the run"
    policies = ", ".join(found["policies"]) if found["policies"] else "none (strict FIFO only)"
    return (
        f"greenpool overload: {data.describe()}, {args.commands} commands per request (one checkout each) inside "
        f"one {args.deadline * 1000:g} ms deadline, max_connections {args.max_connections}, checkout timeout "
        f"{args.timeout:g} s; {args.rounds} round(s) of {args.duration:g} s per run\n"
        f"{versions['server']} at {where}; Python {versions['python']}, gevent {versions['gevent']}, redis-py "
        f"{versions['redis-py']} (hiredis {versions['hiredis']}), tarantool-python {versions['tarantool-python']}; "
        f"{os.cpu_count()} cores{shown_load}\n"
        f"greenpool {versions['greenpool']}: queue policies {policies}; greenpool.deadline "
        f"{'yes' if found['deadline'] else 'no'}"
    )


def _scenario(args: argparse.Namespace, where: str, contenders: List[OverloadContender]) -> Dict[str, Any]:
    return {
        "command": "overload",
        "server": args.kind,
        "op": args.op,
        "value_size": None if args.op == "ping" else args.value_size,
        "commands": args.commands,
        "deadline_s": args.deadline,
        "max_connections": args.max_connections,
        "timeout_s": args.timeout,
        "multiples": list(args.multiples),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": warmup_for(args.duration),
        "quick": args.quick,
        "soak": None if not args.soak else {**SOAK, "ops": args.soak_ops},
        "pools": [c.name for c in contenders],
        "where": where,
    }


def run(args: argparse.Namespace) -> int:
    """Run the overload scenario for the parsed ``args``; print the report; return the exit status."""
    contenders, default, found, skipped = _choose(args)
    if not contenders:
        _stderr("no contender can run")
        return 1
    progress = Progress(sys.stderr, args.progress)
    started = session.now()
    capacity: Optional[Dict[str, Any]] = None
    knee: Optional[Dict[str, Any]] = None
    runs: List[Dict[str, Any]] = []
    soak_runs: List[Dict[str, Any]] = []
    rows: List[Dict[str, Any]] = []
    soak_table: List[Dict[str, Any]] = []
    seed: Optional[Dict[str, Any]] = None
    seed_note = ""
    blocks: List[str] = []
    with session.server(args.kind, args.url) as server:
        opened = _open_data(args, server)
        if opened is None:
            return 1
        data, versions = opened
        cpu_before = session.cpu_share()
        print_lines(sys.stdout, _header(args, data, server["where"], versions, found, cpu_before))
        if args.open:
            capacity = measure_capacity(default, data, args, args.rounds, progress, args.max_connections)
            print_lines(sys.stdout, report.format_capacity(capacity))
            knee = measure_knee(default, data, args, capacity["median_req_per_s"], progress, args.max_connections)
            print_lines(sys.stdout, report.format_knee(knee, capacity, args.deadline * 1000))
            reference = knee["req_per_s"] or capacity["median_req_per_s"]
            runs = run_open(contenders, data, args, reference, progress)
            rows = report.open_rows(runs, reference)
            kept = knee["rounds_kept_up_to"] = report.kept_up_to(rows, default.name)
            kept_line = ""
            if any(r["contender"] == default.name for r in rows):
                kept_line = (
                    f"\nIn these rounds {default.name} kept >= {report.TARGETS['knee_good_pct']:g} % in time "
                    + (f"at every load up to {kept:g}x the knee." if kept is not None else "at none of the loads.")
                )
            print_lines(
                sys.stdout,
                f"Open loop: every contender at multiples of the knee ({args.rounds} round(s); medians; ± is half "
                "the range of goodput over the rounds;\nlatency from each request's intended start, of the "
                "completed requests; gen cpu: the load generator's share of the wall time; cpu: the process's; "
                "cpu wait: the share it waited for a core):\n" + report.format_table(rows) + kept_line,
            )
        if args.soak:
            soak_runs = run_soak(contenders, data, args, progress)
            soak_table = report.soak_rows(soak_runs)
            print_lines(
                sys.stdout,
                f"Random-deadline soak ({SOAK['greenlets']} greenlets, {SOAK['max_connections']} connections, "
                f"{args.soak_ops} {args.op.upper()}s each, every one inside a deadline drawn from uniform("
                f"{SOAK['min_deadline'] * 1000:g} ms, {SOAK['max_deadline'] * 1000:g} ms); {args.rounds} "
                "round(s), medians):\n" + report.format_soak(soak_table),
            )
        if args.seed and args.kind == "redis" and len(found["policies"]) > 1 and "fifo" in found["policies"]:
            policy = found["default_policy"]
            if policy == "fifo":  # the default is strict FIFO: compare the first other policy with it
                policy = next(p for p in found["policies"] if p != "fifo")
            seed_runs = run_seed(server["url"], policy, args.rounds, progress)
            seed = report.seed_summary(seed_runs, f"greenpool-{policy}")
            seed["runs"] = seed_runs
            print_lines(sys.stdout, report.format_seed(seed))
        elif args.kind != "redis":
            seed_note = "the seed scenario is a Redis one"
        elif not args.seed:
            seed_note = "skipped (--no-seed, --quick or --soak-only)"
        else:
            seed_note = "this greenpool has strict FIFO only: nothing to compare with"
        cpu_after = session.cpu_share()
    deadline_name = "greenpool-deadline" if any(c.name == "greenpool-deadline" for c in contenders) else None
    baselines = [b for b in BASELINES[args.kind] if any(c.name == b for c in contenders)]
    baseline_label = "best redis-py pool" if args.kind == "redis" else "lifo-queue"
    goals = report.targets(
        runs=runs,
        soak=soak_runs,
        knee=knee,
        capacity=capacity,
        seed=seed,
        default=default.name,
        deadline=deadline_name,
        baselines=baselines,
        baseline_label=baseline_label,
        seed_note=seed_note,
        deadline_note=skipped.get("greenpool-deadline", "greenpool-deadline was not among --pools"),
    )
    blocks.append(
        f"Targets ({default.name} is the default greenpool contender: plain gevent.Timeout, no change to user code):\n"
        + report.format_targets(goals)
    )
    blocks.extend(f"Skipped {name}: {reason}" for name, reason in skipped.items())
    blocks.append(
        f"A busy loop got {cpu_before:.0f} % of a core before the run and {cpu_after:.0f} % after it (100 on an idle "
        "box; less when other processes compete: compare the figures of one run, side by side)."
    )
    misses = missed(goals)
    status = exit_status(args.check, goals)
    if args.check:
        blocks.append(f"--check: {len(misses)} target(s) missed" + (f": {'; '.join(misses)}" if misses else ""))
    print_lines(sys.stdout, *blocks)
    document = {
        "scenario": _scenario(args, server["where"], contenders),
        "versions": versions,
        "machine": {**session.machine(), "cpu_share_before_pct": cpu_before, "cpu_share_after_pct": cpu_after},
        "started_at": started,
        "finished_at": session.now(),
        "found": found,
        "contenders": [c.describe() for c in contenders],
        "default_contender": default.name,
        "skipped": skipped,
        "capacity": capacity,
        "knee": knee,
        "runs": runs,
        "rows": rows,
        "soak": {"runs": soak_runs, "rows": soak_table} if args.soak else None,
        "seed": seed,
        "targets": goals,
        "check": {"enabled": args.check, "missed": misses},
    }
    if args.json:
        write_json(args.json, document)
    if args.plot:
        title = f"{data.describe()} x{args.commands}, deadline {args.deadline * 1000:g} ms, max {args.max_connections}"
        report.write_plot(args.plot, rows, soak_table, title)
    return status


# ---------------------------------------------------------------------- tune --deadline


def _open_data(args: argparse.Namespace, server: Dict[str, Any]) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """The scenario's data on ``server`` and the versions line; ``None`` (after saying why) when unusable."""
    try:
        data = _data(args, server["url"])
        return data, session.versions(data.prepare_server())
    except Exception as exc:
        _stderr(f"cannot use the server at {server['where']}: {type(exc).__name__}: {exc}")
        return None


def tune(args: argparse.Namespace) -> int:
    """``tune --deadline``: the knee of the default greenpool contender at each ``--max-connections``; recommend
    the smallest size whose knee is within 5 % of the best. Exit status 1 when no size has a knee."""
    _, default, found = contenders_for(args.kind)
    progress = Progress(sys.stderr, args.progress)
    started = session.now()
    sizes: List[Dict[str, Any]] = []
    with session.server(args.kind, args.url) as server:
        opened = _open_data(args, server)
        if opened is None:
            return 1
        data, versions = opened
        print_lines(
            sys.stdout,
            f"greenpool tune by deadline: {data.describe()}, {args.commands} commands per request inside one "
            f"{args.deadline * 1000:g} ms deadline ({default.name}, gevent.Timeout), max_connections "
            f"{','.join(map(str, args.max_connections))}, probes of {args.duration:g} s\n"
            f"{versions['server']} at {server['where']}; {os.cpu_count()} cores",
        )
        for size in args.max_connections:
            capacity = measure_capacity(default, data, args, args.rounds, progress, size)
            knee = measure_knee(default, data, args, capacity["median_req_per_s"], progress, size)
            sizes.append(
                {
                    "max_connections": size,
                    "capacity_per_s": capacity["median_req_per_s"],
                    "knee_per_s": knee["req_per_s"],
                    "probes": knee["probes"],
                }
            )
    recommendation = report.recommend_by_knee(sizes, args.deadline * 1000)
    pick = recommendation["max_connections"]
    head = f"Recommended: max_connections={pick}" if pick is not None else "No recommendation"
    print_lines(
        sys.stdout,
        report.format_tune(sizes),
        head + "\n" + "\n".join("  " + line for line in recommendation["why"]),
    )
    document = {
        "scenario": {
            "command": "tune",
            "server": args.kind,
            "op": args.op,
            "commands": args.commands,
            "deadline_s": args.deadline,
            "max_connections": args.max_connections,
            "timeout_s": args.timeout,
            "duration_s": args.duration,
            "contender": default.name,
            "where": server["where"],
        },
        "versions": versions,
        "machine": session.machine(),
        "started_at": started,
        "finished_at": session.now(),
        "found": found,
        "sizes": sizes,
        "tune": recommendation,
    }
    if args.json:
        write_json(args.json, document)
    if args.plot:
        report.write_tune_plot(
            args.plot, sizes, f"{data.describe()} x{args.commands}, deadline {args.deadline * 1000:g} ms"
        )
    return 0 if pick is not None else 1
