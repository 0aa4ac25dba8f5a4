"""SIGKILL of the compute process alone: the supervisor survives and restarts it."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time

import pytest
from report import Row, record, sized
from test_kill_storm import losses_and_duplicates, produce

from conftest import keys

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]
_CTX = mp.get_context("spawn")


def compute_pids(log: str) -> list[int]:
    """Pids of every compute process the worker has started, oldest first."""
    events = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [e["pid"] for e in events if e.get("event") == "compute started"]


def test_compute_process_sigkill_with_the_supervisor_surviving(
    client, redis_server, queue, start_worker
) -> None:
    n, kills = sized(20_000, 200_000), sized(2, 5)
    rng = random.Random(2)
    started = time.monotonic()
    worker = start_worker("--max-batch", "256", "--log-format", "json")
    worker.wait_ready(client, keys(queue)[0])
    done: mp.Queue = _CTX.Queue()
    producer = _CTX.Process(target=produce, args=(redis_server.url, keys(queue)[0], n,
                                                  n / (kills * 2.0 + 2.0), done))  # fmt: skip
    producer.start()
    for k in range(kills):
        time.sleep(rng.uniform(0.8, 2.0))
        deadline = time.monotonic() + 60
        while len(compute_pids(worker.log())) <= k and time.monotonic() < deadline:
            time.sleep(0.05)  # the previous restart's compute process is not up yet
        os.kill(compute_pids(worker.log())[k], signal.SIGKILL)
    producer.join(300)
    assert done.get(timeout=10) == n
    ids = [entry_id for entry_id, _ in client.xrange(keys(queue)[0])]
    deadline = time.monotonic() + 300
    while client.xlen(keys(queue)[1]) < n and time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)
    lost, duplicated = losses_and_duplicates(client, queue, ids)
    restarts = worker.log().count('"child died; restarting all children"')
    record(Row("compute process SIGKILLed, supervisor restarts it", n, lost, duplicated,
               time.monotonic() - started, f"{kills} kills, {restarts} restarts"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
    assert worker.proc.poll() is None  # the supervisor itself never died
    assert restarts == kills and "killed by SIGKILL" in worker.log()
