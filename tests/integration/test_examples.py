"""The producers in examples/ (redis-cli and Node.js) against a real server and worker."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import keys
from gpufeed.embedded import find_server_binary

pytestmark = pytest.mark.timeout(180)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def redis_cli() -> str:
    """redis-cli or valkey-cli: on PATH, or next to the server binary the tests use."""
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found:
        return found
    server = Path(find_server_binary())
    for name in ("valkey-cli", "redis-cli"):
        if (server.parent / name).exists():
            return str(server.parent / name)
    pytest.fail("no redis-cli or valkey-cli next to the server binary or on PATH")


def test_redis_cli_producer_gets_both_results_byte_for_byte(
    redis_server, client, queue, start_worker
) -> None:
    start_worker()
    reply = f"gpufeed:{{{queue}}}:reply:test"
    env = {**os.environ, "REDIS_CLI": redis_cli(), "REDIS_HOST": "127.0.0.1",
           "REDIS_PORT": str(redis_server.port)}  # fmt: skip
    run = subprocess.run(
        ["sh", str(EXAMPLES / "redis-cli" / "produce.sh"), queue, reply],
        env=env, capture_output=True, timeout=90,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert b'"cli-sha"' in run.stdout and b'"cli-vec"' in run.stdout, "it prints both results"
    results = {f[b"cid"]: f for _, f in client.xrange(reply)}
    assert set(results) == {b"cli-sha", b"cli-vec"}
    assert results[b"cli-sha"][b"status"] == b"ok"
    assert results[b"cli-sha"][b"data"] == hashlib.sha256(b"abc").digest()
    assert results[b"cli-vec"][b"data"] == struct.pack("<3f", 1.5, 2.5, 3.5)
    sent = [f for _, f in client.xrange(keys(queue)[0])]
    assert sent[1][b"data"] == struct.pack("<6f", 1, 2, 3, 0.5, 0.5, 0.5), "binary-safe input"


@pytest.fixture(scope="session")
def node_example() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js is not installed")
    folder = EXAMPLES / "node"
    if not (folder / "node_modules" / "redis").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder, check=True, timeout=150)
    return folder


def test_node_producer_gets_every_result_byte_for_byte(
    node_example, redis_server, client, queue, start_worker
) -> None:
    start_worker()
    run = subprocess.run(
        ["node", "producer.mjs", queue], cwd=node_example, capture_output=True, text=True,
        env={**os.environ, "REDIS_URL": redis_server.url}, timeout=90,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == 4 and all(line["ok"] for line in lines), lines

    # Check the worker's answers here too, independently of the script's own check.
    sent = {f[b"cid"].decode(): f for _, f in client.xrange(keys(queue)[0])}
    for line in lines:
        data = sent[line["cid"]][b"data"]
        if line["op"] == "sha256":
            expected = hashlib.sha256(data).digest()
        else:
            k = len(data) // 8
            a, b = struct.unpack(f"<{k}f", data[: 4 * k]), struct.unpack(f"<{k}f", data[4 * k :])
            expected = struct.pack(f"<{k}f", *(x + y for x, y in zip(a, b, strict=True)))
        assert bytes.fromhex(line["data_hex"]) == expected, line
    assert list(client.scan_iter(f"gpufeed:{{{queue}}}:reply:*")) == [], "it cleans up"
