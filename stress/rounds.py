"""The harness's one convention for repeated measurements: rounds, medians, spread, ratios and ``--check``.

A scenario runs each contender once per round, the contenders of a round back to back in alternating order
(:func:`stress.contenders.alternate`), so that the contenders of one round share the box's load. It reports
for each figure the median over the rounds and its spread (half the range, as a share of the median); a
ratio between two contenders is the median of the per-round ratios (both measured in the same round), which
a noisy round moves less than a ratio of medians would. Targets carry a status (``PASS``, ``MISS``, ``n/a``);
with ``--check`` a run whose targets include a ``MISS`` exits with :data:`EXIT_MISSED`.

Depends on the standard library only.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "EXIT_MISSED",
    "exit_status",
    "median",
    "median_ratio",
    "missed",
    "spread_pct",
    "summary",
    "target",
    "format_targets",
]

#: Exit status of a run with ``--check`` when a target is missed (1 is "could not run", 2 a bad option).
EXIT_MISSED = 3


def target(
    name: str,
    value: Optional[float],
    goal: str,
    ok: Optional[bool],
    note: str = "",
    unit: str = "x",
    digits: int = 2,
) -> Dict[str, Any]:
    """One target's row: ``status`` is ``n/a`` when ``ok`` is None, else ``PASS`` or ``MISS``; ``shown`` is
    ``value`` in its ``unit``: ``x`` (a ratio), ``%`` (with ``digits`` decimals), ``B`` (bytes), ``n`` (a count)."""
    status = "n/a" if ok is None else ("PASS" if ok else "MISS")
    if value is None:
        shown = "-"
    elif unit == "%":
        shown = f"{value:.{digits}f} %"
    elif unit == "B":
        shown = f"{value:,.0f} B"
    elif unit == "n":
        shown = f"{value:,.0f}"
    else:
        shown = f"{value:.2f}x"
    return {"name": name, "value": value, "shown": shown, "target": goal, "status": status, "note": note}


def format_targets(items: List[Dict[str, Any]]) -> str:
    """One line per target: status, name, value, goal, note."""
    lines = []
    for t in items:
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(f"  {t['status']:<4}  {t['name']}: {t['shown']} (target {t['target']}){note}")
    return "\n".join(lines)


def median(values: Iterable[Optional[float]]) -> Optional[float]:
    """The median of ``values`` (``None`` values left out), or ``None`` when nothing is left."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def spread_pct(values: Iterable[Optional[float]]) -> Optional[float]:
    """Half the range of ``values`` as a percentage of their median (0.0 for one value); ``None`` when the
    median is 0 or nothing is left."""
    kept = [v for v in values if v is not None]
    mid = median(kept)
    if not mid:
        return None
    return round(100.0 * (max(kept) - min(kept)) / 2.0 / abs(mid), 1)


def summary(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    """``{"median", "min", "max", "spread_pct", "rounds"}`` of one figure measured once per round."""
    kept = [v for v in values if v is not None]
    return {
        "median": median(kept),
        "min": min(kept) if kept else None,
        "max": max(kept) if kept else None,
        "spread_pct": spread_pct(kept),
        "rounds": len(kept),
    }


def median_ratio(pairs: Iterable[Tuple[Optional[float], Optional[float]]]) -> Optional[float]:
    """The median of ``a / b`` over the per-round ``(a, b)`` pairs; pairs with a missing figure or ``b == 0``
    are left out (``None`` when none is left)."""
    ratios = [a / b for a, b in pairs if a is not None and b]
    return round(statistics.median(ratios), 3) if ratios else None


def missed(targets: List[Dict[str, Any]]) -> List[str]:
    """The names of the targets whose status is ``MISS``."""
    return [t["name"] for t in targets if t.get("status") == "MISS"]


def exit_status(check: bool, targets: List[Dict[str, Any]]) -> int:
    """The exit status of a run that printed its report: :data:`EXIT_MISSED` with ``check`` when a target is
    missed, else 0 (a target that could not be computed, ``n/a``, is not a miss)."""
    return EXIT_MISSED if check and missed(targets) else 0
