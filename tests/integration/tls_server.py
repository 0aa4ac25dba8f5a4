"""A TLS-speaking Redis for the tests, with a CA and certificates made on the spot.

The server binary serves TLS itself when it was built with it (redis-server
from most distributions). The embedded valkey-server is built without TLS; then
a small TLS terminator in front of it (Python's ssl, i.e. OpenSSL, requiring a
client certificate like ``tls-auth-clients yes``) stands in, so the client
side, gpufeed's part, meets a real TLS handshake either way.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from gpufeed.embedded import RedisServer, find_server_binary, free_port
from gpufeed.errors import ProcessFailed


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gpufeed-worker@example.org")
    files = TlsFiles(*(directory / n for n in ("ca.pem", "server.pem", "server.key",
                                               "client.pem", "client.key")))  # fmt: skip
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


def server_tls_args(port: int, files: TlsFiles) -> list[str]:
    return ["--tls-port", str(port), "--tls-cert-file", str(files.server_cert),
            "--tls-key-file", str(files.server_key), "--tls-ca-cert-file", str(files.ca),
            "--tls-auth-clients", "yes"]  # fmt: skip


def tls_binary(files: TlsFiles) -> str | None:
    """A server binary built with TLS, or None (tried by starting it with TLS on)."""
    candidates = [find_server_binary(), shutil.which("redis-server"), shutil.which("valkey-server")]
    for binary in dict.fromkeys(c for c in candidates if c):
        server = RedisServer(binary=binary, extra_args=server_tls_args(free_port(), files))
        try:
            server.start()
        except ProcessFailed:
            continue  # built without TLS
        finally:
            server.__exit__(None, None, None)
        return binary
    return None


@contextlib.contextmanager
def tls_redis(files: TlsFiles) -> Iterator[tuple[RedisServer, int, str]]:
    """(server, TLS port, how TLS is served): the plain port stays open for set-up."""
    binary = tls_binary(files)
    if binary is not None:
        port = free_port()
        with RedisServer(binary=binary, extra_args=server_tls_args(port, files)) as server:
            yield server, port, f"{Path(binary).name} TLS"
        return
    with RedisServer() as server, _Terminator(server.port, files) as port:
        yield server, port, "TLS terminator"


class _Terminator:
    """Accepts TLS on a loopback port and relays the plaintext to ``backend``."""

    def __init__(self, backend: int, files: TlsFiles) -> None:
        self.backend = backend
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
        self.context.load_cert_chain(str(files.server_cert), str(files.server_key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.stopping = False

    def __enter__(self) -> int:
        threading.Thread(target=self._accept, daemon=True).start()
        port: int = self.listener.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                raw, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            tls = self.context.wrap_socket(raw, server_side=True)
            tls.settimeout(None)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        plain = socket.create_connection(("127.0.0.1", self.backend))
        threading.Thread(target=_pump, args=(plain, tls), daemon=True).start()
        _pump(tls, plain)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for s in (source, sink):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
