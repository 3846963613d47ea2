"""Small helpers shared by the test files. Depends on gevent."""

from __future__ import annotations

import time
from typing import Any, Callable

import gevent


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Yield to other greenlets until ``predicate()`` holds (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        gevent.sleep(0.005)
