"""The command line of the contention harness: ``python -m stress [redis|tarantool|tune|overload] [options]``
(installed: ``greenpool-stress`` or ``python -m greenpool.stress``).

``redis`` (the default) and ``tarantool`` run every chosen contender (see :mod:`.contenders`) at each
``--max-connections`` value against one server, ``--rounds`` times, the contenders of one size back to back in
alternating order; each contender starts warm (its connections open before the measured window). They print
one row per contender and size with the medians over the rounds and the ok/s spread, greenpool's ratios (each
the median of the per-round ratios) and its targets (PASS/MISS, the multiplexers' included when they ran);
``redis`` also runs the single-greenlet and memory-per-waiter scenarios (:mod:`.extras`). A contender that
cannot run here (``asynctnt`` without asynctnt and uvloop installed) is skipped with one line on stderr saying
why and how to install what it needs. ``tune`` sweeps max_connections with greenpool alone in rounds and
recommends a value with its confidence (how many rounds alone pick it, how much the rounds spread); ``tune
--deadline D`` recommends one by goodput within D instead (the knee at each size, :func:`.overload.tune`).
``overload`` runs the open-loop overload scenario (:mod:`.overload`). Without ``--url`` a private server is
started on a free loopback port (:mod:`.servers`) and stopped afterwards. ``--json`` and ``--plot`` are
checked before anything runs (the file's directory exists; the plot is a ``.png`` and matplotlib is
installed). Progress goes to stderr: a live line on a terminal, plain lines on a pipe (``--no-progress``: none).

Each subcommand is a :class:`Command` (its parser, its checks after parsing, its run) in :data:`COMMANDS`; a
new scenario adds one with :func:`register` at the end of this module, building its parser from :mod:`.options`.

Expects the process to be monkey-patched already (``__main__`` does it). Exit status: 0 after a report
(targets missed included: they are figures, not failures); 2 for a bad option, with an argparse message naming
it; 1 when a run cannot start (server binary missing or unreachable, no contender available) or ``tune`` finds
no size that serves every checkout in time; with ``--check`` (every command), :data:`.rounds.EXIT_MISSED` (3)
when a target is missed (for ``tune``: when the rounds do not agree on its pick). Depends on the other modules
of the harness.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import failover, overload, report, session
from .contenders import (
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
)
from .figures import PACKAGE
from .harness import Progress
from .options import (
    DEFAULT_DURATION,
    DEFAULT_MAX,
    DEFAULT_TUNE_MAX,
    DEFAULT_VALUE_SIZE,
    REDIS_SCHEMES,
    TARANTOOL_SCHEMES,
    add_check,
    add_common,
    add_progress,
    check_outputs,
    infer_server,
    name_list,
    number_list,
    pool_list,
    positive_int,
    positive_number,
    positive_seconds,
    server_fits,
    url,
)
from .overload_contenders import STATIC_NAMES, valid_name
from .rounds import exit_status

__all__ = ["COMMANDS", "Command", "build_parser", "main", "parse_args", "register"]

OVERLOAD, QUICK, SOAK = overload.DEFAULTS, overload.QUICK, overload.SOAK


class Command(NamedTuple):
    """One subcommand of the harness.

    ``build(commands)`` adds its parser to argparse's subparsers action and returns it (use :mod:`.options`);
    ``prepare(sub, args)`` resolves its defaults after parsing and refuses what argparse cannot check, with
    ``sub.error`` (exit status 2); ``run(args)`` runs it and returns the exit status.
    """

    build: Callable[[Any], argparse.ArgumentParser]
    prepare: Callable[[argparse.ArgumentParser, argparse.Namespace], None]
    run: Callable[[argparse.Namespace], int]


#: The subcommands, in the order ``--help`` lists them; the first is the default. Add one with :func:`register`.
COMMANDS: Dict[str, Command] = {}


def register(name: str, command: Command) -> None:
    """Add the subcommand ``name`` (a new scenario module calls this from the registry at the end of this
    module)."""
    if name in COMMANDS:
        raise ValueError(f"the subcommand {name!r} is already registered")
    COMMANDS[name] = command


#: Figures that do not apply to a contender without checkouts (``mux``): None in the JSON, "-" in the table.
NO_CHECKOUT_FIGURES = ("checkouts", "wait_p50_ms", "wait_p99_ms", "wait_max_ms")
#: The memory scenario parks at least this many greenlets, for a figure well above the RSS noise.
MIN_MEMORY_WAITERS = 10_000


EXAMPLES = """examples:
  {prog}                                  redis PING, 5000 greenlets, max_connections 1,10,100
  {prog} --op get --greenlets 2000 --json out.json
  {prog} tarantool --op select --max-connections 5,10,20 --rounds 5
  {prog} tune --url redis://10.0.0.5:6379/0 --greenlets 3000 --plot tune.png
  {prog} tune --url tarantool://user:secret@10.0.0.6:3301 --check   exit 3 unless the rounds agree
  {prog} tune --deadline 0.1                max_connections by goodput within a 100 ms deadline
  {prog} overload --quick                  open loop at multiples of the knee, every contender
  {prog} overload --server tarantool --check --json overload.json
"""


def program_name() -> str:
    """How the harness was started, for usage lines: ``python -m stress`` in a checkout, ``greenpool-stress``
    when installed (``python -m greenpool.stress`` runs the same)."""
    return "python -m stress" if PACKAGE == "stress" else "greenpool-stress"


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m stress``."""
    return _build()[0]


def _build() -> Tuple[argparse.ArgumentParser, Dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description=(
            "Contention harness: many greenlets share few connections through greenpool and through "
            f"redis-py's pools, side by side. Without a command, runs '{next(iter(COMMANDS))}' (options may follow)."
        ),
        epilog=EXAMPLES.format(prog=program_name()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    return parser, {name: command.build(commands) for name, command in COMMANDS.items()}


# ---------------------------------------------------------------------- the subcommands' parsers


def _build_redis(commands: Any) -> argparse.ArgumentParser:
    redis_cmd = commands.add_parser(
        "redis", help="compare the pools on Redis (the default)", description="Compare the pools on Redis."
    )
    redis_cmd.add_argument(
        "--url",
        type=url(REDIS_SCHEMES),
        help="Redis server to use (default: start a private redis-server on a free loopback port)",
    )
    redis_cmd.add_argument("--op", choices=REDIS_OPS, default="ping", help="operation (default ping)")
    redis_cmd.add_argument(
        "--pools",
        type=pool_list(REDIS_CONTENDERS),
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
    add_common(redis_cmd, DEFAULT_MAX)
    add_check(redis_cmd, "a target is missed")
    return redis_cmd


def _build_tarantool(commands: Any) -> argparse.ArgumentParser:
    tnt_cmd = commands.add_parser(
        "tarantool",
        help="compare greenpool's pool and mux with dedicated connections on Tarantool",
        description="Tarantool: TarantoolPool, TarantoolMux and dedicated connections.",
    )
    tnt_cmd.add_argument(
        "--url",
        type=url(TARANTOOL_SCHEMES),
        help="tarantool://user:password@host:port (default: start a private tarantool on a free loopback port)",
    )
    tnt_cmd.add_argument("--op", choices=TARANTOOL_OPS, default="replace", help="operation (default replace)")
    tnt_cmd.add_argument(
        "--pools",
        type=pool_list(TARANTOOL_CONTENDERS),
        default=[name for name, contender in TARANTOOL_CONTENDERS.items() if contender.default],
        metavar="NAME[,NAME...]",
        help="contenders (default: all, asynctnt only when installed): "
        + "; ".join(f"{c.name}: {c.help}" for c in TARANTOOL_CONTENDERS.values()),
    )
    tnt_cmd.add_argument(
        "--shared-connections",
        type=positive_int,
        default=1,
        metavar="N",
        help="sockets of the mux contender's TarantoolMux (shared_connections), whatever --max-connections says "
        "(default 1)",
    )
    tnt_cmd.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="accepted as for redis; tarantool runs no extra scenarios",
    )
    add_common(tnt_cmd, DEFAULT_MAX)
    add_check(tnt_cmd, "a target is missed")
    return tnt_cmd


def _build_tune(commands: Any) -> argparse.ArgumentParser:
    tune_cmd = commands.add_parser(
        "tune",
        help="sweep max_connections with greenpool and recommend one",
        description=(
            "Sweep max_connections with greenpool for your greenlet count and server, in rounds; recommend the "
            "smallest value within 5 % of the best median throughput with 100 % success and p99 wait under the "
            "timeout, and say how sure that is (how many rounds alone pick it, how much the rounds spread)."
        ),
    )
    tune_cmd.add_argument(
        "--server",
        choices=("redis", "tarantool"),
        default=None,
        help="(default: the --url's, tarantool for a tarantool:// URL, else redis)",
    )
    tune_cmd.add_argument(
        "--url",
        type=url(REDIS_SCHEMES + TARANTOOL_SCHEMES),
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
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="recommend by goodput within this deadline instead: at each size, find the knee (the highest "
        "arrival rate at which 99 %% of requests of --commands commands finish within it, open loop) and "
        "recommend the smallest size within 5 %% of the best knee (--greenlets is then unused)",
    )
    tune_cmd.add_argument(
        "--commands",
        type=positive_int,
        default=OVERLOAD["commands"],
        metavar="K",
        help=f"with --deadline: commands per request (default {OVERLOAD['commands']})",
    )
    add_common(
        tune_cmd,
        DEFAULT_TUNE_MAX,
        duration_help=f"measured seconds per run (default {DEFAULT_DURATION:g}; with --deadline, per knee probe: "
        f"{OVERLOAD['duration']:g})",
    )
    add_check(tune_cmd, "the rounds do not agree on the recommended size (confidence low)")
    tune_cmd.set_defaults(duration=None)  # resolved by _prepare_tune, by --deadline
    return tune_cmd


def _build_overload(commands: Any) -> argparse.ArgumentParser:
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
    over.add_argument(
        "--server",
        choices=("redis", "tarantool"),
        default=None,
        help="(default: the --url's, tarantool for a tarantool:// URL, else redis)",
    )
    over.add_argument(
        "--url",
        type=url(REDIS_SCHEMES + TARANTOOL_SCHEMES),
        help="server to use (default: start a private one on a free loopback port)",
    )
    over.add_argument(
        "--op", choices=REDIS_OPS + TARANTOOL_OPS, default=None, help="each command (default get / select)"
    )
    over.add_argument(
        "--commands",
        type=positive_int,
        default=OVERLOAD["commands"],
        metavar="K",
        help=f"commands per request (default {OVERLOAD['commands']})",
    )
    over.add_argument(
        "--deadline",
        type=positive_seconds,
        default=OVERLOAD["deadline"],
        metavar="SECONDS",
        help=f"each request's deadline, from its intended start (default {OVERLOAD['deadline']:g})",
    )
    over.add_argument(
        "--max-connections",
        type=positive_int,
        default=OVERLOAD["max_connections"],
        metavar="N",
        help=f"pool size (default {OVERLOAD['max_connections']}; the soak uses {SOAK['max_connections']})",
    )
    over.add_argument(
        "--timeout",
        type=positive_seconds,
        default=OVERLOAD["timeout"],
        help=f"checkout timeout in seconds (default {OVERLOAD['timeout']:g})",
    )
    over.add_argument(
        "--multiples",
        type=number_list,
        default=list(OVERLOAD["multiples"]),
        metavar="X[,X...]",
        help="offered loads, as multiples of the knee (default "
        + ",".join(f"{m:g}" for m in OVERLOAD["multiples"])
        + ")",
    )
    over.add_argument(
        "--rounds",
        type=positive_int,
        default=None,
        help=f"runs of every contender at every load; medians are reported (default {OVERLOAD['rounds']})",
    )
    over.add_argument(
        "--duration",
        type=positive_seconds,
        default=None,
        help=f"seconds of arrivals per run and per knee probe (default {OVERLOAD['duration']:g})",
    )
    over.add_argument(
        "--knee",
        type=positive_number,
        default=None,
        metavar="REQ/S",
        help="skip the knee search and use this rate (the capacity is still measured)",
    )
    over.add_argument(
        "--pools",
        type=name_list,
        default=None,
        metavar="NAME[,NAME...]",
        help="contenders (default: every one this greenpool offers): greenpool-<policy> per queue policy, "
        "greenpool-deadline; redis: redis-blocking, redis-blocking-gevent, mux; tarantool: lifo-queue, mux",
    )
    over.add_argument(
        "--value-size",
        type=positive_int,
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
    add_check(over, "a target is missed")
    over.add_argument("--json", metavar="FILE", help="write every figure, the versions and the core count here")
    over.add_argument(
        "--plot", metavar="FILE.png", help="draw goodput, share in time and p99 against the load (needs matplotlib)"
    )
    add_progress(over)
    return over


def _overload_args(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    kind = infer_server(args)
    server_fits(sub, args, kind)
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


def _prepare_overload(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _overload_args(sub, args)
    args.kind = args.server
    _value_size(args)


def _prepare_compare(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.kind = args.command
    if args.kind == "tarantool":
        args.extras = False
    _value_size(args)


def _prepare_tune(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    kind = infer_server(args)
    server_fits(sub, args, kind)
    ops = REDIS_OPS if kind == "redis" else TARANTOOL_OPS
    if args.duration is None:
        args.duration = OVERLOAD["duration"] if args.deadline else DEFAULT_DURATION
    if args.op is None:
        args.op = OVERLOAD["op"][kind] if args.deadline else ops[0]
    elif args.op not in ops:
        sub.error(f"argument --op: {args.op!r} is not a {kind} operation (choose from {', '.join(ops)})")
    args.pools = ["greenpool"]
    args.extras = False
    args.kind = kind
    _value_size(args)


def _value_size(args: argparse.Namespace) -> None:
    if args.value_size is None:
        args.value_size = DEFAULT_VALUE_SIZE[args.kind]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); exits with status 2 on a bad option."""
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, next(iter(COMMANDS)))
    parser, subparsers = _build()
    args = parser.parse_args(argv)
    sub = subparsers[args.command]
    COMMANDS[args.command].prepare(sub, args)
    check_outputs(sub, args)
    return args


# ---------------------------------------------------------------------- running


def _run_sweep(
    args: argparse.Namespace, target: Any, contenders: List[Contender], progress: Progress, skipped: Dict[str, str]
) -> List[Dict[str, Any]]:
    """Run every contender at every max_connections, ``--rounds`` times; return every run (with its ``round``).

    Within a round the sizes run in turn and the contenders of one size back to back, their order reversed from
    one size (and round) to the next, so that the contenders of one size share the box's load. A contender that
    raises :class:`ContenderUnavailable` is not run again; why is said on stderr and recorded in ``skipped``.
    """
    runs: List[Dict[str, Any]] = []
    by_name = {c.name: c for c in contenders}
    total = args.rounds * len(args.max_connections) * len(contenders)
    step = 0
    for round_index in range(args.rounds):
        for size_index, size in enumerate(args.max_connections):
            for name in alternate(list(by_name), round_index * len(args.max_connections) + size_index):
                step += 1
                if name in skipped:
                    continue
                label = f"[{step}/{total}] round {round_index + 1}/{args.rounds} {name:<21} max={size:<4}"
                try:
                    figures = by_name[name].measure(
                        target, size, args.greenlets, args.timeout, args.duration, progress=progress, label=label
                    )
                except ContenderUnavailable as exc:
                    reason = str(exc)
                    if any(run["contender"] == name for run in runs):
                        reason += f" (at max_connections {size}; not run again)"
                    skipped[name] = reason
                    sys.stderr.write(f"skipping {name}: {reason}\n")
                    continue
                run = {"contender": name, "max_connections": size, "round": round_index + 1, "order": len(runs) + 1}
                run.update(figures)
                if not by_name[name].has_checkout:
                    run.update(dict.fromkeys(NO_CHECKOUT_FIGURES))
                runs.append(run)
                if figures["first_error"]:
                    sys.stderr.write(
                        f"{name} max={size}: {figures['errors']} errors, first: {figures['first_error']}\n"
                    )
    return runs


def _format_single(single: Dict[str, Any], op: str) -> str:
    lines = [
        f"One greenlet, no contention ({op}, {single['rounds']} rounds of {single['duration_s']:g} s each, "
        "alternating order; medians):",
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
    extra = memory["bytes_per_waiter"]
    if extra > 0:
        verdict = f"the pool adds {extra:,.0f} B per waiter"
    else:  # the pool's waiter is lighter than a greenlet parked on an Event: nothing to add
        verdict = f"the pool adds nothing (its waiter takes {-extra:,.0f} B less than a greenlet on an Event)"
    return (
        f"Memory per waiting greenlet ({memory['waiters']:,} greenlets parked in a greenpool checkout vs on a "
        f"plain Event):\n  greenlet on an Event {memory['event_bytes_per_greenlet']:,.0f} B, in the pool "
        f"{memory['pool_bytes_per_greenlet']:,.0f} B: {verdict}"
    )


def _available(args: argparse.Namespace) -> Tuple[List[Contender], Dict[str, str]]:
    """The chosen contenders that can run here, and why the others cannot (also said on stderr)."""
    known = REDIS_CONTENDERS if args.kind == "redis" else TARANTOOL_CONTENDERS
    if args.kind == "tarantool":
        known = dict(known, mux=MuxTarantool(getattr(args, "shared_connections", 1)))
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
        "rounds": args.rounds,
        "pools": [c.name for c in contenders],
        "where": where,
    }
    if any(c.name == "mux" for c in contenders) and hasattr(args, "shared_connections"):
        scenario["shared_connections"] = args.shared_connections  # the tarantool mux's sockets
    return scenario


def _header(args: argparse.Namespace, target: Any, where: str, versions: Dict[str, Any]) -> str:
    what = "tune" if args.command == "tune" else "stress"
    return (
        f"greenpool {what}: {target.describe()}, {args.greenlets:,} greenlets, max_connections "
        f"{','.join(map(str, args.max_connections))}, checkout timeout {args.timeout:g} s, "
        f"{args.duration:g} s per run, {args.rounds} round{'s' if args.rounds > 1 else ''}, every contender warm\n"
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
    progress = Progress(sys.stderr, args.progress)
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
        raw = _run_sweep(args, target, contenders, progress, skipped)
        contenders = [c for c in contenders if any(r["contender"] == c.name for r in raw)]
        if not contenders:
            sys.stderr.write("no contender could run\n")
            return 1
        runs = report.median_rows(raw)
        ratios = report.ratio_table(runs)
        if args.extras:
            from .extras import memory_per_waiter, single_greenlet

            progress.line(f"single greenlet: every pool and a dedicated connection, {max(args.rounds, 2)} rounds")
            single = single_greenlet(target, contenders, args.duration, args.timeout, args.rounds, progress)
            if any(c.name == "greenpool" for c in contenders):
                waiters = max(args.greenlets, MIN_MEMORY_WAITERS)
                progress.line(f"memory per waiting greenlet: 4 probe processes parking {waiters:,} greenlets each")
                memory = memory_per_waiter(server["url"], waiters)
    blocks = [
        report.format_table(runs)
        + f"\n{args.rounds} round{'s' if args.rounds > 1 else ''}: ok/s, waits and the ratios are medians over the "
        "rounds, ± half their ok/s range;\nfailed, errors and success count every round together."
    ]
    if any(c.name == "mux" for c in contenders) and args.kind == "tarantool":
        sockets = f"{args.shared_connections} socket{'s' if args.shared_connections > 1 else ''}"
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
        per_round = [[r for r in raw if r["round"] == index + 1] for index in range(args.rounds)]
        recommendation = report.recommend(runs, args.timeout, per_round)
        pick = recommendation["max_connections"]
        head = (
            f"Recommended: max_connections={pick} (confidence {recommendation['confidence']})"
            if pick is not None
            else "No recommendation"
        )
        lines = recommendation["why"] + [f"WARNING: {w}" for w in recommendation["warnings"]]
        blocks.append(head + "\n" + "\n".join("  " + line for line in lines))
        goals = report.tune_targets(recommendation)
        blocks.append("Targets (tune):\n" + report.format_targets(goals))
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
        "rounds": raw,
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
        title = (
            f"{target.describe()}, {args.greenlets:,} greenlets, timeout {args.timeout:g} s, "
            f"medians of {args.rounds} round{'s' if args.rounds > 1 else ''}"
        )
        pick = None if recommendation is None else recommendation["max_connections"]
        report.write_plot(args.plot, runs, title, timeout=args.timeout, recommended=pick)
    if recommendation is not None and recommendation["max_connections"] is None:
        return 1
    return exit_status(args.check, goals)


def _run_tune(args: argparse.Namespace) -> int:
    unavailable = (REDIS_CONTENDERS if args.kind == "redis" else TARANTOOL_CONTENDERS)["greenpool"].unavailable()
    if unavailable:
        sys.stderr.write(f"tune needs greenpool: {unavailable}\n")
        return 1
    if args.deadline:
        return overload.tune(args)
    return _compare(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the harness with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .servers import ServerMissing

    try:
        return COMMANDS[args.command].run(args)
    except ServerMissing as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


# ---------------------------------------------------------------------- the registry (add new scenarios here)

register("redis", Command(_build_redis, _prepare_compare, _compare))
register("tarantool", Command(_build_tarantool, _prepare_compare, _compare))
register("tune", Command(_build_tune, _prepare_tune, _run_tune))
register("overload", Command(_build_overload, _prepare_overload, overload.run))


def _no_preparation(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The failover scenarios check their own arguments when they run."""


def _failover_builder(name: str) -> Callable[[Any], argparse.ArgumentParser]:
    return lambda commands: failover.add_command(commands, name)


for _name in failover.COMMANDS:
    register(_name, Command(_failover_builder(_name), _no_preparation, failover.run))
