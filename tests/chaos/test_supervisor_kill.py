"""SIGKILL of the supervisor alone: its children die with it, and a successor under the
same consumer name answers everything they held."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

import pytest
from harness import finish, start_producer
from report import Row, record, sized

from conftest import WorkerProcess
from gpufeed.ring import process_alive

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]
# How soon the children must be gone once their supervisor is.
ORPHAN_GRACE_S = 5.0


def children_of(worker: WorkerProcess) -> list[int]:
    return [e["pid"] for e in (*worker.events("compute started"),
                               *worker.events("ingest started"))]  # fmt: skip


def test_supervisor_sigkill_leaves_no_child_serving(client, redis_server, queue, tmp_path) -> None:
    n, kills = sized(20_000, 200_000), sized(2, 5)
    rng = random.Random(5)
    started = time.monotonic()
    producer = start_producer(redis_server.url, queue, n, kills * 2.0 + 2.0)
    args = ("--max-batch", "256", "--ingest-procs", "2", "--log-format", "json")
    worker = WorkerProcess(redis_server.url, queue, tmp_path, *args)
    slowest = 0.0
    try:
        for _ in range(kills):
            deadline = time.monotonic() + 60
            while len(children_of(worker)) < 3:
                assert time.monotonic() < deadline, worker.log()[-3000:]
                time.sleep(0.05)
            time.sleep(rng.uniform(0.8, 2.0))
            children = children_of(worker)
            os.kill(worker.proc.pid, signal.SIGKILL)  # the supervisor alone
            killed = time.monotonic()
            while any(process_alive(pid) for pid in children):
                assert time.monotonic() - killed < ORPHAN_GRACE_S, "a child outlived it"
                time.sleep(0.02)
            slowest = max(slowest, time.monotonic() - killed)
            worker.proc.wait(10)
            worker = WorkerProcess(redis_server.url, queue, tmp_path, *args)
        lost, duplicated = finish(client, queue, n, producer, worker)
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            producer.kill()
    record(Row("supervisor alone SIGKILLed, its children die with it, successor restarted",
               n, lost, duplicated, time.monotonic() - started,
               f"{kills} kills; children gone {slowest * 1000:.0f} ms after, at most"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
