"""Parsing of ``tarantool://`` URLs, shared by ``TarantoolPool.from_url`` and ``TarantoolMux.from_url``.

Depends on the standard library only.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "DEFAULT_PORT",
    "MUX_IGNORED_OPTIONS",
    "mux_options",
    "parse_url",
    "url_bool",
    "url_int",
    "url_seconds",
    "url_str",
]

#: The port Tarantool listens on by convention, used when a URL names none.
DEFAULT_PORT = 3301


def parse_url(url: Any, known: Mapping[str, Callable[[str, str], Any]]) -> Dict[str, Any]:
    """Return ``host``, ``port``, ``user``, ``password`` and the query options of
    ``tarantool://[user[:password]@]host[:port][?option=value&...]``, each option parsed by ``known[option]``.

    The port defaults to 3301; user and password are percent-decoded. Raises ``TypeError`` for a URL that is
    not a str and ``ValueError`` naming the scheme, option or value that is wrong (never the password).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme != "tarantool":
        raise ValueError(f"url scheme must be 'tarantool', got {parts.scheme!r}")
    if parts.path not in ("", "/"):
        raise ValueError(f"a tarantool url has no path, got {parts.path!r}")
    if parts.fragment:
        raise ValueError(f"a tarantool url has no fragment, got {parts.fragment!r}")
    host = parts.hostname
    if not host:
        raise ValueError("the url names no host (tarantool://[user[:password]@]host[:port])")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the url's port must be a number in 1..65535") from None
    options: Dict[str, Any] = {
        "host": host,
        "port": DEFAULT_PORT if port is None else port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }
    for option, text in parse_qsl(parts.query, keep_blank_values=True):
        cast = known.get(option)
        if cast is None:
            raise ValueError(f"unknown tarantool url option {option!r}; known: {', '.join(sorted(known))}")
        if option in options:
            raise ValueError(f"tarantool url option {option!r} is given more than once")
        options[option] = cast(option, text)
    return options


def url_int(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"tarantool url option {option}={text!r} is not an integer") from None


def url_seconds(option: str, text: str) -> Optional[float]:
    if text.lower() in ("", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"tarantool url option {option}={text!r} is not a number of seconds") from None


def url_bool(option: str, text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"tarantool url option {option}={text!r} is not a boolean (true/false)")


def url_str(option: str, text: str) -> str:
    return text


#: Options of ``TarantoolPool.from_url`` that ``TarantoolMux.from_url`` accepts and that do not apply to a
#: multiplexer: the pool's own, tarantool-python's reconnect and schema options, and its TLS files.
MUX_IGNORED_OPTIONS: FrozenSet[str] = frozenset(
    {
        "max_connections",
        "min_connections",
        "max_waiting",
        "queue_policy",
        "check_after_idle",
        "max_lifetime",
        "max_idle",
        "leak_threshold",
        "reconnect_max_attempts",
        "reconnect_delay",
        "connect_now",
        "fetch_schema",
        "ssl_key_file",
        "ssl_cert_file",
        "ssl_ca_file",
        "ssl_ciphers",
        "ssl_password",
        "ssl_password_file",
    }
)


def mux_options(pool_options: Mapping[str, Callable[[str, str], Any]]) -> Dict[str, Callable[[str, str], Any]]:
    """The options ``TarantoolMux.from_url`` reads: every option of the pool's URL (``pool_options``) plus the
    multiplexer's own (``shared_connections``, ``connections`` its deprecated name, ``max_in_flight``...)."""
    return {
        **pool_options,
        "shared_connections": url_int,
        "connections": url_int,
        "max_in_flight": url_int,
        "timeout": url_seconds,
        "socket_timeout": url_seconds,
        "connect_timeout": url_seconds,
        "connection_timeout": url_seconds,
        "name": url_str,
        "transport": url_str,
        "auth_type": url_str,
    }
