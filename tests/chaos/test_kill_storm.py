"""Killing workers while a producer writes: nothing lost, nothing answered twice."""

from __future__ import annotations

import multiprocessing as mp
import random
import time

import pytest
from report import Row, record, sized

from conftest import WorkerProcess, keys, results_by_src
from gpufeed.worker.connect import RedisTarget
from gpufeed.worker.produce import xadd_all

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]
_CTX = mp.get_context("spawn")


def produce(url: str, stream: str, n: int, rate: float, ids_out) -> None:  # type: ignore[no-untyped-def]
    ids = xadd_all(RedisTarget(url).connect(), stream, [b"m%d" % i for i in range(n)], rate=rate)
    ids_out.put(len(ids))


def losses_and_duplicates(client, queue: str, ids: list[bytes]) -> tuple[int, int]:
    results = results_by_src(client, queue)
    lost = sum(1 for i in ids if i not in results)
    duplicated = sum(len(r) - 1 for r in results.values())
    return lost, duplicated


def test_sigkill_storm_of_the_whole_worker(client, redis_server, queue, tmp_path) -> None:
    n, kills = sized(20_000, 200_000), sized(2, 5)
    stream = keys(queue)[0]
    rng = random.Random(8)
    started = time.monotonic()
    done: mp.Queue = _CTX.Queue()
    # Paced so the run lasts long enough for the kills to land mid-stream.
    rate = n / (kills * 2.0 + 2.0)
    producer = _CTX.Process(target=produce, args=(redis_server.url, stream, n, rate, done))
    producer.start()
    worker = WorkerProcess(redis_server.url, queue, tmp_path, "--max-batch", "256")
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.8, 2.0))
            worker.kill_group()  # supervisor and children at once: no drain, no goodbye
            worker = WorkerProcess(redis_server.url, queue, tmp_path, "--max-batch", "256")
        producer.join(300)
        assert done.get(timeout=10) == n
        ids = [entry_id for entry_id, _ in client.xrange(stream)]
        deadline = time.monotonic() + 300
        while client.xlen(keys(queue)[1]) < n and time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.log()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)  # would a duplicate still arrive?
        lost, duplicated = losses_and_duplicates(client, queue, ids)
    finally:
        worker.stop()
    record(Row("worker process group SIGKILLed mid-run, restarted", n, lost, duplicated,
               time.monotonic() - started, f"{kills} kills"))  # fmt: skip
    assert len(ids) == n
    assert (lost, duplicated) == (0, 0)
