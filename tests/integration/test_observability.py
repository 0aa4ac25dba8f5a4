"""The worker's metrics endpoint and logs, read while it runs."""

from __future__ import annotations

import json
import time

import pytest

from conftest import keys, scrape, value, wait_for_results
from gpufeed.embedded import free_port
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(120)


def test_metrics_endpoint_counts_what_was_produced(client, queue, start_worker) -> None:
    port = free_port()
    stream = keys(queue)[0]
    good = xadd_all(client, stream, [b"m%05d" % i for i in range(3000)])
    for _ in range(5):
        client.xadd(stream, {"nodata": b"x"})  # bad input: error result + dead letter
    worker = start_worker("--metrics-port", str(port), "--max-batch", "256")
    wait_for_results(client, queue, len(good) + 5, timeout=60, worker=worker)

    # Counters move right after the commit that wrote the results: allow a moment.
    deadline = time.monotonic() + 10
    while True:
        m = scrape(port)
        if value(m, "gpufeed_messages_total", status="ok") == 3000 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert worker.proc.poll() is None, "scraped while the worker runs"
    assert value(m, "gpufeed_messages_total", status="ok") == 3000
    assert value(m, "gpufeed_messages_total", status="error") == 5
    assert value(m, "gpufeed_dead_letter_total") == 5
    batches = value(m, "gpufeed_batches_total")
    assert batches >= 3005 / 256
    assert value(m, "gpufeed_batch_size_messages_count") == batches
    assert value(m, "gpufeed_batch_size_messages_sum") == 3005
    assert value(m, "gpufeed_queue_wait_seconds_count") == 3000
    assert value(m, "gpufeed_end_to_end_seconds_count") == 3000
    assert value(m, "gpufeed_compute_seconds_count") >= 3000 / 256
    assert value(m, "gpufeed_commit_seconds_count") >= 1
    e2e_sum = value(m, "gpufeed_end_to_end_seconds_sum")
    assert 0 <= e2e_sum / 3000 < 30, "mean end-to-end latency is a plausible number of seconds"
    assert value(m, "gpufeed_ring_occupancy_slots") == 0
    assert value(m, "gpufeed_backend_info", backend="cpu", op="echo") == 1
    assert value(m, "gpufeed_pending_entries", queue=queue) == 0
    assert value(m, "gpufeed_group_lag_entries", queue=queue) == 0
    assert value(m, "gpufeed_input_stream_length", queue=queue) == 3005
    assert value(m, "gpufeed_dead_letter_stream_length", queue=queue) == 5
    assert value(m, "gpufeed_reclaimed_total") == 0


def test_logs_are_json_off_a_terminal_and_errors_name_stream_entry_and_reason(
    client, queue, start_worker
) -> None:
    stream = keys(queue)[0]
    bad = client.xadd(stream, {"data": b"x", "op": b"no_such_op"})
    late = client.xadd(stream, {"data": b"x", "deadline_ms": b"1"})
    worker = start_worker("--log-level", "debug")
    wait_for_results(client, queue, 2, timeout=30, worker=worker)
    worker.terminate(30)
    events = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert events, "stderr is not a terminal, so every line is a JSON event"
    failed = {e["entry_id"]: e for e in events if e["event"] == "message failed"}
    assert set(failed) == {bad.decode(), late.decode()}
    assert failed[bad.decode()]["stream"] == stream
    assert "unknown op" in failed[bad.decode()]["reason"]
    assert failed[bad.decode()]["level"] == "warning"
    # Under overload expired messages come by the thousand: a log line each at info
    # took the ingest process's time from the messages that could still make it.
    assert failed[late.decode()]["level"] == "debug"
    assert any(e["event"] == "batch read" and e["level"] == "debug" for e in events)
    assert {e["process"] for e in events} >= {"supervisor", "compute", "ingest-0"}


def test_a_burst_that_wakes_an_idle_worker_is_read_as_one_batch(
    client, queue, start_worker
) -> None:
    """Redis wakes a blocked reader at a burst's first entry; the worker reads
    the rest while that entry computes, instead of after committing it."""
    stream = keys(queue)[0]
    worker = start_worker("--log-level", "debug")
    xadd_all(client, stream, [b"warm"])
    wait_for_results(client, queue, 1, timeout=30, worker=worker)
    bursts, size = 10, 50
    for b in range(bursts):
        time.sleep(0.05)  # idle again: blocked in XREADGROUP when the burst arrives
        xadd_all(client, stream, [b"b%d-%d" % (b, i) for i in range(size)])  # one pipeline
        wait_for_results(client, queue, 1 + (b + 1) * size, timeout=30, worker=worker)
    worker.terminate(30)
    events = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    reads = [e["read"] for e in events if e["event"] == "batch read"]
    assert sum(reads) == 1 + bursts * size
    # How much had been read at each commit: a whole number of bursts, but for
    # the odd burst the server itself split; without the look for the rest
    # while the first entry computes, every burst's first entry was committed alone.
    read_at_commit, read = [], 0
    for e in events:
        if e["event"] == "batch read":
            read += e["read"]
        elif e["event"] == "batch committed":
            read_at_commit.append(read)
    partial = [n for n in read_at_commit if (n - 1) % size]
    assert len(partial) <= 2, (read_at_commit, reads)
