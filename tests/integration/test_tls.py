"""rediss:// with a CA and a client certificate, against a server that checks both."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from tls_server import TlsFiles, make_tls_files, server_tls_args, tls_binary, tls_redis

from conftest import keys, wait_for_results
from gpufeed.connect import RedisTarget
from gpufeed.embedded import LocalCluster, RedisServer, free_ports
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, TlsFiles]]:
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    with tls_redis(files) as (server, port, how):
        print(f"TLS served by: {how}")
        yield server, port, files


def tls_args(port: int, files: TlsFiles, ca: Path | None = None) -> list[str]:
    return ["--redis-url", f"rediss://127.0.0.1:{port}/0", "--tls-ca-cert", str(ca or files.ca),
            "--tls-cert", str(files.client_cert), "--tls-key", str(files.client_key)]  # fmt: skip


def gpufeed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufeed", *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_worker_produce_and_stats_over_tls(tls, queue, start_worker) -> None:
    _server, port, files = tls
    target = RedisTarget(f"rediss://127.0.0.1:{port}/0", str(files.ca), str(files.client_cert),
                         str(files.client_key))  # fmt: skip
    client = target.connect()
    assert client.ping()
    _flag, url, *options = tls_args(port, files)
    worker = start_worker(*options, url=url)
    worker.wait_ready(client, keys(queue)[0])
    produced = gpufeed("produce", *tls_args(port, files), "--queue", queue, "--op", "sha256",
                       "--count", "3000")  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    results = wait_for_results(client, queue, 3000, worker=worker)
    assert len(results) == 3000 and all(len(r) == 1 for r in results.values())
    assert all(r[0][b"status"] == b"ok" and len(r[0][b"data"]) == 32 for r in results.values())
    stats = gpufeed("stats", *tls_args(port, files), "--queue", queue, "--json")
    assert stats.returncode == 0, stats.stderr
    assert '"results": 3000' in stats.stdout


def test_a_worker_that_does_not_trust_the_server_fails_at_start(tls, tmp_path, queue) -> None:
    _server, port, files = tls
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    started = time.monotonic()
    run = gpufeed("worker", *tls_args(port, files, ca=stranger), "--queue", queue,
                  "--log-format", "json", timeout=60)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "TLS handshake failed" in run.stderr and "CERTIFICATE_VERIFY_FAILED" in run.stderr
    assert time.monotonic() - started < 30


def test_tls_options_are_checked_before_connecting() -> None:
    run = gpufeed("stats", "--redis-url", "redis://127.0.0.1:1/0", "--tls-ca-cert", "ca.pem")
    assert run.returncode == 2 and "need a rediss:// URL" in run.stderr
    run = gpufeed("produce", "--redis-url", "rediss://127.0.0.1:1/0", "--tls-cert", "c.pem")
    assert run.returncode == 2 and "--tls-cert and --tls-key go together" in run.stderr


def test_a_tls_cluster(tmp_path, start_worker) -> None:
    files = make_tls_files(tmp_path)
    binary = tls_binary(files)
    if binary is None:  # only the embedded server, built without TLS, is at hand
        pytest.skip("no Redis server binary built with TLS (Debian's redis-server is)")
    tls_ports = free_ports(3)
    node_args = lambda i: [*server_tls_args(tls_ports[i], files), "--tls-cluster", "yes"]  # noqa: E731
    with LocalCluster(3, binary=binary, node_args=node_args) as cluster:
        queue = cluster.queue_per_master("tls")[1]
        url = f"rediss+cluster://127.0.0.1:{tls_ports[0]}"
        options = ["--tls-ca-cert", str(files.ca), "--tls-cert", str(files.client_cert),
                   "--tls-key", str(files.client_key)]  # fmt: skip
        client = RedisTarget(url, *options[1::2]).connect()
        # with tls-cluster on, the cluster announces its TLS ports: every connection is TLS
        assert {n.port for n in client.get_primaries()} == set(tls_ports)
        worker = start_worker(*options, url=url, queue_name=queue)
        ids = xadd_all(client, keys(queue)[0], [b"t%d" % i for i in range(2000)])
        results = wait_for_results(client, queue, len(ids), worker=worker)
        assert set(results) == set(ids) and all(len(r) == 1 for r in results.values())


@pytest.mark.parametrize(
    "command", [["stats"], ["produce", "--count", "10"], ["dead", "list"],
                ["dead", "replay", "--all"], ["dead", "purge", "--yes"]],
)  # fmt: skip
def test_every_command_says_in_one_line_that_the_tls_handshake_failed(
    tls, tmp_path, command
) -> None:
    _server, port, files = tls
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    run = gpufeed(*command, *tls_args(port, files, ca=stranger), "--queue", "jobs", timeout=60)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "TLS handshake with rediss://127.0.0.1" in lines[0] and "--tls-ca-cert" in lines[0]
