"""A ring header damaged mid-run: the side reading it raises ``RingCorrupt``, the
supervisor rebuilds the rings, and every message still gets exactly one result
(what was in the rings is still pending in Redis and is read again)."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
from harness import finish, start_producer
from report import Row, record, sized

from conftest import WorkerProcess, keys
from gpufeed.ring import _header as L

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

# (which ring of the pair, what is written): the magic stays damaged until the
# ring is dropped; a wild cursor is written over and over, as a stray writer
# would, since the rightful side rewrites its cursor on its next publish.
DAMAGE = [("requests", "magic"), ("responses", "head"), ("requests", "head")]


def _scribble(fd: int, how: str) -> None:
    if how == "magic":
        os.pwrite(fd, b"SCRIBBLE", 0)
    else:
        os.pwrite(fd, struct.pack("<Q", 1 << 62), L.W_HEAD * 8)


def _wait_for(worker: WorkerProcess, event: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(worker.events(event)) < count:
        assert time.monotonic() < deadline, f"no {event!r} #{count}:\n{worker.log()[-3000:]}"
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.05)


def test_a_corrupted_ring_header_is_detected_and_the_rings_rebuilt(
    client, redis_server, queue, start_worker
) -> None:
    n = sized(10_000, 200_000)
    rng = random.Random(6)
    started = time.monotonic()
    worker = start_worker("--max-batch", "256", "--log-format", "json")
    worker.wait_ready(client, keys(queue)[0])
    producer = start_producer(redis_server.url, queue, n, len(DAMAGE) * 2.0 + 2.0)
    for k, (ring, how) in enumerate(DAMAGE):
        time.sleep(rng.uniform(0.8, 1.5))
        _wait_for(worker, "rings created", k + 1)
        requests, responses = worker.events("rings created")[k]["rings"][0]
        name = requests if ring == "requests" else responses
        # Another process (this one) writes straight into the shared segment.
        with open(f"/dev/shm/{name}", "r+b", buffering=0) as segment:
            deadline = time.monotonic() + 30
            while len(worker.events("child died; restarting all children")) <= k:
                assert time.monotonic() < deadline, worker.log()[-3000:]
                _scribble(segment.fileno(), how)
                time.sleep(0.005)
    lost, duplicated = finish(client, queue, n, producer, worker)
    restarts = worker.events("child died; restarting all children")
    found = worker.events("ring corrupt; exiting so that the supervisor rebuilds the rings")
    record(Row("ring header corrupted by another process", n, lost, duplicated,
               time.monotonic() - started,
               f"{len(DAMAGE)} damages (magic, cursors), {len(restarts)} rebuilds"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
    reasons = [r["reason"] for r in restarts]
    assert reasons == ["found a ring corrupt"] * len(DAMAGE), worker.log()[-6000:]
    assert {f["field"] for f in found} == {"magic", "cursors"}
