"""End-to-end checks of the contention harness (``python -m stress``), run as subprocesses in a short mode.

Each scenario runs the real harness against a real server (the session's ``redis_server`` /
``tarantool_server``, or a private one the harness starts itself for ``tune``) with 200 greenlets, two pool
sizes and 1 s per run, then checks the JSON it wrote: every contender at every size, every figure, sane
values, the ratios, the versions. Bad options must exit with status 2 and name the option. The harness's
targets (PASS/MISS) are printed, never asserted here. Depends on the fixtures in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from stress.cli import parse_args

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--greenlets", "200", "--max-connections", "2,5", "--duration", "1"]
RUN_FIGURES = {
    "contender",
    "max_connections",
    "order",
    "greenlets",
    "elapsed_s",
    "ok",
    "ok_per_s",
    "failed",
    "errors",
    "success_pct",
    "checkouts",
    "wait_p50_ms",
    "wait_p99_ms",
    "wait_max_ms",
    "connections_opened",
    "rss_before_mb",
    "rss_peak_mb",
    "rss_growth_mb",
    "first_error",
    "vs_ceiling",
    "vs_redis_blocking",
}
VERSIONS = {"python", "gevent", "greenlet", "greenpool", "redis-py", "hiredis", "tarantool-python", "server"}


def run_stress(*args: str, timeout: float = 100.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "stress", *args],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(tmp_path: Path, *args: str) -> Tuple[subprocess.CompletedProcess[str], Dict[str, Any]]:
    out = tmp_path / "stress.json"
    proc = run_stress(*args, "--json", str(out))
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def check_runs(doc: Dict[str, Any], contenders: List[str], sizes: List[int], greenlets: int) -> None:
    runs = doc["runs"]
    assert sorted((r["contender"], r["max_connections"]) for r in runs) == sorted(
        (c, s) for c in contenders for s in sizes
    )
    for run in runs:
        where = f"{run['contender']} max={run['max_connections']}"
        assert RUN_FIGURES <= set(run), f"{where}: missing {RUN_FIGURES - set(run)}"
        assert run["ok"] > 0 and run["ok_per_s"] > 0, where
        assert run["errors"] == 0, f"{where}: {run['first_error']}"
        assert 0.0 <= run["success_pct"] <= 100.0, where
        assert 0.5 <= run["elapsed_s"] < 5.0, where
        assert run["rss_peak_mb"] > 0 and run["rss_growth_mb"] >= 0, where
        size = run["max_connections"]
        if run["contender"] == "mux":
            # No checkout: the wait figures do not apply; one shared socket whatever max_connections says.
            assert run["checkouts"] is None, where
            assert run["wait_p50_ms"] is None and run["wait_p99_ms"] is None and run["wait_max_ms"] is None, where
            assert run["greenlets"] == greenlets and run["connections_opened"] == 1, where
            continue
        assert run["checkouts"] >= run["ok"], where
        assert 0.0 <= run["wait_p50_ms"] <= run["wait_p99_ms"] <= run["wait_max_ms"], where
        if run["contender"] == "ceiling":
            # One greenlet per dedicated connection, each connected exactly once.
            assert run["greenlets"] == size and run["connections_opened"] == size, where
            assert run["vs_ceiling"] == 1.0, where
        else:
            assert run["greenlets"] == greenlets, where
            assert 1 <= run["connections_opened"] <= size, where
    # Alternating order: the second size runs the contenders in the reverse order of the first.
    first = [r["contender"] for r in sorted(runs, key=lambda r: r["order"]) if r["max_connections"] == sizes[0]]
    second = [r["contender"] for r in sorted(runs, key=lambda r: r["order"]) if r["max_connections"] == sizes[1]]
    assert second == list(reversed(first))


def check_ratios(doc: Dict[str, Any], sizes: List[int], with_blocking: bool) -> None:
    by_key = {(r["contender"], r["max_connections"]): r for r in doc["runs"]}
    assert [r["max_connections"] for r in doc["ratios"]] == sizes
    for ratio in doc["ratios"]:
        size = ratio["max_connections"]
        ours = by_key[("greenpool", size)]["ok_per_s"]
        assert ratio["greenpool_vs_ceiling"] == pytest.approx(ours / by_key[("ceiling", size)]["ok_per_s"], abs=1e-3)
        if with_blocking:
            expected = ours / by_key[("redis-blocking", size)]["ok_per_s"]
            assert ratio["greenpool_vs_redis_blocking"] == pytest.approx(expected, abs=1e-3)
        else:
            assert ratio["greenpool_vs_redis_blocking"] is None


def check_environment(doc: Dict[str, Any], server: str) -> None:
    assert VERSIONS <= set(doc["versions"])
    assert doc["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert doc["versions"]["server"].startswith(server)
    assert doc["machine"]["cpu_count"] == os.cpu_count()


@pytest.fixture(scope="module")
def redis_report(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Any, Any]]:
    yield run_json(tmp_path_factory.mktemp("stress"), "redis", "--url", redis_server.url, *SHORT)


def test_redis_run_has_every_contender_and_figure(redis_report: Tuple[Any, Dict[str, Any]]) -> None:
    proc, doc = redis_report
    contenders = ["greenpool", "redis-blocking", "redis-blocking-gevent", "ceiling"]
    assert doc["contenders"] == contenders and doc["skipped"] == {}
    check_runs(doc, contenders, [2, 5], 200)
    check_ratios(doc, [2, 5], with_blocking=True)
    check_environment(doc, "redis-server")
    scenario = doc["scenario"]
    assert (scenario["greenlets"], scenario["max_connections"], scenario["op"]) == (200, [2, 5], "ping")
    assert (scenario["timeout_s"], scenario["duration_s"]) == (1.0, 1.0)
    for name in contenders:
        assert name in proc.stdout
    # Not a tty and no --progress: no progress line.
    assert "ok/s" not in proc.stderr


def test_redis_run_has_the_extra_scenarios_and_targets(redis_report: Tuple[Any, Dict[str, Any]]) -> None:
    proc, doc = redis_report
    single = doc["single_greenlet"]
    assert single["dedicated_ok_per_s"] > 0
    assert set(single["pools"]) == {"greenpool", "redis-blocking", "redis-blocking-gevent"}
    for fig in single["pools"].values():
        assert fig["ok_per_s"] > 0
        assert fig["vs_dedicated"] == pytest.approx(fig["ok_per_s"] / single["dedicated_ok_per_s"], abs=2e-3)
    memory = doc["memory"]
    assert "error" not in memory, memory
    assert memory["waiters"] >= 200
    # A parked greenlet costs at least its saved stack; both figures are measured, neither can be zero.
    assert memory["event_bytes_per_greenlet"] > 100 and memory["pool_bytes_per_greenlet"] > 100
    assert memory["bytes_per_waiter"] == pytest.approx(
        memory["pool_bytes_per_greenlet"] - memory["event_bytes_per_greenlet"], abs=0.2
    )
    names = [t["name"] for t in doc["targets"]]
    assert len(names) == 4
    assert all(t["status"] in ("PASS", "MISS", "n/a") for t in doc["targets"])
    assert "Targets (greenpool):" in proc.stdout and "One greenlet, no contention" in proc.stdout


def check_mux(doc: Dict[str, Any], stdout: str, sizes: List[int]) -> None:
    """The mux runs: 100 % success within the 1 s timeout, and its ratio to greenpool in the JSON and table."""
    by_key = {(r["contender"], r["max_connections"]): r for r in doc["runs"]}
    assert doc["scenario"]["mux_connections"] == 1
    assert [r["max_connections"] for r in doc["ratios"]] == sizes
    for ratio in doc["ratios"]:
        size = ratio["max_connections"]
        mux = by_key[("mux", size)]
        assert mux["success_pct"] >= 99.0, mux  # requests time out only after 1 s; a run lasts 1 s
        expected = mux["ok_per_s"] / by_key[("greenpool", size)]["ok_per_s"]
        assert mux["vs_greenpool"] == pytest.approx(expected, abs=1e-3)
        assert ratio["mux_vs_greenpool"] == mux["vs_greenpool"]
        assert mux["vs_ceiling"] == pytest.approx(mux["ok_per_s"] / by_key[("ceiling", size)]["ok_per_s"], abs=1e-3)
        for other in ("greenpool", "ceiling"):
            assert by_key[(other, size)]["vs_greenpool"] is None
    table = stdout.split("\n\n")[1].splitlines()
    assert table[0].split()[-1] == "/greenpool"
    mux_rows = [line.split() for line in table if line.split()[1:2] == ["mux"]]
    assert len(mux_rows) == len(sizes)
    for row in mux_rows:
        # wait p50, p99 and max are "-"; conns is 1; /greenpool is a ratio.
        assert row[6:9] == ["-", "-", "-"] and row[9] == "1" and row[-1].endswith("x"), row
    for line in table:
        if line.split()[1:2] in (["greenpool"], ["ceiling"]):
            assert line.split()[-1] == "-", line


def test_tarantool_run(tarantool_server: Any, tmp_path: Path) -> None:
    proc, doc = run_json(tmp_path, "tarantool", "--url", tarantool_server.url, "--progress", *SHORT)
    expected = ["greenpool", "mux", "ceiling"]
    if importlib.util.find_spec("greenpool.tarantool") is None:
        assert "greenpool" in doc["skipped"] and "skipping greenpool" in proc.stderr
        expected = ["mux", "ceiling"]
    assert doc["contenders"] == expected
    sizes = [2, 5]
    check_runs(doc, expected, sizes, 200)
    if "greenpool" in expected:
        check_ratios(doc, sizes, with_blocking=False)
        check_mux(doc, proc.stdout, sizes)
    check_environment(doc, "tarantool")
    assert doc["scenario"]["op"] == "replace" and doc["scenario"]["value_size"] == 1500
    assert doc["single_greenlet"] is None and doc["memory"] is None
    assert "ok/s" in proc.stderr  # --progress draws the live line even without a tty
    password = getattr(tarantool_server, "password", None)
    if password:
        for text in (proc.stdout, proc.stderr, json.dumps(doc)):
            assert password not in text


def test_tune_recommends_a_size(tmp_path: Path) -> None:
    # No --url: the harness starts a private redis-server and stops it afterwards.
    proc, doc = run_json(tmp_path, "tune", "--greenlets", "200", "--max-connections", "2,5", "--duration", "1")
    assert [r["contender"] for r in doc["runs"]] == ["greenpool", "greenpool"]
    assert [r["max_connections"] for r in doc["runs"]] == [2, 5]
    tune = doc["tune"]
    assert tune["max_connections"] in (2, 5), tune
    assert f"Recommended: max_connections={tune['max_connections']}" in proc.stdout
    assert sum(line.startswith("max_connections=") for line in tune["why"]) == 2
    assert "(private, stopped afterwards)" in proc.stdout


def test_defaults_are_the_documented_scenario() -> None:
    args = parse_args([])
    assert (args.command, args.kind, args.op) == ("redis", "redis", "ping")
    assert (args.greenlets, args.max_connections, args.timeout) == (5000, [1, 10, 100], 1.0)
    assert args.pools == ["greenpool", "redis-blocking", "redis-blocking-gevent", "ceiling"]
    assert args.extras and args.url is None
    tune = parse_args(["tune"])
    assert tune.max_connections == [1, 2, 5, 10, 20, 50, 100] and tune.pools == ["greenpool"]
    tarantool = parse_args(["tarantool"])
    assert tarantool.value_size == 1500 and tarantool.mux_connections == 1
    assert tarantool.pools == ["greenpool", "mux", "ceiling"]
    assert parse_args(["tarantool", "--mux-connections", "3"]).mux_connections == 3


def test_redis_mux_contender_runs_when_named(redis_server: Any, tmp_path: Path) -> None:
    url = f"redis://{redis_server.host}:{redis_server.port}/0"
    args = ("redis", "--url", url, "--greenlets", "200", "--max-connections", "2", "--duration", "1")
    _, doc = run_json(tmp_path, *args, "--pools", "greenpool,mux", "--no-extras")
    by_name = {run["contender"]: run for run in doc["runs"]}
    assert set(by_name) == {"greenpool", "mux"}
    mux = by_name["mux"]
    assert mux["ok"] > 0 and mux["success_pct"] == 100.0
    assert mux["vs_greenpool"] == pytest.approx(mux["ok_per_s"] / by_name["greenpool"]["ok_per_s"], abs=1e-3)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--greenlets", "-5"], ["--greenlets", "-5"]),
        (["redis", "--greenlets", "0"], ["--greenlets"]),
        (["--max-connections", ""], ["--max-connections"]),
        (["--max-connections", "1,,2"], ["--max-connections"]),
        (["--max-connections", "1,x"], ["--max-connections", "x"]),
        (["--pools", "greenpool,nope"], ["--pools", "nope"]),
        (["tarantool", "--pools", "redis-blocking"], ["--pools", "redis-blocking"]),
        (["tarantool", "--mux-connections", "0"], ["--mux-connections"]),
        (["--duration", "0"], ["--duration"]),
        (["--timeout", "-1"], ["--timeout"]),
        (["--url", "http://127.0.0.1:1"], ["--url"]),
        (["tarantool", "--op", "ping"], ["--op"]),
        (["tune", "--server", "tarantool", "--op", "ping"], ["--op"]),
        (["tune", "--server", "tarantool", "--url", "redis://127.0.0.1:1/0"], ["--url"]),
    ],
)
def test_bad_option_exits_2_naming_it(argv: List[str], names: List[str]) -> None:
    proc = run_stress(*argv, timeout=30.0)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    for name in names:
        assert name in proc.stderr


def test_url_password_is_not_echoed_in_errors() -> None:
    proc = run_stress("--url", "http://user:hunter2-secret@127.0.0.1:1", timeout=30.0)
    assert proc.returncode == 2 and "--url" in proc.stderr
    assert "hunter2-secret" not in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    proc = run_stress("--plot", str(tmp_path / "out.png"), timeout=30.0)
    assert proc.returncode == 2
    assert "--plot" in proc.stderr and "pip install 'greenpool[plot]'" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the plot extra (matplotlib)")
def test_plot_is_a_png(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    proc = run_stress("tune", "--greenlets", "50", "--max-connections", "1,2", "--duration", "0.5", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
