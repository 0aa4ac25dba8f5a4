"""What every chaos scenario does: start a paced producer, wait for the results
to settle, count the inputs without a result and the results beyond the first."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import redis

from conftest import WorkerProcess, keys, results_by_src
from gpufeed.bench.e2e import produce

_CTX = mp.get_context("spawn")


def start_producer(url: str, queue: str, n: int, seconds: float) -> Any:
    """A process writing ``n`` 64-byte messages to the queue over about ``seconds``."""
    producer = _CTX.Process(target=produce, args=(url, keys(queue)[0], n, 64, n / seconds))
    producer.start()
    return producer


def settle(
    client: redis.Redis, queue: str, n: int, worker: WorkerProcess, timeout: float = 300
) -> None:
    """Wait for ``n`` results (the worker must stay up), then a moment more, so that a
    duplicate still on its way would arrive. Tolerates a server that is restarting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        try:
            if client.xlen(keys(queue)[1]) >= n:
                time.sleep(1.0)
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not all {n} answered:\n{worker.log()[-3000:]}")


def finish(
    client: redis.Redis, queue: str, n: int, producer: Any, worker: WorkerProcess
) -> tuple[int, int]:
    """After the havoc: the producer wrote all ``n`` inputs; wait for the results,
    then count (lost, duplicated)."""
    producer.join(300)
    assert producer.exitcode == 0
    ids = [entry_id for entry_id, _ in client.xrange(keys(queue)[0])]
    assert len(ids) == n
    settle(client, queue, n, worker)
    return losses_and_duplicates(client, queue, ids)


def losses_and_duplicates(client: redis.Redis, queue: str, ids: list[bytes]) -> tuple[int, int]:
    results = results_by_src(client, queue)
    lost = sum(1 for i in ids if i not in results)
    duplicated = sum(len(r) - 1 for r in results.values())
    return lost, duplicated
