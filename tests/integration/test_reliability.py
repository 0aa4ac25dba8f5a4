"""The Streams behaviours gpufeed relies on, and what happens when things die."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest
import redis

from conftest import (
    WorkerProcess,
    keys,
    results_by_src,
    rss_kib,
    spawned_children,
    wait_for_results,
)
from gpufeed.embedded import RedisServer, free_port
from gpufeed.errors import QueueMisconfigured
from gpufeed.loadgen.produce import xadd_all
from gpufeed.packing import ResultEntry, Results
from gpufeed.worker.commit import COMMIT_LUA, Committer
from gpufeed.worker.config import WorkerConfig

pytestmark = [pytest.mark.timeout(240), pytest.mark.chaos]


def read_as(client: redis.Redis, queue: str, consumer: str, count: int) -> list[bytes]:
    """Take entries as another (or an earlier) consumer and never answer them."""
    stream = keys(queue)[0]
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(stream, "gpufeed", id="0", mkstream=True)
    reply = client.xreadgroup("gpufeed", consumer, {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def assert_one_result_each(results, ids) -> None:
    assert set(results) == set(ids)
    assert all(len(results[i]) == 1 and results[i][0][b"status"] == b"ok" for i in ids)


def test_pending_history_is_reread_on_restart(client, queue, start_worker) -> None:
    ids = xadd_all(client, keys(queue)[0], [b"h%d" % i for i in range(300)])
    held = read_as(client, queue, "testhost-0", 100)  # what a killed worker had read
    worker = start_worker("--visibility-timeout-ms", "600000")  # no reclaim could do it
    results = wait_for_results(client, queue, 300, timeout=30, worker=worker)
    assert_one_result_each(results, ids)
    assert set(held) <= set(results)


def test_xautoclaim_takes_over_after_the_visibility_timeout(client, queue, start_worker) -> None:
    stream = keys(queue)[0]
    xadd_all(client, stream, [b"c%d" % i for i in range(50)])
    held = read_as(client, queue, "ghost", 50)
    taken_at = time.monotonic()
    worker = start_worker("--visibility-timeout-ms", "1500")
    results = wait_for_results(client, queue, 50, timeout=30, worker=worker)
    assert time.monotonic() - taken_at >= 1.5, "claimed before the visibility timeout"
    assert_one_result_each(results, held)
    assert client.xpending(stream, "gpufeed")["pending"] == 0


def test_too_many_deliveries_go_to_the_dead_letter_stream(client, queue, start_worker) -> None:
    stream, _out_key, dead_key = keys(queue)
    (entry_id,) = xadd_all(client, stream, [b"cursed"])
    read_as(client, queue, "ghost", 1)
    client.xclaim(stream, "gpufeed", "ghost", 0, [entry_id], retrycount=9)  # 9 deliveries so far
    fine = xadd_all(client, stream, [b"fine"])[0]
    worker = start_worker("--visibility-timeout-ms", "100", "--max-deliveries", "5")
    results = wait_for_results(client, queue, 2, timeout=30, worker=worker)
    assert results[entry_id][0][b"status"] == b"error"
    assert b"more than --max-deliveries 5" in results[entry_id][0][b"error"]
    ((_, dead),) = client.xrange(dead_key)
    assert dead[b"src"] == entry_id and dead[b"data"] == b"cursed"
    assert int(dead[b"deliveries"]) == 10
    assert results[fine][0][b"status"] == b"ok"
    assert client.xpending(stream, "gpufeed")["pending"] == 0


def test_a_commit_skips_entries_another_consumer_reclaimed(client, queue) -> None:
    config = WorkerConfig(queue=queue)
    stream = config.in_key
    ids = xadd_all(client, stream, [b"a", b"b"])
    read_as(client, queue, "slow", 2)
    client.xclaim(stream, "gpufeed", "fast", 0, [ids[1]])  # "fast" reclaimed the second
    committer = Committer(client, config, "slow")
    entries = [ResultEntry(i, "ok", b"r") for i in ids]
    assert committer.commit(entries)[:2] == (1, 1)
    assert [f[b"src"] for _, f in client.xrange(config.out_key)] == [ids[0]]
    (row,) = client.xpending_range(stream, "gpufeed", "-", "+", 10)
    assert (row["message_id"], row["consumer"]) == (ids[1], b"fast")
    assert committer.commit(entries)[:2] == (0, 2), "a retried commit writes nothing twice"
    assert client.xlen(config.out_key) == 1


def test_a_commit_answers_entries_in_any_order_and_skips_a_reclaimed_one_mid_batch(
    client, queue
) -> None:
    # The script matches entries to XPENDING's rows in step; entries out of id order
    # (a reclaimed entry among newer reads) and a row missing mid-batch take its
    # other path, and must be answered exactly as in order.
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"%d" % i for i in range(40)])
    read_as(client, queue, "me", 40)
    client.xclaim(config.in_key, "gpufeed", "other", 0, [ids[20]])
    order = ids[30:] + ids[:30]  # the oldest last, as after a reclaim
    counts = Committer(client, config, "me").commit([ResultEntry(i, "ok", b"r") for i in order])
    assert counts[:2] == (39, 1)
    answered = [f[b"src"] for _, f in client.xrange(config.out_key)]
    assert answered == [i for i in order if i != ids[20]], "one result each, in commit order"
    (row,) = client.xpending_range(config.in_key, "gpufeed", "-", "+", 10)
    assert (row["message_id"], row["consumer"]) == (ids[20], b"other")


def test_a_commit_mixes_plain_cid_reply_to_and_error_records(client, queue) -> None:
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"p", b"c", b"r", b"e"])
    read_as(client, queue, "me", 4)
    reply = f"{config.in_key}:mine".encode()
    entries = [
        ResultEntry(ids[0], "ok", b"plain"),
        ResultEntry(ids[1], "ok", b"with-cid", cid=b"c-1"),
        ResultEntry(ids[2], "expired", b"too late", reply_to=reply),
        ResultEntry(ids[3], "error", b"bad input", cid=b"c-3"),
    ]
    assert Committer(client, config, "me").commit(entries) == (4, 0, 1, 1)
    out = {f[b"src"]: f for _, f in client.xrange(config.out_key)}
    assert out[ids[0]] == {b"src": ids[0], b"status": b"ok", b"data": b"plain"}
    assert out[ids[1]] == {b"src": ids[1], b"status": b"ok", b"data": b"with-cid", b"cid": b"c-1"}
    assert out[ids[3]][b"error"] == b"bad input" and out[ids[3]][b"cid"] == b"c-3"
    [(_, mine)] = client.xrange(reply)
    assert mine == {b"src": ids[2], b"status": b"expired", b"error": b"too late"}
    [(_, dead)] = client.xrange(config.dead_key)
    assert (dead[b"src"], dead[b"data"], dead[b"error"]) == (ids[3], b"e", b"bad input")
    assert client.xpending(config.in_key, "gpufeed")["pending"] == 0


@pytest.mark.parametrize("which", ["out_key", "dead_key"])
def test_an_output_or_dead_letter_key_of_another_type_refuses_the_commit_before_any_write(
    client, queue, which
) -> None:
    """Redis keeps what a script wrote before an error: an XADD to a wrongly typed key
    half-way through would leave results written and unacknowledged, and the retry
    would write them again. The commit is refused whole, then goes through once the
    key is fixed, with one result each."""
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"a", b"b", b"c"])
    read_as(client, queue, "me", 3)
    broken = getattr(config, which)
    client.set(broken, b"not a stream")
    entries = [ResultEntry(ids[0], "ok", b"r0"), ResultEntry(ids[1], "error", b"bad", cid=b"c"),
               ResultEntry(ids[2], "ok", b"r2", cid=b"c2")]  # fmt: skip
    committer = Committer(client, config, "me")
    with pytest.raises(QueueMisconfigured, match=f"{re.escape(broken)} is not a stream"):
        committer.commit(entries)
    for key in (config.out_key, config.dead_key):
        assert key == broken or client.xlen(key) == 0, "nothing was written"
    assert client.xpending(config.in_key, "gpufeed")["pending"] == 3
    client.delete(broken)
    assert committer.commit(entries) == (3, 0, 1, 0)
    assert committer.commit(entries) == (0, 3, 0, 0)  # a retried commit writes nothing twice
    assert sorted(f[b"src"] for _, f in client.xrange(config.out_key)) == sorted(ids)
    assert [f[b"src"] for _, f in client.xrange(config.dead_key)] == [ids[1]]


def test_a_reply_to_key_that_cannot_take_a_result_gets_an_error_on_the_output(
    client, queue
) -> None:
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"a", b"b"])
    read_as(client, queue, "me", 2)
    not_a_stream = f"gpufeed:{{{queue}}}:a-string".encode()
    client.set(not_a_stream, b"x")
    entries = [
        ResultEntry(ids[0], "ok", b"computed", cid=b"c-0", reply_to=not_a_stream),
        ResultEntry(ids[1], "ok", b"fine"),
    ]
    # the whole commit still happens: one error (dead-lettered), one plain result
    assert Committer(client, config, "me").commit(entries) == (2, 0, 1, 0)
    out = {f[b"src"]: f for _, f in client.xrange(config.out_key)}
    assert out[ids[0]][b"status"] == b"error" and out[ids[0]][b"cid"] == b"c-0"
    assert b"cannot write reply_to" in out[ids[0]][b"error"]
    assert b"WRONGTYPE" in out[ids[0]][b"error"]
    assert out[ids[1]][b"data"] == b"fine"
    [(_, dead)] = client.xrange(config.dead_key)
    assert dead[b"src"] == ids[0] and dead[b"data"] == b"a"
    assert client.get(not_a_stream) == b"x"
    assert client.xpending(config.in_key, "gpufeed")["pending"] == 0


def test_a_commit_answers_hand_made_ids_of_any_width(client, queue) -> None:
    """The ownership check reads one range of ids; ids whose millisecond parts
    have different widths (hand-made, up to the largest) must all fall in it."""
    config = WorkerConfig(queue=queue)
    ids = [b"5-0", b"1750-3", b"1700000000000-0", b"1800000000000-12", b"18446744073709551615-7"]
    for entry_id in ids:
        client.xadd(config.in_key, {"data": b"x"}, id=entry_id)
    assert read_as(client, queue, "me", 10) == ids
    entries = [ResultEntry(i, "ok", b"r") for i in ids[:3]]
    entries += [ResultEntry(ids[3], "ok", b"r", cid=b"c"), ResultEntry(ids[4], "error", b"bad")]
    assert Committer(client, config, "me").commit(entries) == (5, 0, 1, 0)
    assert sorted(f[b"src"] for _, f in client.xrange(config.out_key)) == sorted(ids)
    assert client.xpending(config.in_key, "gpufeed")["pending"] == 0


def test_the_commit_script_answers_entries_outside_the_range_it_is_given(client, queue) -> None:
    """The caller's id range only saves time: an entry outside it is still
    answered if pending for us, and still skipped if not."""
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"a", b"b", b"c"])
    read_as(client, queue, "me", 2)
    read_as(client, queue, "other", 1)
    script = client.register_script(COMMIT_LUA)
    wrong = [ids[1], ids[1]]  # holds only the second entry
    args = ["gpufeed", "me", 0, "0", 3, 0, *wrong, 0, ids[0], b"r0", ids[1], b"r1", ids[2], b"r2"]
    answered, skipped, *_ = script(keys=list(keys(queue)), args=args)
    assert (answered, skipped) == (2, 1)
    assert sorted(f[b"src"] for _, f in client.xrange(config.out_key)) == ids[:2]
    (row,) = client.xpending_range(config.in_key, "gpufeed", "-", "+", 10)
    assert (row["message_id"], row["consumer"]) == (ids[2], b"other")


def test_a_wrong_ordered_hint_still_answers_every_entry_pending_for_us(client, queue) -> None:
    """``Results.ordered`` lets the commit bound its ids by the two ends; ids out
    of order under that word must still all be answered, and the others'
    entry still skipped."""
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"a", b"b", b"c", b"d", b"e"])
    read_as(client, queue, "me", 2)
    read_as(client, queue, "other", 1)
    read_as(client, queue, "me", 2)
    mixed = [ids[3], ids[0], ids[4], ids[2], ids[1]]  # ends 3 and 1: 0 and 4 lie outside
    results = Results(mixed, [b"r" + i for i in mixed], ordered=True)
    counts = Committer(client, config, "me").commit(results)
    assert (counts.answered, counts.skipped) == (4, 1)
    answered = {f[b"src"]: f[b"data"] for _, f in client.xrange(config.out_key)}
    assert answered == {i: b"r" + i for i in ids if i != ids[2]}
    (row,) = client.xpending_range(config.in_key, "gpufeed", "-", "+", 10)
    assert (row["message_id"], row["consumer"]) == (ids[2], b"other")


def test_result_streams_are_trimmed_to_about_out_maxlen(client, queue) -> None:
    config = WorkerConfig(queue=queue, out_maxlen=100)
    ids = xadd_all(client, config.in_key, [b"x"] * 1000)
    read_as(client, queue, "me", 1000)
    counts = Committer(client, config, "me").commit([ResultEntry(i, "ok", b"r") for i in ids])
    assert (counts.answered, counts.ok) == (1000, 1000)
    # "~": whole stream nodes are dropped, so a little more than 100 may stay
    assert 100 <= client.xlen(config.out_key) < 300
    assert client.xrange(config.out_key, count=1) != []
    last = client.xrevrange(config.out_key, count=1)[0][1]
    assert last[b"src"] == ids[-1], "trimming drops the oldest results, never the newest"


def test_sigkill_of_the_whole_worker_loses_nothing_and_duplicates_nothing(
    client, queue, start_worker
) -> None:
    ids = xadd_all(client, keys(queue)[0], [b"k%d" % i for i in range(30_000)])
    first = start_worker("--max-batch", "64")
    wait_for_results(client, queue, 2000, worker=first)
    first.kill_group()
    assert 2000 <= client.xlen(keys(queue)[1]) < 30_000, "killed mid-stream"
    second = start_worker("--max-batch", "64")
    results = wait_for_results(client, queue, 30_000, timeout=120, worker=second)
    time.sleep(0.5)  # would a duplicate still arrive?
    assert client.xlen(keys(queue)[1]) == 30_000
    assert_one_result_each(results, ids)


def test_worker_survives_a_redis_restart(queue, tmp_path: Path) -> None:
    with RedisServer(appendonly=True, fsync="always") as server:
        client = redis.Redis.from_url(server.url)
        worker = WorkerProcess(server.url, queue, tmp_path, "--max-batch", "64")
        try:
            ids = xadd_all(client, keys(queue)[0], [b"r%d" % i for i in range(10_000)])
            wait_for_results(client, queue, 1000, worker=worker)
            server.kill()
            time.sleep(1.0)
            server.start()
            ids += xadd_all(client, keys(queue)[0], [b"s%d" % i for i in range(2000)])
            results = wait_for_results(client, queue, 12_000, timeout=120, worker=worker)
            assert_one_result_each(results, ids)
            # redis-py's Retry reconnected inside the same processes: nothing restarted
            assert "child died" not in worker.log()
        finally:
            worker.stop()


def test_backpressure_keeps_memory_and_pending_bounded(client, queue, start_worker) -> None:
    stream = keys(queue)[0]
    xadd_all(client, stream, [b"p" * 64 for _ in range(100_000)])
    worker = start_worker(
        "--op", "user_ops:slow_echo", "--max-batch", "64", "--ring-capacity", "256"
    )
    wait_for_results(client, queue, 500, worker=worker)
    kids = spawned_children(worker.proc.pid)
    assert len(kids) == 2  # compute + one ingest
    samples = []
    for _ in range(10):
        time.sleep(0.3)
        samples.append(max(rss_kib(k) for k in kids))
        pending = client.xpending(stream, "gpufeed")["pending"]
        # at most a full request ring, a full response ring and one batch being read
        assert pending <= 2 * 256 + 64, pending
    assert max(samples) - samples[0] < 20 * 1024, samples  # no growth with the backlog
    assert client.xlen(keys(queue)[1]) < 100_000
    assert results_by_src(client, queue)  # it is making progress, just slowly


def test_a_worker_started_before_redis_waits_for_it(queue, tmp_path: Path) -> None:
    port = free_port()
    worker = WorkerProcess(f"redis://127.0.0.1:{port}/0", queue, tmp_path, "--log-format", "json")
    try:
        time.sleep(2)  # the worker is up, Redis is not
        assert worker.proc.poll() is None, worker.log()
        assert '"waiting for redis"' in worker.log()
        with RedisServer(port=port) as server:
            client = redis.Redis.from_url(server.url)
            ids = xadd_all(client, keys(queue)[0], [b"late"] * 200)
            assert_one_result_each(wait_for_results(client, queue, 200, worker=worker), ids)
    finally:
        worker.stop()
