"""One message never stops a queue: what it takes down is that message's result, not
the worker, and a misconfigured key holds the queue up without losing anything."""

from __future__ import annotations

import signal
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import keys, wait_for_results
from gpufeed.loadgen.produce import xadd_all
from gpufeed.packing import ResultEntry, Results
from gpufeed.worker.commit import Committer
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.crashlog import CrashLogState
from gpufeed.worker.isolate import commit_each
from gpufeed.worker.supervisor import Supervisor, _Generation

pytestmark = pytest.mark.timeout(240)


def assert_no_restart(worker) -> None:
    assert worker.proc.poll() is None
    assert worker.events("child died; restarting all children") == []


def test_an_entry_that_makes_packing_raise_costs_that_entry_alone(
    client, queue, start_worker
) -> None:
    stream, _, dead_key = keys(queue)
    worker = start_worker("--op", "user_ops:fragile_lengths", "--max-batch", "64",
                          "--log-format", "json")  # fmt: skip
    worker.wait_ready(client, stream)
    datas = [b"x" * (i % 20) for i in range(200)]  # ten of them 13 bytes long
    ids = xadd_all(client, stream, datas)
    results = wait_for_results(client, queue, 200, worker=worker)
    unlucky = {i for i, d in zip(ids, datas, strict=True) if len(d) == 13}
    assert len(unlucky) == 10 and all(len(r) == 1 for r in results.values())
    for entry_id, data in zip(ids, datas, strict=True):
        (result,) = results[entry_id]
        if entry_id in unlucky:
            assert result[b"status"] == b"error"
            assert result[b"error"] == b"internal error: ValueError: 13 is unlucky"
        else:
            assert result[b"status"] == b"ok" and result[b"data"] == data
    dead = [f[b"src"] for _, f in client.xrange(dead_key)]
    assert sorted(dead) == sorted(unlucky)
    failed = worker.events("message failed")
    assert sorted(e["entry_id"].encode() for e in failed) == sorted(unlucky)  # logged once each
    assert_no_restart(worker)


def test_a_deadline_past_64_bits_is_bad_input_and_the_queue_goes_on(
    client, queue, start_worker
) -> None:
    stream, _, dead_key = keys(queue)
    worker = start_worker("--log-format", "json")
    worker.wait_ready(client, stream)
    before = xadd_all(client, stream, [b"a%d" % i for i in range(100)])
    huge = client.xadd(stream, {"data": b"h", "deadline_ms": "9223372036854775808"})
    after = xadd_all(client, stream, [b"b%d" % i for i in range(100)])
    results = wait_for_results(client, queue, 201, worker=worker)
    assert all(results[i][0][b"status"] == b"ok" for i in before + after)
    assert results[huge][0][b"status"] == b"error"
    assert b"malformed deadline_ms" in results[huge][0][b"error"]
    assert [f[b"src"] for _, f in client.xrange(dead_key)] == [huge]
    assert_no_restart(worker)


def test_an_output_stream_of_another_type_stops_the_worker_at_start(
    client, queue, start_worker
) -> None:
    client.set(keys(queue)[1], b"not a stream")
    worker = start_worker()
    assert worker.proc.wait(60) == 2
    assert f"{keys(queue)[1]} is not a stream" in worker.log()


def test_an_output_stream_broken_while_serving_holds_results_until_it_is_fixed(
    client, queue, start_worker
) -> None:
    stream, out, _ = keys(queue)
    worker = start_worker("--log-format", "json")
    worker.wait_ready(client, stream)
    first = xadd_all(client, stream, [b"f%d" % i for i in range(50)])
    wait_for_results(client, queue, 50, worker=worker)
    client.delete(out)
    client.set(out, b"someone's string")
    later = xadd_all(client, stream, [b"l%d" % i for i in range(50)])
    deadline = time.monotonic() + 30
    while not worker.events("queue misconfigured; results are kept and the commit retried"):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.1)
    assert client.get(out) == b"someone's string", "nothing was written over it"
    assert client.xpending(stream, "gpufeed")["pending"] == 50, "the later ones wait"
    client.delete(out)
    results = wait_for_results(client, queue, 50, worker=worker)
    assert set(results) == set(later) and all(len(r) == 1 for r in results.values())
    assert client.xpending(stream, "gpufeed")["pending"] == 0
    assert len(first) == 50
    assert_no_restart(worker)


def test_a_result_whose_commit_raises_is_answered_with_an_error_beside_the_others(
    client, queue
) -> None:
    """commit_each, after a commit raised something unexpected: result by result; the
    one that raises again becomes an error result (and a dead letter)."""
    config = WorkerConfig(queue=queue)
    ids = xadd_all(client, config.in_key, [b"a", b"b", b"c"])
    client.xgroup_create(config.in_key, "gpufeed", id="0")
    client.xreadgroup("gpufeed", "me", {config.in_key: ">"}, count=3)
    committer = Committer(client, config, "me")

    def commit_some(results: Results):
        if any(e.body == b"boom" for e in results.entries()):
            raise struct_error("a result this commit cannot encode")
        return committer.commit(results)

    results = Results.of([ResultEntry(ids[0], "ok", b"ra"), ResultEntry(ids[1], "ok", b"boom"),
                          ResultEntry(ids[2], "ok", b"rc", cid=b"c")])  # fmt: skip
    counts = commit_each(results, commit_some, struct_error("first try"))
    assert (counts.answered, counts.dead) == (3, 1)
    out = {f[b"src"]: f for _, f in client.xrange(config.out_key)}
    assert out[ids[0]][b"data"] == b"ra" and out[ids[2]][b"cid"] == b"c"
    assert out[ids[1]][b"status"] == b"error"
    assert out[ids[1]][b"error"] == b"internal error: error: a result this commit cannot encode"
    assert [f[b"src"] for _, f in client.xrange(config.dead_key)] == [ids[1]]
    assert client.xpending(config.in_key, "gpufeed")["pending"] == 0


def struct_error(text: str) -> Exception:
    import struct

    return struct.error(text)


def test_only_a_crash_an_entry_can_cause_counts_against_the_pending_entries(
    client, redis_server, queue
) -> None:
    """Killed from outside (SIGKILL, SIGTERM), a child accuses no entry: a restart storm
    of an operator's making must not dead-letter innocent messages. A fault counts, and
    an ingest process's fault counts against its own entries only."""
    config = WorkerConfig(queue=queue, redis_url=redis_server.url, ingest_procs=2)
    stream = config.in_key
    xadd_all(client, stream, [b"a", b"b", b"c", b"d"])
    client.xgroup_create(stream, config.group, id="0")
    mine = client.xreadgroup(config.group, config.consumer_name(0), {stream: ">"}, count=2)
    theirs = client.xreadgroup(config.group, config.consumer_name(1), {stream: ">"}, count=2)
    ids0, ids1 = ([i for i, _ in r[0][1]] for r in (mine, theirs))
    supervisor = Supervisor(config)
    try:
        compute, ingest0, ingest1 = (SimpleNamespace(exitcode=None) for _ in range(3))
        ready = threading.Event()
        gen = _Generation(children=[compute, ingest0, ingest1], compute_ready=ready)

        def crash(child: SimpleNamespace, code: int) -> dict[bytes, str]:
            child.exitcode = code
            supervisor._record_crash(gen, child)
            return CrashLogState.read(supervisor.crashlog.path).suspects

        for _ in range(3):
            assert crash(compute, -signal.SIGSEGV) == {}  # before it served anything
        ready.set()
        for _ in range(3):
            assert crash(compute, -signal.SIGKILL) == {}
            assert crash(ingest0, -signal.SIGTERM) == {}
        crash(ingest0, -signal.SIGSEGV)
        assert crash(ingest0, -signal.SIGSEGV) == dict.fromkeys(ids0, config.consumer_name(0))
        crash(compute, -signal.SIGABRT)
        assert set(crash(compute, -signal.SIGABRT)) == {*ids0, *ids1}
    finally:
        supervisor._quarantine_dir.cleanup()


def test_a_server_refusing_writes_holds_results_until_it_takes_them_again(
    client, queue, start_worker
) -> None:
    """Out of memory (``maxmemory`` reached, no eviction), Redis refuses the commit.
    No entry is to blame and a restart would meet the same refusal: the ingest keeps
    its results, says so, and commits them once the server takes writes again."""
    stream = keys(queue)[0]
    worker = start_worker("--log-format", "json")
    worker.wait_ready(client, stream)
    before = client.config_get("maxmemory")["maxmemory"]
    try:
        # The entries and the memory limit in one transaction: the worker reads the
        # entries (reads go through) and commits under the limit (writes do not).
        pipe = client.pipeline(transaction=True)
        for i in range(20):
            pipe.xadd(stream, {"data": b"m%d" % i})
        pipe.config_set("maxmemory", 1)
        ids = pipe.execute()[:20]
        deadline = time.monotonic() + 60
        while not worker.events("redis refused a command; results are kept and the "
                                "commit retried"):  # fmt: skip
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.1)
        assert client.xlen(keys(queue)[1]) == 0
    finally:
        client.config_set("maxmemory", before)
    results = wait_for_results(client, queue, 20, worker=worker)
    assert set(results) == set(ids) and all(len(r) == 1 for r in results.values())
    assert all(r[0][b"status"] == b"ok" for r in results.values())
    assert_no_restart(worker)
