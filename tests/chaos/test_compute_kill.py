"""SIGKILL of the compute process alone: the supervisor survives and restarts it."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from harness import finish, start_producer
from report import Row, record, sized

from conftest import WorkerProcess, keys, results_by_src

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


def compute_pids(worker: WorkerProcess) -> list[int]:
    """Pids of every compute process the worker has started, oldest first."""
    return [e["pid"] for e in worker.events("compute started")]


def test_compute_process_sigkill_with_the_supervisor_surviving(
    client, redis_server, queue, start_worker
) -> None:
    n, kills = sized(20_000, 200_000), sized(2, 5)
    rng = random.Random(2)
    started = time.monotonic()
    worker = start_worker("--max-batch", "256", "--log-format", "json")
    worker.wait_ready(client, keys(queue)[0])
    producer = start_producer(redis_server.url, queue, n, kills * 2.0 + 2.0)
    for k in range(kills):
        time.sleep(rng.uniform(0.8, 2.0))
        deadline = time.monotonic() + 60
        while len(compute_pids(worker)) <= k and time.monotonic() < deadline:
            time.sleep(0.05)  # the previous restart's compute process is not up yet
        os.kill(compute_pids(worker)[k], signal.SIGKILL)
    lost, duplicated = finish(client, queue, n, producer, worker)
    restarts = worker.log().count('"child died; restarting all children"')
    record(Row("compute process SIGKILLed, supervisor restarts it", n, lost, duplicated,
               time.monotonic() - started, f"{kills} kills, {restarts} restarts"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
    # Killed from outside, the compute process accuses none of the entries it held
    # (worker/crashlog.py): every one is answered as if nothing had happened.
    statuses = {r[0][b"status"] for r in results_by_src(client, queue).values()}
    assert statuses == {b"ok"} and client.xlen(keys(queue)[2]) == 0
    assert worker.proc.poll() is None  # the supervisor itself never died
    assert restarts == kills and "killed by SIGKILL" in worker.log()
