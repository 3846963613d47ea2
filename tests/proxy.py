"""A loopback TCP proxy for fault injection, built on gevent's ``StreamServer``.

It sits between a pool and a real server and can pass traffic through, stop accepting, reset every
connection, black-hole (accept and read, never answer), delay every reply chunk by ``latency`` seconds, or cut
the next reply in the middle. It runs in the test's own gevent hub (the suite is monkey-patched).
Depends on gevent only.
"""

from __future__ import annotations

import socket
import struct
from typing import List, Optional, Set

import gevent
from gevent.server import StreamServer


class Proxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; every fault can be switched on and off while it runs."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.blackhole = False
        self.accepting = True
        self._cut_after: Optional[int] = None
        self._sockets: Set[socket.socket] = set()
        self._greenlets: List[gevent.Greenlet] = []
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> Proxy:
        self._server.start()
        self.port = self._server.server_port
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        self._server.stop(timeout=1)
        self.reset_all()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # faults ------------------------------------------------------------

    def heal(self) -> None:
        """Back to a plain pass-through."""
        self.latency = 0.0
        self.blackhole = False
        self.accepting = True
        self._cut_after = None

    def reset_all(self) -> None:
        """Close every proxied connection with a TCP reset."""
        for sock in list(self._sockets):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()
        self._sockets.clear()

    def cut_next_reply(self, after_bytes: int) -> None:
        """Forward only the first ``after_bytes`` of the next server-to-client chunk, then reset that connection."""
        self._cut_after = after_bytes

    @property
    def connections(self) -> int:
        """Client connections open through the proxy."""
        return len(self._sockets) // 2

    # plumbing ----------------------------------------------------------

    def _handle(self, client: socket.socket, address: object) -> None:
        if not self.accepting:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        self._sockets.add(client)
        if self.blackhole:
            self._swallow(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._sockets.discard(client)
            client.close()
            return
        upstream.settimeout(None)
        self._sockets.add(upstream)
        back = gevent.spawn(self._pump, upstream, client, True)
        try:
            self._pump(client, upstream, False)
        finally:
            back.kill(block=False)

    def _swallow(self, client: socket.socket) -> None:
        try:
            while client.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self._sockets.discard(client)
            client.close()

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.blackhole:
                    continue  # read, never answer
                if to_client and self.latency:
                    gevent.sleep(self.latency)
                if to_client and self._cut_after is not None:
                    cut, self._cut_after = self._cut_after, None
                    dst.sendall(data[:cut])
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                if sock in self._sockets:
                    self._sockets.discard(sock)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                    sock.close()
