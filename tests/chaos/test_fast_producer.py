"""A producer ten times faster than the worker: every worker process keeps a
bounded memory footprint, the backlog waits in Redis, and once a faster worker
takes over, every message gets exactly one result."""

from __future__ import annotations

import time

import pytest
from harness import losses_and_duplicates, settle, start_producer
from report import Row, record, sized

from conftest import keys, rss_kib, spawned_children

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

MAX_BATCH, RING = 16, 256
# user_ops:slow_echo takes 20 ms per batch, so the slow worker answers at most
# this many messages a second; the producer is paced at twelve times that, so
# that it stays over ten times faster whatever the worker really manages.
WORKER_CEILING = MAX_BATCH / 0.020
WARM_UP_S = 2.0
# The stated bound: after warm-up no worker process grows by more than this,
# however deep the backlog gets (the rings are fixed; reads stop when they fill).
RSS_GROWTH_BOUND_KIB = 16 * 1024
# Entries a worker may hold at once: a full request ring, a full response ring
# and one batch being read.
HELD_BOUND = 2 * RING + MAX_BATCH


def test_a_ten_times_faster_producer_leaves_the_backlog_in_redis(
    client, redis_server, queue, start_worker
) -> None:
    stream, out, _ = keys(queue)
    seconds = sized(8, 90)
    n = int(12 * WORKER_CEILING * seconds)
    started = time.monotonic()
    slow = start_worker("--op", "user_ops:slow_echo", "--max-batch", str(MAX_BATCH),
                        "--ring-capacity", str(RING), "--log-format", "json")  # fmt: skip
    slow.wait_ready(client, stream)
    pids = [slow.proc.pid, *spawned_children(slow.proc.pid)]
    assert len(pids) == 3  # supervisor, compute, one ingest
    producer = start_producer(redis_server.url, queue, n, seconds)
    t0 = time.monotonic()
    rss: dict[int, list[int]] = {pid: [] for pid in pids}
    lag, held, warm = [], [], 0
    while producer.is_alive():
        time.sleep(0.25)
        for pid in pids:
            rss[pid].append(rss_kib(pid))
        if time.monotonic() - t0 < WARM_UP_S:
            warm += 1
        group = client.xinfo_groups(stream)[0]
        held.append(group["pending"])  # read by the worker, not yet answered
        lag.append(group["lag"])  # not yet read: waiting in Redis (Redis >= 7)
    produce_s = time.monotonic() - t0
    assert producer.exitcode == 0
    answered, unread = client.xlen(out), client.xinfo_groups(stream)[0]["lag"]
    ratio = n / answered
    growth = {pid: max(s[warm:]) - s[warm - 1] for pid, s in rss.items()}
    assert slow.terminate() == 0  # a clean drain of the little it holds

    # A fast worker under the same consumer name re-reads what the slow one held.
    fast = start_worker("--max-batch", "256")
    ids = [entry_id for entry_id, _ in client.xrange(stream)]
    assert len(ids) == n
    settle(client, queue, n, fast)
    lost, duplicated = losses_and_duplicates(client, queue, ids)
    peak_mib = max(max(s) for s in rss.values()) / 1024
    record(Row("producer 10x faster than the worker", n, lost, duplicated,
               time.monotonic() - started,
               f"{ratio:.0f}x the worker's rate for {produce_s:.0f} s; unread in Redis "
               f"{unread:,}; worker held ≤ {max(held)}; RSS growth after warm-up "
               f"≤ {max(growth.values()) / 1024:.1f} MiB (peak {peak_mib:.0f} MiB)"))  # fmt: skip
    assert ratio >= 10
    assert max(held) <= HELD_BOUND, held
    assert all(g <= RSS_GROWTH_BOUND_KIB for g in growth.values()), growth
    assert unread >= n - answered - HELD_BOUND  # the backlog waits in Redis, unread
    assert lag[-1] > lag[len(lag) // 2] > 0  # and it kept growing
    assert (lost, duplicated) == (0, 0)
