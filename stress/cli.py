"""The command line of the contention harness: ``python -m stress [redis|tarantool|tune|overload] [options]``.

``redis`` (the default) and ``tarantool`` run every chosen contender (see :mod:`stress.contenders`) for
each ``--max-connections`` value, side by side in alternating order, against one server, then print the
results table, greenpool's ratios and its targets (PASS/MISS, the multiplexers' included when they ran);
``redis`` also runs the single-greenlet and memory-per-waiter scenarios (:mod:`stress.extras`). A
contender that cannot run here (``asynctnt`` without asynctnt and uvloop installed) is skipped with one
line saying why and how to install what it needs. ``tune`` sweeps max_connections with greenpool
alone and recommends a value; ``tune --deadline D`` recommends one by goodput within D instead (the knee at
each size, :func:`stress.overload.tune`). ``overload`` runs the open-loop overload scenario
(:mod:`stress.overload`). Without ``--url`` a private server is started on a free loopback port
(:mod:`stress.servers`) and stopped afterwards. ``--json`` and ``--plot`` are checked before anything runs
(the file's directory exists; the plot is a ``.png`` and matplotlib is installed).

Expects the process to be monkey-patched already (``stress/__main__.py`` does it). Exit status: 0 after a
report (targets missed included: they are figures, not failures); 2 for a bad option, with an argparse
message naming it; 1 when a run cannot start (server binary missing or unreachable, no contender
available) or ``tune`` finds no size that serves every checkout in time; ``overload --check``:
:data:`stress.rounds.EXIT_MISSED` (3) when a target is missed. Depends on the other ``stress`` modules.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from stress import overload, report, session
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
from stress.overload_contenders import STATIC_NAMES, valid_name

from . import failover

__all__ = ["build_parser", "main"]

OVERLOAD, QUICK, SOAK = overload.DEFAULTS, overload.QUICK, overload.SOAK

COMMANDS = ("redis", "tarantool", "tune", "overload", *failover.COMMANDS)
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


def _list_of(convert: Callable[[str], Any], what: str) -> Callable[[str], List[Any]]:
    """An argparse type: a comma-separated list of ``convert``'s values, sorted, without repeats."""

    def parse(text: str) -> List[Any]:
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or any(not item for item in items):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {what}, got {text!r}")
        values = []
        for item in items:
            try:
                values.append(convert(item))
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(
                    f"must be a comma-separated list of {what}, got {text!r} ({item!r})"
                ) from None
        return sorted(set(values))

    return parse


_int_list = _list_of(_positive_int, "positive integers")


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


_number_list = _list_of(_positive_number, "numbers > 0")


def _name_list(text: str) -> List[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of pools, got {text!r}")
    return list(dict.fromkeys(items))


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
  python -m stress tune --deadline 0.1                max_connections by goodput within a 100 ms deadline
  python -m stress overload --quick                  open loop at multiples of the knee, every contender
  python -m stress overload --server tarantool --check --json overload.json
"""

REDIS_SCHEMES = ("redis", "rediss", "unix")
TARANTOOL_SCHEMES = ("tarantool",)


# ---------------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser, default_max: str, duration_help: Optional[str] = None) -> None:
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
        help=duration_help or f"measured seconds per run (default {DEFAULT_DURATION:g})",
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
    commands = parser.add_subparsers(
        dest="command", metavar="{redis,tarantool,tune,overload,replicaset,sentinel,cluster}"
    )
    failover.add_commands(commands)

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
        "--op",
        choices=REDIS_OPS + TARANTOOL_OPS,
        default=None,
        help="operation (default ping / replace; with --deadline get / select)",
    )
    tune_cmd.add_argument(
        "--deadline",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="recommend by goodput within this deadline instead: at each size, find the knee (the highest "
        "arrival rate at which 99 %% of requests of --commands commands finish within it, open loop) and "
        "recommend the smallest size within 5 %% of the best knee (--greenlets is then unused)",
    )
    tune_cmd.add_argument(
        "--commands",
        type=_positive_int,
        default=OVERLOAD["commands"],
        metavar="K",
        help=f"with --deadline: commands per request (default {OVERLOAD['commands']})",
    )
    _add_common(
        tune_cmd,
        DEFAULT_TUNE_MAX,
        duration_help=f"measured seconds per run (default {DEFAULT_DURATION:g}; with --deadline, per knee probe: "
        f"{OVERLOAD['duration']:g})",
    )
    tune_cmd.set_defaults(duration=None)  # resolved in parse_args, by --deadline

    over = commands.add_parser(
        "overload",
        help="open loop: arrivals at multiples of the knee, requests of K commands under a deadline",
        description=(
            "Open-loop overload: requests of K commands (one checkout each) inside one deadline arrive at a "
            "fixed rate; the closed-loop capacity and the knee (the highest rate with 99 % of requests in "
            "time) of greenpool's default contender are measured first, then every contender runs at "
            "multiples of the knee, in rounds; then a random-deadline soak. Prints goodput, the share "
            "within the deadline, p50/p99 of the completed and the CPU share of the load generator."
        ),
    )
    over.add_argument("--server", choices=("redis", "tarantool"), default="redis", help="(default redis)")
    over.add_argument(
        "--url",
        type=_url(REDIS_SCHEMES + TARANTOOL_SCHEMES),
        help="server to use (default: start a private one on a free loopback port)",
    )
    over.add_argument(
        "--op", choices=REDIS_OPS + TARANTOOL_OPS, default=None, help="each command (default get / select)"
    )
    over.add_argument(
        "--commands",
        type=_positive_int,
        default=OVERLOAD["commands"],
        metavar="K",
        help=f"commands per request (default {OVERLOAD['commands']})",
    )
    over.add_argument(
        "--deadline",
        type=_positive_seconds,
        default=OVERLOAD["deadline"],
        metavar="SECONDS",
        help=f"each request's deadline, from its intended start (default {OVERLOAD['deadline']:g})",
    )
    over.add_argument(
        "--max-connections",
        type=_positive_int,
        default=OVERLOAD["max_connections"],
        metavar="N",
        help=f"pool size (default {OVERLOAD['max_connections']}; the soak uses {SOAK['max_connections']})",
    )
    over.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=OVERLOAD["timeout"],
        help=f"checkout timeout in seconds (default {OVERLOAD['timeout']:g})",
    )
    over.add_argument(
        "--multiples",
        type=_number_list,
        default=list(OVERLOAD["multiples"]),
        metavar="X[,X...]",
        help="offered loads, as multiples of the knee (default "
        + ",".join(f"{m:g}" for m in OVERLOAD["multiples"])
        + ")",
    )
    over.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        help=f"runs of every contender at every load; medians are reported (default {OVERLOAD['rounds']})",
    )
    over.add_argument(
        "--duration",
        type=_positive_seconds,
        default=None,
        help=f"seconds of arrivals per run and per knee probe (default {OVERLOAD['duration']:g})",
    )
    over.add_argument(
        "--knee",
        type=_positive_number,
        default=None,
        metavar="REQ/S",
        help="skip the knee search and use this rate (the capacity is still measured)",
    )
    over.add_argument(
        "--pools",
        type=_name_list,
        default=None,
        metavar="NAME[,NAME...]",
        help="contenders (default: every one this greenpool offers): greenpool-<policy> per queue policy, "
        "greenpool-deadline; redis: redis-blocking, redis-blocking-gevent, mux; tarantool: lifo-queue, mux",
    )
    over.add_argument(
        "--value-size",
        type=_positive_int,
        default=None,
        metavar="BYTES",
        help="value size for get/set (default 100) and tuple payload for select/replace (default 1500)",
    )
    soak_group = over.add_mutually_exclusive_group()
    soak_group.add_argument("--no-soak", dest="soak", action="store_false", help="skip the random-deadline soak")
    soak_group.add_argument("--soak-only", action="store_true", help="run the random-deadline soak alone")
    over.add_argument(
        "--no-seed",
        dest="seed",
        action="store_false",
        help="skip the seed closed loop per policy (it runs on Redis when the core offers more than strict FIFO)",
    )
    over.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['rounds']} round, {QUICK['duration']:g} s runs, a {QUICK['soak_ops']}-command soak, no seed "
        "(--rounds and --duration still win)",
    )
    over.add_argument(
        "--check", action="store_true", help="exit with status 3 when a target is missed (after the report)"
    )
    over.add_argument("--json", metavar="FILE", help="write every figure, the versions and the core count here")
    over.add_argument(
        "--plot", metavar="FILE.png", help="draw goodput, share in time and p99 against the load (needs matplotlib)"
    )
    over.add_argument(
        "--progress", action="store_true", help="draw the live progress line on stderr even when it is not a tty"
    )
    return parser, {"redis": redis_cmd, "tarantool": tnt_cmd, "tune": tune_cmd, "overload": over}


def _check_outputs(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before anything runs, a --json or --plot file that could not be written afterwards."""
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            sub.error(f"argument {option}: {path!r} is a directory, not a file")
        if not os.path.isdir(folder):
            sub.error(f"argument {option}: the directory {folder!r} does not exist")
    if args.plot:
        if not args.plot.lower().endswith(".png"):
            sub.error(f"argument --plot: the file name must end in .png, got {args.plot!r}")
        missing = report.matplotlib_missing()
        if missing:
            sub.error(f"argument --plot: {missing}")


def _server_fits(sub: argparse.ArgumentParser, args: argparse.Namespace, kind: str) -> None:
    if args.url is not None:
        scheme = args.url.split("://", 1)[0]
        if (scheme == "tarantool") != (kind == "tarantool"):
            sub.error(f"argument --url: a {scheme}:// URL does not fit --server {kind}")


def _overload_args(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    kind = args.server
    _server_fits(sub, args, kind)
    ops = REDIS_OPS if kind == "redis" else TARANTOOL_OPS
    if args.op is None:
        args.op = OVERLOAD["op"][kind]
    elif args.op not in ops:
        sub.error(f"argument --op: {args.op!r} is not a {kind} operation (choose from {', '.join(ops)})")
    for name in args.pools or []:
        if not valid_name(kind, name):
            known = ", ".join(STATIC_NAMES[kind])
            sub.error(f"argument --pools: unknown pool {name!r} for {kind} (choose from {known}, greenpool-<policy>)")
    if args.rounds is None:
        args.rounds = QUICK["rounds"] if args.quick else OVERLOAD["rounds"]
    if args.duration is None:
        args.duration = QUICK["duration"] if args.quick else OVERLOAD["duration"]
    args.soak_ops = QUICK["soak_ops"] if args.quick else SOAK["ops"]
    args.open = not args.soak_only
    args.soak = args.soak or args.soak_only
    args.seed = args.seed and not args.quick and not args.soak_only
    args.greenlets = None
    args.extras = False


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); exits with status 2 on a bad option."""
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "redis")
    parser, subparsers = _build()
    args = parser.parse_args(argv)
    if args.command in failover.COMMANDS:
        return args
    sub = subparsers[args.command]
    if args.command == "overload":
        _overload_args(sub, args)
        kind = args.server
    elif args.command == "tune":
        kind = args.server
        _server_fits(sub, args, kind)
        ops = REDIS_OPS if kind == "redis" else TARANTOOL_OPS
        if args.duration is None:
            args.duration = OVERLOAD["duration"] if args.deadline else DEFAULT_DURATION
        if args.op is None:
            args.op = OVERLOAD["op"][kind] if args.deadline else ops[0]
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
    _check_outputs(sub, args)
    return args


# ---------------------------------------------------------------------- running


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
    started = session.now()
    single: Optional[Dict[str, Any]] = None
    memory: Optional[Dict[str, Any]] = None
    with session.server(args.kind, args.url) as server:
        target: Any
        try:
            if args.kind == "redis":
                target = RedisTarget(server["url"], args.op, args.value_size)
            else:
                target = TarantoolTarget(server["url"], args.op, args.value_size)
            versions = session.versions(target.prepare_server())
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
        "machine": session.machine(),
        "started_at": started,
        "finished_at": session.now(),
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
        if args.command in failover.COMMANDS:
            return failover.run(args)
        if args.command == "overload":
            return overload.run(args)
        if args.command == "tune" and args.deadline:
            return overload.tune(args)
        return _compare(args)
    except ServerMissing as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
