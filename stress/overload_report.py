"""What the overload scenario prints and writes: per-load rows (medians over rounds), targets, tables, a plot.

Everything here works on plain dicts, one per run as :func:`stress.openloop.open_loop` and
:func:`stress.openloop.soak` return them plus ``contender``, ``round`` and (open loop) ``multiple``, so the
JSON file holds exactly what the tables show. Medians, spreads and per-round ratios follow the harness's
convention (:mod:`stress.rounds`). The plot needs matplotlib (the ``plot`` extra), imported only when a plot
is asked for. Depends on the standard library and :mod:`stress.rounds`.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .rounds import format_targets, median, median_ratio, summary, target

__all__ = [
    "TARGETS",
    "find_knee",
    "format_capacity",
    "format_knee",
    "format_seed",
    "format_soak",
    "format_table",
    "format_targets",
    "format_tune",
    "kept_up_to",
    "open_rows",
    "recommend_by_knee",
    "seed_summary",
    "soak_rows",
    "targets",
    "write_plot",
    "write_tune_plot",
]

#: The figures of the issue "Overload control" (printed with PASS/MISS; never asserted by the test suite).
TARGETS: Dict[str, Any] = {
    # The knee: the highest offered rate at which the default greenpool contender keeps this share in time.
    "knee_good_pct": 99.0,
    "knee_vs_capacity": 0.90,
    # Plain gevent.Timeout deadlines (no change to user code), the default greenpool contender.
    "timeout_2x_vs_knee": 0.85,
    "timeout_2x_vs_baseline": 3.0,
    "timeout_4x_vs_knee": 0.30,
    # greenpool.deadline() instead of gevent.Timeout.
    "deadline_2x_vs_knee": 0.90,
    "deadline_4x_vs_knee": 0.50,
    # Below the knee, the share of requests within the deadline.
    "low_load_good_pct": 99.5,
    "low_load_multiples": (0.5, 0.9),
    # Random-deadline soak: completed commands against the best barging pool; no wrong reply anywhere.
    "soak_vs_baseline": 1.5,
    # Seed closed loop (5000 greenlets, max 10, timeout 1 s): ok/s against strict FIFO, 100 % success.
    "seed_vs_fifo": 0.95,
}
#: Probes of one rate the knee search may run again (beyond its ``max_probes``) because the box, not the pool, was
#: busy.
BUSY_RETRIES = 1
#: tune --deadline: recommend the smallest max_connections whose knee is within this share of the best knee.
TUNE_WITHIN = 0.95


def _same(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


def _add_counts(into: Dict[str, int], more: Dict[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


# ---------------------------------------------------------------------- the knee


def find_knee(
    probe: Any,
    capacity: float,
    *,
    good_pct: float = TARGETS["knee_good_pct"],
    max_probes: int = 14,
    resolution: float = 0.04,
    floor: float = 1.0,
    confirm: bool = True,
    busy_wait_pct: float = 20.0,
) -> Dict[str, Any]:
    """Find the highest offered rate at which ``probe(rate)`` keeps ``good_pct`` of its requests in time.

    ``probe(rate)`` runs one open-loop probe and returns its figures (``good_pct`` and ``goodput_per_s`` are
    read, and ``cpu_wait_pct`` when there). With ``confirm``, each rate is decided by two probes that agree,
    or by a third when they do not (a rate left undecided when the probes run out fails): on a shared box,
    load from elsewhere makes a probe fail, and near its knee a pool may pass once by luck. A failed probe
    during which the process waited for a core ``busy_wait_pct`` % of the time or more (another process had
    it) does not vote: the rate is probed again, up to :data:`BUSY_RETRIES` times, and these probes are not
    counted in ``max_probes``.

    The search starts at ``capacity``: if it passes, the rate goes up by 1.25x until it fails (at most 3x
    capacity); if it fails, the rate halves until one passes (not below ``floor`` req/s). Then the rate is
    bisected between the highest pass and the lowest failure until they are within ``resolution`` of each
    other or ``max_probes`` probes ran. Returns ``{"req_per_s": highest pass or None, "failed_at": lowest
    failure or None, "probes": [{"rate_per_s", "good_pct", "goodput_per_s", "cpu_wait_pct", "passed",
    "busy", "retry"}, ...]}`` (``retry``: not the first probe of its rate).
    """
    probes: List[Dict[str, Any]] = []
    skipped = [0]  # busy probes run again: they do not count against max_probes

    def spent() -> int:
        return len(probes) - skipped[0]

    def once(rate: float, retry: bool) -> Tuple[bool, bool]:
        figures = probe(rate)
        passed = bool(figures["good_pct"] >= good_pct)
        wait = figures.get("cpu_wait_pct")
        busy = not passed and wait is not None and wait >= busy_wait_pct
        probes.append(
            {
                "rate_per_s": round(rate, 1),
                "good_pct": figures["good_pct"],
                "goodput_per_s": figures["goodput_per_s"],
                "cpu_wait_pct": wait,
                "passed": passed,
                "busy": busy,
                "retry": retry,
            }
        )
        return passed, busy

    def passes(rate: float) -> bool:
        votes: List[bool] = []
        busy_left = BUSY_RETRIES
        while spent() < max_probes:
            passed, busy = once(rate, bool(votes) or busy_left < BUSY_RETRIES)
            if not confirm:
                return passed
            if busy and busy_left:  # the box failed it, not (only) the pool: probe again
                busy_left -= 1
                skipped[0] += 1
                continue
            votes.append(passed)
            if votes.count(passed) == 2:
                return passed
        return False  # no probes left to decide it

    low: Optional[float] = None  # the highest rate that passed
    high: Optional[float] = None  # the lowest rate that failed
    rate = max(capacity, floor)
    if passes(rate):
        low = rate
        while spent() < max_probes and rate * 1.25 <= 3.0 * capacity:
            rate *= 1.25
            if not passes(rate):
                high = rate
                break
            low = rate
    else:
        high = rate
        while spent() < max_probes and rate / 2.0 >= floor:
            rate /= 2.0
            if passes(rate):
                low = rate
                break
            high = rate
    while low is not None and high is not None and spent() < max_probes and high / low > 1.0 + resolution:
        middle = (low + high) / 2.0
        if passes(middle):
            low = middle
        else:
            high = middle
    return {
        "req_per_s": None if low is None else round(low, 1),
        "failed_at": None if high is None else round(high, 1),
        "probes": probes,
    }


# ---------------------------------------------------------------------- rows


def open_rows(runs: List[Dict[str, Any]], knee: float) -> List[Dict[str, Any]]:
    """One row per (multiple, contender), in the order first run: medians over the rounds, summed counts.

    Each row: ``multiple``, ``contender``, ``rate_per_s`` (the set rate), ``rounds``; the medians of
    ``offered_per_s``, ``goodput_per_s``, ``good_pct``, ``p50_ms``, ``p99_ms``, ``gen_cpu_pct``,
    ``proc_cpu_pct``, ``cpu_wait_pct``, ``start_lag_p99_ms`` and ``connections_opened``; ``goodput_min``,
    ``goodput_max`` and ``goodput_spread_pct`` (half the range, % of the median); ``vs_knee`` (median
    goodput / ``knee``); and, summed over the rounds, ``requests``, ``good``, ``late``, ``mismatches`` and
    ``errors`` (by kind).
    """
    groups: Dict[Tuple[float, str], List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["multiple"], run["contender"]), []).append(run)
    rows = []
    for (multiple, name), mine in sorted(groups.items(), key=lambda item: item[0][0]):
        goodput = summary([r["goodput_per_s"] for r in mine])
        errors: Dict[str, int] = {}
        for r in mine:
            _add_counts(errors, r["errors"])
        row: Dict[str, Any] = {
            "multiple": multiple,
            "contender": name,
            "rate_per_s": mine[0]["rate_per_s"],
            "rounds": len(mine),
            "goodput_per_s": goodput["median"],
            "goodput_min": goodput["min"],
            "goodput_max": goodput["max"],
            "goodput_spread_pct": goodput["spread_pct"],
            "vs_knee": round(goodput["median"] / knee, 3) if knee else None,
        }
        for key in (
            "offered_per_s",
            "good_pct",
            "p50_ms",
            "p99_ms",
            "gen_cpu_pct",
            "proc_cpu_pct",
            "cpu_wait_pct",
            "start_lag_p99_ms",
            "connections_opened",
        ):
            row[key] = median(r.get(key) for r in mine)
        for key in ("requests", "good", "late", "mismatches"):
            row[key] = sum(r[key] for r in mine)
        row["errors"] = dict(sorted(errors.items()))
        rows.append(row)
    return rows


def kept_up_to(rows: List[Dict[str, Any]], name: str, good_pct: float = TARGETS["knee_good_pct"]) -> Optional[float]:
    """The highest multiple of the knee up to which ``name`` kept ``good_pct`` of its requests in time at every
    load measured (the median over the rounds), or ``None`` when it missed at the lowest load: the knee seen
    from the rounds, beside the one the search found before them."""
    kept = None
    for row in sorted((r for r in rows if r["contender"] == name), key=lambda r: r["multiple"]):
        if row["good_pct"] is None or row["good_pct"] < good_pct:
            break
        kept = row["multiple"]
    return kept


def soak_rows(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per soak contender (in the order first run): median and spread of ``completed``, summed
    ``mismatches`` and ``errors``, median ``elapsed_s`` and ``connections_opened``."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["contender"], []).append(run)
    rows = []
    for name, mine in groups.items():
        completed = summary([r["completed"] for r in mine])
        errors: Dict[str, int] = {}
        for r in mine:
            _add_counts(errors, r["errors"])
        rows.append(
            {
                "contender": name,
                "rounds": len(mine),
                "attempts": mine[0]["attempts"],
                "completed": completed["median"],
                "completed_min": completed["min"],
                "completed_max": completed["max"],
                "completed_spread_pct": completed["spread_pct"],
                "mismatches": sum(r["mismatches"] for r in mine),
                "errors": dict(sorted(errors.items())),
                "elapsed_s": median(r["elapsed_s"] for r in mine),
                "connections_opened": median(r["connections_opened"] for r in mine),
            }
        )
    return rows


def seed_summary(runs: List[Dict[str, Any]], policy: str, reference: str = "greenpool-fifo") -> Dict[str, Any]:
    """The seed closed loop's figures per contender (median ok/s, lowest success) and ``vs_fifo``: the median
    of the per-round ratios ``policy`` ok/s / ``reference`` ok/s."""
    names = list(dict.fromkeys(r["contender"] for r in runs))
    per = {}
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        ok = summary([r["ok_per_s"] for r in mine])
        per[name] = {
            "ok_per_s": ok["median"],
            "spread_pct": ok["spread_pct"],
            "success_pct": min(r["success_pct"] for r in mine),
            "failed": sum(r["failed"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
            "wait_p99_ms": median(r["wait_p99_ms"] for r in mine),
            "rounds": len(mine),
        }
    rounds = sorted({r["round"] for r in runs})
    by_key = {(r["contender"], r["round"]): r for r in runs}
    pairs = [
        (by_key[(policy, i)]["ok_per_s"], by_key[(reference, i)]["ok_per_s"])
        for i in rounds
        if (policy, i) in by_key and (reference, i) in by_key
    ]
    return {"policy": policy, "reference": reference, "contenders": per, "vs_fifo": median_ratio(pairs)}


# ---------------------------------------------------------------------- targets


def _target(
    name: str, value: Optional[float], goal: str, ok: Optional[bool], note: str = "", unit: str = "x"
) -> Dict[str, Any]:
    return target(name, value, goal, ok, note, unit, digits=2)


def _runs_at(runs: List[Dict[str, Any]], name: str, multiple: float) -> Dict[int, Dict[str, Any]]:
    return {r["round"]: r for r in runs if r["contender"] == name and _same(r["multiple"], multiple)}


def _vs_knee(
    runs: List[Dict[str, Any]], name: str, multiple: float, knee: float, goal_ratio: float, label: str
) -> Dict[str, Any]:
    mine = _runs_at(runs, name, multiple)
    name_shown = f"{label} goodput at {multiple:g}x the knee / the knee"
    goal = f">= {goal_ratio:.2f}x"
    if not mine:
        return _target(name_shown, None, goal, None, f"needs a run of {name} at {multiple:g}x the knee")
    ratio = round((median(r["goodput_per_s"] for r in mine.values()) or 0.0) / knee, 3)
    return _target(name_shown, ratio, goal, ratio >= goal_ratio, f"median of {len(mine)} round(s)")


def _vs_baselines(
    runs: List[Dict[str, Any]], name: str, baselines: Sequence[str], multiple: Optional[float], field: str
) -> Tuple[Optional[float], str]:
    """The median over rounds of ``name``'s ``field`` / the best baseline's ``field`` in the same round (at
    ``multiple``, or for runs without one when ``multiple`` is None), and a note. Rounds where the baselines
    had 0 give no ratio; ``None`` when no round gives one."""

    def here(run: Dict[str, Any]) -> bool:
        return multiple is None or _same(run["multiple"], multiple)

    mine = {r["round"]: r for r in runs if r["contender"] == name and here(r)}
    pairs = []
    zero = 0
    for index, run in sorted(mine.items()):
        others = [r[field] for r in runs if r["contender"] in baselines and r["round"] == index and here(r)]
        if not others:
            continue
        best = max(others)
        if best:
            pairs.append((run[field], best))
        else:
            zero += 1
    ratio = median_ratio(pairs)
    if not pairs and not zero:
        return None, f"needs a round of {name} and a baseline"
    note = f"median of the per-round ratios over {len(pairs)} round(s)"
    if zero:
        note += f"; no ratio in {zero} round(s) where the best baseline had 0"
    return ratio, note


def targets(
    *,
    runs: List[Dict[str, Any]],
    soak: List[Dict[str, Any]],
    knee: Optional[Dict[str, Any]],
    capacity: Optional[Dict[str, Any]],
    seed: Optional[Dict[str, Any]],
    default: str,
    deadline: Optional[str],
    baselines: Sequence[str],
    baseline_label: str,
    seed_note: str = "",
    deadline_note: str = "this greenpool has no greenpool.deadline()",
) -> List[Dict[str, Any]]:
    """The overload scenario's figures against :data:`TARGETS`, each with a PASS/MISS (or n/a) status.

    ``default`` is the default greenpool contender (plain ``gevent.Timeout``); ``deadline`` the contender
    that uses ``greenpool.deadline()`` (``None`` when it did not run: ``deadline_note`` says why);
    ``baselines`` the barging pools (redis-py's, or the hand-rolled LIFO queue on Tarantool) whose best,
    round by round, greenpool is compared with. Mismatched replies of any greenpool contender or the mux,
    open loop or soak, miss.
    """
    out: List[Dict[str, Any]] = []
    knee_rate = knee.get("req_per_s") if knee else None
    cap = capacity.get("median_req_per_s") if capacity else None
    goal = f">= {TARGETS['knee_vs_capacity']:.2f}x"
    name = f"{default} knee / closed-loop capacity"
    if knee_rate and cap:
        ratio = round(knee_rate / cap, 3)
        note = f"knee {knee_rate:,.0f} req/s, capacity {cap:,.0f} req/s"
        if knee and knee.get("given"):
            note += " (knee given with --knee)"
        out.append(_target(name, ratio, goal, ratio >= TARGETS["knee_vs_capacity"], note))
    elif knee is not None:
        out.append(_target(name, None, goal, False, "no rate kept the knee's share within the deadline"))
    if knee_rate:
        out.append(_vs_knee(runs, default, 2.0, knee_rate, TARGETS["timeout_2x_vs_knee"], default))
        ratio, note = _vs_baselines(runs, default, baselines, 2.0, "goodput_per_s")
        goal_ratio = TARGETS["timeout_2x_vs_baseline"]
        ok = None if ratio is None else ratio >= goal_ratio
        out.append(
            _target(f"{default} goodput at 2x the knee / {baseline_label}", ratio, f">= {goal_ratio:.1f}x", ok, note)
        )
        out.append(_vs_knee(runs, default, 4.0, knee_rate, TARGETS["timeout_4x_vs_knee"], default))
        if deadline is None:
            for multiple, key in ((2.0, "deadline_2x_vs_knee"), (4.0, "deadline_4x_vs_knee")):
                out.append(
                    _target(
                        f"greenpool.deadline() goodput at {multiple:g}x the knee / the knee",
                        None,
                        f">= {TARGETS[key]:.2f}x",
                        None,
                        deadline_note,
                    )
                )
        else:
            out.append(_vs_knee(runs, deadline, 2.0, knee_rate, TARGETS["deadline_2x_vs_knee"], deadline))
            out.append(_vs_knee(runs, deadline, 4.0, knee_rate, TARGETS["deadline_4x_vs_knee"], deadline))
        for name in [default] + ([deadline] if deadline else []):
            for multiple in TARGETS["low_load_multiples"]:
                mine = _runs_at(runs, name, multiple)
                label = f"{name} within the deadline at {multiple:g}x the knee"
                goal = f">= {TARGETS['low_load_good_pct']:.1f} %"
                if not mine:
                    out.append(_target(label, None, goal, None, f"needs a run at {multiple:g}x", unit="%"))
                    continue
                share = median(r["good_pct"] for r in mine.values())
                lowest = min(r["good_pct"] for r in mine.values())
                out.append(
                    _target(
                        label,
                        share,
                        goal,
                        share >= TARGETS["low_load_good_pct"],
                        f"median of {len(mine)} round(s), lowest {lowest:.2f} %",
                        unit="%",
                    )
                )
    if soak:
        for name in [default] + ([deadline] if deadline else []):
            if not any(r["contender"] == name for r in soak):
                continue
            ratio, note = _vs_baselines(soak, name, baselines, None, "completed")
            goal_ratio = TARGETS["soak_vs_baseline"]
            ok = None if ratio is None else ratio >= goal_ratio
            out.append(_target(f"{name} soak: completed / {baseline_label}", ratio, f">= {goal_ratio:.1f}x", ok, note))
    ours = [r for r in list(runs) + list(soak) if r["contender"].startswith("greenpool") or r["contender"] == "mux"]
    if ours:
        wrong = sum(r["mismatches"] for r in ours)
        names = sorted({r["contender"] for r in ours if r["mismatches"]})
        note = "greenpool's contenders and the mux, open loop and soak"
        if names:
            note += ": " + ", ".join(names)
        out.append(_target("mismatched replies", wrong, "0", wrong == 0, note, unit="n"))
    if seed is None:
        out.append(
            _target(
                "seed closed loop: ok/s / strict FIFO",
                None,
                f">= {TARGETS['seed_vs_fifo']:.2f}x, success 100 %",
                None,
                seed_note or "not run",
            )
        )
    else:
        mine = seed["contenders"].get(seed["policy"], {})
        ratio = seed["vs_fifo"]
        clean = mine.get("failed") == 0 and mine.get("errors") == 0
        ok = None if ratio is None else (ratio >= TARGETS["seed_vs_fifo"] and clean)
        out.append(
            _target(
                f"seed closed loop: {seed['policy']} ok/s / {seed['reference']}",
                ratio,
                f">= {TARGETS['seed_vs_fifo']:.2f}x, success 100 %",
                ok,
                f"5000 greenlets, max_connections 10, timeout 1 s; {seed['policy']} success "
                f"{mine.get('success_pct', 0):.2f} %",
            )
        )
    return out


# ---------------------------------------------------------------------- tables


def _grid(header: Sequence[str], rows: Iterable[Sequence[str]], left: Sequence[int] = (1,)) -> str:
    rows = [tuple(row) for row in rows]
    widths = [max(len(row[i]) for row in [tuple(header), *rows]) for i in range(len(header))]
    lines = []
    for row in [tuple(header), *rows]:
        cells = [cell.ljust(widths[i]) if i in left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.1f}ms"


def _pct(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


def _errors(errors: Dict[str, int]) -> str:
    return " ".join(f"{kind} {count:,}" for kind, count in errors.items()) or "-"


def format_table(rows: List[Dict[str, Any]]) -> str:
    """The open-loop table: one line per (load, contender)."""
    header = (
        "load",
        "contender",
        "offered/s",
        "goodput/s",
        "±",
        "/knee",
        "in time",
        "p50",
        "p99",
        "conns",
        "wrong",
        "gen cpu",
        "cpu",
        "cpu wait",
        "failed requests",
    )
    body = []
    for r in rows:
        spread = r["goodput_spread_pct"]
        body.append(
            (
                f"{r['multiple']:g}x",
                r["contender"],
                f"{r['offered_per_s']:,.0f}",
                f"{r['goodput_per_s']:,.0f}",
                "-" if spread is None else f"{spread:.0f}%",
                "-" if r["vs_knee"] is None else f"{r['vs_knee']:.2f}x",
                _pct(r["good_pct"]),
                _ms(r["p50_ms"]),
                _ms(r["p99_ms"]),
                "?" if r["connections_opened"] is None else f"{r['connections_opened']:,.0f}",
                f"{r['mismatches']:,}" if r["mismatches"] else "0",
                _pct(r["gen_cpu_pct"], 0),
                _pct(r["proc_cpu_pct"], 0),
                _pct(r.get("cpu_wait_pct"), 0),
                _errors(r["errors"]),
            )
        )
    return _grid(header, body, left=(1, 14))


def format_soak(rows: List[Dict[str, Any]]) -> str:
    """The soak table: one line per contender."""
    header = ("contender", "completed", "±", "of", "wrong", "conns", "seconds", "failed commands")
    body = [
        (
            r["contender"],
            f"{r['completed']:,.0f}",
            "-" if r["completed_spread_pct"] is None else f"{r['completed_spread_pct']:.0f}%",
            f"{r['attempts']:,}",
            f"{r['mismatches']:,}",
            "?" if r["connections_opened"] is None else f"{r['connections_opened']:,.0f}",
            f"{r['elapsed_s']:.1f}",
            _errors(r["errors"]),
        )
        for r in rows
    ]
    return _grid(header, body, left=(0, 7))


def format_capacity(capacity: Dict[str, Any]) -> str:
    levels = ", ".join(
        f"{level['greenlets']}: {level['median_req_per_s']:,.0f}"
        + (f" ({level['errors']:,} failed)" if level["errors"] else "")
        for level in capacity["levels"]
    )
    spread = capacity["spread_pct"]
    shown = "" if spread is None or capacity["rounds"] < 2 else f" ±{spread:.1f} %"
    wait = capacity.get("cpu_wait_pct")
    line = (
        f"Closed-loop capacity ({capacity['contender']}, requests back to back, the best median over "
        f"{capacity['rounds']} round(s) of 1, 2 and 4 greenlets per connection): {capacity['median_req_per_s']:,.0f} "
        f"req/s{shown} at {capacity['greenlets']} greenlets, process CPU {capacity['cpu_pct']:.0f} %"
        + ("" if wait is None else f", waiting for a core {wait:.0f} %")
        + "\n"
        f"  req/s by greenlets: {levels}"
    )
    if capacity.get("first_error"):
        line += f"\n  first error: {capacity['first_error']}"
    return line


def format_knee(knee: Dict[str, Any], capacity: Optional[Dict[str, Any]], deadline_ms: float) -> str:
    rate = knee.get("req_per_s")
    cap = capacity.get("median_req_per_s") if capacity else None
    if knee.get("given"):
        head = f"Knee: {rate:,.0f} req/s (given with --knee)"
    elif rate is None:
        head = (
            f"Knee ({knee['contender']}): no rate kept {TARGETS['knee_good_pct']:g} % within {deadline_ms:g} ms; "
            f"the loads below are multiples of the closed-loop capacity"
        )
    else:
        head = (
            f"Knee ({knee['contender']}, the highest rate found with >= {TARGETS['knee_good_pct']:g} % of requests "
            f"within {deadline_ms:g} ms, {len(knee['probes'])} probes): {rate:,.0f} req/s"
        )
    if rate and cap:
        head += f" = {rate / cap:.2f}x the closed-loop capacity"
    if knee.get("probes"):
        probes = ", ".join(
            f"{'again ' if p.get('retry') else ''}{p['rate_per_s']:,.0f} {'pass' if p['passed'] else 'fail'} "
            f"({p['good_pct']:.1f} %"
            + (f"; busy box: waited for a core {p['cpu_wait_pct']:.0f} %)" if p.get("busy") else ")")
            for p in knee["probes"]
        )
        head += f"\n  probes: {probes}"
    return head


def format_seed(seed: Dict[str, Any]) -> str:
    lines = ["Seed closed loop (5000 greenlets PING, max_connections 10, checkout timeout 1 s; medians):"]
    for name, fig in seed["contenders"].items():
        lines.append(
            f"  {name:<22} {fig['ok_per_s']:>10,.0f} ok/s  ±{fig['spread_pct'] or 0:.0f}%  success "
            f"{fig['success_pct']:.2f} %  p99 wait {fig['wait_p99_ms']:,.1f} ms"
        )
    ratio = seed["vs_fifo"]
    shown = "-" if ratio is None else f"{ratio:.2f}x"
    lines.append(f"  {seed['policy']} / {seed['reference']}: {shown} (median of the per-round ratios)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- tune --deadline


def recommend_by_knee(sizes: List[Dict[str, Any]], deadline_ms: float) -> Dict[str, Any]:
    """Pick the smallest max_connections whose knee is within 5 % of the best knee.

    ``sizes``: one dict per max_connections with ``max_connections``, ``capacity_per_s`` and ``knee_per_s``
    (``None`` when no rate kept 99 % within the deadline). Returns ``{"max_connections": int or None,
    "why": [lines]}``.
    """
    found = [s for s in sizes if s["knee_per_s"]]
    if not found:
        return {
            "max_connections": None,
            "why": [
                f"No max_connections kept {TARGETS['knee_good_pct']:g} % of requests within {deadline_ms:g} ms at any "
                "rate tried: raise --deadline, or make the requests cheaper."
            ],
        }
    best = max(found, key=lambda s: s["knee_per_s"])
    close = [s for s in found if s["knee_per_s"] >= TUNE_WITHIN * best["knee_per_s"]]
    pick = min(close, key=lambda s: s["max_connections"])
    why = []
    for s in sorted(sizes, key=lambda s: s["max_connections"]):
        knee = s["knee_per_s"]
        if knee is None:
            line = f"max_connections={s['max_connections']}: no knee found"
        else:
            share = knee / best["knee_per_s"]
            line = (
                f"max_connections={s['max_connections']}: knee {knee:,.0f} req/s ({share:.0%} of the best), "
                f"closed-loop capacity {s['capacity_per_s']:,.0f} req/s"
            )
            if s is pick:
                line += "  <- recommended"
            elif share < TUNE_WITHIN:
                line += f"  -- only {share:.0%} of the best knee"
            elif s["max_connections"] > pick["max_connections"]:
                line += "  -- qualifies, but more connections buy nothing"
        why.append(line)
    why.append(
        f"The smallest value whose knee (the highest arrival rate served with >= {TARGETS['knee_good_pct']:g} % of "
        f"requests within {deadline_ms:g} ms) is within {1 - TUNE_WITHIN:.0%} of the best "
        f"({best['knee_per_s']:,.0f} req/s at max_connections={best['max_connections']})."
    )
    return {"max_connections": pick["max_connections"], "why": why}


def format_tune(sizes: List[Dict[str, Any]]) -> str:
    header = ("max", "capacity/s", "knee/s", "/capacity", "probes")
    body = [
        (
            str(s["max_connections"]),
            f"{s['capacity_per_s']:,.0f}",
            "-" if s["knee_per_s"] is None else f"{s['knee_per_s']:,.0f}",
            "-" if not s["knee_per_s"] or not s["capacity_per_s"] else f"{s['knee_per_s'] / s['capacity_per_s']:.2f}x",
            str(len(s["probes"])),
        )
        for s in sizes
    ]
    return _grid(header, body, left=())


# ---------------------------------------------------------------------- plot


def write_tune_plot(path: str, sizes: List[Dict[str, Any]], title: str) -> None:
    """Draw the knee and the closed-loop capacity against max_connections into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [s["max_connections"] for s in sizes]
    ax.plot(xs, [s["capacity_per_s"] for s in sizes], marker="o", label="closed-loop capacity")
    ax.plot(xs, [s["knee_per_s"] or 0.0 for s in sizes], marker="o", label="knee (>= 99 % within the deadline)")
    ax.set_xlabel("max_connections")
    ax.set_ylabel("requests/s")
    ax.set_title(title, fontsize=9)
    if len(xs) > 1 and xs[-1] / xs[0] >= 10:
        ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plot(path: str, rows: List[Dict[str, Any]], soak: List[Dict[str, Any]], title: str) -> None:
    """Draw goodput / knee, the share within the deadline and the p99 latency against the offered load (one
    line per contender), and the soak's completed commands (one bar per contender), into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (goodput, share), (latency, bars) = axes
    names = list(dict.fromkeys(r["contender"] for r in rows))
    for name in names:
        mine = sorted((r for r in rows if r["contender"] == name), key=lambda r: r["multiple"])
        xs = [r["multiple"] for r in mine]
        goodput.plot(xs, [r["vs_knee"] or 0.0 for r in mine], marker="o", label=name)
        share.plot(xs, [r["good_pct"] for r in mine], marker="o", label=name)
        timed = [r for r in mine if r["p99_ms"] is not None]
        latency.plot([r["multiple"] for r in timed], [max(r["p99_ms"], 0.01) for r in timed], marker="o", label=name)
    goodput.set_ylabel("goodput / knee")
    goodput.set_title(title, fontsize=9)
    share.set_ylabel("% of requests within the deadline")
    latency.set_ylabel("p99 latency of the completed (ms)")
    latency.set_yscale("log")
    for ax in (goodput, share, latency):
        ax.set_xlabel("offered load / knee")
        ax.grid(True, alpha=0.3)
    goodput.legend(fontsize=8)
    if soak:
        bars.bar([r["contender"] for r in soak], [r["completed"] for r in soak])
        bars.set_ylabel("soak: commands completed")
        bars.tick_params(axis="x", labelrotation=30, labelsize=8)
    else:
        bars.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
