"""Priority levels against a real worker and server: streams gpufeed:{q}:in, in:1, in:2..."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

import gpufeed
from conftest import keys, wait_for_results
from gpufeed.errors import ConfigError
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(180)

SLOW = ("--backend", "cpu", "--op", "user_ops:slow_echo", "--max-batch", "16")


def level(queue: str, k: int) -> str:
    return keys(queue)[0] + (f":{k}" if k else "")


def answered_payloads(client: redis.Redis, queue: str) -> list[bytes]:
    """Result data (echoed payloads) in the order the results were committed."""
    return [f[b"data"] for _, f in client.xrange(keys(queue)[1])]


def wait_until(check, timeout: float = 60, worker=None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, worker.log()[-3000:] if worker else "timed out"
        if worker is not None:
            assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.02)


def nothing_pending(client: redis.Redis, queue: str, levels: int) -> bool:
    return all(client.xpending(level(queue, k), "gpufeed")["pending"] == 0 for k in range(levels))


def test_a_higher_level_overtakes_a_backlog(client, queue, start_worker) -> None:
    low = [b"low %d" % i for i in range(1500)]
    xadd_all(client, level(queue, 0), low)
    worker = start_worker(*SLOW, "--priorities", "3")
    wait_until(lambda: client.xlen(keys(queue)[1]) >= 32, worker=worker)  # the backlog moves
    high = [b"high %d" % i for i in range(20)]
    xadd_all(client, level(queue, 2), high)
    wait_for_results(client, queue, len(low) + len(high), worker=worker)
    order = answered_payloads(client, queue)
    assert sorted(order) == sorted(low + high), "one result each"
    last_high = max(order.index(h) for h in high)
    # Sent when at most a few hundred of the 1,500 were answered, they jump the rest.
    assert last_high < 600, f"the last urgent message was answered {last_high}th"
    assert nothing_pending(client, queue, 3)


def test_lower_levels_keep_their_share_under_a_backlog_above(client, queue, start_worker) -> None:
    low, high = [b"low %d" % i for i in range(400)], [b"high %d" % i for i in range(800)]
    xadd_all(client, level(queue, 0), low)
    xadd_all(client, level(queue, 1), high)
    worker = start_worker(*SLOW, "--priorities", "2", "--lowest-share", "0.25")
    wait_for_results(client, queue, len(low) + len(high), worker=worker)
    first = answered_payloads(client, queue)[:400]
    lows = sum(p.startswith(b"low") for p in first)
    # A quarter of every batch of 16 is kept for level 0 while level 1 has a backlog.
    assert 60 <= lows <= 160, f"{lows} of the first 400 results were level 0's"
    assert nothing_pending(client, queue, 2)


def test_an_idle_worker_wakes_for_any_level(client, queue, start_worker) -> None:
    worker = start_worker("--backend", "cpu", "--priorities", "3")
    worker.wait_ready(client, level(queue, 2))
    time.sleep(0.3)  # blocked in its read
    for n, k in enumerate((1, 2, 0), start=1):
        client.xadd(level(queue, k), {"data": b"level %d" % k})
        wait_for_results(client, queue, n, timeout=30, worker=worker)
    assert sorted(answered_payloads(client, queue)) == [b"level 0", b"level 1", b"level 2"]


def test_bad_input_reclaim_and_dead_letters_per_level(client, queue, start_worker) -> None:
    stream = level(queue, 1)
    client.xgroup_create(stream, "gpufeed", id="0", mkstream=True)
    orphan = client.xadd(stream, {"data": b"left by a dead consumer"})
    client.xreadgroup("gpufeed", "ghost", {stream: ">"})  # pending for a consumer that is gone
    bad = client.xadd(stream, {"op": "no-such-op", "data": b"x"})
    worker = start_worker(
        "--backend", "cpu", "--priorities", "2",
        "--visibility-timeout-ms", "200", "--reclaim-interval-ms", "100",
    )  # fmt: skip
    results = wait_for_results(client, queue, 2, worker=worker)
    assert results[orphan][0][b"status"] == b"ok"
    assert results[bad][0][b"status"] == b"error"
    [(_, dead)] = client.xrange(keys(queue)[2])
    assert dead[b"src"] == bad and dead[b"op"] == b"no-such-op"
    wait_until(lambda: nothing_pending(client, queue, 2), worker=worker)
    assert worker.terminate() == 0


def test_stats_and_the_client_per_level(redis_server, client, queue, start_worker) -> None:
    worker = start_worker("--backend", "cpu", "--op", "user_ops:slow_echo", "--priorities", "2")
    worker.wait_ready(client, level(queue, 1))
    with gpufeed.Client(redis_server.url, queue) as c:
        assert c.submit(b"urgent", priority=1).result(60) == b"urgent"
        assert c.submit(b"plain").result(60) == b"plain"
        with pytest.raises(ConfigError, match="priority level 16"):
            c.submit(b"x", priority=16)
    assert worker.terminate() == 0  # a backlog the worker does not take
    xadd_all(client, level(queue, 1), [b"waiting"] * 7)
    out = subprocess.run(
        [sys.executable, "-m", "gpufeed", "stats", "--redis-url", redis_server.url,
         "--queue", queue, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    stats = json.loads(out)
    assert [lv["level"] for lv in stats["levels"]] == [0, 1]
    assert [lv["lag"] for lv in stats["levels"]] == [0, 7]
    assert stats["lag"] == 7 and stats["pending"] == 0
