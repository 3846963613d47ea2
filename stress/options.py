"""The options every command of the harness shares, and the argparse types they use.

A scenario module (a new subcommand, registered in :mod:`.cli`) builds its parser from these: :func:`add_common`
(``--greenlets``, ``--max-connections``, ``--timeout``, ``--duration``, ``--value-size``, ``--rounds``,
``--json``, ``--plot``, progress), :func:`add_check` (``--check``), :func:`add_progress`, the ``--url`` type
:func:`url`; and checks them with :func:`check_outputs` (``--json``/``--plot`` writable, before anything runs) and
:func:`server_fits`. Every type raises ``argparse.ArgumentTypeError`` naming the bad value, so argparse exits
with status 2 and a message naming the option. Depends on the standard library, :mod:`.report` (is matplotlib
there) and :mod:`.contenders` (URL redaction).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import report
from .contenders import Contender, redact_url
from .rounds import EXIT_MISSED

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_GREENLETS",
    "DEFAULT_MAX",
    "DEFAULT_ROUNDS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TUNE_MAX",
    "DEFAULT_VALUE_SIZE",
    "REDIS_SCHEMES",
    "TARANTOOL_SCHEMES",
    "add_check",
    "add_common",
    "add_progress",
    "check_outputs",
    "infer_server",
    "int_list",
    "list_of",
    "name_list",
    "number_list",
    "pool_list",
    "positive_int",
    "positive_number",
    "positive_seconds",
    "server_fits",
    "url",
]

DEFAULT_GREENLETS = 5000
DEFAULT_MAX = "1,10,100"
DEFAULT_TUNE_MAX = "1,2,5,10,20,50,100"
DEFAULT_TIMEOUT = 1.0
DEFAULT_DURATION = 3.0
DEFAULT_ROUNDS = 3
#: --value-size defaults: small Redis values; 1.5 KB tuples for Tarantool, as in the original article.
DEFAULT_VALUE_SIZE = {"redis": 100, "tarantool": 1500}
REDIS_SCHEMES = ("redis", "rediss", "unix")
TARANTOOL_SCHEMES = ("tarantool",)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def list_of(convert: Callable[[str], Any], what: str) -> Callable[[str], List[Any]]:
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


int_list = list_of(positive_int, "positive integers")


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


number_list = list_of(positive_number, "numbers > 0")


def name_list(text: str) -> List[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of pools, got {text!r}")
    return list(dict.fromkeys(items))


def pool_list(known: Dict[str, Contender]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or any(not item for item in items):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of pools, got {text!r}")
        for item in items:
            if item not in known:
                raise argparse.ArgumentTypeError(f"unknown pool {item!r} (choose from {', '.join(known)})")
        return list(dict.fromkeys(items))

    return parse


def url(schemes: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme not in schemes:
            shown = redact_url(text) if "://" in text else text
            raise argparse.ArgumentTypeError(f"must be a {' or '.join(s + '://' for s in schemes)} URL, got {shown!r}")
        return text

    return parse


def add_common(parser: argparse.ArgumentParser, default_max: str, duration_help: Optional[str] = None) -> None:
    """The options of a closed-loop scenario: ``--greenlets``, ``--max-connections`` (``default_max``),
    ``--timeout``, ``--duration``, ``--value-size``, ``--rounds``, ``--json``, ``--plot`` and progress."""
    parser.add_argument(
        "--greenlets",
        type=positive_int,
        default=DEFAULT_GREENLETS,
        help=f"greenlets running the operation in a loop (default {DEFAULT_GREENLETS})",
    )
    parser.add_argument(
        "--max-connections",
        type=int_list,
        default=int_list(default_max),
        metavar="N[,N...]",
        help=f"pool sizes to run, comma-separated (default {default_max})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"checkout timeout in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--duration",
        type=positive_seconds,
        default=DEFAULT_DURATION,
        help=duration_help or f"measured seconds per run (default {DEFAULT_DURATION:g})",
    )
    parser.add_argument(
        "--value-size",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="value size for get/set (default 100) and tuple payload for replace/select (default 1500)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=DEFAULT_ROUNDS,
        help=f"runs of every contender at every size, in alternating order; medians and the spread are reported "
        f"(default {DEFAULT_ROUNDS})",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure, the versions and the core count here")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput, success and wait p50/p99 against max_connections (needs matplotlib)",
    )
    add_progress(parser)


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (``args.progress`` is true by default)."""
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress on stderr (by default: a live line on a terminal, plain lines on a pipe)",
    )


def add_check(parser: argparse.ArgumentParser, when: str) -> None:
    """``--check``: exit with :data:`.rounds.EXIT_MISSED` ``when`` (a target is missed), after the report."""
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit with status {EXIT_MISSED} when {when} (after the report)",
    )


def check_outputs(sub: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before anything runs, a --json or --plot file that could not be written afterwards."""
    plot = getattr(args, "plot", None)
    for option, path in (("--json", getattr(args, "json", None)), ("--plot", plot)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            sub.error(f"argument {option}: {path!r} is a directory, not a file")
        if not os.path.isdir(folder):
            sub.error(f"argument {option}: the directory {folder!r} does not exist")
    if plot:
        if not plot.lower().endswith(".png"):
            sub.error(f"argument --plot: the file name must end in .png, got {plot!r}")
        missing = report.matplotlib_missing()
        if missing:
            sub.error(f"argument --plot: {missing}")


def server_fits(sub: argparse.ArgumentParser, args: argparse.Namespace, kind: str) -> None:
    """Refuse a --url of the other server than --server names."""
    if args.url is not None:
        scheme = args.url.split("://", 1)[0]
        if (scheme == "tarantool") != (kind == "tarantool"):
            sub.error(f"argument --url: a {scheme}:// URL does not fit --server {kind}")


def infer_server(args: argparse.Namespace) -> str:
    """``--server``, else the server ``--url`` points at (tarantool:// or Redis), else Redis."""
    if args.server is None:
        scheme = (args.url or "").split("://", 1)[0]
        args.server = "tarantool" if scheme == "tarantool" else "redis"
    return str(args.server)
