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
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Collection, Dict, Iterator, List, Optional, Tuple

import pytest

from stress import asynctnt_worker, report
from stress.cli import parse_args

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--greenlets", "200", "--max-connections", "2,5", "--duration", "1", "--rounds", "1"]
RUN_FIGURES = {
    "contender",
    "max_connections",
    "rounds",
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
    "ok_per_s_min",
    "ok_per_s_max",
    "ok_per_s_spread_pct",
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
    # Not a tty: plain progress lines, never redrawn in place.
    assert "\r" not in proc.stderr and "ok/s" in proc.stderr
    assert all(len(line) < 200 for line in proc.stderr.splitlines())
    assert "single greenlet" in proc.stderr and "memory per waiting greenlet" in proc.stderr


def test_redis_run_has_the_extra_scenarios_and_targets(redis_report: Tuple[Any, Dict[str, Any]]) -> None:
    proc, doc = redis_report
    single = doc["single_greenlet"]
    assert single["dedicated_ok_per_s"] > 0
    assert set(single["pools"]) == {"greenpool", "redis-blocking", "redis-blocking-gevent", "mux"}
    for fig in single["pools"].values():
        assert fig["ok_per_s"] > 0
        # At least two rounds (one per order); the ratio is the median of the per-round ratios.
        assert len(fig["vs_dedicated_per_round"]) == single["rounds"] >= 2
        assert fig["vs_dedicated"] == pytest.approx(statistics.median(fig["vs_dedicated_per_round"]), abs=2e-3)
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
    assert doc["scenario"]["shared_connections"] == 1
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
        assert row[7:10] == ["-", "-", "-"] and row[10] == "1", row
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
    proc, doc = run_json(tmp_path, "tarantool", "--url", tarantool_server.url, *SHORT)
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
    assert "ok/s" in proc.stderr and "\r" not in proc.stderr  # plain progress lines on a pipe
    password = getattr(tarantool_server, "password", None)
    if password:
        for text in (proc.stdout, proc.stderr, json.dumps(doc)):
            assert password not in text


def test_tune_recommends_a_size(tmp_path: Path) -> None:
    # No --url: the harness starts a private redis-server and stops it afterwards.
    proc, doc = run_json(
        tmp_path, "tune", "--greenlets", "200", "--max-connections", "2,5", "--duration", "0.5", "--rounds", "2"
    )
    # One row per size (the medians), every run of every round beside them.
    assert [(r["contender"], r["max_connections"], r["rounds"]) for r in doc["runs"]] == [
        ("greenpool", 2, 2),
        ("greenpool", 5, 2),
    ]
    assert sorted((r["round"], r["max_connections"]) for r in doc["rounds"]) == [(1, 2), (1, 5), (2, 2), (2, 5)]
    for row in doc["runs"]:
        rates = [r["ok_per_s"] for r in doc["rounds"] if r["max_connections"] == row["max_connections"]]
        assert row["ok_per_s"] == pytest.approx(sum(rates) / 2, abs=0.1)
        assert (row["ok_per_s_min"], row["ok_per_s_max"]) == (min(rates), max(rates))
    tune = doc["tune"]
    assert tune["max_connections"] in (2, 5), tune
    assert tune["confidence"] in ("high", "medium", "low") and tune["rounds"] == 2
    assert f"Recommended: max_connections={tune['max_connections']} (confidence {tune['confidence']})" in proc.stdout
    assert sum(line.startswith("max_connections=") for line in tune["why"]) == 2
    assert any(line.startswith("Confidence: ") for line in tune["why"])
    assert "(private, stopped afterwards)" in proc.stdout
    [goal] = doc["targets"]
    assert goal["status"] == ("PASS" if tune["confidence"] in ("high", "medium") else "MISS")


def test_tune_check_exits_3_when_one_round_cannot_vouch_for_its_pick(redis_server: Any, tmp_path: Path) -> None:
    args = ["tune", "--url", redis_server.url, "--greenlets", "50", "--max-connections", "1,2", "--duration", "0.3"]
    proc = run_stress(*args, "--rounds", "1", "--check")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "(confidence low)" in proc.stdout and "one round cannot show its own noise" in proc.stdout
    assert "MISS  rounds that pick the recommended size alone" in proc.stdout
    # The same run without --check reports the same and exits 0.
    assert run_stress(*args, "--rounds", "1").returncode == 0


def test_tune_infers_the_server_from_the_url(tarantool_server: Any) -> None:
    args = parse_args(["tune", "--url", tarantool_server.url])
    assert (args.server, args.kind, args.op) == ("tarantool", "tarantool", "replace")
    assert parse_args(["tune"]).server == "redis"


def test_defaults_are_the_documented_scenario() -> None:
    args = parse_args([])
    assert (args.command, args.kind, args.op) == ("redis", "redis", "ping")
    assert (args.greenlets, args.max_connections, args.timeout) == (5000, [1, 10, 100], 1.0)
    assert args.pools == ["greenpool", "redis-blocking", "redis-blocking-gevent", "ceiling", "mux"]
    assert args.extras and args.url is None
    tune = parse_args(["tune"])
    assert tune.max_connections == [1, 2, 5, 10, 20, 50, 100] and tune.pools == ["greenpool"]
    tarantool = parse_args(["tarantool"])
    assert tarantool.value_size == 1500 and tarantool.shared_connections == 1
    assert args.rounds == tune.rounds == tarantool.rounds == 3 and not args.check and args.progress
    assert tarantool.pools == ["greenpool", "mux", "ceiling"] + (["asynctnt"] if HAVE_ASYNCTNT else [])
    assert parse_args(["tarantool", "--shared-connections", "3"]).shared_connections == 3


def test_redis_mux_contender_runs_alone_with_greenpool(redis_server: Any, tmp_path: Path) -> None:
    url = f"redis://{redis_server.host}:{redis_server.port}/0"
    args = ("redis", "--url", url, "--greenlets", "200", "--max-connections", "2", "--duration", "1", "--rounds", "2")
    _, doc = run_json(tmp_path, *args, "--pools", "greenpool,mux", "--no-extras")
    by_name = {run["contender"]: run for run in doc["runs"]}
    assert set(by_name) == {"greenpool", "mux"}
    mux = by_name["mux"]
    assert mux["ok"] > 0 and mux["success_pct"] == 100.0
    # Two rounds: the ratio is the median of the two per-round ratios (each measured in one round).
    rounds = {(r["contender"], r["round"]): r["ok_per_s"] for r in doc["rounds"]}
    per_round = [rounds[("mux", n)] / rounds[("greenpool", n)] for n in (1, 2)]
    assert mux["rounds"] == 2 and mux["vs_greenpool"] == pytest.approx(statistics.median(per_round), abs=1e-3)


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


def _round_run(name: str, size: int, rnd: int, order: int, ok_per_s: float, failed: int = 0) -> Dict[str, Any]:
    return {
        "contender": name,
        "max_connections": size,
        "round": rnd,
        "order": order,
        "greenlets": 100,
        "elapsed_s": 1.0,
        "ok": int(ok_per_s),
        "ok_per_s": ok_per_s,
        "failed": failed,
        "errors": 0,
        "success_pct": 100.0 if not failed else 90.0,
        "checkouts": int(ok_per_s),
        "wait_p50_ms": 1.0,
        "wait_p99_ms": 2.0 + rnd,
        "wait_max_ms": 9.0,
        "connections_opened": size,
        "rss_before_mb": 50.0,
        "rss_peak_mb": 51.0,
        "rss_growth_mb": 1.0,
        "first_error": None,
    }


def test_rows_are_medians_over_rounds_and_ratios_medians_of_per_round_ratios() -> None:
    # Per round greenpool / ceiling: 1.0x, 4.0x, 2.0x: the median is 2.0x; a ratio of medians would say 60/50.
    pairs = [(50.0, 50.0), (100.0, 25.0), (60.0, 30.0)]
    runs = []
    for rnd, (ours, ceiling) in enumerate(pairs, 1):
        runs.append(_round_run("greenpool", 10, rnd, len(runs) + 1, ours, failed=1 if rnd == 2 else 0))
        runs.append(_round_run("ceiling", 10, rnd, len(runs) + 1, ceiling))
    rows = {r["contender"]: r for r in report.median_rows(runs)}
    ours = rows["greenpool"]
    assert ours["vs_ceiling"] == 2.0 and rows["ceiling"]["vs_ceiling"] == 1.0
    assert ours["ok_per_s"] == 60.0 and (ours["ok_per_s_min"], ours["ok_per_s_max"]) == (50.0, 100.0)
    assert ours["ok_per_s_spread_pct"] == pytest.approx(100.0 * 25.0 / 60.0, abs=0.1)
    assert ours["failed"] == 1 and ours["rounds"] == 3 and ours["wait_p99_ms"] == 4.0
    assert report.ratio_table(list(rows.values()))[0]["greenpool_vs_ceiling"] == 2.0
    # A failed checkout in any round disqualifies the size, whatever the medians say.
    assert report.targets(list(rows.values()), 100)[0]["status"] == "MISS"


def test_tune_says_how_sure_it_is() -> None:
    def rounds_of(rates: Dict[int, List[float]]) -> List[Dict[str, Any]]:
        runs = []
        for size, values in rates.items():
            for rnd, value in enumerate(values, 1):
                runs.append(_round_run("greenpool", size, rnd, len(runs) + 1, value))
        return runs

    def tune(rates: Dict[int, List[float]]) -> Dict[str, Any]:
        runs = rounds_of(rates)
        count = len(next(iter(rates.values())))
        per_round = [[r for r in runs if r["round"] == index + 1] for index in range(count)]
        return report.recommend(report.median_rows(runs), 1.0, per_round)

    steady = tune({1: [50.0, 51.0, 50.0], 5: [100.0, 101.0, 100.0], 10: [100.0, 100.0, 101.0]})
    assert (steady["max_connections"], steady["confidence"], steady["warnings"]) == (5, "high", [])
    assert steady["agreeing_rounds"] == 3 and report.tune_targets(steady)[0]["status"] == "PASS"
    # Most rounds pick 10, one picks 5, and 5 varies by more than the 5 % margin: medium, with a warning.
    mostly = tune({1: [50.0, 50.0, 50.0], 5: [80.0, 70.0, 96.0], 10: [100.0, 100.0, 100.0]})
    assert mostly["max_connections"] == 10 and mostly["confidence"] == "medium"
    assert mostly["per_round"] == [10, 10, 5]
    assert any("more than the 5 % margin" in w for w in mostly["warnings"])
    # 5's range over the rounds overlaps 10's: the rounds cannot tell them apart, the fewer connections win,
    # and since the rounds alone disagree, confidence is low.
    noisy = tune({1: [50.0, 50.0, 50.0], 5: [100.0, 60.0, 70.0], 10: [90.0, 100.0, 100.0]})
    assert noisy["max_connections"] == 5 and noisy["confidence"] == "low"
    assert noisy["per_round"] == [5, 10, 10]
    assert any("cannot tell it from the best" in line for line in noisy["why"])
    split = tune({5: [100.0, 60.0], 10: [90.0, 100.0]})
    assert split["confidence"] == "low" and report.tune_targets(split)[0]["status"] == "MISS"
    single = tune({5: [100.0], 10: [100.0]})
    assert single["confidence"] == "low" and "one round cannot show its own noise" in single["why"][-1]


def test_progress_on_a_pipe_is_plain_lines() -> None:
    import io

    from stress.harness import Progress

    out = io.StringIO()
    progress = Progress(out, interval=3600.0)
    progress.show("run 1  0.1 s")  # the first state of a run is written at once
    progress.show("run 1  0.2 s")  # then at most one line per interval; the last is kept for done()
    progress.show("run 1  1.0 s")
    progress.done()
    progress.line("memory per waiting greenlet")
    progress.done()  # nothing pending: nothing written
    assert out.getvalue() == "run 1  0.1 s\nrun 1  1.0 s\nmemory per waiting greenlet\n"
    quiet = io.StringIO()
    off = Progress(quiet, enabled=False)
    off.show("x")
    off.line("y")
    off.done()
    assert quiet.getvalue() == ""


def test_every_contender_starts_warm_and_the_warm_up_is_not_counted() -> None:
    from stress.harness import RunStats, Workload, run_workload

    calls: List[int] = []
    concurrent = [0, 0]

    def make(index: int) -> Any:
        def op() -> None:
            import gevent

            calls.append(index)
            concurrent[0] += 1
            concurrent[1] = max(concurrent[1], concurrent[0])
            gevent.sleep(0.001)
            concurrent[0] -= 1

        return op

    stats = RunStats()
    workload = Workload([make(i) for i in range(6)], lambda: None, lambda: None)
    figures = run_workload(workload, stats, 0.2, drain_timeout=5.0, warm=3)
    # The three warm-up calls come first, all at the same time, and are not counted: every later call is.
    assert sorted(calls[:3]) == [0, 1, 2] and concurrent[1] >= 3
    assert stats.ok == len(calls) - 3 and 0 < figures["ok"] <= stats.ok


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
        (["tarantool", "--shared-connections", "0"], ["--shared-connections"]),
        (["--rounds", "0"], ["--rounds"]),
        (["--json", "/missing/dir/x.json"], ["--json", "/missing/dir"]),
        (["tune", "--plot", "x.txt"], ["--plot", "x.txt"]),
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


# ---------------------------------------------------------------------- overload (python -m stress overload)
#
# The engine runs here on fake clients (no server: counts must add up whatever the machine's speed), the report on
# synthetic figures (every target's PASS/MISS/n/a from the figures it names), the detection of what the core
# offers on fake pool classes; three short runs of the real command check the JSON's shape and the --check status.

OPEN_RUN_FIGURES = {
    "contender",
    "round",
    "multiple",
    "rate_per_s",
    "order",
    "offered_per_s",
    "requests",
    "good",
    "late",
    "completed",
    "mismatched",
    "mismatches",
    "errors",
    "goodput_per_s",
    "good_pct",
    "p50_ms",
    "p99_ms",
    "start_lag_p99_ms",
    "start_lag_max_ms",
    "gen_cpu_pct",
    "proc_cpu_pct",
    "cpu_wait_pct",
    "elapsed_s",
    "window_s",
    "unsent",
    "connections_opened",
    "warm_error",
    "first_error",
}


def _client(command: Any, opened: int = 1) -> Tuple[Any, List[bool]]:
    import gevent

    from stress.openloop import Client

    closed: List[bool] = []
    return Client(command, gevent.Timeout, lambda: opened, lambda: closed.append(True)), closed


def test_open_loop_counts_every_request_once_and_checks_every_reply() -> None:
    import gevent

    from stress.openloop import open_loop

    def command(index: int) -> bool:
        request = index // 3
        if request % 10 == 1:
            gevent.sleep(0.3)  # doomed: its 50 ms deadline fires first
        elif request % 10 == 2 and index % 3 == 0:
            return False  # a reply meant for another key
        gevent.sleep(0.001)
        return True

    client, closed = _client(command)
    fig = open_loop(client, 400.0, commands=3, deadline=0.05, duration=0.5, warmup=0.1)
    assert closed == [True]
    measured = range(40, 200)  # 400/s for 0.5 s; those due in the first 0.1 s are not counted
    assert fig["requests"] == len(measured) and fig["offered_per_s"] == pytest.approx(400.0, rel=0.01)
    assert fig["completed"] + sum(fig["errors"].values()) == fig["requests"]
    assert fig["good"] + fig["late"] <= fig["completed"]
    assert fig["errors"].get("deadline", 0) >= sum(1 for n in measured if n % 10 == 1)
    wrong = sum(1 for n in measured if n % 10 == 2)
    assert fig["mismatched"] == fig["mismatches"] == wrong
    assert fig["good"] <= fig["requests"] - wrong - sum(1 for n in measured if n % 10 == 1)
    assert fig["good_pct"] == pytest.approx(100.0 * fig["good"] / fig["requests"], abs=1e-3)
    assert fig["goodput_per_s"] == pytest.approx(fig["good"] / fig["window_s"], rel=0.01)
    assert 0 <= fig["p50_ms"] <= fig["p99_ms"] and fig["unsent"] == 0
    assert fig["gen_cpu_pct"] is not None and fig["proc_cpu_pct"] is not None
    assert fig["connections_opened"] == 1 and fig["warm_error"] is None and fig["first_error"] is None


def test_open_loop_catches_up_without_skipping_and_counts_latency_from_the_intended_start() -> None:
    import time

    from stress.openloop import open_loop

    def command(index: int) -> bool:
        if index == 3 * 60:  # request 60 holds the whole process for 0.15 s, generator included
            end = time.perf_counter() + 0.15
            while time.perf_counter() < end:
                pass
        return True

    client, _ = _client(command)
    fig = open_loop(client, 300.0, commands=3, deadline=1.0, duration=0.5, warmup=0.1)
    # Every request due while the generator was held was still sent (none skipped) and started late.
    assert fig["unsent"] == 0 and fig["requests"] == 150 - 30
    assert fig["completed"] == fig["requests"] and fig["errors"] == {}
    assert fig["start_lag_max_ms"] >= 100.0
    assert fig["p99_ms"] >= 100.0  # from the intended start: the wait behind the held process counts


def test_warm_up_opens_the_connections_at_the_same_time() -> None:
    import gevent

    from stress.openloop import warm_up

    state = {"now": 0, "most": 0}

    def command(index: int) -> bool:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        gevent.sleep(0.01)
        state["now"] -= 1
        return True

    client, _ = _client(command)
    assert warm_up(client, 7) is None and state["most"] == 7
    failing, _ = _client(lambda index: 1 / 0)
    assert warm_up(failing, 2) == "ZeroDivisionError: division by zero"


def test_closed_loop_and_soak_count_wrong_replies() -> None:
    import gevent

    from stress.openloop import closed_loop, soak

    def command(index: int) -> bool:
        gevent.sleep(0)
        return index % 17 != 5

    client, closed = _client(command)
    fig = closed_loop(client, commands=3, deadline=1.0, greenlets=4, duration=0.3)
    assert closed == [True] and fig["greenlets"] == 4 and fig["req_per_s"] > 0
    assert fig["errors"] > 0 and fig["first_error"].startswith("MismatchedReply")
    client, closed = _client(command)
    fig = soak(client, greenlets=10, ops=50, min_deadline=0.05e-3, max_deadline=30e-3, seed=1, warm=3)
    assert closed == [True] and fig["attempts"] == 500
    assert fig["completed"] + fig["mismatches"] + sum(fig["errors"].values()) == 500
    assert fig["mismatches"] > 0 and fig["completed"] > 0


def _stepped(limit: float, flips: Collection[float] = ()) -> Tuple[Any, List[float]]:
    """A probe that passes at or below ``limit`` req/s, except that its first probe at a rate in ``flips`` says
    the opposite (a busy box failing it, or a lucky pass)."""
    seen: List[float] = []

    def probe(rate: float) -> Dict[str, Any]:
        first = all(abs(rate - r) > 1e-6 for r in seen)
        seen.append(rate)
        ok = (rate <= limit) != (first and any(abs(rate - n) < 1e-6 for n in flips))
        return {"good_pct": 100.0 if ok else 50.0, "goodput_per_s": rate if ok else rate / 2}

    return probe, seen


def test_find_knee_brackets_and_bisects() -> None:
    from stress.overload_report import find_knee

    probe, seen = _stepped(700.0)
    knee = find_knee(probe, 1000.0)
    assert 700.0 * 0.96 <= knee["req_per_s"] <= 700.0 < knee["failed_at"] <= 700.0 * 1.04 + 1
    assert len(knee["probes"]) == len(seen) <= 14
    assert seen[:4] == [1000.0, 1000.0, 500.0, 500.0]  # each rate is probed twice; a failure halves the rate
    passed = [p["rate_per_s"] for p in knee["probes"] if p["passed"]]
    failed = [p["rate_per_s"] for p in knee["probes"] if not p["passed"]]
    assert max(passed) < min(failed)
    assert [p["retry"] for p in knee["probes"]][:4] == [False, True, False, True]
    # Above capacity: up by 1.25x until a failure; never above 3x capacity.
    probe, seen = _stepped(1500.0)
    knee = find_knee(probe, 1000.0)
    assert seen[:6:2] == [1000.0, 1250.0, 1562.5] and 1500.0 * 0.96 <= knee["req_per_s"] <= 1500.0
    probe, seen = _stepped(1e9)
    knee = find_knee(probe, 1000.0)
    assert knee["failed_at"] is None and max(seen) <= 3000.0
    assert knee["req_per_s"] == pytest.approx(max(seen), abs=0.1)
    # Nothing passes: no knee, and the rate never went below the floor.
    probe, seen = _stepped(0.0)
    knee = find_knee(probe, 1000.0, floor=100.0)
    assert knee["req_per_s"] is None and min(seen) >= 100.0 and len(seen) <= 14
    # One probe per rate without confirm.
    probe, seen = _stepped(700.0)
    assert len(find_knee(probe, 1000.0, confirm=False)["probes"]) == len(set(seen))


def test_find_knee_decides_a_split_by_a_third_probe() -> None:
    from stress.overload_report import find_knee

    probe, seen = _stepped(1200.0, flips=[1000.0])  # the first probe at 1000 fails, as a busy box makes it
    assert find_knee(probe, 1000.0)["req_per_s"] >= 1200.0 * 0.96 and seen[:3] == [1000.0] * 3
    probe, _ = _stepped(1200.0, flips=[1000.0])
    assert find_knee(probe, 1000.0, confirm=False)["req_per_s"] < 1000.0
    probe, seen = _stepped(800.0, flips=[1000.0])  # a lucky pass at 1000, above the knee
    knee = find_knee(probe, 1000.0)
    assert seen[:3] == [1000.0] * 3 and knee["req_per_s"] <= 800.0 < knee["failed_at"]


def test_find_knee_probes_again_when_the_box_was_busy() -> None:
    from stress.overload_report import BUSY_RETRIES, find_knee

    seen: List[float] = []

    def probe(rate: float) -> Dict[str, Any]:
        seen.append(rate)
        busy = len(seen) <= 2  # the first two probes ran while another process had the core
        ok = rate <= 1200.0 and not busy
        return {"good_pct": 100.0 if ok else 0.0, "goodput_per_s": 0.0, "cpu_wait_pct": 60.0 if busy else 1.0}

    knee = find_knee(probe, 1000.0)
    assert seen[:4] == [1000.0] * 4 and knee["req_per_s"] >= 1200.0 * 0.96
    assert [p["busy"] for p in knee["probes"][:4]] == [True, True, False, False]
    # A box busy all the time: after BUSY_RETRIES re-probes the failures vote.
    seen.clear()
    knee = find_knee(lambda rate: {"good_pct": 0.0, "goodput_per_s": 0.0, "cpu_wait_pct": 60.0}, 1000.0)
    assert [p["rate_per_s"] for p in knee["probes"][: BUSY_RETRIES + 2]] == [1000.0] * (BUSY_RETRIES + 2)
    assert knee["probes"][BUSY_RETRIES + 2]["rate_per_s"] == 500.0 and knee["req_per_s"] is None


def _open_run(name: str, round_: int, multiple: float, goodput: float, good_pct: float = 100.0, **extra: Any) -> Dict:
    run = {
        "contender": name,
        "round": round_,
        "multiple": multiple,
        "rate_per_s": 1000.0 * multiple,
        "offered_per_s": 1000.0 * multiple,
        "requests": 100,
        "good": int(good_pct),
        "late": 0,
        "mismatches": 0,
        "errors": {"deadline": 100 - int(good_pct)} if good_pct < 100 else {},
        "goodput_per_s": goodput,
        "good_pct": good_pct,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "gen_cpu_pct": 5.0,
        "proc_cpu_pct": 50.0,
        "start_lag_p99_ms": 0.5,
        "connections_opened": 10,
    }
    run.update(extra)
    return run


def test_open_rows_are_medians_over_rounds_with_spread_and_sums() -> None:
    from stress.overload_report import format_table, open_rows

    runs = [_open_run("greenpool-fifo", i, 2.0, g, 50.0) for i, g in ((1, 900.0), (2, 1100.0), (3, 1000.0))]
    runs += [_open_run("redis-blocking", i, 0.5, 500.0, errors={"ConnectionError": 1}) for i in (1, 2, 3)]
    rows = open_rows(runs, knee=1000.0)
    assert [(r["multiple"], r["contender"]) for r in rows] == [(0.5, "redis-blocking"), (2.0, "greenpool-fifo")]
    fifo = rows[1]
    assert (fifo["goodput_per_s"], fifo["goodput_min"], fifo["goodput_max"]) == (1000.0, 900.0, 1100.0)
    assert fifo["goodput_spread_pct"] == 10.0 and fifo["vs_knee"] == 1.0 and fifo["rounds"] == 3
    assert fifo["errors"] == {"deadline": 150} and fifo["requests"] == 300
    assert rows[0]["errors"] == {"ConnectionError": 3}
    table = format_table(rows).splitlines()
    assert len(table) == 4 and "ConnectionError 3" in table[2] and "deadline 150" in table[3]


def test_kept_up_to_is_the_highest_load_below_which_every_load_kept_99_percent() -> None:
    from stress.overload_report import kept_up_to, open_rows

    shares = {0.5: 100.0, 0.9: 99.5, 1.0: 98.0, 1.5: 100.0}  # 1.5x passing again does not count
    runs = [_open_run("greenpool-fifo", 1, m, 10.0, share) for m, share in shares.items()]
    rows = open_rows(runs, knee=1000.0)
    assert kept_up_to(rows, "greenpool-fifo") == 0.9
    assert kept_up_to(rows, "greenpool-fifo", good_pct=99.9) == 0.5
    assert kept_up_to(rows, "greenpool-fifo", good_pct=100.1) is None and kept_up_to(rows, "mux") is None


def _goals(runs: List[Dict[str, Any]], soak: List[Dict[str, Any]] = (), **kwargs: Any) -> Dict[str, Dict[str, Any]]:
    from stress.overload_report import targets

    settings: Dict[str, Any] = {
        "knee": {"req_per_s": 1000.0, "given": False},
        "capacity": {"median_req_per_s": 1050.0},
        "seed": None,
        "default": "greenpool-adaptive",
        "deadline": "greenpool-deadline",
        "baselines": ["redis-blocking", "redis-blocking-gevent"],
        "baseline_label": "best redis-py pool",
    }
    settings.update(kwargs)
    return {t["name"]: t for t in targets(runs=runs, soak=list(soak), **settings)}


def test_overload_targets_are_computed_from_the_figures_they_name() -> None:
    ours, deadline = "greenpool-adaptive", "greenpool-deadline"
    runs = []
    for i in (1, 2, 3):
        runs += [_open_run(ours, i, 0.5, 500.0), _open_run(ours, i, 0.9, 900.0, 99.0)]
        runs += [_open_run(ours, i, 2.0, 900.0, 45.0), _open_run(ours, i, 4.0, 200.0, 5.0)]
        runs += [_open_run(deadline, i, 2.0, 950.0, 47.0), _open_run(deadline, i, 4.0, 600.0, 15.0)]
        runs += [_open_run(deadline, i, 0.5, 500.0), _open_run(deadline, i, 0.9, 900.0)]
    # redis-py's best pool, round by round: 100, 400 (the gevent queue's), 300: ratios 9.0, 2.25, 3.0.
    for i, plain, gevent_queue in ((1, 100.0, 50.0), (2, 200.0, 400.0), (3, 300.0, 10.0)):
        runs += [_open_run("redis-blocking", i, 2.0, plain), _open_run("redis-blocking-gevent", i, 2.0, gevent_queue)]
    soak = [{"contender": ours, "round": 1, "completed": 8000, "mismatches": 0}]
    soak += [{"contender": "redis-blocking", "round": 1, "completed": 4000, "mismatches": 0}]
    soak += [{"contender": "redis-blocking-gevent", "round": 1, "completed": 5000, "mismatches": 0}]
    goals = _goals(runs, soak)
    expect = {
        f"{ours} knee / closed-loop capacity": (0.952, "PASS"),
        f"{ours} goodput at 2x the knee / the knee": (0.9, "PASS"),
        f"{ours} goodput at 2x the knee / best redis-py pool": (3.0, "PASS"),
        f"{ours} goodput at 4x the knee / the knee": (0.2, "MISS"),
        f"{deadline} goodput at 2x the knee / the knee": (0.95, "PASS"),
        f"{deadline} goodput at 4x the knee / the knee": (0.6, "PASS"),
        f"{ours} within the deadline at 0.5x the knee": (100.0, "PASS"),
        f"{ours} within the deadline at 0.9x the knee": (99.0, "MISS"),
        f"{deadline} within the deadline at 0.9x the knee": (100.0, "PASS"),
        f"{ours} soak: completed / best redis-py pool": (1.6, "PASS"),
        "mismatched replies": (0, "PASS"),
        "seed closed loop: ok/s / strict FIFO": (None, "n/a"),
    }
    for name, (value, status) in expect.items():
        assert (goals[name]["value"], goals[name]["status"]) == (value, status), name
    from stress.rounds import EXIT_MISSED, exit_status

    assert exit_status(True, list(goals.values())) == EXIT_MISSED and exit_status(False, list(goals.values())) == 0
    assert exit_status(True, [g for g in goals.values() if g["status"] != "MISS"]) == 0
    # A wrong reply anywhere in greenpool's contenders misses, whatever else passes.
    runs[0]["mismatches"] = 2
    assert _goals(runs, soak)["mismatched replies"]["status"] == "MISS"


def test_overload_targets_without_a_figure_are_not_applicable() -> None:
    ours = "greenpool-fifo"
    runs = [_open_run(ours, 1, 2.0, 10.0, 1.0), _open_run("redis-blocking", 1, 2.0, 0.0, 0.0)]
    goals = _goals(runs, default=ours, deadline=None, deadline_note="this greenpool has no greenpool.deadline()")
    baseline = goals[f"{ours} goodput at 2x the knee / best redis-py pool"]
    assert (baseline["value"], baseline["status"]) == (None, "n/a") and "had 0" in baseline["note"]
    for multiple in (2, 4):
        deadline = goals[f"greenpool.deadline() goodput at {multiple}x the knee / the knee"]
        assert deadline["status"] == "n/a" and deadline["note"] == "this greenpool has no greenpool.deadline()"
    assert goals[f"{ours} goodput at 4x the knee / the knee"]["status"] == "n/a"
    assert goals[f"{ours} within the deadline at 0.5x the knee"]["status"] == "n/a"
    # No knee found: the knee target misses and the others, relative to it, are not computed.
    goals = _goals(runs, default=ours, knee={"req_per_s": None, "given": False})
    assert goals[f"{ours} knee / closed-loop capacity"]["status"] == "MISS"
    assert not any("the knee" in name for name in goals)
    # The soak alone: no open-loop target at all.
    assert set(_goals([], knee=None, capacity=None)) == {"seed closed loop: ok/s / strict FIFO"}


def test_tune_by_deadline_recommends_the_smallest_size_near_the_best_knee() -> None:
    from stress.overload_report import format_tune, recommend_by_knee

    sizes = [
        {"max_connections": 2, "capacity_per_s": 2000.0, "knee_per_s": 1500.0, "probes": [{}] * 6},
        {"max_connections": 5, "capacity_per_s": 4000.0, "knee_per_s": 3900.0, "probes": [{}] * 7},
        {"max_connections": 10, "capacity_per_s": 4100.0, "knee_per_s": 4000.0, "probes": [{}] * 7},
        {"max_connections": 20, "capacity_per_s": 3000.0, "knee_per_s": None, "probes": [{}] * 8},
    ]
    advice = recommend_by_knee(sizes, 100.0)
    assert advice["max_connections"] == 5
    assert advice["why"][1].endswith("<- recommended") and "only 38% of the best knee" in advice["why"][0]
    assert "more connections buy nothing" in advice["why"][2] and "no knee found" in advice["why"][3]
    assert len(format_tune(sizes).splitlines()) == 6
    assert recommend_by_knee([dict(sizes[3])], 100.0)["max_connections"] is None


def test_queue_policies_are_found_on_the_pool_class(monkeypatch: pytest.MonkeyPatch) -> None:
    from stress import overload_contenders as oc

    class Today:  # GeventPool before queue_policy: unknown keywords go to the connections
        def __init__(self, max_connections: int = 1, **connection_kwargs: Any) -> None:
            self.connection_kwargs = connection_kwargs

        def disconnect(self) -> None:
            pass

    class Refuses:  # TarantoolPool before queue_policy: a TypeError
        def __init__(self, host: str, port: int, max_connections: int = 1) -> None:
            pass

    class Offers:
        def __init__(self, max_connections: int = 1, queue_policy: str = "adaptive", **kwargs: Any) -> None:
            if queue_policy not in ("fifo", "adaptive"):
                raise ValueError(f"queue_policy must be 'fifo' or 'adaptive', got {queue_policy!r}")
            self.connection_kwargs = kwargs

        def disconnect(self) -> None:
            pass

    class OffersToo(Offers):  # the same, with TarantoolPool's signature
        def __init__(self, host: str, port: int, max_connections: int = 1, queue_policy: str = "adaptive") -> None:
            super().__init__(max_connections, queue_policy)

        def close(self) -> None:
            pass

    for kind, cls, expected in (("redis", Today, ([], None)), ("tarantool", Refuses, ([], None))):
        monkeypatch.setattr(oc, "_pool_class", lambda kind, cls=cls: cls)
        assert oc.queue_policies(kind) == expected
    monkeypatch.setattr(oc, "_pool_class", lambda kind: Today)
    every, default, found = oc.contenders_for("redis")
    assert default.name == "greenpool-fifo" and found["policies"] == [] and found["default_policy"] == "fifo"
    assert [c.name for c in every] == [
        "greenpool-fifo",
        "greenpool-deadline",
        "redis-blocking",
        "redis-blocking-gevent",
        "mux",
    ]
    monkeypatch.setattr(oc, "_pool_class", lambda kind: Offers)
    assert oc.queue_policies("redis") == (["adaptive", "fifo"], "adaptive")
    monkeypatch.setattr(oc, "_pool_class", lambda kind: OffersToo)
    every, default, found = oc.contenders_for("tarantool")
    assert default.name == "greenpool-adaptive" and default.policy == "adaptive"
    assert [c.name for c in every] == [
        "greenpool-adaptive",
        "greenpool-fifo",
        "greenpool-deadline",
        "lifo-queue",
        "mux",
    ]
    assert oc.valid_name("redis", "greenpool-lifo") and not oc.valid_name("redis", "lifo-queue")


def test_greenpool_deadline_contender_runs_only_where_the_core_offers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import greenpool
    from stress import overload_contenders as oc

    monkeypatch.delattr(greenpool, "deadline", raising=False)
    monkeypatch.setattr(greenpool, "__getattr__", lambda name: (_ for _ in ()).throw(AttributeError(name)))
    every, _, found = oc.contenders_for("redis")
    (deadline,) = [c for c in every if c.name == "greenpool-deadline"]
    assert found["deadline"] is False and deadline.unavailable() == "this greenpool has no greenpool.deadline()"
    marker = object()
    monkeypatch.setattr(greenpool, "deadline", lambda seconds: marker, raising=False)
    assert deadline.unavailable() is None and deadline.deadline()(0.1) is marker
    assert deadline.describe()["deadline"] == "greenpool.deadline"


def test_overload_defaults_and_quick() -> None:
    args = parse_args(["overload"])
    assert (args.command, args.kind, args.op, args.commands, args.deadline) == ("overload", "redis", "get", 3, 0.1)
    assert (args.max_connections, args.timeout, args.multiples) == (10, 1.0, [0.5, 0.9, 1.0, 1.5, 2.0, 4.0])
    assert (args.rounds, args.duration, args.soak_ops) == (3, 1.2, 300)
    assert args.open and args.soak and args.seed and not args.check and args.pools is None
    quick = parse_args(["overload", "--quick", "--server", "tarantool", "--rounds", "2"])
    assert (quick.kind, quick.op, quick.value_size) == ("tarantool", "select", 1500)
    assert (quick.rounds, quick.duration, quick.soak_ops, quick.seed) == (2, 1.0, 100, False)
    alone = parse_args(["overload", "--soak-only"])
    assert alone.soak and not alone.open and not alone.seed
    assert not parse_args(["overload", "--no-soak"]).soak
    tune = parse_args(["tune", "--deadline", "0.05"])
    assert (tune.deadline, tune.op, tune.commands, tune.duration) == (0.05, "get", 3, 1.2)
    assert (parse_args(["tune"]).op, parse_args(["tune"]).duration) == ("ping", 3.0)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["overload", "--multiples", "0.5,0"], ["--multiples", "0"]),
        (["overload", "--multiples", "1,,2"], ["--multiples"]),
        (["overload", "--pools", "greenpool-fifo,nope"], ["--pools", "nope"]),
        (["overload", "--server", "tarantool", "--pools", "redis-blocking"], ["--pools", "redis-blocking"]),
        (["overload", "--server", "tarantool", "--url", "redis://127.0.0.1:1/0"], ["--url"]),
        (["overload", "--op", "select"], ["--op"]),
        (["overload", "--deadline", "0"], ["--deadline"]),
        (["overload", "--knee", "-3"], ["--knee"]),
        (["overload", "--no-soak", "--soak-only"], ["--soak-only"]),
        (["overload", "--json", "/nonexistent-greenpool-dir/out.json"], ["--json", "does not exist"]),
        (["overload", "--plot", "out.jpg"], ["--plot"]),
        (["tune", "--deadline", "-1"], ["--deadline"]),
    ],
)
def test_bad_overload_option_exits_2_naming_it(argv: List[str], names: List[str]) -> None:
    proc = run_stress(*argv, timeout=30.0)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    for name in names:
        assert name in proc.stderr


def run_overload(tmp_path: Path, *args: str) -> Tuple[subprocess.CompletedProcess[str], Dict[str, Any]]:
    out = tmp_path / "overload.json"
    proc = run_stress(*args, "--json", str(out), "--check", timeout=150.0)
    assert proc.returncode in (0, 3), f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())
    # --check: exit status 3 exactly when a target is missed, and the report says which.
    missed = [t["name"] for t in doc["targets"] if t["status"] == "MISS"]
    assert doc["check"] == {"enabled": True, "missed": missed}
    assert proc.returncode == (3 if missed else 0)
    assert f"--check: {len(missed)} target(s) missed" in proc.stdout
    return proc, doc


def check_open_runs(doc: Dict[str, Any], names: List[str], multiples: List[float], rounds: int) -> None:
    runs = doc["runs"]
    assert sorted((r["contender"], r["multiple"], r["round"]) for r in runs) == sorted(
        (n, m, i) for n in names for m in multiples for i in range(1, rounds + 1)
    )
    for run in runs:
        where = f"{run['contender']} at {run['multiple']}x, round {run['round']}"
        assert OPEN_RUN_FIGURES <= set(run), f"{where}: missing {OPEN_RUN_FIGURES - set(run)}"
        assert run["requests"] > 0 and run["completed"] + sum(run["errors"].values()) == run["requests"], where
        assert run["good"] + run["late"] <= run["completed"], where
        assert run["mismatches"] == 0, f"{where}: wrong replies"
        assert run["rate_per_s"] == pytest.approx(run["multiple"] * doc["knee"]["req_per_s"], rel=1e-3), where
    # Alternating order: the contenders of one load run in the reverse order of the previous load's.
    order = sorted(runs, key=lambda r: r["order"])
    first = [r["contender"] for r in order if r["round"] == 1 and r["multiple"] == multiples[0]]
    second = [r["contender"] for r in order if r["round"] == 1 and r["multiple"] == multiples[1]]
    assert sorted(first) == sorted(names) and second == list(reversed(first))
    assert sorted((r["multiple"], r["contender"]) for r in doc["rows"]) == sorted(
        (m, n) for n in names for m in multiples
    )
    assert all(r["rounds"] == rounds for r in doc["rows"])


def test_overload_redis_run_has_every_contender_at_every_load(redis_server: Any, tmp_path: Path) -> None:
    names = ["greenpool-fifo", "redis-blocking", "mux"]
    args = ["overload", "--url", redis_server.url, "--pools", ",".join(names), "--max-connections", "3"]
    args += ["--multiples", "0.5,2", "--knee", "300", "--rounds", "2", "--duration", "0.5", "--quick"]
    proc, doc = run_overload(tmp_path, *args)
    assert doc["scenario"]["command"] == "overload" and doc["scenario"]["multiples"] == [0.5, 2.0]
    assert [c["name"] for c in doc["contenders"]] == names and doc["knee"]["given"] is True
    check_open_runs(doc, names, [0.5, 2.0], 2)
    capacity = doc["capacity"]
    assert capacity["contender"] == doc["default_contender"] and capacity["rounds"] == 2
    assert [level["greenlets"] for level in capacity["levels"]] == [3, 6, 12]
    assert capacity["median_req_per_s"] == max(level["median_req_per_s"] for level in capacity["levels"])
    soak = doc["soak"]
    assert [r["contender"] for r in soak["rows"]] == names and len(soak["runs"]) == 2 * len(names)
    for run in soak["runs"]:
        assert run["attempts"] == 100 * 100 and run["mismatches"] == 0, run
        assert run["completed"] + sum(run["errors"].values()) == run["attempts"], run
    assert doc["seed"] is None and "Random-deadline soak" in proc.stdout and "Open loop" in proc.stdout
    check_environment(doc, "redis-server")


def test_overload_tarantool_run(tarantool_server: Any, tmp_path: Path) -> None:
    names = ["greenpool-fifo", "lifo-queue", "mux"]
    args = ["overload", "--server", "tarantool", "--url", tarantool_server.url, "--pools", ",".join(names)]
    args += ["--max-connections", "3", "--multiples", "0.5,1", "--knee", "200", "--rounds", "1", "--duration", "0.5"]
    proc, doc = run_overload(tmp_path, *args, "--no-soak", "--no-seed")
    check_open_runs(doc, names, [0.5, 1.0], 1)
    assert doc["soak"] is None and doc["scenario"]["op"] == "select"
    assert any(t["name"].endswith("/ lifo-queue") for t in doc["targets"])
    password = getattr(tarantool_server, "password", None)
    if password:
        assert password not in proc.stdout + proc.stderr + json.dumps(doc)


def test_tune_by_deadline_finds_a_knee_per_size(redis_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    args = ["tune", "--deadline", "0.1", "--url", redis_server.url, "--max-connections", "2", "--duration", "0.4"]
    proc = run_stress(*args, "--json", str(out), timeout=120.0)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(out.read_text())
    (size,) = doc["sizes"]
    assert size["max_connections"] == 2 and size["capacity_per_s"] > 0 and size["probes"]
    assert sum(not p["busy"] for p in size["probes"]) <= 14  # busy probes run again may come on top
    assert doc["tune"]["max_connections"] == (2 if size["knee_per_s"] else None)
    assert proc.returncode == (0 if size["knee_per_s"] else 1)
    assert "Recommended: max_connections=2" in proc.stdout or "No recommendation" in proc.stdout


def test_installed_name_runs_the_harness_and_its_subprocesses(redis_server: Any, tmp_path: Path) -> None:
    """``python -m greenpool.stress`` from outside the checkout (the installed name), extras included: the
    memory probe's subprocesses import the harness under the same name."""
    out = tmp_path / "installed.json"
    short = ["--greenlets", "20", "--max-connections", "1", "--duration", "0.3", "--rounds", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "greenpool.stress", "redis", "--url", redis_server.url, "--pools", "greenpool", *short],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert "error" not in doc["memory"], doc["memory"]
    assert [r["contender"] for r in doc["runs"]] == ["greenpool"]


def test_a_new_subcommand_registers_with_its_parser_checks_and_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from stress import cli, options

    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen: List[Any] = []

    def build(commands: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser("example", help="an example scenario")
        options.add_common(sub, "2,4")
        options.add_check(sub, "a target is missed")
        return sub

    def prepare(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if args.greenlets > 100:
            sub.error("argument --greenlets: at most 100 here")

    def run(args: argparse.Namespace) -> int:
        seen.append((args.max_connections, args.rounds, args.check))
        return 7

    cli.register("example", cli.Command(build, prepare, run))
    assert cli.main(["example", "--greenlets", "10", "--check"]) == 7
    assert seen == [([2, 4], 3, True)]
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["example", "--greenlets", "101"])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="'example' is already registered"):
        cli.register("example", cli.Command(build, prepare, run))
