"""End-to-end checks of the contention harness (``python -m stress``), run as subprocesses in a short mode.

Each scenario runs the real harness against a real server (the session's ``redis_server`` /
``tarantool_server``, or a private one the harness starts itself for ``tune``) with 200 greenlets, two pool
sizes and 1 s per run, then checks the JSON it wrote: every contender at every size, every figure, sane
values, the ratios, the versions. Bad options must exit with status 2 and name the option. The harness's
targets (PASS/MISS) are printed, never asserted here: the tests check that each one is computed from the
figures it names (also on figures fed to :mod:`stress.report` directly). The ``asynctnt`` contender runs
only where asynctnt and uvloop are installed; its absence is simulated with a package that fails to import.
Depends on the fixtures in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Collection, Dict, Iterator, List, Optional, Tuple

import pytest

from stress import asynctnt_worker, report
from stress.bench_mux import Result, median_ratio
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
HINT = "pip install 'greenpool[bench]'"
HAVE_ASYNCTNT = all(importlib.util.find_spec(name) is not None for name in ("asynctnt", "uvloop"))
#: Contenders without checkouts: no wait figures, one socket whatever max_connections says.
TARANTOOL_NO_CHECKOUT = ("mux", "asynctnt")


def run_stress(
    *args: str, timeout: float = 100.0, pythonpath: Optional[str] = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pythonpath, env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "stress", *args],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(
    tmp_path: Path, *args: str, pythonpath: Optional[str] = None
) -> Tuple[subprocess.CompletedProcess[str], Dict[str, Any]]:
    out = tmp_path / "stress.json"
    proc = run_stress(*args, "--json", str(out), pythonpath=pythonpath)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def check_runs(
    doc: Dict[str, Any], contenders: List[str], sizes: List[int], greenlets: int, no_checkout: Collection[str] = ()
) -> None:
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
        if run["contender"] in no_checkout:
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
    contenders = ["greenpool", "redis-blocking", "redis-blocking-gevent", "ceiling", "mux"]
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
    assert set(single["pools"]) == {"greenpool", "redis-blocking", "redis-blocking-gevent", "mux"}
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
    assert len(names) == 5
    assert all(t["status"] in ("PASS", "MISS", "n/a") for t in doc["targets"])
    assert "Targets (greenpool):" in proc.stdout and "One greenlet, no contention" in proc.stdout


def test_redis_run_has_the_mux_side_by_side_and_its_target(redis_report: Tuple[Any, Dict[str, Any]]) -> None:
    proc, doc = redis_report
    by_key = {(r["contender"], r["max_connections"]): r for r in doc["runs"]}
    for ratio in doc["ratios"]:
        mux = by_key[("mux", ratio["max_connections"])]
        expected = mux["ok_per_s"] / by_key[("greenpool", ratio["max_connections"])]["ok_per_s"]
        assert mux["vs_greenpool"] == pytest.approx(expected, abs=1e-3)
        assert ratio["mux_vs_greenpool"] == mux["vs_greenpool"]
    # 200 greenlets at max_connections 2 and 5: evaluated at 5, the size nearest to the target's 10, and said so.
    (target,) = [t for t in doc["targets"] if t["name"] == "mux ok/s / greenpool"]
    mux = by_key[("mux", 5)]
    assert target["value"] == mux["vs_greenpool"]
    assert target["status"] == ("PASS" if mux["vs_greenpool"] >= 2.0 and mux["success_pct"] == 100.0 else "MISS")
    assert "max_connections 5" in target["note"] and "set at 5000 greenlets and max_connections 10" in target["note"]
    line = f"{target['status']:<4}  mux ok/s / greenpool: {mux['vs_greenpool']:.2f}x (target >= 2.0x at the same "
    assert line + "max_connections, success 100 %)" in proc.stdout


def check_mux(doc: Dict[str, Any], stdout: str, sizes: List[int]) -> None:
    """The mux runs: 100 % success within the 1 s timeout, its ratios to greenpool (and asynctnt when it ran)
    in the JSON, the table and the targets."""
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
        if ("asynctnt", size) in by_key:
            expected = mux["ok_per_s"] / by_key[("asynctnt", size)]["ok_per_s"]
            assert mux["vs_asynctnt"] == pytest.approx(expected, abs=1e-3)
            assert ratio["mux_vs_asynctnt"] == mux["vs_asynctnt"]
    with_asynctnt = any(r["contender"] == "asynctnt" for r in doc["runs"])
    table = stdout.split("\n\n")[1].splitlines()
    columns = table[0].split()
    assert columns[-2:] == ["/greenpool", "/asynctnt"] if with_asynctnt else columns[-1] == "/greenpool"
    ratio_columns = 2 if with_asynctnt else 1
    mux_rows = [line.split() for line in table if line.split()[1:2] == ["mux"]]
    assert len(mux_rows) == len(sizes)
    for row in mux_rows:
        # wait p50, p99 and max are "-"; conns is 1; /greenpool (and /asynctnt) are ratios.
        assert row[6:9] == ["-", "-", "-"] and row[9] == "1", row
        assert all(cell.endswith("x") for cell in row[-ratio_columns:]), row
    for line in table:
        if line.split()[1:2] in (["greenpool"], ["ceiling"], ["asynctnt"]):
            assert line.split()[-ratio_columns:] == ["-"] * ratio_columns, line
    # The targets: the lowest ratio over the sizes, computed from the runs.
    targets = {t["name"]: t for t in doc["targets"]}
    checks = [("mux ok/s / greenpool (TarantoolPool)", "vs_greenpool", 3.0)]
    if with_asynctnt:
        checks.append(("mux ok/s / asynctnt", "vs_asynctnt", 1.0))
    else:
        assert "mux ok/s / asynctnt" not in targets
    for name, field, goal in checks:
        lowest = min(by_key[("mux", size)][field] for size in sizes)
        assert targets[name]["value"] == lowest
        assert targets[name]["status"] == ("PASS" if lowest >= goal else "MISS")
        assert f"{targets[name]['status']:<4}  {name}: {lowest:.2f}x (target >= {goal:.1f}x)" in stdout


def test_tarantool_run(tarantool_server: Any, tmp_path: Path) -> None:
    # asynctnt runs by default where it is installed (in a subprocess), side by side with the others.
    proc, doc = run_json(tmp_path, "tarantool", "--url", tarantool_server.url, "--progress", *SHORT)
    expected = ["greenpool", "mux", "ceiling"] + (["asynctnt"] if HAVE_ASYNCTNT else [])
    if importlib.util.find_spec("greenpool.tarantool") is None:
        assert "greenpool" in doc["skipped"] and "skipping greenpool" in proc.stderr
        expected.remove("greenpool")
    assert doc["contenders"] == expected
    sizes = [2, 5]
    check_runs(doc, expected, sizes, 200, no_checkout=TARANTOOL_NO_CHECKOUT)
    if HAVE_ASYNCTNT:
        assert "asynctnt: one asynctnt connection on uvloop and 200 coroutines" in proc.stdout
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
    assert args.pools == ["greenpool", "redis-blocking", "redis-blocking-gevent", "ceiling", "mux"]
    assert args.extras and args.url is None
    tune = parse_args(["tune"])
    assert tune.max_connections == [1, 2, 5, 10, 20, 50, 100] and tune.pools == ["greenpool"]
    tarantool = parse_args(["tarantool"])
    assert tarantool.value_size == 1500 and tarantool.mux_connections == 1
    assert tarantool.pools == ["greenpool", "mux", "ceiling"] + (["asynctnt"] if HAVE_ASYNCTNT else [])
    assert parse_args(["tarantool", "--mux-connections", "3"]).mux_connections == 3


def test_redis_mux_contender_runs_alone_with_greenpool(redis_server: Any, tmp_path: Path) -> None:
    url = f"redis://{redis_server.host}:{redis_server.port}/0"
    args = ("redis", "--url", url, "--greenlets", "200", "--max-connections", "2", "--duration", "1")
    _, doc = run_json(tmp_path, *args, "--pools", "greenpool,mux", "--no-extras")
    by_name = {run["contender"]: run for run in doc["runs"]}
    assert set(by_name) == {"greenpool", "mux"}
    mux = by_name["mux"]
    assert mux["ok"] > 0 and mux["success_pct"] == 100.0
    assert mux["vs_greenpool"] == pytest.approx(mux["ok_per_s"] / by_name["greenpool"]["ok_per_s"], abs=1e-3)


def _spec_missing(absent: Collection[str]) -> Any:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in absent else real(name, *args)

    return find_spec


@pytest.mark.parametrize("absent", [("asynctnt",), ("uvloop",), ("asynctnt", "uvloop")])
def test_asynctnt_is_a_default_tarantool_contender_only_when_installed(
    monkeypatch: pytest.MonkeyPatch, absent: Tuple[str, ...]
) -> None:
    present = object()  # any spec: find_spec is the only check, nothing is imported
    monkeypatch.setattr("stress.asynctnt_worker.find_spec", lambda name, *args: present)
    assert parse_args(["tarantool"]).pools == ["greenpool", "mux", "ceiling", "asynctnt"]
    assert asynctnt_worker.missing() is None
    monkeypatch.setattr("stress.asynctnt_worker.find_spec", _spec_missing(absent))
    assert parse_args(["tarantool"]).pools == ["greenpool", "mux", "ceiling"]
    # Still accepted when named; the harness then skips it saying why and how to install it.
    assert parse_args(["tarantool", "--pools", "mux,asynctnt"]).pools == ["mux", "asynctnt"]
    reason = asynctnt_worker.missing()
    assert reason is not None and HINT in reason and "\n" not in reason
    assert all(name in reason for name in absent)


def test_asynctnt_worker_says_how_to_install_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = asynctnt_worker.Spec(host="127.0.0.1", port=1, user=None, password="not-shown", concurrency=1, seconds=0.1)
    # Not installed: said at once, without starting the worker.
    monkeypatch.setattr("stress.asynctnt_worker.find_spec", _spec_missing(("asynctnt",)))

    def no_worker(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the worker must not be started")

    monkeypatch.setattr("stress.asynctnt_worker.subprocess.run", no_worker)
    with pytest.raises(asynctnt_worker.AsynctntUnavailable, match=r"greenpool\[bench\]"):
        asynctnt_worker.run(spec)
    monkeypatch.undo()
    # Installed but not importable (in the worker): the worker's one line, with the install command.
    fake = tmp_path / "asynctnt"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("simulated: asynctnt fails to import")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr("stress.asynctnt_worker.find_spec", lambda name, *args: object())
    with pytest.raises(asynctnt_worker.AsynctntUnavailable) as caught:
        asynctnt_worker.run(spec)
    message = str(caught.value)
    assert HINT in message and "simulated: asynctnt fails to import" in message and "\n" not in message
    assert "not-shown" not in message


def test_asynctnt_contender_is_skipped_with_the_install_hint(tarantool_server: Any, tmp_path: Path) -> None:
    # A package named asynctnt that fails to import, first on the path of the harness and of its worker.
    fake = tmp_path / "fake" / "asynctnt"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("simulated: asynctnt fails to import")\n')
    short = ["--greenlets", "50", "--max-connections", "2", "--duration", "0.5"]
    args = ("tarantool", "--url", tarantool_server.url, "--pools", "mux,asynctnt", "--no-extras", *short)
    proc, doc = run_json(tmp_path, *args, pythonpath=str(tmp_path / "fake"))
    assert "Traceback" not in proc.stderr
    skip_lines = [line for line in proc.stderr.splitlines() if line.startswith("skipping asynctnt: ")]
    assert len(skip_lines) == 1 and HINT in skip_lines[0], proc.stderr
    assert HINT in doc["skipped"]["asynctnt"]
    assert f"Skipped asynctnt: {doc['skipped']['asynctnt']}" in proc.stdout
    assert doc["contenders"] == ["mux"] and [r["contender"] for r in doc["runs"]] == ["mux"]
    assert "asynctnt" not in proc.stdout.split("\n\n")[1]  # not in the table
    assert not any("asynctnt" in t["name"] for t in doc["targets"])


@pytest.mark.skipif(not HAVE_ASYNCTNT, reason=f"needs asynctnt and uvloop ({HINT})")
def test_asynctnt_worker_runs_select_and_reports_a_failure(tarantool_server: Any) -> None:
    user = getattr(tarantool_server, "user", None)
    password = getattr(tarantool_server, "password", None)
    spec = asynctnt_worker.Spec(
        tarantool_server.host, tarantool_server.port, user, password, concurrency=20, seconds=0.3, op="select"
    )
    figures = asynctnt_worker.run(spec)
    assert figures["concurrency"] == 20 and figures["ok"] > 0 and figures["errors"] == 0, figures
    assert figures["success_pct"] == 100.0 and figures["rss_peak_mb"] > 0
    assert figures["ok_per_s"] == pytest.approx(figures["ok"] / figures["elapsed_s"], rel=1e-2)
    # Nothing listens on this port: a failure, not "unavailable", and one line saying why.
    spec.port = 1
    with pytest.raises(asynctnt_worker.WorkerFailed) as caught:
        asynctnt_worker.run(spec)
    assert not isinstance(caught.value, asynctnt_worker.AsynctntUnavailable)
    assert "the asynctnt worker failed" in str(caught.value)
    if password:
        assert password not in str(caught.value)


def _run(contender: str, size: int, ok_per_s: float, failed: int = 0) -> Dict[str, Any]:
    ok = int(ok_per_s)
    return {
        "contender": contender,
        "max_connections": size,
        "ok_per_s": ok_per_s,
        "failed": failed,
        "errors": 0,
        "success_pct": 100.0 * ok / (ok + failed),
    }


def test_redis_mux_target_is_computed_at_max_connections_10() -> None:
    runs = [_run("greenpool", size, 10_000.0) for size in (1, 10, 100)]
    runs += [_run("mux", 1, 15_000.0), _run("mux", 10, 25_000.0), _run("mux", 100, 19_000.0)]
    report.add_ratios(runs)
    (target,) = [t for t in report.targets(runs, 5000) if t["name"] == "mux ok/s / greenpool"]
    assert (target["value"], target["status"]) == (2.5, "PASS")
    assert target["note"] == "5000 greenlets, max_connections 10, mux success 100.0 %"
    assert target["target"] == ">= 2.0x at the same max_connections, success 100 %"
    line = "  PASS  mux ok/s / greenpool: 2.50x (target >= 2.0x at the same max_connections, success 100 %)"
    assert line in report.format_targets([target])
    # A failed request at that size misses the target, whatever the ratio.
    runs[4] = _run("mux", 10, 25_000.0, failed=1)
    report.add_ratios(runs)
    (target,) = [t for t in report.targets(runs, 5000) if t["name"] == "mux ok/s / greenpool"]
    assert target["status"] == "MISS" and target["note"].endswith("mux success 100.0 % (1 failed, 0 errors)")
    # Not a Tarantool run: no Tarantool targets.
    assert not any("asynctnt" in t["name"] or "TarantoolPool" in t["name"] for t in report.targets(runs, 5000))


def test_redis_mux_target_elsewhere_says_where() -> None:
    runs = [_run("greenpool", 2, 10_000.0), _run("greenpool", 50, 10_000.0)]
    runs += [_run("mux", 2, 30_000.0), _run("mux", 50, 19_000.0)]
    report.add_ratios(runs)
    (target,) = [t for t in report.targets(runs, 200) if t["name"] == "mux ok/s / greenpool"]
    assert (target["value"], target["status"]) == (3.0, "PASS")  # at 2, nearer to 10 than 50 is
    assert target["note"] == (
        "200 greenlets, max_connections 2, mux success 100.0 % "
        "(the target is set at 5000 greenlets and max_connections 10)"
    )
    # Without greenpool there is nothing to compare with.
    alone = [_run("mux", 10, 30_000.0)]
    report.add_ratios(alone)
    (target,) = report.targets(alone, 5000)
    assert (target["name"], target["value"], target["status"]) == ("mux ok/s / greenpool", None, "n/a")


def test_tarantool_mux_targets_report_the_lowest_ratio() -> None:
    runs = [_run("greenpool", size, 20_000.0) for size in (1, 10, 100)]
    runs += [_run("asynctnt", 1, 100_000.0), _run("asynctnt", 10, 80_000.0), _run("asynctnt", 100, 100_000.0)]
    runs += [_run("mux", 1, 120_000.0), _run("mux", 10, 100_000.0), _run("mux", 100, 90_000.0)]
    ratios = report.add_ratios(runs)
    assert [r["mux_vs_asynctnt"] for r in ratios] == [1.2, 1.25, 0.9]
    assert [r["mux_vs_greenpool"] for r in ratios] == [6.0, 5.0, 4.5]
    goals = {t["name"]: t for t in report.targets(runs, 5000, kind="tarantool")}
    vs_asynctnt = goals["mux ok/s / asynctnt"]
    assert (vs_asynctnt["value"], vs_asynctnt["status"], vs_asynctnt["target"]) == (0.9, "MISS", ">= 1.0x")
    assert vs_asynctnt["note"] == "5000 greenlets, max_connections 100: the lowest of max_connections 1,10,100"
    vs_pool = goals["mux ok/s / greenpool (TarantoolPool)"]
    assert (vs_pool["value"], vs_pool["status"], vs_pool["target"]) == (4.5, "PASS", ">= 3.0x")
    text = report.format_targets(list(goals.values()))
    assert "  MISS  mux ok/s / asynctnt: 0.90x (target >= 1.0x)" in text
    assert "  PASS  mux ok/s / greenpool (TarantoolPool): 4.50x (target >= 3.0x)" in text
    assert "mux ok/s / greenpool:" not in text  # the Redis target is not printed for Tarantool
    # Without asynctnt, no asynctnt target; without a mux, no mux target.
    no_asynctnt = [r for r in runs if r["contender"] != "asynctnt"]
    report.add_ratios(no_asynctnt)
    assert [t["name"] for t in report.targets(no_asynctnt, 5000, kind="tarantool")][-1:] == [
        "mux ok/s / greenpool (TarantoolPool)"
    ]
    assert not any("asynctnt" in t["name"] for t in report.targets(no_asynctnt, 5000, kind="tarantool"))
    no_mux = [r for r in runs if r["contender"] != "mux"]
    report.add_ratios(no_mux)
    assert not any(t["name"].startswith("mux") for t in report.targets(no_mux, 5000, kind="tarantool"))


def test_bench_mux_ratios_are_medians_of_per_round_ratios() -> None:
    def rnd(mux: float, pool: float) -> Dict[str, Result]:
        return {"mux": Result("mux", 10, mux, 1.0), "pool": Result("pool", 10, pool, 1.0)}

    # Per round: 1.0x, 4.0x, 2.0x: the median is 2.0x; best against best would say 100 / 25 = 4.0x.
    rounds = [rnd(50.0, 50.0), rnd(100.0, 25.0), rnd(60.0, 30.0)]
    assert median_ratio(rounds, "mux", "pool") == 2.0
    assert median_ratio(rounds, "mux", "asynctnt") is None
    rounds.append({"mux": Result("mux", 10, 80.0, 1.0)})  # the pool did not run in that round: left out
    assert median_ratio(rounds, "mux", "pool") == 2.0


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
