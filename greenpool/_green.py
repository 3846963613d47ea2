"""The one seam between the core pool and gevent.

Everything the core needs from gevent (the hub and its loop, the current greenlet, the idle stack's queue
class, spawning) and from the process (a fork generation counter, the thread identity, a clock) comes from
here, so that ``greenpool.pool`` reads as plain logic. Depends on gevent and ``greenpool.errors`` only.
"""

from __future__ import annotations

import os
from time import monotonic
from typing import Optional

from gevent import getcurrent, spawn
from gevent.hub import get_hub
from gevent.monkey import get_original
from gevent.queue import LifoQueue

from greenpool.errors import WrongThread

#: The operating system thread's identity, even when ``_thread`` is monkey-patched (then ``get_ident``
#: names the greenlet instead).
thread_ident = get_original("_thread", "get_ident")

__all__ = [
    "LifoQueue",
    "claim_thread",
    "fork_generation",
    "get_hub",
    "getcurrent",
    "monotonic",
    "spawn",
    "thread_ident",
]

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
