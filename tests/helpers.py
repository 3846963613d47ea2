"""Small helpers shared by the test files. Depends on gevent."""

from __future__ import annotations

import time
from typing import Any, Callable, List

import gevent


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Yield to other greenlets until ``predicate()`` holds (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        gevent.sleep(0.005)


def run_harness(argv: List[str], timeout: float = 300.0) -> None:
    """Run ``python -m stress *argv`` in a child process (its servers, greenlets and redis-py clients stay out of
    the test process) and fail with its output unless it exits with 0."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "stress", *argv], cwd=root, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
