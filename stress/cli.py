"""The command line of the contention harness: ``python -m stress [redis|tarantool|tune] [options]``.

``redis`` (the default) and ``tarantool`` run every chosen contender (see :mod:`stress.contenders`) for
each ``--max-connections`` value, side by side in alternating order, against one server, then print the
results table, greenpool's ratios and its targets (PASS/MISS, the multiplexers' included when they ran);
``redis`` also runs the single-greenlet and memory-per-waiter scenarios (:mod:`stress.extras`). A
contender that cannot run here (``asynctnt`` without asynctnt and uvloop installed) is skipped with one
line saying why and how to install what it needs. ``tune`` sweeps max_connections with greenpool
alone and recommends a value. Without ``--url`` a private server is started on a free loopback port
(:mod:`stress.servers`) and stopped afterwards.

Expects the process to be monkey-patched already (``stress/__main__.py`` does it). Exit status: 0 after a
report (targets missed included: they are figures, not failures); 2 for a bad option, with an argparse
message naming it; 1 when a run cannot start (server binary missing or unreachable, no contender
available) or ``tune`` finds no size that serves every checkout in time. Depends on the other ``stress``
modules.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from stress import report
from stress.contenders import (
    REDIS_CONTENDERS,
    REDIS_OPS,
    TARANTOOL_CONTENDERS,
    TARANTOOL_OPS,
    Contender,
    ContenderUnavailable,
    MuxTarantool,
    RedisTarget,
    TarantoolTarget,
    alternate,
    redact_url,
)
from stress.harness import Progress

__all__ = ["build_parser", "main"]

COMMANDS = ("redis", "tarantool", "tune")
DEFAULT_GREENLETS = 5000
DEFAULT_MAX = "1,10,100"
DEFAULT_TUNE_MAX = "1,2,5,10,20,50,100"
DEFAULT_TIMEOUT = 1.0
DEFAULT_DURATION = 3.0
#: --value-size defaults: small Redis values; 1.5 KB tuples for Tarantool, as in the original article.
DEFAULT_VALUE_SIZE = {"redis": 100, "tarantool": 1500}
#: Figures that do not apply to a contender without checkouts (``mux``): None in the JSON, "-" in the table.
NO_CHECKOUT_FIGURES = ("checkouts", "wait_p50_ms", "wait_p99_ms", "wait_max_ms")
#: The memory scenario parks at least this many greenlets, for a figure well above the RSS noise.
MIN_MEMORY_WAITERS = 10_000


# ---------------------------------------------------------------------- option types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _int_list(text: str) -> List[int]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of positive integers, got {text!r}")
    values = []
    for item in items:
        try:
            values.append(_positive_int(item))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of positive integers, got {text!r} ({item!r})"
            ) from None
    return sorted(set(values))


def _pool_list(known: Dict[str, Contender]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or any(not item for item in items):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of pools, got {text!r}")
        for item in items:
            if item not in known:
                raise argparse.ArgumentTypeError(f"unknown pool {item!r} (choose from {', '.join(known)})")
        return list(dict.fromkeys(items))

    return parse


def _url(schemes: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme not in schemes:
            shown = redact_url(text) if "://" in text else text
            raise argparse.ArgumentTypeError(f"must be a {' or '.join(s + '://' for s in schemes)} URL, got {shown!r}")
        return text

    return parse


EXAMPLES = """examples:
  python -m stress                                  redis PING, 5000 greenlets, max_connections 1,10,100
  python -m stress --op get --greenlets 2000 --json out.json
  python -m stress tarantool --op select --max-connections 5,10,20
  python -m stress tune --url redis://10.0.0.5:6379/0 --greenlets 3000
"""

REDIS_SCHEMES = ("redis", "rediss", "unix")
TARANTOOL_SCHEMES = ("tarantool",)


# ---------------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser, default_max: str) -> None:
    parser.add_argument(
        "--greenlets",
        type=_positive_int,
        default=DEFAULT_GREENLETS,
        help=f"greenlets running the operation in a loop (default {DEFAULT_GREENLETS})",
    )
    parser.add_argument(
        "--max-connections",
        type=_int_list,
        default=_int_list(default_max),
        metavar="N[,N...]",
        help=f"pool sizes to run, comma-separated (default {default_max})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"checkout timeout in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        default=DEFAULT_DURATION,
        help=f"measured seconds per run (default {DEFAULT_DURATION:g})",
    )
    parser.add_argument(
        "--value-size",
        type=_positive_int,
        default=None,
        metavar="BYTES",
        help="value size for get/set (default 100) and tuple payload for replace/select (default 1500)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure, the versions and the core count here")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw ok/s and p99 wait against max_connections (needs matplotlib)"
    )
    parser.add_argument(
        "--progress", action="store_true", help="draw the live progress line on stderr even when it is not a tty"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m stress``."""
    return _build()[0]


def _build() -> Tuple[argparse.ArgumentParser, Dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="python -m stress",
        description=(
            "Contention harness: many greenlets share few connections through greenpool and through "
            "redis-py's pools, side by side. Without a command, runs 'redis' (options may follow)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{redis,tarantool,tune}")

    redis_cmd = commands.add_parser(
        "redis", help="compare the pools on Redis (the default)", description="Compare the pools on Redis."
    )
    redis_cmd.add_argument(
        "--url",
        type=_url(REDIS_SCHEMES),
        help="Redis server to use (default: start a private redis-server on a free loopback port)",
    )
    redis_cmd.add_argument("--op", choices=REDIS_OPS, default="ping", help="operation (default ping)")
    redis_cmd.add_argument(
        "--pools",
        type=_pool_list(REDIS_CONTENDERS),
        default=[name for name, contender in REDIS_CONTENDERS.items() if contender.default],
        metavar="NAME[,NAME...]",
        help="contenders (default: all): " + "; ".join(f"{c.name}: {c.help}" for c in REDIS_CONTENDERS.values()),
    )
    redis_cmd.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="skip the single-greenlet and memory-per-waiter scenarios",
    )
    _add_common(redis_cmd, DEFAULT_MAX)

    tnt_cmd = commands.add_parser(
        "tarantool",
        help="compare greenpool's pool and mux with dedicated connections on Tarantool",
        description="Tarantool: TarantoolPool, TarantoolMux and dedicated connections.",
    )
    tnt_cmd.add_argument(
        "--url",
        type=_url(TARANTOOL_SCHEMES),
        help="tarantool://user:password@host:port (default: start a private tarantool on a free loopback port)",
    )
    tnt_cmd.add_argument("--op", choices=TARANTOOL_OPS, default="replace", help="operation (default replace)")
    tnt_cmd.add_argument(
        "--pools",
        type=_pool_list(TARANTOOL_CONTENDERS),
        default=[name for name, contender in TARANTOOL_CONTENDERS.items() if contender.default],
        metavar="NAME[,NAME...]",
        help="contenders (default: all, asynctnt only when installed): "
        + "; ".join(f"{c.name}: {c.help}" for c in TARANTOOL_CONTENDERS.values()),
    )
    tnt_cmd.add_argument(
        "--mux-connections",
        type=_positive_int,
        default=1,
        metavar="N",
        help="sockets of the mux contender's TarantoolMux, whatever --max-connections says (default 1)",
    )
    tnt_cmd.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="accepted as for redis; tarantool runs no extra scenarios",
    )
    _add_common(tnt_cmd, DEFAULT_MAX)

    tune_cmd = commands.add_parser(
        "tune",
        help="sweep max_connections with greenpool and recommend one",
        description=(
            "Sweep max_connections with greenpool for your greenlet count and server; recommend the smallest "
            "value within 5 %% of the best throughput with 100 %% success and p99 wait under the timeout."
        ),
    )
    tune_cmd.add_argument("--server", choices=("redis", "tarantool"), default="redis", help="(default redis)")
    tune_cmd.add_argument(
        "--url",
        type=_url(REDIS_SCHEMES + TARANTOOL_SCHEMES),
        help="server to use (default: start a private one on a free loopback port)",
    )
    tune_cmd.add_argument(
        "--op", choices=REDIS_OPS + TARANTOOL_OPS, default=None, help="operation (default ping / replace)"
    )
    _add_common(tune_cmd, DEFAULT_TUNE_MAX)
    return parser, {"redis": redis_cmd, "tarantool": tnt_cmd, "tune": tune_cmd}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); exits with status 2 on a bad option."""
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "redis")
    parser, subparsers = _build()
    args = parser.parse_args(argv)
    sub = subparsers[args.command]
    if args.command == "tune":
        kind = args.server
        if args.url is not None:
            scheme = args.url.split("://", 1)[0]
            if (scheme == "tarantool") != (kind == "tarantool"):
                sub.error(f"argument --url: a {scheme}:// URL does not fit --server {kind}")
        ops = REDIS_OPS if kind == "redis" else TARANTOOL_OPS
        if args.op is None:
            args.op = ops[0]
        elif args.op not in ops:
            sub.error(f"argument --op: {args.op!r} is not a {kind} operation (choose from {', '.join(ops)})")
        args.pools = ["greenpool"]
        args.extras = False
    else:
        kind = args.command
        if kind == "tarantool":
            args.extras = False
    args.kind = kind
    if args.value_size is None:
        args.value_size = DEFAULT_VALUE_SIZE[kind]
    if args.plot:
        missing = report.matplotlib_missing()
        if missing:
            sub.error(f"argument --plot: {missing}")
    return args


# ---------------------------------------------------------------------- running


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[Dict[str, str]]:
    """Yield ``{"url": ..., "where": ...}`` for the user's server, or for a private one started here."""
    if args.url:
        yield {"url": args.url, "where": redact_url(args.url)}
        return
    from stress.servers import RedisServer, TarantoolServer

    server: Any = RedisServer() if args.kind == "redis" else TarantoolServer()
    with server:
        yield {"url": server.url, "where": f"{server.host}:{server.port} (private, stopped afterwards)"}


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions(server: str) -> Dict[str, Any]:
    import gevent

    import greenpool

    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "greenlet": _version("greenlet"),
        "greenpool": greenpool.__version__,
        "redis-py": _version("redis"),
        "hiredis": _version("hiredis"),
        "tarantool-python": _version("tarantool"),
        "server": server,
    }


def _machine() -> Dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _run_sweep(
    args: argparse.Namespace, target: Any, contenders: List[Contender], progress: Progress, skipped: Dict[str, str]
) -> List[Dict[str, Any]]:
    """Run every contender at every max_connections, alternating the order from one size to the next.

    A contender that raises :class:`ContenderUnavailable` is not run again; why is said on stderr and
    recorded in ``skipped``.
    """
    runs: List[Dict[str, Any]] = []
    by_name = {c.name: c for c in contenders}
    total = len(args.max_connections) * len(contenders)
    for round_index, size in enumerate(args.max_connections):
        for name in alternate(list(by_name), round_index):
            if name in skipped:
                continue
            label = f"[{len(runs) + 1}/{total}] {name:<21} max={size:<4}"
            try:
                figures = by_name[name].measure(
                    target, size, args.greenlets, args.timeout, args.duration, progress=progress, label=label
                )
            except ContenderUnavailable as exc:
                reason = str(exc)
                if any(run["contender"] == name for run in runs):
                    reason += f" (at max_connections {size}; not run at the later sizes)"
                skipped[name] = reason
                sys.stderr.write(f"skipping {name}: {reason}\n")
                continue
            run = {"contender": name, "max_connections": size, "order": len(runs) + 1}
            run.update(figures)
            if not by_name[name].has_checkout:
                run.update(dict.fromkeys(NO_CHECKOUT_FIGURES))
            runs.append(run)
            if figures["first_error"]:
                sys.stderr.write(f"{name} max={size}: {figures['errors']} errors, first: {figures['first_error']}\n")
    return runs


def _format_single(single: Dict[str, Any], op: str) -> str:
    lines = [
        f"One greenlet, no contention ({op}, {single['duration_s']:g} s each, alternating order):",
        f"  dedicated connection   {single['dedicated_ok_per_s']:>10,.0f} ok/s",
    ]
    for name, fig in single["pools"].items():
        ratio = fig["vs_dedicated"]
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"  {name:<22} {fig['ok_per_s']:>10,.0f} ok/s  {shown} dedicated")
    return "\n".join(lines)


def _format_memory(memory: Dict[str, Any]) -> str:
    if "error" in memory:
        return f"Memory per waiting greenlet: not measured ({memory['error']})"
    return (
        f"Memory per waiting greenlet ({memory['waiters']:,} greenlets parked in a greenpool checkout vs on a "
        f"plain Event):\n  greenlet on an Event {memory['event_bytes_per_greenlet']:,.0f} B, in the pool "
        f"{memory['pool_bytes_per_greenlet']:,.0f} B: the pool adds {memory['bytes_per_waiter']:,.0f} B per waiter"
    )


def _available(args: argparse.Namespace) -> Tuple[List[Contender], Dict[str, str]]:
    """The chosen contenders that can run here, and why the others cannot (also said on stderr)."""
    known = REDIS_CONTENDERS if args.kind == "redis" else TARANTOOL_CONTENDERS
    if args.kind == "tarantool":
        known = dict(known, mux=MuxTarantool(getattr(args, "mux_connections", 1)))
    contenders: List[Contender] = []
    skipped: Dict[str, str] = {}
    for name in args.pools:
        reason = known[name].unavailable()
        if reason:
            skipped[name] = reason
            sys.stderr.write(f"skipping {name}: {reason}\n")
        else:
            contenders.append(known[name])
    return contenders, skipped


def _scenario(args: argparse.Namespace, contenders: List[Contender], where: str) -> Dict[str, Any]:
    scenario: Dict[str, Any] = {
        "command": args.command,
        "server": args.kind,
        "op": args.op,
        "value_size": None if args.op == "ping" else args.value_size,
        "greenlets": args.greenlets,
        "max_connections": args.max_connections,
        "timeout_s": args.timeout,
        "duration_s": args.duration,
        "pools": [c.name for c in contenders],
        "where": where,
    }
    if any(c.name == "mux" for c in contenders) and hasattr(args, "mux_connections"):
        scenario["mux_connections"] = args.mux_connections  # the tarantool mux's sockets
    return scenario


def _header(args: argparse.Namespace, target: Any, where: str, versions: Dict[str, Any]) -> str:
    what = "tune" if args.command == "tune" else "stress"
    return (
        f"greenpool {what}: {target.describe()}, {args.greenlets:,} greenlets, max_connections "
        f"{','.join(map(str, args.max_connections))}, checkout timeout {args.timeout:g} s, "
        f"{args.duration:g} s per run\n"
        f"{versions['server']} at {where}; Python {versions['python']}, gevent {versions['gevent']}, "
        f"redis-py {versions['redis-py']} (hiredis {versions['hiredis']}), tarantool-python "
        f"{versions['tarantool-python']}; {os.cpu_count()} cores\n"
    )


def _compare(args: argparse.Namespace) -> int:
    """Run the sweep (and the extra scenarios), print the report, write the JSON and the plot."""
    contenders, skipped = _available(args)
    if not contenders:
        sys.stderr.write("no contender can run\n")
        return 1
    progress = Progress(sys.stderr, sys.stderr.isatty() or args.progress)
    started = _now()
    single: Optional[Dict[str, Any]] = None
    memory: Optional[Dict[str, Any]] = None
    with _server(args) as server:
        target: Any
        try:
            if args.kind == "redis":
                target = RedisTarget(server["url"], args.op, args.value_size)
            else:
                target = TarantoolTarget(server["url"], args.op, args.value_size)
            versions = _versions(target.prepare_server())
        except Exception as exc:
            sys.stderr.write(f"cannot use the server at {server['where']}: {type(exc).__name__}: {exc}\n")
            return 1
        scenario = _scenario(args, contenders, server["where"])
        report.print_lines(sys.stdout, _header(args, target, server["where"], versions))
        runs = _run_sweep(args, target, contenders, progress, skipped)
        contenders = [c for c in contenders if any(r["contender"] == c.name for r in runs)]
        if not contenders:
            sys.stderr.write("no contender could run\n")
            return 1
        ratios = report.add_ratios(runs)
        if args.extras:
            from stress.extras import memory_per_waiter, single_greenlet

            single = single_greenlet(target, contenders, args.duration, args.timeout)
            if any(c.name == "greenpool" for c in contenders):
                memory = memory_per_waiter(server["url"], max(args.greenlets, MIN_MEMORY_WAITERS))
    blocks = [report.format_table(runs)]
    if any(c.name == "mux" for c in contenders) and args.kind == "tarantool":
        sockets = f"{args.mux_connections} socket{'s' if args.mux_connections > 1 else ''}"
        blocks[0] += (
            f"\nmux: one TarantoolMux ({sockets}) at every size; no checkout, so no wait figures (-); "
            "a request timeout counts as failed."
        )
    if any(c.name == "asynctnt" for c in contenders):
        blocks[0] += (
            f"\nasynctnt: one asynctnt connection on uvloop and {args.greenlets:,} coroutines, in a subprocess (its "
            "RSS figures are\nthe subprocess's), at every size, without a request timeout (asynctnt's own halves "
            "its throughput);\nno checkout, so no wait figures (-)."
        )
    if single is not None:
        blocks.append(_format_single(single, target.describe()))
    if memory is not None:
        blocks.append(_format_memory(memory))
    goals: List[Dict[str, Any]] = []
    recommendation: Optional[Dict[str, Any]] = None
    if args.command == "tune":
        recommendation = report.recommend(runs, args.timeout)
        pick = recommendation["max_connections"]
        head = f"Recommended: max_connections={pick}" if pick is not None else "No recommendation"
        blocks.append(head + "\n" + "\n".join("  " + line for line in recommendation["why"]))
    else:
        goals = report.targets(runs, args.greenlets, single, memory, kind=args.kind)
        blocks.append("Targets (greenpool):\n" + report.format_targets(goals))
    blocks.extend(f"Skipped {name}: {reason}" for name, reason in skipped.items())
    report.print_lines(sys.stdout, *blocks)
    document: Dict[str, Any] = {
        "scenario": scenario,
        "versions": versions,
        "machine": _machine(),
        "started_at": started,
        "finished_at": _now(),
        "contenders": [c.name for c in contenders],
        "skipped": skipped,
        "runs": runs,
        "ratios": ratios,
        "single_greenlet": single,
        "memory": memory,
        "targets": goals,
    }
    if recommendation is not None:
        document["tune"] = recommendation
    if args.json:
        report.write_json(args.json, document)
    if args.plot:
        title = f"{target.describe()}, {args.greenlets:,} greenlets, timeout {args.timeout:g} s"
        report.write_plot(args.plot, runs, title)
    if recommendation is not None and recommendation["max_connections"] is None:
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the harness with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "tune":
        unavailable = (REDIS_CONTENDERS if args.kind == "redis" else TARANTOOL_CONTENDERS)["greenpool"].unavailable()
        if unavailable:
            sys.stderr.write(f"tune needs greenpool: {unavailable}\n")
            return 1
    from stress.servers import ServerMissing

    try:
        return _compare(args)
    except ServerMissing as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
