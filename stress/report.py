"""What the harness prints and writes: ratios, the results table, targets, the tune advice, JSON, a plot.

Everything here works on plain dicts (one per run, as :func:`stress.harness.run_workload` returns them
plus ``contender`` and ``max_connections``), so the JSON file holds exactly what the table shows.
The plot needs matplotlib (the ``plot`` extra), imported only when a plot is asked for.
Depends on the standard library and :mod:`stress.rounds` (target rows).
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any, Dict, Iterable, List, Optional, TextIO, Tuple

from .rounds import format_targets, median, median_ratio, spread_pct, target

__all__ = [
    "MEDIAN_FIGURES",
    "RATIO_FIGURES",
    "SPREAD_LIMIT_PCT",
    "TARGETS",
    "add_ratios",
    "format_table",
    "format_targets",
    "matplotlib_missing",
    "median_rows",
    "ratio_table",
    "recommend",
    "targets",
    "tune_targets",
    "write_json",
    "write_plot",
]

#: The figures greenpool aims for (printed with PASS/MISS; never asserted by the test suite).
TARGETS = {
    "success_pct": 100.0,
    "vs_ceiling": 0.90,  # at 5000 greenlets, max_connections 10
    "vs_ceiling_greenlets": 5000,
    "vs_ceiling_max": 10,
    "single_vs_dedicated": 0.95,
    "bytes_per_waiter": 1024.0,
    # Redis: RedisMuxPool / GeventPool at the same max_connections (5000 greenlets, 10), with 100 % success.
    "redis_mux_vs_greenpool": 2.0,
    # Tarantool: TarantoolMux / asynctnt and / TarantoolPool, the lowest over the max_connections measured.
    "tarantool_mux_vs_asynctnt": 1.0,
    "tarantool_mux_vs_greenpool": 3.0,
}
#: tune: recommend the smallest max_connections whose throughput is within this share of the best.
TUNE_WITHIN = 0.95


#: Figures of a table row that are the median over the rounds; ``failed`` and ``errors`` are totals instead, and
#: ``success_pct`` is over every round together.
MEDIAN_FIGURES = (
    "greenlets",
    "elapsed_s",
    "ok",
    "ok_per_s",
    "checkouts",
    "wait_p50_ms",
    "wait_p99_ms",
    "wait_max_ms",
    "connections_opened",
    "rss_before_mb",
    "rss_peak_mb",
    "rss_growth_mb",
    "cpu_us_per_op",
)
#: Ratios to another contender at the same max_connections, measured in the same round.
RATIO_FIGURES = ("vs_ceiling", "vs_redis_blocking", "vs_greenpool", "vs_asynctnt")
#: tune: above this ok/s spread (half the range over the rounds, as a share of the median, in %), the rounds
#: disagree by more than the 5 % margin the recommendation rests on.
SPREAD_LIMIT_PCT = 100.0 * (1.0 - 0.95)


def add_ratios(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Set ``vs_ceiling`` and ``vs_redis_blocking`` (ok/s ratios at the same max_connections) on each run of
    one round, ``vs_greenpool`` on the ``mux`` runs when a mux ran, and ``vs_asynctnt`` on them when asynctnt
    ran too (``None`` on the other runs).

    Returns :func:`ratio_table` of these runs.
    """
    by_key = {(r["contender"], r["max_connections"]): r for r in runs}
    with_mux = any(r["contender"] == "mux" for r in runs)
    with_asynctnt = with_mux and any(r["contender"] == "asynctnt" for r in runs)
    for run in runs:
        for field, other in (("vs_ceiling", "ceiling"), ("vs_redis_blocking", "redis-blocking")):
            run[field] = _ok_ratio(run, by_key.get((other, run["max_connections"])))
        mine = run["contender"] == "mux"
        for field, other, wanted in (
            ("vs_greenpool", "greenpool", with_mux),
            ("vs_asynctnt", "asynctnt", with_asynctnt),
        ):
            if wanted:
                run[field] = _ok_ratio(run, by_key.get((other, run["max_connections"]))) if mine else None
    return ratio_table(runs)


def ratio_table(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The ``greenpool / ceiling`` and ``greenpool / redis-blocking`` ratios of ``rows``, one dict per
    max_connections (``None`` where a contender did not run), plus ``mux_vs_greenpool`` when a mux ran and
    ``mux_vs_asynctnt`` when asynctnt ran as well."""
    by_key = {(r["contender"], r["max_connections"]): r for r in rows}
    with_mux = any(r["contender"] == "mux" for r in rows)
    with_asynctnt = with_mux and any(r["contender"] == "asynctnt" for r in rows)
    ratios = []
    for size in sorted({r["max_connections"] for r in rows}):
        ours = by_key.get(("greenpool", size))
        ratio = {
            "max_connections": size,
            "greenpool_vs_ceiling": ours.get("vs_ceiling") if ours else None,
            "greenpool_vs_redis_blocking": ours.get("vs_redis_blocking") if ours else None,
        }
        mux = by_key.get(("mux", size))
        if with_mux:
            ratio["mux_vs_greenpool"] = mux.get("vs_greenpool") if mux else None
        if with_asynctnt:
            ratio["mux_vs_asynctnt"] = mux.get("vs_asynctnt") if mux else None
        ratios.append(ratio)
    return ratios


def median_rows(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per contender and max_connections from ``runs`` measured in rounds (each run carries
    ``round``): the per-round ratios are set on the runs (:func:`add_ratios`), then each row holds the median
    over the rounds of every figure in :data:`MEDIAN_FIGURES` and :data:`RATIO_FIGURES` (a ratio is thus the
    median of the per-round ratios), the totals of ``failed`` and ``errors``, ``success_pct`` over every round
    together, ``rounds``, the ok/s ``min``,
    ``max`` and ``ok_per_s_spread_pct`` (:func:`stress.rounds.spread_pct`), and the first ``first_error``."""
    for index in sorted({r["round"] for r in runs}):
        add_ratios([r for r in runs if r["round"] == index])
    groups: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: r["order"]):
        groups.setdefault((run["contender"], run["max_connections"]), []).append(run)
    rows = []
    for (name, size), mine in groups.items():
        row: Dict[str, Any] = {"contender": name, "max_connections": size, "rounds": len(mine)}
        row["order"] = mine[0]["order"]
        for field in MEDIAN_FIGURES:
            value = median(r.get(field) for r in mine)
            if value is not None and all(isinstance(r.get(field), int) for r in mine if r.get(field) is not None):
                value = round(value)
            row[field] = value
        for field in ("failed", "errors"):
            row[field] = sum(r[field] for r in mine)
        # Success over every round together, so that it agrees with the failed and errors totals.
        done = sum(r["ok"] for r in mine)
        tried = done + row["failed"] + row["errors"]
        row["success_pct"] = round(100.0 * done / tried, 2) if tried else 0.0
        for field in RATIO_FIGURES:
            if any(field in r for r in mine):
                value = median(r.get(field) for r in mine)
                row[field] = None if value is None else round(value, 3)
        rates = [r["ok_per_s"] for r in mine]
        row["ok_per_s_min"], row["ok_per_s_max"] = min(rates), max(rates)
        row["ok_per_s_spread_pct"] = spread_pct(rates)
        row["first_error"] = next((r["first_error"] for r in mine if r.get("first_error")), None)
        rows.append(row)
    return rows


def _ok_ratio(run: Dict[str, Any], ref: Optional[Dict[str, Any]]) -> Optional[float]:
    return round(run["ok_per_s"] / ref["ok_per_s"], 3) if ref and ref["ok_per_s"] else None


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.1f}ms"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _spread(value: Optional[float]) -> str:
    return "-" if value is None else f"±{value:.0f}%"


def format_table(runs: Iterable[Dict[str, Any]]) -> str:
    """The results table, one row per run (or per :func:`median_rows` row), sorted by max_connections then
    contender (as run); ``±`` is the ok/s spread over the rounds."""
    header: Tuple[str, ...] = (
        "max",
        "contender",
        "ok/s",
        "±",
        "failed",
        "errors",
        "success",
        "wait p50",
        "p99",
        "max",
        "conns",
        "RSS peak",
        "growth",
        "cpu us/op",
        "/ceiling",
        "/redis-blocking",
        "/greenpool",
        "/asynctnt",
    )
    optional = 4  # the ratio columns, dropped when no run has a value for them
    rows: List[Tuple[str, ...]] = []
    for r in sorted(runs, key=lambda r: r["max_connections"]):
        opened = r.get("connections_opened")
        rows.append(
            (
                str(r["max_connections"]),
                r["contender"],
                f"{r['ok_per_s']:,.0f}",
                _spread(r.get("ok_per_s_spread_pct")),
                f"{r['failed']:,}",
                f"{r['errors']:,}",
                f"{r['success_pct']:.1f}%",
                _ms(r["wait_p50_ms"]),
                _ms(r["wait_p99_ms"]),
                _ms(r["wait_max_ms"]),
                "?" if opened is None else str(opened),
                f"{r['rss_peak_mb']:.0f}MiB",
                f"+{r['rss_growth_mb']:.1f}",
                "-" if r.get("cpu_us_per_op") is None else f"{r['cpu_us_per_op']:.1f}",
                _ratio(r.get("vs_ceiling")),
                _ratio(r.get("vs_redis_blocking")),
                _ratio(r.get("vs_greenpool")),
                _ratio(r.get("vs_asynctnt")),
            )
        )
    # Drop the ratio columns no run has a value for (e.g. tune, or a sweep without the ceiling or the mux).
    keep = [i for i in range(len(header)) if i < len(header) - optional or any(row[i] != "-" for row in rows)]
    header = tuple(header[i] for i in keep)
    rows = [tuple(row[i] for i in keep) for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = {1}
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(widths[i]) if i in left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _target(name: str, value: Any, goal: str, ok: Optional[bool], note: str = "", unit: str = "x") -> Dict[str, Any]:
    return target(name, value, goal, ok, note, unit, digits=1)


def targets(
    runs: List[Dict[str, Any]],
    greenlets: int,
    single: Optional[Dict[str, Any]] = None,
    memory: Optional[Dict[str, Any]] = None,
    kind: str = "redis",
) -> List[Dict[str, Any]]:
    """greenpool's figures against :data:`TARGETS`, each with a PASS/MISS (or n/a) status.

    ``runs`` carry the ratios :func:`add_ratios` sets. When a ``mux`` ran, its targets follow: on Redis
    (``kind="redis"``) mux / greenpool at max_connections 10 (or the nearest size run) with 100 % success; on
    Tarantool mux / asynctnt (when asynctnt ran) and mux / greenpool, the lowest over the sizes measured.
    """
    out = []
    ours = [r for r in runs if r["contender"] == "greenpool"]
    if ours:
        worst = min(ours, key=lambda r: r["success_pct"])
        out.append(
            _target(
                "greenpool success",
                worst["success_pct"],
                "100 %",
                all(r["failed"] == 0 and r["errors"] == 0 for r in ours),
                f"lowest of {len(ours)} size(s), every round counted, at max_connections {worst['max_connections']}",
                unit="%",
            )
        )
    size = TARGETS["vs_ceiling_max"]
    at_size = [r for r in ours if r["max_connections"] == size and r.get("vs_ceiling") is not None]
    if at_size:
        ratio = at_size[0]["vs_ceiling"]
        note = f"{greenlets} greenlets, max_connections {size}"
        if greenlets != TARGETS["vs_ceiling_greenlets"]:
            note += f" (the target is set at {TARGETS['vs_ceiling_greenlets']} greenlets)"
        out.append(
            _target(
                "greenpool ok/s / ceiling",
                ratio,
                f">= {TARGETS['vs_ceiling']:.2f}x",
                ratio >= TARGETS["vs_ceiling"],
                note,
            )
        )
    elif ours:
        out.append(
            _target(
                "greenpool ok/s / ceiling",
                None,
                f">= {TARGETS['vs_ceiling']:.2f}x",
                None,
                f"needs a run of greenpool and ceiling at max_connections {size}",
            )
        )
    if single is not None:
        ratio = (single["pools"].get("greenpool") or {}).get("vs_dedicated")
        out.append(
            _target(
                "single greenlet: greenpool / dedicated connection",
                ratio,
                f">= {TARGETS['single_vs_dedicated']:.2f}x",
                None if ratio is None else ratio >= TARGETS["single_vs_dedicated"],
            )
        )
    if memory is not None:
        per = memory.get("bytes_per_waiter")
        out.append(
            _target(
                "RSS per waiting greenlet (pool minus plain Event)",
                per,
                f"<= {TARGETS['bytes_per_waiter']:.0f} B",
                None if per is None else per <= TARGETS["bytes_per_waiter"],
                memory.get("error") or f"{memory.get('waiters'):,} waiters",
                unit="B",
            )
        )
    if any(r["contender"] == "mux" for r in runs):
        if kind == "redis":
            out.append(_redis_mux_target(runs, greenlets))
        else:
            out.extend(_tarantool_mux_targets(runs, greenlets))
    return out


def _redis_mux_target(runs: List[Dict[str, Any]], greenlets: int) -> Dict[str, Any]:
    """mux / greenpool at max_connections 10 (else the nearest size both ran at), with 100 % mux success."""
    goal_ratio = TARGETS["redis_mux_vs_greenpool"]
    goal = f">= {goal_ratio:.1f}x at the same max_connections, success 100 %"
    name = "mux ok/s / greenpool"
    paired = {r["max_connections"]: r for r in runs if r["contender"] == "mux" and r.get("vs_greenpool") is not None}
    if not paired:
        return _target(name, None, goal, None, "needs a run of mux and greenpool at the same max_connections")
    wanted = int(TARGETS["vs_ceiling_max"])
    size = min(paired, key=lambda s: (abs(s - wanted), s))
    mux = paired[size]
    ratio = mux["vs_greenpool"]
    clean = mux["failed"] == 0 and mux["errors"] == 0
    note = f"{greenlets} greenlets, max_connections {size}, mux success {mux['success_pct']:.1f} %"
    if not clean:  # 99.96 % shows as 100.0 %: say what failed
        note += f" ({mux['failed']:,} failed, {mux['errors']:,} errors)"
    set_at = []
    if greenlets != TARGETS["vs_ceiling_greenlets"]:
        set_at.append(f"{TARGETS['vs_ceiling_greenlets']} greenlets")
    if size != wanted:
        set_at.append(f"max_connections {wanted}")
    if set_at:
        note += f" (the target is set at {' and '.join(set_at)})"
    return _target(name, ratio, goal, ratio >= goal_ratio and clean, note)


def _tarantool_mux_targets(runs: List[Dict[str, Any]], greenlets: int) -> List[Dict[str, Any]]:
    """mux / asynctnt (when asynctnt ran) and mux / greenpool: the lowest ratio over the sizes both ran at."""
    out = []
    mux = [r for r in runs if r["contender"] == "mux"]
    for other, name, key in (
        ("asynctnt", "mux ok/s / asynctnt", "tarantool_mux_vs_asynctnt"),
        ("greenpool", "mux ok/s / greenpool (TarantoolPool)", "tarantool_mux_vs_greenpool"),
    ):
        ran = any(r["contender"] == other for r in runs)
        if other == "asynctnt" and not ran:
            continue
        goal_ratio = TARGETS[key]
        goal = f">= {goal_ratio:.1f}x"
        field = f"vs_{other}"
        paired = [r for r in mux if r.get(field) is not None]
        if not paired:
            out.append(_target(name, None, goal, None, f"needs a run of mux and {other} at the same max_connections"))
            continue
        worst = min(paired, key=lambda r: r[field])
        note = f"{greenlets} greenlets, max_connections {worst['max_connections']}"
        if len(paired) > 1:
            sizes = ",".join(str(r["max_connections"]) for r in sorted(paired, key=lambda r: r["max_connections"]))
            note += f": the lowest of max_connections {sizes}"
        out.append(_target(name, worst[field], goal, worst[field] >= goal_ratio, note))
    return out


def recommend(
    rows: List[Dict[str, Any]], timeout: float, rounds: Optional[List[List[Dict[str, Any]]]] = None
) -> Dict[str, Any]:
    """Pick the smallest max_connections within 5 % of the best ok/s, with 100 % success and p99 < timeout,
    from the median rows (:func:`median_rows`; a size with any failed checkout in any round does not
    qualify), and say how sure the pick is. With two rounds or more, a size's throughput counts as the median
    of its per-round ratios to the best size, and a size whose ok/s range over the rounds overlaps the best's
    counts as within 5 % (the rounds cannot tell them apart, and fewer connections are preferred).

    ``rounds``: the runs of each round; the same rule applied to each round alone tells how many rounds
    agree with the pick. Returns ``{"max_connections": int or None, "confidence": "high" | "medium" | "low",
    "agreeing_rounds", "rounds", "per_round", "max_spread_pct", "warnings": [lines], "why": [lines]}``: high
    when every round picks the same size and no size's ok/s spread exceeds the 5 % margin
    (:data:`SPREAD_LIMIT_PCT`); medium when more than half of the rounds agree; low otherwise (and with one
    round, which cannot show its own noise). When no run qualifies within 5 % of the best, the fastest
    qualifying run is recommended instead; when none qualifies at all, ``None``.
    """
    shares: Optional[Dict[int, float]] = None
    indistinct: List[int] = []
    if rows and rounds and len(rounds) > 1:
        best = max(rows, key=lambda r: r["ok_per_s"])
        # A size's share of the best: the median of its per-round ratios to the best size (both measured in the
        # same round, so that the box's drift between rounds cancels out).
        shares = {}
        for row in rows:
            pairs = []
            for runs in rounds:
                by_size = {r["max_connections"]: r["ok_per_s"] for r in runs}
                pairs.append((by_size.get(row["max_connections"]), by_size.get(best["max_connections"])))
            ratio = median_ratio(pairs)
            if ratio is not None:
                shares[row["max_connections"]] = ratio
        # Sizes whose range over the rounds overlaps the best's: the rounds cannot tell them apart.
        floor = best.get("ok_per_s_min", best["ok_per_s"])
        indistinct = [r["max_connections"] for r in rows if r.get("ok_per_s_max", r["ok_per_s"]) >= floor]
    result = _recommend_once(rows, timeout, shares, indistinct)
    pick = result["max_connections"]
    per_round = [_recommend_once(runs, timeout)["max_connections"] for runs in rounds or []]
    agreeing = sum(1 for value in per_round if value == pick)
    spreads = [(r["ok_per_s_spread_pct"], r["max_connections"]) for r in rows if r.get("ok_per_s_spread_pct")]
    worst = max(spreads) if spreads else None
    warnings = []
    if worst is not None and worst[0] > SPREAD_LIMIT_PCT:
        warnings.append(
            f"ok/s varied by ±{worst[0]:.0f} % over the rounds at max_connections={worst[1]}, more than the "
            f"{SPREAD_LIMIT_PCT:.0f} % margin the choice rests on: too noisy to decide between close sizes. Run "
            "again with more --rounds or a longer --duration, on a quieter machine."
        )
    if len(per_round) > 1 and agreeing * 2 <= len(per_round):
        warnings.append(
            f"Only {agreeing} of {len(per_round)} rounds alone would pick this size "
            f"(they picked {', '.join('-' if v is None else str(v) for v in per_round)})."
        )
    if pick is None or len(per_round) < 2 or agreeing * 2 <= len(per_round):
        confidence = "low"
    elif agreeing == len(per_round) and not warnings:
        confidence = "high"
    else:
        confidence = "medium"
    if pick is not None:
        if len(per_round) < 2:
            shown = "one round cannot show its own noise; use --rounds 3 or more"
        else:
            spread_text = "" if worst is None else f"; ok/s spread at most ±{worst[0]:.0f} %"
            shown = f"{agreeing} of {len(per_round)} rounds alone pick it{spread_text}"
        result["why"].append(f"Confidence: {confidence} ({shown}).")
    result.update(
        confidence=confidence,
        agreeing_rounds=agreeing,
        rounds=len(per_round),
        per_round=per_round,
        max_spread_pct=None if worst is None else worst[0],
        warnings=warnings,
    )
    return result


def tune_targets(recommendation: Dict[str, Any]) -> List[Dict[str, Any]]:
    """tune's one target, for ``--check``: a recommendation the rounds agree on (confidence high or medium)."""
    pick = recommendation["max_connections"]
    rounds = recommendation["rounds"]
    share = 100.0 * recommendation["agreeing_rounds"] / rounds if rounds else None
    ok = pick is not None and recommendation["confidence"] in ("high", "medium")
    note = f"confidence {recommendation['confidence']}"
    if recommendation["max_spread_pct"] is not None:
        note += f", ok/s spread at most ±{recommendation['max_spread_pct']:.0f} %"
    return [
        target(
            "rounds that pick the recommended size alone",
            share,
            f"> 50 %, every size's ok/s spread <= {SPREAD_LIMIT_PCT:.0f} % for high confidence",
            ok,
            note,
            unit="%",
            digits=0,
        )
    ]


def _recommend_once(
    runs: List[Dict[str, Any]],
    timeout: float,
    shares: Optional[Dict[int, float]] = None,
    indistinct: Iterable[int] = (),
) -> Dict[str, Any]:
    """Pick the smallest max_connections within 5 % of the best ok/s, with 100 % success and p99 < timeout.

    ``shares``: each size's throughput as a share of the best size's (default: the ratio of ``runs``' ok/s);
    ``indistinct``: sizes the rounds cannot tell from the best (they count as within 5 %). Returns
    ``{"max_connections": int or None, "why": [lines]}``. When no run qualifies within 5 % of the best, the
    fastest qualifying run is recommended instead; when none qualifies at all, ``None``.
    """
    if not runs:
        return {"max_connections": None, "why": ["no runs"]}
    best = max(runs, key=lambda r: r["ok_per_s"])
    limit_ms = timeout * 1000.0
    noise = set(indistinct)

    def share_of(r: Dict[str, Any]) -> float:
        if shares is not None and r["max_connections"] in shares:
            return shares[r["max_connections"]]
        return r["ok_per_s"] / best["ok_per_s"] if best["ok_per_s"] else 0.0

    def near(r: Dict[str, Any]) -> bool:
        return share_of(r) >= TUNE_WITHIN or r["max_connections"] in noise

    def problems(r: Dict[str, Any]) -> List[str]:
        out = []
        if r["failed"] or r["errors"]:
            out.append(f"{r['success_pct']:.2f} % success")
        if r["wait_p99_ms"] >= limit_ms:
            out.append(f"p99 wait {r['wait_p99_ms']:,.0f} ms >= the {limit_ms:,.0f} ms timeout")
        return out

    eligible = [r for r in runs if not problems(r)]
    close = [r for r in eligible if near(r)]
    pick: Optional[Dict[str, Any]] = None
    if close:
        pick = min(close, key=lambda r: r["max_connections"])
    elif eligible:
        pick = max(eligible, key=lambda r: r["ok_per_s"])
    why = []
    for r in sorted(runs, key=lambda r: r["max_connections"]):
        share = share_of(r)
        verdict = problems(r)
        if not verdict and not near(r):
            verdict = [f"only {share:.0%} of the best throughput"]
        spread = r.get("ok_per_s_spread_pct")
        line = (
            f"max_connections={r['max_connections']}: {r['ok_per_s']:,.0f} ok/s"
            + ("" if spread is None else f" ±{spread:.0f} %")
            + f" ({share:.0%} of the best), {r['success_pct']:.1f} % success, p99 wait {r['wait_p99_ms']:,.1f} ms"
        )
        if r is pick:
            line += "  <- recommended"
            if share < TUNE_WITHIN and r["max_connections"] in noise:
                line += " (the rounds cannot tell it from the best)"
        elif verdict:
            line += "  -- " + "; ".join(verdict)
        elif pick is not None and r["max_connections"] > pick["max_connections"]:
            line += "  -- qualifies, but more connections buy nothing"
        why.append(line)
    if pick is None:
        why.append(
            "No max_connections served every checkout within the timeout: raise --timeout, lower the "
            "number of greenlets, or make the operations cheaper."
        )
    elif not close:
        why.append(
            f"No qualifying value came within {1 - TUNE_WITHIN:.0%} of the best throughput; "
            "recommending the fastest one that qualifies."
        )
    else:
        why.append(
            f"The smallest value within {1 - TUNE_WITHIN:.0%} of the best throughput "
            f"({best['ok_per_s']:,.0f} ok/s at max_connections={best['max_connections']}) "
            "with 100 % success and p99 wait under the timeout."
        )
    return {"max_connections": None if pick is None else pick["max_connections"], "why": why}


def write_json(path: str, document: Dict[str, Any]) -> None:
    """Write ``document`` as indented JSON to ``path``."""
    with open(path, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)
        out.write("\n")


def matplotlib_missing() -> Optional[str]:
    """A message saying how to install matplotlib when it is missing, else ``None``."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed; install the plot extra: pip install 'greenpool[plot]'"
    return None


#: Contenders whose checkout wait means nothing (a dedicated connection's "checkout" never waits).
NO_WAIT_PLOT = ("ceiling",)


def write_plot(
    path: str,
    runs: List[Dict[str, Any]],
    title: str,
    timeout: Optional[float] = None,
    recommended: Optional[int] = None,
) -> None:
    """Draw what a size is chosen from into ``path`` (a PNG), one line per contender against max_connections:
    throughput (median ok/s, the bar spans the rounds' range), success (%), and checkout wait p50 (dashed) and
    p99 (solid) against the checkout ``timeout`` (a red line). ``recommended`` (tune's pick) is marked on
    every panel. Contenders without a checkout (the mux, asynctnt) and the ceiling have no wait line.
    The sizes are evenly spaced and labelled as given. Needs matplotlib; blocks while it renders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    sizes = sorted({r["max_connections"] for r in runs})
    position = {size: index for index, size in enumerate(sizes)}
    names = list(dict.fromkeys(r["contender"] for r in runs))
    colours = {name: f"C{index % 10}" for index, name in enumerate(names)}
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, sharex=True, figsize=(9, 10), gridspec_kw={"height_ratios": [3, 2, 3]}
    )
    for name in names:
        mine = sorted((r for r in runs if r["contender"] == name), key=lambda r: r["max_connections"])
        xs = [position[r["max_connections"]] for r in mine]
        rates = [r["ok_per_s"] for r in mine]
        low = [r["ok_per_s"] - r.get("ok_per_s_min", r["ok_per_s"]) for r in mine]
        high = [r.get("ok_per_s_max", r["ok_per_s"]) - r["ok_per_s"] for r in mine]
        top.errorbar(xs, rates, yerr=[low, high], marker="o", capsize=4, color=colours[name], label=name)
        middle.plot(xs, [r["success_pct"] for r in mine], marker="o", color=colours[name], label=name)
        waited = [r for r in mine if r.get("wait_p99_ms") is not None and name not in NO_WAIT_PLOT]
        if waited:
            wx = [position[r["max_connections"]] for r in waited]
            bottom.plot(wx, [r["wait_p99_ms"] for r in waited], marker="o", color=colours[name])
            bottom.plot(
                wx,
                [r["wait_p50_ms"] for r in waited],
                marker=".",
                linestyle="--",
                color=colours[name],
            )
    top.set_title(title, fontsize=10)
    top.set_ylabel("throughput (ok/s, median)")
    top.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    highest = max(r.get("ok_per_s_max", r["ok_per_s"]) for r in runs)
    top.set_ylim(0, highest * 1.3 or 1.0)  # room for the legend above the lines
    top.legend(fontsize=8, loc="upper center", ncol=min(len(names), 3))
    middle.set_ylabel("success (%)")
    lowest = min(r["success_pct"] for r in runs)
    middle.set_ylim(max(0.0, min(lowest, 95.0) - 5.0), 101.0)
    middle.axhline(100.0, color="0.6", linewidth=0.8)
    bottom.set_ylabel("checkout wait (ms)")
    bottom.set_xlabel("max_connections")
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    bottom.set_ylim(bottom=0)
    if timeout is not None:
        limit = timeout * 1000.0
        bottom.axhline(limit, color="red", linewidth=1.2)
        top_wait = max([limit] + [r["wait_p99_ms"] or 0.0 for r in runs if r["contender"] not in NO_WAIT_PLOT])
        bottom.set_ylim(0, top_wait * 1.12)
    if bottom.get_lines():
        # Colours are the contenders' (named in the top panel); here only what the line styles mean.
        from matplotlib.lines import Line2D

        styles = [
            Line2D([], [], color="0.3", marker="o", label="p99"),
            Line2D([], [], color="0.3", marker=".", linestyle="--", label="p50"),
        ]
        if timeout is not None:
            styles.append(Line2D([], [], color="red", label=f"checkout timeout ({timeout * 1000:,.0f} ms)"))
        bottom.legend(handles=styles, fontsize=8, loc="best")
    else:
        bottom.text(0.5, 0.5, "no contender with a checkout", ha="center", transform=bottom.transAxes)
    if recommended is not None and recommended in position:
        for axes in (top, middle, bottom):
            axes.axvline(position[recommended], color="green", linewidth=6, alpha=0.2)
        middle.annotate(
            f"recommended: {recommended}",
            xy=(position[recommended], middle.get_ylim()[0]),
            xytext=(8, 6),
            textcoords="offset points",
            ha="left",
            color="green",
            fontsize=9,
        )
    for axes in (top, middle, bottom):
        axes.grid(True, alpha=0.3)
    bottom.set_xticks(range(len(sizes)))
    bottom.set_xticklabels([str(size) for size in sizes])
    bottom.set_xlim(-0.4, len(sizes) - 0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_lines(stream: TextIO, *blocks: str) -> None:
    """Write text blocks to ``stream`` separated by blank lines."""
    stream.write("\n\n".join(b for b in blocks if b) + "\n")
    stream.flush()
