"""The one seam between the core pool and gevent.

Everything the core needs from gevent (the hub and its loop, the current greenlet, the idle stack's queue
class, spawning) and from the process (a fork generation counter, the thread identity, a clock) comes from
here, so that ``greenpool.pool`` reads as plain logic. So does the connect deadline every adapter puts around
its client's connect (:func:`call_within`, :func:`stage_of`, :func:`connect_timeout_message`), so that all of
them bound it, clean up after it and word its error alike. Depends on gevent and ``greenpool.errors`` only.
"""

from __future__ import annotations

import os
from time import monotonic
from types import TracebackType
from typing import Callable, Iterator, Optional, Sequence, Tuple, TypeVar

from gevent import Timeout, getcurrent, spawn
from gevent import socket as _gevent_socket
from gevent.hub import get_hub
from gevent.monkey import get_original
from gevent.queue import LifoQueue

from greenpool.errors import WrongThread

#: The operating system thread's identity, even when ``_thread`` is monkey-patched (then ``get_ident``
#: names the greenlet instead).
thread_ident = get_original("_thread", "get_ident")

__all__ = [
    "LifoQueue",
    "Timeout",
    "call_within",
    "claim_thread",
    "connect_timeout_message",
    "exception_chain",
    "fork_generation",
    "get_hub",
    "getcurrent",
    "monotonic",
    "spawn",
    "stage_of",
    "thread_ident",
]

T = TypeVar("T")

# Socket classes a connect may hold in its local variables: the stdlib's (and its ssl subclass), gevent's (and
# its ssl subclass), whether or not ``socket`` is monkey-patched.
_SOCKET_CLASSES = (get_original("socket", "socket"), _gevent_socket.socket)

_generation = [0]


def claim_thread(bound: Optional[int], name: str, advice: str) -> int:
    """Return this thread's identity when an object that belongs to one gevent hub, ``name``, is not bound to a
    thread yet (``bound`` is None) or is bound to this one; raise :class:`WrongThread` (ending with ``advice``)
    when it is bound to another."""
    ident: int = thread_ident()
    if bound is not None and bound != ident:
        raise WrongThread(
            f"{name} belongs to the gevent hub of thread {bound}; it was used from thread {ident}. {advice}"
        )
    return ident


def fork_generation() -> int:
    """Return a number that changes in a child process after each ``os.fork()``.

    Comparing it costs no system call, unlike ``os.getpid()``.
    """
    return _generation[0]


def _after_fork_in_child() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------- the connect deadline


def call_within(
    seconds: Optional[float], call: Callable[[], T], expired: Callable[[BaseException], BaseException]
) -> T:
    """Return ``call()``; if it is still running after ``seconds`` (``None``: no limit), interrupt it and raise
    ``expired(interruption)`` instead, the interruption's traceback showing where ``call`` was (see
    :func:`stage_of`).

    The interruption is a ``gevent.Timeout`` of our own, so anything else that ends ``call`` (a caller's own,
    outer ``gevent.Timeout``, a kill, an error) propagates as itself. ``call`` must clean up after itself, and
    does for an ``Exception``; when anything else ends it (this deadline, a caller's ``gevent.Timeout``, a kill),
    the sockets it held in local variables only are closed here: redis-py's ``Connection._connect`` (and the
    stdlib's ``socket.create_connection``) close theirs on ``OSError`` only, and would leave them to the garbage
    collector (a ``ResourceWarning``).
    """
    deadline = None if seconds is None else Timeout(seconds)
    try:
        if deadline is not None:
            deadline.start()
        return call()
    except Exception:
        raise
    except BaseException as exc:
        _close_sockets_in(exc.__traceback__)
        if exc is deadline:
            raise expired(exc) from None
        raise
    finally:
        if deadline is not None:
            deadline.close()


def _close_sockets_in(tb: Optional[TracebackType]) -> None:
    """Close every socket held in a local variable of the frames ``tb`` went through (the interrupted call's)."""
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, _SOCKET_CLASSES):
                try:
                    value.close()
                except OSError:
                    pass
        tb = tb.tb_next


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc``, then the exception it was raised from or while handling, and so on."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def stage_of(
    exc: BaseException, package: str, stages: Sequence[Tuple[str, str]], default: str, chained: bool = False
) -> str:
    """Name the step of a connect that ``exc`` interrupted or came from.

    ``stages`` pairs a function of ``package`` (e.g. ``"tarantool"``) with the stage it runs, in the order the
    connect runs them; the answer is the last stage whose function is on the traceback of ``exc`` (with
    ``chained``, also on those of the exceptions it was raised from or while handling, for a client that wraps
    the error it caught), else ``default``. Function names, not the client's private state, so the answer is
    the same whether or not the client closed its socket on the way out.
    """
    names = set()
    for link in exception_chain(exc) if chained else (exc,):
        tb = link.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            module = frame.f_globals.get("__name__", "")
            if module == package or module.startswith(package + "."):
                names.add(frame.f_code.co_name)
            tb = tb.tb_next
    found = [stage for function, stage in stages if function in names]
    return found[-1] if found else default


def connect_timeout_message(where: str, seconds: float, setting: str, stage: str) -> str:
    """The words of every connect timeout: ``"<where>: connecting timed out after <seconds> s (<setting>); stage:
    <stage>"``. ``where`` is the server's ``host:port`` or socket path (never credentials); ``setting`` names the
    option that set the bound."""
    return f"{where}: connecting timed out after {seconds:g} s ({setting}); stage: {stage}"
