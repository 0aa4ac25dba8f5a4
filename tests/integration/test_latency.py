"""The unloaded path: what one message costs, and the stage timestamps that
``gpufeed bench latency`` reads from a worker run with ``--trace-timings``."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis

from conftest import keys, wait_for_results
from gpufeed.bench.latency import STAGES, LatencyBenchConfig, Prober, stage_stamps
from gpufeed.embedded import RedisServer


def xreadgroup_calls(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


def answered_within(client: redis.Redis, queue: str, n: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while client.xlen(keys(queue)[1]) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.mark.timeout(120)
def test_a_lone_message_is_read_once_and_once_looked_behind(
    client: redis.Redis, queue: str, start_worker
) -> None:
    """The read it woke, and one look for the rest of a burst while the message
    computes; then the commit, and a blocking read again. No read delays it on
    its way to the compute process, and none runs while it computes."""
    stream = keys(queue)[0]
    # A long block, so that no read times out (and counts) while we watch.
    worker = start_worker("--backend", "cpu", "--op", "echo", "--max-wait-ms", "20000",
                          "--reclaim-interval-ms", "600000")  # fmt: skip
    worker.wait_ready(client, stream)
    for n in range(1, 4):
        client.xadd(stream, {"data": b"warm"})
        wait_for_results(client, queue, n)
    time.sleep(0.2)  # the worker is back in its blocking read
    for n in range(4, 7):
        before = xreadgroup_calls(client)
        client.xadd(stream, {"data": b"alone"})
        assert answered_within(client, queue, n, 2.0)
        time.sleep(0.2)
        assert xreadgroup_calls(client) - before == 2
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    client.xadd(stream, {"data": b"ends the blocking read, and with it the drain"})
    assert worker.proc.wait(30) == 0


@pytest.mark.timeout(120)
def test_a_lone_message_is_answered_at_once_when_a_reclaim_is_due_behind_it(
    client: redis.Redis, queue: str, start_worker
) -> None:
    """Messages 100 ms apart, reclaims due every 35 ms, 20 ms of compute: the look
    for more behind each message finds a reclaim due, and the message is still
    computing after it. That must not leave the message's result waiting behind
    the next blocking read (3 s)."""
    stream = keys(queue)[0]
    worker = start_worker("--backend", "cpu", "--op", "user_ops:slow_echo",
                          "--max-wait-ms", "3000", "--reclaim-interval-ms", "35")  # fmt: skip
    worker.wait_ready(client, stream)
    for n in range(1, 11):
        time.sleep(0.1)
        client.xadd(stream, {"data": b"alone"})
        assert answered_within(client, queue, n, 1.0), f"message {n} waited for a read"
    client.xadd(stream, {"data": b"wakes the read, so the worker drains at once"})
    assert worker.terminate(30) == 0


@pytest.mark.timeout(120)
def test_behind_a_slow_op_the_worker_waits_for_answers_instead_of_polling_redis(
    client: redis.Redis, queue: str, start_worker
) -> None:
    """A backlog read at once, then 2 s of compute (20 batches of 100 ms): the
    ingest process waits for each answer while the compute process has whole
    batches queued, rather than reading an empty stream every few milliseconds
    (CPU a model on the CPU needs). About one read per batch, not 300."""
    stream = keys(queue)[0]
    worker = start_worker("--backend", "cpu", "--op", "user_ops:model_paced",
                          "--max-batch", "8", "--reclaim-interval-ms", "60000")  # fmt: skip
    worker.wait_ready(client, stream)
    pipe = client.pipeline(transaction=False)
    for i in range(160):
        pipe.xadd(stream, {"data": b"%d" % i})
    pipe.execute()
    before = xreadgroup_calls(client)
    wait_for_results(client, queue, 160, timeout=60)
    reads = xreadgroup_calls(client) - before
    assert reads <= 60, f"{reads} reads for 20 batches"
    assert worker.terminate(30) == 0


@pytest.mark.timeout(120)
def test_traced_stages_follow_each_message_through_every_process(
    redis_server: RedisServer, queue: str, start_worker
) -> None:
    stream, out, _ = keys(queue)
    worker = start_worker("--backend", "cpu", "--op", "echo", "--trace-timings")
    worker.wait_ready(redis.Redis.from_url(redis_server.url), stream)
    prober = Prober(redis_server.url, stream, out, LatencyBenchConfig(gap_ms=0.0))
    try:
        ids = prober.probe(30)
    finally:
        prober.close()
    assert worker.terminate() == 0  # the processes flush their records as they stop
    stamps = stage_stamps(worker.log_path)
    assert set(ids) <= set(stamps), "every message's batch was logged by both processes"
    for i in ids:
        at = {**stamps[i], "sent": prober.sent[i], "arrived": prober.arrived[i]}
        # One clock across processes: each stage starts where the one before ended.
        chain = [at[start] for _, start, _ in STAGES[:-1]] + [at["committed"]]
        assert chain == sorted(chain), f"{i!r}: {at}"
        assert at["arrived"] > at["computed"], "the client cannot have it before it exists"


def test_an_untraced_worker_logs_no_timings(client: redis.Redis, queue: str, start_worker) -> None:
    stream = keys(queue)[0]
    worker = start_worker("--backend", "cpu", "--op", "echo")
    worker.wait_ready(client, stream)
    client.xadd(stream, {"data": b"x"})
    wait_for_results(client, queue, 1)
    assert worker.terminate() == 0
    assert not worker.events("batch timings") and not worker.events("compute timings")
