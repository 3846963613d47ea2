"""Exceptions raised by greenpool.

One root, :class:`PoolError`, and a leaf for each way a checkout, a connect or a release can fail. Adapters
(``greenpool.redis``, ``greenpool.tarantool``) subclass these leaves together with their client's own
errors, so code that already catches the client's exceptions keeps working. Depends on nothing.
"""

from __future__ import annotations

__all__ = [
    "PoolError",
    "PoolTimeout",
    "ConnectTimeout",
    "PoolClosed",
    "TooManyWaiting",
    "UnknownConnection",
    "WrongThread",
]


class PoolError(Exception):
    """Root of every error the pool itself raises."""


class PoolTimeout(PoolError):
    """No connection became available within the checkout timeout."""


class ConnectTimeout(PoolError):
    """A new connection was not ready within the connect bound; the message names the server and the stage."""


class PoolClosed(PoolError):
    """The pool was closed (by your code) before or while a connection was requested."""


class TooManyWaiting(PoolError):
    """The checkout was refused at once because ``max_waiting`` greenlets were already waiting."""


class UnknownConnection(PoolError):
    """A connection was released that is not checked out from this pool (foreign, or released twice)."""


class WrongThread(PoolError):
    """The pool was used from a thread (gevent hub) other than the one it belongs to."""
