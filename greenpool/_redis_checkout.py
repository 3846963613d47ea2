"""One checkout of ``greenpool.RedisMuxPool``: the proxy redis-py's client sends commands through, which queues
plain commands on a shared socket and takes a dedicated connection for what needs one; and the waiter each
command's greenlet parks on until its reply.

Depends on redis-py (its pool's interface), ``greenpool._green`` and ``greenpool._mux``.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, FrozenSet, List, Optional, Sequence

from greenpool import _green
from greenpool._mux import MuxShared, resume

if TYPE_CHECKING:  # pragma: no cover
    from greenpool.redis_mux import RedisMuxPool

__all__ = [
    "ABANDONED",
    "ANSWERED",
    "DEDICATED_ATTRIBUTES",
    "DEDICATED_COMMANDS",
    "TEMPLATE_METHODS",
    "WAITING",
    "MuxConnection",
    "Waiter",
    "fail_waiters",
]

#: Commands that need a connection of their own: they change or depend on per-connection state, or block.
DEDICATED_COMMANDS: FrozenSet[str] = frozenset(
    {
        "ASKING",  # applies to the next command on its connection: both must take the same (dedicated) one
        "AUTH",
        "BLMOVE",
        "BLMPOP",
        "BLPOP",
        "BRPOP",
        "BRPOPLPUSH",
        "BZMPOP",
        "BZPOPMAX",
        "BZPOPMIN",
        "CLIENT",
        "DISCARD",
        "EXEC",
        "HELLO",
        "HIMPORT",
        "MONITOR",
        "MULTI",
        "PSUBSCRIBE",
        "PSYNC",
        "PUNSUBSCRIBE",
        "QUIT",
        "READONLY",
        "READWRITE",
        "RESET",
        "SELECT",
        "SSUBSCRIBE",
        "SUBSCRIBE",
        "SUNSUBSCRIBE",
        "SYNC",
        "UNSUBSCRIBE",
        "UNWATCH",
        "WAIT",
        "WAITAOF",
        "WATCH",
    }
)
_BLOCK_OPTION_COMMANDS = frozenset({"XREAD", "XREADGROUP"})
# Command name as redis-py passes it (str or bytes) -> whether it needs a dedicated connection, for the names
# whose verdict does not depend on the arguments (bounded: a program uses a few hundred names at most).
_VERDICTS: Dict[Any, bool] = {}

#: Connection attributes that take a dedicated connection when a checkout reads them: the socket, the parser,
#: the connect and health-check machinery and what a server told one connection, which only a connection of the
#: checkout's own has. Any other attribute of redis-py's ``Connection`` that is not a method (configuration:
#: ``encoder``, ``retry``, ``db``, ``protocol``...) is read from a never-connected template connection, without
#: a dedicated connection; an unknown method takes one and warns (``RuntimeWarning``), so that a redis-py release
#: that reads something new on every command is noticed instead of silently losing the multiplexing.
DEDICATED_ATTRIBUTES: FrozenSet[str] = frozenset(
    {
        "_buffer_cutoff",
        "_connect",
        "_connect_callbacks",
        "_get_socket",
        "_handshake_metadata",
        "_parser",
        "_send_ping",
        "_sock",
        "can_read",
        "connect_check_health",
        "deregister_connect_callback",
        "get_resolved_ip",
        "getpeername",
        "handshake_metadata",
        "maintenance_state",
        "mark_for_reconnect",
        "on_connect",
        "on_connect_check_health",
        "re_auth",
        "register_connect_callback",
        "set_parser",
        "set_re_auth_token",
        "set_tmp_settings",
        "reset_tmp_settings",
        "update_current_socket_timeout",
        "update_parser_timeout",
    }
)

#: Methods of redis-py's ``Connection`` a checkout without a dedicated connection calls on the template: they read
#: configuration only (redis-py's client calls ``extract_connection_details`` to log a failure).
TEMPLATE_METHODS: FrozenSet[str] = frozenset({"extract_connection_details", "get_protocol", "repr_pieces"})

# Waiter states: the reply has not come, it came (``value``), or the greenlet gave up (its late reply is dropped).
WAITING, ANSWERED, ABANDONED = 0, 1, 2


class Waiter:
    """The reply of one command on a shared socket: the greenlet parked on it (if any), the reply once it came,
    when the command was made (for ``socket_timeout``). ``state`` goes from ``WAITING`` to ``ANSWERED`` (the
    reply, or the error that failed it, is in ``value``) or to ``ABANDONED`` (the greenlet gave up)."""

    __slots__ = ("glet", "state", "t", "value")

    def __init__(self, t: float) -> None:
        self.glet: Any = None
        self.state = WAITING
        self.value: Any = None
        self.t = t


def _resume_if_parked(waiter: Waiter, glet: Any) -> None:
    """Hub callback: resume ``glet`` if it still waits on ``waiter``."""
    if waiter.glet is glet:
        resume(glet, waiter.value)


def fail_waiters(shared: MuxShared, waiters: Sequence[Waiter], error: Any, message: str) -> None:
    """Fail the still-waiting ``waiters`` with ``error(message)``, resuming their greenlets (directly in the
    hub; from a greenlet, through hub callbacks, so that the caller keeps running)."""
    failed = []
    for waiter in waiters:
        if waiter.state == WAITING:
            waiter.state = ANSWERED
            waiter.value = error(message)
            shared.failed += 1
            if waiter.glet is not None:
                failed.append(waiter)
    if not failed:
        return
    hub = _green.get_hub()
    if _green.getcurrent() is hub:
        for waiter in failed:
            resume(waiter.glet, waiter.value)
    else:
        for waiter in failed:
            hub.loop.run_callback(_resume_if_parked, waiter, waiter.glet)


class MuxConnection:
    """What :meth:`RedisMuxPool.get_connection` returns: one checkout's view of the multiplexer.

    Plain commands are queued on a shared socket. The first command that needs per-connection state
    (:data:`DEDICATED_COMMANDS`), and the first read of an attribute of :data:`DEDICATED_ATTRIBUTES`, take a
    dedicated connection (blocking as :meth:`greenpool.GeventPool.get_connection` does), kept until release;
    from then on every attribute is that connection's.
    """

    __slots__ = ("__weakref__", "_dedicated", "_mux", "_packed", "_waiters")

    def __init__(self, mux: RedisMuxPool) -> None:
        self._mux = mux
        self._waiters: Deque[Waiter] = deque()
        self._dedicated: Any = None
        self._packed: Optional[List[Any]] = None

    # -------------------------------------------------------------- routing

    def _dedicate(self) -> Any:
        connection = self._dedicated
        if connection is None:
            connection = self._dedicated = self._mux._get_dedicated()
        return connection

    @property
    def dedicated(self) -> bool:
        """Whether this checkout holds a dedicated connection (until it is released)."""
        return self._dedicated is not None

    def __getattr__(self, name: str) -> Any:
        """An attribute this class does not define: the dedicated connection's if the checkout holds one; else
        one of :data:`DEDICATED_ATTRIBUTES` takes a dedicated connection (blocks, see the class docstring);
        else configuration is read from the template connection. An unknown method takes a dedicated
        connection with a ``RuntimeWarning``."""
        if self._dedicated is not None or name in DEDICATED_ATTRIBUTES:
            return getattr(self._dedicate(), name)
        value = getattr(self._mux._template, name)  # AttributeError for what a connection does not have
        if not callable(value) or name in TEMPLATE_METHODS:
            return value
        warnings.warn(
            f"RedisMuxPool: {name!r} is not known to be safe on a shared socket; the checkout took a dedicated "
            "connection (report this if a plain command reads it)",
            RuntimeWarning,
            stacklevel=2,
        )
        return getattr(self._dedicate(), name)

    # Read by redis-py's client on every command: served without the (slower) __getattr__ fallback.
    retry = property(lambda self: self._mux._template.retry)
    host = property(lambda self: self._mux._template.host)
    port = property(lambda self: self._mux._template.port)
    db = property(lambda self: self._mux._template.db)

    @property
    def _resp2_fallback(self) -> bool:
        # Read by redis-py 8.2's client on every reply (whether the server refused HELLO and the connection fell
        # back to RESP2): the shared sockets keep the protocol they were opened with.
        source = self._dedicated if self._dedicated is not None else self._mux._template
        return bool(getattr(source, "_resp2_fallback", False))

    # -------------------------------------------------------------- the redis-py Connection interface

    def pack_command(self, *args: Any) -> Any:
        return self._mux._template.pack_command(*args)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        self._packed = [args[0] for args in commands]
        return self._mux._template.pack_commands(commands)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        """Queue one command (a dedicated connection sends it at once). Blocks only to connect."""
        connection = self._dedicated
        if connection is None and self._needs_dedicated(args[0], args):
            connection = self._dedicate()
        if connection is not None:
            connection.send_command(*args, **kwargs)
            return
        self._mux._submit(self, self._mux._template.pack_command(*args), 1)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Queue commands packed by :meth:`pack_commands`; anything else goes to a dedicated connection."""
        names, self._packed = self._packed, None
        connection = self._dedicated
        if connection is None and (names is None or any(self._needs_dedicated(name, ()) for name in names)):
            connection = self._dedicate()
        if connection is not None:
            connection.send_packed_command(command, check_health)
            return
        assert names is not None
        data = [command] if isinstance(command, (bytes, bytearray, memoryview, str)) else list(command)
        self._mux._submit(self, data, len(names))

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        """Return the reply of the oldest unread command; park this greenlet until it arrives.

        Raises ``redis.exceptions.ConnectionError`` when the socket broke or the pool disconnected,
        ``redis.exceptions.TimeoutError`` after ``socket_timeout`` without a reply, the server's error.
        An interrupted caller (``gevent.Timeout``, kill) gives up the reply: it is read and dropped later.
        """
        waiters = self._waiters
        if not waiters:
            return self._dedicate().read_response(disable_decoding=disable_decoding, **kwargs)
        waiter = waiters.popleft()
        if waiter.state != ANSWERED:
            waiter.glet = _green.getcurrent()
            switch = self._mux._hub.switch
            try:
                switch()
                while waiter.state != ANSWERED:  # resumed by something other than this reply: park again
                    switch()
            except BaseException:
                if waiter.state == WAITING:
                    waiter.state = ABANDONED
                waiter.glet = None
                raise
            waiter.glet = None
        value = waiter.value
        if isinstance(value, Exception):
            raise value
        if self._mux._decode and not disable_decoding:
            return _decode(value, self._mux._encoding, self._mux._encoding_errors)
        return value

    def disconnect(self, *args: Any) -> None:
        """Disconnect the dedicated connection, if any; the shared socket manages itself."""
        if self._dedicated is not None:
            self._dedicated.disconnect(*args)

    def connect(self) -> None:
        if self._dedicated is not None:
            self._dedicated.connect()

    def check_health(self) -> None:
        if self._dedicated is not None:
            self._dedicated.check_health()

    def should_reconnect(self) -> bool:
        return self._dedicated is not None and bool(self._dedicated.should_reconnect())

    @property
    def himport_registry(self) -> Any:
        # Pipelines look for HIMPORT fieldsets to prepare on the connection: none on a shared socket.
        return None if self._dedicated is None else self._dedicated.himport_registry

    @property
    def is_connected(self) -> bool:
        return self._dedicated is None or bool(self._dedicated.is_connected)

    def _needs_dedicated(self, name: Any, args: Sequence[Any]) -> bool:
        cacheable = name.__class__ is str or name.__class__ is bytes
        if cacheable:
            verdict = _VERDICTS.get(name)
            if verdict is not None:
                return verdict
        word = (name.decode("latin-1") if isinstance(name, bytes) else str(name)).split(" ", 1)[0].upper()
        if word in _BLOCK_OPTION_COMMANDS:  # XREAD ... BLOCK: it depends on the arguments
            return not args or any(isinstance(a, (str, bytes)) and a.upper() in ("BLOCK", b"BLOCK") for a in args)
        verdict = word in DEDICATED_COMMANDS
        if cacheable and len(_VERDICTS) < 4096:
            _VERDICTS[name] = verdict
        return verdict

    def _abandon(self) -> None:
        for waiter in self._waiters:
            if waiter.state == WAITING:
                waiter.state = ABANDONED
            waiter.glet = None
        self._waiters.clear()

    def __repr__(self) -> str:
        where = "dedicated" if self._dedicated is not None else "shared"
        return f"<{type(self).__name__} {where} of {self._mux._core_settings['name']!r}>"


def _decode(value: Any, encoding: str, errors: str) -> Any:
    if isinstance(value, bytes):
        return value.decode(encoding, errors)
    if isinstance(value, list):
        return [_decode(item, encoding, errors) for item in value]
    if isinstance(value, dict):
        return {_decode(k, encoding, errors): _decode(v, encoding, errors) for k, v in value.items()}
    if isinstance(value, set):
        return {_decode(item, encoding, errors) for item in value}
    return value
