"""Small helpers shared by the test files. Depends on gevent."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List

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


def in_forked_child(work: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """Fork; run ``work()`` in the child and return the dict it returned (as JSON, through a pipe). Fails with the
    child's error (``{"error": ...}``) unless the child exited with 0. Blocks until the child exits."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(work()).encode())
            code = 0
        except BaseException as exc:
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        report: Dict[str, Any] = json.loads(pipe.read() or b"{}")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    return report
