"""Killing workers while a producer writes: nothing lost, nothing answered twice."""

from __future__ import annotations

import random
import time

import pytest
from harness import finish, start_producer
from report import Row, record, sized

from conftest import WorkerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


def test_sigkill_storm_of_the_whole_worker(client, redis_server, queue, tmp_path) -> None:
    n, kills = sized(20_000, 200_000), sized(2, 5)
    rng = random.Random(8)
    started = time.monotonic()
    # Paced so the run lasts long enough for the kills to land mid-stream.
    producer = start_producer(redis_server.url, queue, n, kills * 2.0 + 2.0)
    worker = WorkerProcess(redis_server.url, queue, tmp_path, "--max-batch", "256")
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.8, 2.0))
            worker.kill_group()  # supervisor and children at once: no drain, no goodbye
            worker = WorkerProcess(redis_server.url, queue, tmp_path, "--max-batch", "256")
        lost, duplicated = finish(client, queue, n, producer, worker)
    finally:
        worker.stop()
    record(Row("worker process group SIGKILLed mid-run, restarted", n, lost, duplicated,
               time.monotonic() - started, f"{kills} kills"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
