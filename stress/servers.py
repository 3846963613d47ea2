"""Start and stop private ``redis-server`` and ``tarantool`` processes for the tests and the harness.

Each server runs on a free loopback port in its own temporary directory (never the user's 6379/3301) and is
stopped afterwards; on Linux it also gets SIGTERM when the process that started it dies (killed, say, by a CI
timeout), so no server outlives its run. ``kill()`` + ``start()`` restarts it on the same port, for crash tests.
A missing binary raises :class:`ServerMissing` with the command that installs it. Depends on the standard
library only.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

__all__ = ["ServerMissing", "RedisServer", "TarantoolServer", "free_port", "TARANTOOL_INIT"]

TARANTOOL_INIT = Path(__file__).with_name("tarantool_init.lua")

_INSTALL = {
    "redis-server": "apt-get install -y redis-server (Debian/Ubuntu; run as root or with sudo), or `make test`",
    "tarantool": "apt-get install -y tarantool (Debian/Ubuntu; run as root or with sudo), or `make test`",
}


def _parent_death_hook() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that asks Linux to send the child SIGTERM when its parent dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: no allocation-heavy work here
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class ServerMissing(RuntimeError):
    """The server binary is not installed."""


#: Every port :func:`free_port` returned in this process: it never returns one twice.
_HANDED_OUT: Set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, and that this process was not given before (a
    topology picks all its ports before it starts its servers; the kernel may offer a port it gave a moment ago)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 that this process was not given before")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerMissing(f"{name} is not installed or not on PATH. Install it with: {_INSTALL[name]}")
    return path


class _Server:
    binary = ""
    start_timeout = 15.0

    def __init__(self, port: Optional[int] = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"greenpool-{self.binary}-"))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    # subclasses
    def _command(self, binary: str) -> List[str]:
        raise NotImplementedError

    def _env(self) -> Dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def start(self) -> _Server:
        """Start the server and block until it answers (at most ``start_timeout`` seconds)."""
        binary = _binary(self.binary)
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        self._log_start = log.tell()
        try:
            self.proc = subprocess.Popen(
                self._command(binary),
                cwd=self.dir,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_parent_death_hook(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self._ready():
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port} within {self.start_timeout} s")

    _log_start = 0

    def log_since_start(self) -> str:
        """What the server has logged since the last ``start()``."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after 10 s)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=1.0)


class RedisServer(_Server):
    """A private redis-server. ``password`` sets ``requirepass``; ``unix_socket`` also listens on a socket file
    (``unix_path``); ``extra`` holds more ``--option value`` arguments; ``tls`` is a dict with ``cert``,
    ``key`` and ``ca`` paths and makes the port TLS-only."""

    binary = "redis-server"

    def __init__(
        self,
        port: Optional[int] = None,
        *,
        password: Optional[str] = None,
        unix_socket: bool = False,
        appendonly: bool = False,
        tls: Optional[Dict[str, str]] = None,
        extra: Optional[List[str]] = None,
    ) -> None:
        super().__init__(port)
        self.password = password
        self.unix_path: Optional[str] = str(self.dir / "redis.sock") if unix_socket else None
        self.appendonly = appendonly
        self.tls = tls
        self.extra = list(extra or [])

    def _command(self, binary: str) -> List[str]:
        cmd = [binary, "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "", "--daemonize", "no"]
        cmd += ["--logfile", str(self.log_path), "--maxclients", "10000"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"]]
            cmd += ["--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.appendonly:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.unix_path:
            cmd += ["--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        return cmd + self.extra

    def _ready(self) -> bool:
        if self.tls:
            import ssl

            ctx = ssl.create_default_context(cafile=self.tls["ca"])
            ctx.check_hostname = False
            with self._connect() as raw, ctx.wrap_socket(raw) as sock:
                return self._ping(sock)
        with self._connect() as sock:
            return self._ping(sock)

    def _ping(self, sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)
        # With requirepass, an unauthenticated PING gets -NOAUTH: the server is up all the same.
        return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"


class TarantoolServer(_Server):
    """A private tarantool running ``stress/tarantool_init.lua`` (space ``tester``, user ``user``/``password``,
    functions ``echo`` and ``add``). Its data lives in its directory, so a restart keeps it."""

    binary = "tarantool"
    user = "tester"
    password = "tester-secret"

    def _command(self, binary: str) -> List[str]:
        return [binary, str(TARANTOOL_INIT)]

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["TARANTOOL_LISTEN"] = f"{self.host}:{self.port}"
        env["TARANTOOL_USER"] = self.user
        env["TARANTOOL_PASSWORD"] = self.password
        return env

    def _ready(self) -> bool:
        # The listener opens inside box.cfg{}, before the space and the user exist; the init script logs
        # this line once they do.
        return "greenpool-ready" in self.log_since_start()

    @property
    def url(self) -> str:
        return f"tarantool://{self.user}:{self.password}@{self.host}:{self.port}"
