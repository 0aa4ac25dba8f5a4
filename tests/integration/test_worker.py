"""The worker end to end against a real Redis server: one result per message."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import numpy as np
import pytest
import redis

from conftest import keys, send_around_poison, spawned_children, wait_for_results
from gpufeed.loadgen.payloads import sample_payloads
from gpufeed.loadgen.produce import xadd_all
from gpufeed.ops import load_op

pytestmark = pytest.mark.timeout(240)


def expected(op: str, data: bytes) -> bytes:
    payload = np.zeros((1, 240), np.uint8)
    payload[0, : len(data)] = np.frombuffer(data, np.uint8)
    out, lens = load_op(op).reference(payload, np.array([len(data)], np.int64))
    return out[0, : lens[0]].tobytes()


def produce_mixed(client: redis.Redis, queue: str, per_op: int) -> dict[bytes, tuple[str, bytes]]:
    sent: dict[bytes, tuple[str, bytes]] = {}
    for seed, op in enumerate(["echo", "sha256", "vector_add", "dense"]):
        payloads = sample_payloads(load_op(op), per_op, 240, seed)
        for entry_id, data in zip(
            xadd_all(client, keys(queue)[0], payloads, op=op, cid_prefix=op), payloads, strict=True
        ):
            sent[entry_id] = (op, data)
    return sent


def assert_exactly_one_correct(results, sent) -> None:
    assert set(results) == set(sent), "results for unknown entries, or entries without results"
    for src, (op, data) in sent.items():
        (result,) = results[src]  # exactly one
        assert result[b"status"] == b"ok", result
        if op == "dense":
            got, want = (
                np.frombuffer(result[b"data"], "<f4"),
                np.frombuffer(expected(op, data), "<f4"),
            )
            assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            assert result[b"data"] == expected(op, data), op


@pytest.mark.parametrize(
    ("max_batch", "ingest_procs", "ring_capacity"), [(1, 1, 64), (64, 2, 256), (512, 3, 1024)]
)
def test_every_message_gets_exactly_one_correct_result(
    client, queue, start_worker, max_batch, ingest_procs, ring_capacity
) -> None:
    worker = start_worker(
        "--max-batch", str(max_batch), "--ingest-procs", str(ingest_procs),
        "--ring-capacity", str(ring_capacity),
    )  # fmt: skip
    worker.wait_ready(client, keys(queue)[0], consumers=ingest_procs)
    sent = produce_mixed(client, queue, 500 if max_batch == 1 else 1500)
    results = wait_for_results(client, queue, len(sent), worker=worker)
    assert_exactly_one_correct(results, sent)
    assert client.xpending(keys(queue)[0], "gpufeed")["pending"] == 0
    assert worker.terminate() == 0


def test_results_carry_cid_and_go_to_reply_to(client, queue, start_worker) -> None:
    worker = start_worker()
    stream = keys(queue)[0]
    worker.wait_ready(client, stream)
    reply_to = f"replies:{{{queue}}}"
    client.xadd(stream, {"data": b"abc", "cid": b"job-7", "reply_to": reply_to})
    client.xadd(stream, {"data": b"abc", "op": "sha256"})
    deadline = time.monotonic() + 30
    while client.xlen(reply_to) < 1 or client.xlen(keys(queue)[1]) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ((_, replied),) = client.xrange(reply_to)
    assert (replied[b"status"], replied[b"data"], replied[b"cid"]) == (b"ok", b"abc", b"job-7")
    ((_, hashed),) = client.xrange(keys(queue)[1])
    assert hashed[b"data"] == hashlib.sha256(b"abc").digest() and b"cid" not in hashed


BAD_INPUTS = {
    "missing data": ({"payload": b"x"}, "missing data field"),
    "oversized": ({"data": b"x" * 241}, "larger than the 240-byte"),
    "wrong length": ({"data": b"x" * 12, "op": "vector_add"}, "wrong payload length 12"),
    "unknown op": ({"data": b"x", "op": "fft"}, "unknown op 'fft'"),
    "garbage deadline": ({"data": b"x", "deadline_ms": "tomorrow"}, "malformed deadline_ms"),
    "non-utf8 cid": ({"data": b"x", "cid": b"\xff\xfe"}, "cid is not valid UTF-8"),
    "many fields": ({"data": b"x", **{f"f{i}": b"v" for i in range(5000)}}, "too many fields"),
}


def test_bad_inputs_get_an_error_result_and_a_dead_letter(client, queue, start_worker) -> None:
    worker = start_worker()
    stream, _, dead_key = keys(queue)
    worker.wait_ready(client, stream)
    ids = {name: client.xadd(stream, fields) for name, (fields, _) in BAD_INPUTS.items()}
    good = client.xadd(stream, {"data": b"still alive"})
    results = wait_for_results(client, queue, len(ids) + 1, worker=worker)
    dead = {f[b"src"]: f for _, f in client.xrange(dead_key)}
    for name, entry_id in ids.items():
        (result,) = results[entry_id]
        assert result[b"status"] == b"error", name
        assert BAD_INPUTS[name][1].encode() in result[b"error"], (name, result[b"error"])
        assert dead[entry_id][b"error"] == result[b"error"]
        assert dead[entry_id][b"consumer"] == b"testhost-0"
    assert dead[ids["missing data"]][b"payload"] == b"x"  # the original fields come along
    assert results[good][0][b"data"] == b"still alive"
    assert len(dead) == len(ids)
    assert worker.proc.poll() is None


def test_an_expired_deadline_gets_expired_without_compute(client, queue, start_worker) -> None:
    worker = start_worker()
    stream, _, dead_key = keys(queue)
    worker.wait_ready(client, stream)
    past = client.xadd(stream, {"data": b"late", "deadline_ms": str(int(time.time() * 1000) - 1)})
    future = client.xadd(
        stream, {"data": b"ok", "deadline_ms": str(int(time.time() * 1000) + 60_000)}
    )
    results = wait_for_results(client, queue, 2, worker=worker)
    assert results[past][0][b"status"] == b"expired"
    assert results[future][0][b"status"] == b"ok"
    assert client.xlen(dead_key) == 0


def test_a_poison_message_is_isolated_and_the_rest_of_its_batch_succeeds(
    client, queue, start_worker
) -> None:
    stream, _, dead_key = keys(queue)
    ids, poison = send_around_poison(client, stream, 200, 200)
    worker = start_worker("--op", "user_ops:poison_echo", "--max-batch", "512")
    results = wait_for_results(client, queue, 401, worker=worker)
    assert all(results[i][0][b"status"] == b"ok" for i in ids)
    assert results[poison][0][b"status"] == b"error"
    assert b"poisoned batch" in results[poison][0][b"error"]
    ((_, dead),) = client.xrange(dead_key)
    assert dead[b"src"] == poison and dead[b"data"] == b"poison pill"


def test_sigterm_drains_and_commits_everything_read(client, queue, start_worker) -> None:
    stream = keys(queue)[0]
    xadd_all(client, stream, [b"m%d" % i for i in range(20_000)])
    worker = start_worker(
        "--op", "user_ops:slow_echo", "--drain-timeout-s", "20", "--max-batch", "16",
        "--ring-capacity", "256",
    )  # fmt: skip
    wait_for_results(client, queue, 1000, worker=worker)
    started = time.monotonic()
    assert worker.terminate(timeout=30) == 0
    assert time.monotonic() - started < 20
    pending = client.xpending(stream, "gpufeed")["pending"]
    assert pending == 0, f"{pending} entries read but not committed"
    info = client.xinfo_groups(stream)[0]
    answered = client.xlen(keys(queue)[1])
    assert answered == info["entries-read"], "every entry the group handed out has its result"
    assert answered < 20_000, "the drain stopped reading"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_whole_process_group_is_a_clean_shutdown(
    client, queue, start_worker, signum
) -> None:
    """Ctrl-C on a terminal, ``timeout``, a shell's ``kill -- -PGID``: the children get
    the signal too. Nothing is an error, the worker says it stopped, exits 0, and
    what it read is committed."""
    stream = keys(queue)[0]
    xadd_all(client, stream, [b"m%d" % i for i in range(20_000)])
    # A fast op: the children drain within milliseconds, before the supervisor has
    # looked up from its wait (the race a slow drain would hide).
    worker = start_worker("--max-batch", "64", "--log-format", "json")
    wait_for_results(client, queue, 500, worker=worker)
    os.killpg(worker.proc.pid, signum)
    assert worker.proc.wait(30) == 0
    assert worker.events("worker stopped"), worker.log()[-3000:]
    errors = [e for e in worker.records() if e.get("level") in ("error", "critical")]
    assert errors == [] and not worker.events("child died; restarting all children")
    assert client.xpending(stream, "gpufeed")["pending"] == 0


def test_a_child_stopped_alone_is_replaced_without_an_error(client, queue, start_worker) -> None:
    stream = keys(queue)[0]
    ids = xadd_all(client, stream, [b"c%d" % i for i in range(5_000)])
    worker = start_worker("--max-batch", "64", "--log-format", "json")
    wait_for_results(client, queue, 500, worker=worker)
    (ingest,) = [e["pid"] for e in worker.events("ingest started")]
    os.kill(ingest, signal.SIGTERM)
    results = wait_for_results(client, queue, 5_000, worker=worker)
    assert set(results) == set(ids) and all(len(r) == 1 for r in results.values())
    (stopped,) = worker.events("child stopped; restarting all children")
    assert stopped["level"] == "warning" and stopped["reason"] == "stopped on request (SIGTERM)"
    assert worker.terminate() == 0


def test_a_crashed_child_is_logged_and_replaced(client, queue, start_worker) -> None:
    stream = keys(queue)[0]
    ids = xadd_all(client, stream, [b"c%d" % i for i in range(20_000)])
    worker = start_worker("--max-batch", "64")
    wait_for_results(client, queue, 1000, worker=worker)
    compute = min(spawned_children(worker.proc.pid))  # started first
    os.kill(compute, signal.SIGKILL)
    results = wait_for_results(client, queue, 20_000, worker=worker)
    assert set(results) == set(ids) and all(len(r) == 1 for r in results.values())
    log = worker.log()
    assert "child died; restarting all children" in log and "killed by SIGKILL" in log
    assert worker.terminate() == 0


def test_settings_come_from_the_environment_and_delete_acked_empties_the_input(
    client, queue, start_worker, monkeypatch
) -> None:
    monkeypatch.setenv("GPUFEED_DELETE_ACKED", "true")
    monkeypatch.setenv("GPUFEED_OP", "sha256")
    worker = start_worker()
    stream = keys(queue)[0]
    worker.wait_ready(client, stream)
    ids = xadd_all(client, stream, [b"x%d" % i for i in range(100)])
    results = wait_for_results(client, queue, 100, worker=worker)
    assert all(results[i][0][b"data"] == hashlib.sha256(b"x%d" % n).digest()
               for n, i in enumerate(ids))  # fmt: skip
    assert client.xlen(stream) == 0


def test_a_bad_op_stops_the_worker_before_it_starts(client, queue, start_worker) -> None:
    worker = start_worker("--op", "no_such_module:op")
    assert worker.proc.wait(60) == 2
    assert "cannot import 'no_such_module'" in worker.log()
