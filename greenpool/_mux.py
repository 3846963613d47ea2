"""The socket I/O shared by the multiplexers (``greenpool.redis_mux``, ``greenpool.tarantool_mux``).

:class:`MuxIO` is the base of a multiplexer's socket class: it owns the socket, its watchers, the read buffer and
the output (:meth:`MuxIO.start_io`, :meth:`MuxIO.stop_io`); the subclass provides :meth:`MuxIO.send_failed`,
:meth:`MuxIO.read_failed` and an ``on_readable`` that starts with :meth:`MuxIO.receive`. A request goes out at once
while the server has at most a quarter as many requests to work on as wait to be sent (so the server never idles
long while a batch builds up); under load, everything queued during one turn of the gevent loop goes out in one
non-blocking ``send``. What does not fit into the socket buffer goes on when the socket is writable. Depends on
``greenpool._green``.
"""

from __future__ import annotations

from typing import Any, List, Optional

from greenpool import _green

__all__ = ["CONNECTING", "DOWN", "MAX_MUX_CONNECTIONS", "UP", "MuxIO"]

#: Socket states.
DOWN, CONNECTING, UP = 0, 1, 2

#: The most shared sockets one multiplexer spreads its requests over (``connections``): each is a server
#: connection and a few objects made up front; a few per CPU core of the server are what helps.
MAX_MUX_CONNECTIONS = 1024

_READ_SIZE = 256 * 1024


class MuxIO:
    """Non-blocking I/O of one multiplexed socket: batched output, and the read that starts each read callback
    (all of it runs in the hub or never blocks)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connects",
        "flush_pending",
        "generation",
        "loop",
        "out",
        "read_watcher",
        "reads",
        "sock",
        "state",
        "unanswered",
        "unsent",
        "view",
        "write_watcher",
        "writes",
        "wview",
    )

    def __init__(self) -> None:
        self.state = DOWN
        self.sock: Any = None
        self.loop: Any = None
        self.out: List[Any] = []
        self.unsent = 0  # requests in ``out``
        self.unanswered = 0  # requests handed to the socket whose reply has not been parsed yet
        self.wview: Optional[memoryview] = None  # the rest of a send that did not fit into the socket buffer
        self.flush_pending = False
        self.read_watcher: Any = None
        self.write_watcher: Any = None
        self.view = memoryview(b"")  # the read buffer, made on first connect
        self.generation = _green.fork_generation()
        self.connects = self.reads = self.writes = self.bytes_in = self.bytes_out = 0

    def on_readable(self) -> None:
        """Read watcher callback (in the hub): starts with :meth:`receive`, then parses (the subclass says how)."""
        raise NotImplementedError

    def start_io(self, sock: Any, loop: Any) -> None:
        """Start driving the connected, non-blocking ``sock`` from the hub's ``loop``; the socket is up."""
        self.sock = sock
        self.loop = loop
        if not self.view:
            self.view = memoryview(bytearray(_READ_SIZE))
        self.wview = None
        self.read_watcher = loop.io(sock.fileno(), 1)
        self.write_watcher = loop.io(sock.fileno(), 2)
        self.read_watcher.start(self.on_readable)
        self.state = UP
        self.connects += 1

    def stop_io(self, close_socket: bool = True) -> None:
        """Stop the watchers, drop the socket (closing it unless told not to) and what waited to be sent; the
        socket is down. Never blocks."""
        for watcher in (self.read_watcher, self.write_watcher):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.read_watcher = self.write_watcher = None
        sock, self.sock = self.sock, None
        if sock is not None and close_socket:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass
        self.state = DOWN
        self.wview = None
        self.out = []
        self.unsent = self.unanswered = 0
        self.flush_pending = False

    def send_failed(self, exc: OSError) -> None:
        """Fail the socket after ``send`` raised ``exc`` (the subclass says how); called in the hub."""
        raise NotImplementedError

    def read_failed(self, exc: Optional[OSError]) -> None:
        """Fail the socket after ``recv`` raised ``exc``, or the server closed it (``None``); called in the hub."""
        raise NotImplementedError

    def receive(self) -> int:
        """Read what has arrived into ``view`` (in the hub, never blocks); return how many bytes, or 0 when there
        is nothing to parse: nothing yet, the parent's socket in a fork's child, or a failure (then
        :meth:`read_failed` has run)."""
        if self.generation != _green.fork_generation():
            self.read_watcher.stop()  # the parent's socket, inherited by a child: leave it to the parent
            return 0
        try:
            nbytes: int = self.sock.recv_into(self.view)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.read_failed(exc)
            return 0
        if not nbytes:
            self.read_failed(None)
            return 0
        self.reads += 1
        self.bytes_in += nbytes
        return nbytes

    def schedule_flush(self) -> None:
        """Send what is queued at the end of this loop turn (once, however much is queued meanwhile)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.run_callback(self.flush)

    def pushed(self, n: int = 1) -> None:
        """Count ``n`` requests just appended to ``out`` and decide when they go: at once when the server has
        nothing to work on, or a quarter or less of what waits here (so that it never idles long while a batch
        builds up), else with everything else queued during this loop turn.

        From idle, batches go out as 1, 4, 20, 100... requests. Measured against sending once the server has
        as many as wait here (1, 1, 2, 4...): 10 greenlets, Tarantool replace 1.5 KB, 64k/s against 58k/s (medians of
        8 interleaved runs); Redis PING 83-86k/s against 73-75k/s; the same at 100 to 5000 greenlets.
        """
        self.unsent += n
        if self.unsent >= 4 * self.unanswered:
            self.send()
        else:
            self.schedule_flush()

    def flush(self) -> None:
        """Send what is queued (a hub callback, or the end of a read); never blocks."""
        self.flush_pending = False
        self.send()

    def send(self) -> None:
        """Send what is queued, as much as the socket takes now; the rest when it is writable. Never blocks."""
        out = self.out
        if not out or self.wview is not None or self.sock is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.unanswered += self.unsent
        self.unsent = 0
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if _green.getcurrent() is _green.get_hub():
                self.send_failed(exc)
            else:  # a greenlet's immediate send: fail the socket from the hub, which resumes the parked greenlets
                self.loop.run_callback(self._send_failed_later, self.sock, exc)
            return
        self.writes += 1
        self.bytes_out += sent
        if sent < len(data):
            self.wview = memoryview(data)[sent:]
            self.write_watcher.start(self.on_writable)

    def _send_failed_later(self, sock: Any, exc: OSError) -> None:
        if self.sock is sock:  # not failed (and maybe reconnected) meanwhile
            self.send_failed(exc)

    def on_writable(self) -> None:
        """Write watcher callback: go on with a send that did not fit into the socket buffer."""
        if self.generation != _green.fork_generation():
            self.write_watcher.stop()  # the parent's socket, inherited by a child: leave it to the parent
            return
        while True:
            view = self.wview
            if view is None:
                out = self.out
                if not out:
                    self.write_watcher.stop()
                    return
                view = memoryview(b"".join(out))
                out.clear()
                self.unanswered += self.unsent
                self.unsent = 0
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                self.wview = view
                return
            except OSError as exc:
                self.send_failed(exc)
                return
            self.writes += 1
            self.bytes_out += sent
            if sent < len(view):
                self.wview = view[sent:]
                return
            self.wview = None
