"""Figures shared by the harness and the asynctnt worker: the outcome of a measured window, this process's
resident memory, CPU time and time spent waiting for a core.

Depends on the standard library only (the asynctnt worker must not import gevent).
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any, Dict, Optional

__all__ = ["PACKAGE", "cpu_seconds", "outcome", "python_path", "rss_bytes", "run_queue_seconds"]

#: The harness's package name: ``stress`` in a checkout, ``greenpool.stress`` when installed. Subprocesses run
#: its modules as ``python -m {PACKAGE}.<module>``.
PACKAGE = __package__ or "stress"


def python_path(environ: Dict[str, str]) -> str:
    """A ``PYTHONPATH`` for a subprocess that imports :data:`PACKAGE`: the directory that holds its top-level
    package (the checkout, or site-packages) ahead of ``environ``'s own."""
    root = os.path.dirname(os.path.abspath(__file__))
    for _ in PACKAGE.split("."):
        root = os.path.dirname(root)
    return os.pathsep.join(p for p in (root, environ.get("PYTHONPATH", "")) if p)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The resident set size of this process now (Linux), or its peak where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_queue_seconds() -> Optional[float]:
    """Seconds this process's main thread has spent ready to run but waiting for a core (Linux's
    ``/proc/self/schedstat``; ``None`` elsewhere): time other processes took from it."""
    try:
        with open("/proc/self/schedstat", "rb") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def outcome(ok: int, failed: int, errors: int, elapsed: float) -> Dict[str, Any]:
    """A measured window's figures: ``elapsed_s``, ``ok``, ``ok_per_s``, ``failed``, ``errors``, ``success_pct``."""
    attempts = ok + failed + errors
    return {
        "elapsed_s": round(elapsed, 3),
        "ok": ok,
        "ok_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "failed": failed,
        "errors": errors,
        "success_pct": round(100.0 * ok / attempts, 3) if attempts else 0.0,
    }
