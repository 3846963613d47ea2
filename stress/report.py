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

from .rounds import format_targets, target

__all__ = [
    "TARGETS",
    "add_ratios",
    "format_table",
    "format_targets",
    "matplotlib_missing",
    "recommend",
    "targets",
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


def add_ratios(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Set ``vs_ceiling`` and ``vs_redis_blocking`` (ok/s ratios at the same max_connections) on each run,
    ``vs_greenpool`` on the ``mux`` runs when a mux ran, and ``vs_asynctnt`` on them when asynctnt ran too
    (``None`` on the other runs).

    Returns the ``greenpool / ceiling`` and ``greenpool / redis-blocking`` ratios, one dict per
    max_connections (``None`` where a contender did not run), plus ``mux_vs_greenpool`` when a mux ran and
    ``mux_vs_asynctnt`` when asynctnt ran as well.
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
    ratios = []
    for size in sorted({r["max_connections"] for r in runs}):
        ours = by_key.get(("greenpool", size))
        ratio = {
            "max_connections": size,
            "greenpool_vs_ceiling": ours["vs_ceiling"] if ours else None,
            "greenpool_vs_redis_blocking": ours["vs_redis_blocking"] if ours else None,
        }
        mux = by_key.get(("mux", size))
        if with_mux:
            ratio["mux_vs_greenpool"] = mux["vs_greenpool"] if mux else None
        if with_asynctnt:
            ratio["mux_vs_asynctnt"] = mux["vs_asynctnt"] if mux else None
        ratios.append(ratio)
    return ratios


def _ok_ratio(run: Dict[str, Any], ref: Optional[Dict[str, Any]]) -> Optional[float]:
    return round(run["ok_per_s"] / ref["ok_per_s"], 3) if ref and ref["ok_per_s"] else None


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.1f}ms"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(runs: Iterable[Dict[str, Any]]) -> str:
    """The results table, one row per run, sorted by max_connections then contender (as run)."""
    header: Tuple[str, ...] = (
        "max",
        "contender",
        "ok/s",
        "failed",
        "errors",
        "success",
        "wait p50",
        "p99",
        "max",
        "conns",
        "RSS peak",
        "growth",
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
                f"{r['failed']:,}",
                f"{r['errors']:,}",
                f"{r['success_pct']:.1f}%",
                _ms(r["wait_p50_ms"]),
                _ms(r["wait_p99_ms"]),
                _ms(r["wait_max_ms"]),
                "?" if opened is None else str(opened),
                f"{r['rss_peak_mb']:.0f}MiB",
                f"+{r['rss_growth_mb']:.1f}",
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
                f"lowest of {len(ours)} run(s), at max_connections {worst['max_connections']}",
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


def recommend(runs: List[Dict[str, Any]], timeout: float) -> Dict[str, Any]:
    """Pick the smallest max_connections within 5 % of the best ok/s, with 100 % success and p99 < timeout.

    Returns ``{"max_connections": int or None, "why": [lines]}``. When no run qualifies within 5 % of the
    best, the fastest qualifying run is recommended instead; when none qualifies at all, ``None``.
    """
    if not runs:
        return {"max_connections": None, "why": ["no runs"]}
    best = max(runs, key=lambda r: r["ok_per_s"])
    limit_ms = timeout * 1000.0

    def problems(r: Dict[str, Any]) -> List[str]:
        out = []
        if r["failed"] or r["errors"]:
            out.append(f"{r['success_pct']:.2f} % success")
        if r["wait_p99_ms"] >= limit_ms:
            out.append(f"p99 wait {r['wait_p99_ms']:,.0f} ms >= the {limit_ms:,.0f} ms timeout")
        return out

    eligible = [r for r in runs if not problems(r)]
    close = [r for r in eligible if r["ok_per_s"] >= TUNE_WITHIN * best["ok_per_s"]]
    pick: Optional[Dict[str, Any]] = None
    if close:
        pick = min(close, key=lambda r: r["max_connections"])
    elif eligible:
        pick = max(eligible, key=lambda r: r["ok_per_s"])
    why = []
    for r in sorted(runs, key=lambda r: r["max_connections"]):
        share = r["ok_per_s"] / best["ok_per_s"] if best["ok_per_s"] else 0.0
        verdict = problems(r)
        if not verdict and share < TUNE_WITHIN:
            verdict = [f"only {share:.0%} of the best throughput"]
        line = (
            f"max_connections={r['max_connections']}: {r['ok_per_s']:,.0f} ok/s ({share:.0%} of the best), "
            f"{r['success_pct']:.1f} % success, p99 wait {r['wait_p99_ms']:,.1f} ms"
        )
        if r is pick:
            line += "  <- recommended"
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


def write_plot(path: str, runs: List[Dict[str, Any]], title: str) -> None:
    """Draw ok/s and p99 checkout wait against max_connections, one line per contender, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 7))
    names = list(dict.fromkeys(r["contender"] for r in runs))
    for name in names:
        mine = sorted((r for r in runs if r["contender"] == name), key=lambda r: r["max_connections"])
        xs = [r["max_connections"] for r in mine]
        top.plot(xs, [r["ok_per_s"] for r in mine], marker="o", label=name)
        waited = [r for r in mine if r["wait_p99_ms"] is not None]  # the mux has no checkout wait
        if waited:
            ys = [max(r["wait_p99_ms"], 0.001) for r in waited]
            bottom.plot([r["max_connections"] for r in waited], ys, marker="o", label=name)
    top.set_ylabel("ok/s")
    top.set_title(title)
    top.grid(True, alpha=0.3)
    top.legend()
    bottom.set_ylabel("p99 checkout wait (ms)")
    bottom.set_xlabel("max_connections")
    bottom.set_yscale("log")
    bottom.grid(True, alpha=0.3)
    sizes = sorted({r["max_connections"] for r in runs})
    if len(sizes) > 1 and sizes[-1] / sizes[0] >= 10:
        bottom.set_xscale("log")
    bottom.set_xticks(sizes)
    bottom.set_xticklabels([str(s) for s in sizes])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_lines(stream: TextIO, *blocks: str) -> None:
    """Write text blocks to ``stream`` separated by blank lines."""
    stream.write("\n\n".join(b for b in blocks if b) + "\n")
    stream.flush()
