"""Backend choice and the persistent backend end to end, against a real Redis server.

Without a GPU, ``--backend persistent --emulate-device`` runs the persistent
backend's whole host side (GpuQueue, its watchdog and shutdown, FIFO
completions into the response rings) with the device side emulated on the
CPU over the same memory layout.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_worker import assert_exactly_one_correct, produce_mixed

from conftest import keys, send_around_poison, wait_for_results
from gpufeed.gpu.select import cuda_device_count
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(240)
NO_GPU = cuda_device_count() == 0


@pytest.mark.parametrize(("max_batch", "ingest_procs"), [(1, 1), (64, 2), (512, 1)])
def test_persistent_backend_gives_every_message_exactly_one_correct_result(
    client, queue, start_worker, max_batch, ingest_procs
) -> None:
    worker = start_worker(
        "--backend", "persistent", "--emulate-device", "--max-batch", str(max_batch),
        "--ingest-procs", str(ingest_procs), "--ring-capacity", "1024",
    )  # fmt: skip
    worker.wait_ready(client, keys(queue)[0], consumers=ingest_procs)
    sent = produce_mixed(client, queue, 300 if max_batch == 1 else 1500)
    results = wait_for_results(client, queue, len(sent), worker=worker)
    assert_exactly_one_correct(results, sent)
    assert worker.terminate() == 0
    (started,) = worker.events("persistent queue started")
    assert started["device"] == "emulated"
    (stopped,) = worker.events("persistent queue shut down")
    assert stopped["kernel_stopped"] is True and stopped["unfinished"] == 0
    assert stopped["enqueued"] == stopped["taken"] == len(sent)


def test_persistent_backend_drains_on_sigterm_with_messages_in_flight(
    client, queue, start_worker
) -> None:
    stream = keys(queue)[0]
    xadd_all(client, stream, [b"m%d" % i for i in range(30_000)])
    worker = start_worker(
        "--backend", "persistent", "--emulate-device", "--op", "user_ops:slow_echo",
        "--max-batch", "64", "--ring-capacity", "256", "--drain-timeout-s", "20",
    )  # fmt: skip
    wait_for_results(client, queue, 500, worker=worker)
    assert worker.terminate(timeout=30) == 0
    assert client.xpending(stream, "gpufeed")["pending"] == 0
    answered = client.xlen(keys(queue)[1])
    assert answered == client.xinfo_groups(stream)[0]["entries-read"] < 30_000
    (stopped,) = worker.events("persistent queue shut down")
    assert stopped["kernel_stopped"] is True


def test_auto_uses_cpu_without_a_gpu_and_says_why(client, queue, start_worker) -> None:
    if not NO_GPU:
        pytest.skip("this machine has a CUDA device: auto picks batched (tests/gpu)")
    worker = start_worker("--backend", "auto")
    worker.wait_ready(client, keys(queue)[0])
    deadline = time.monotonic() + 30
    while not worker.events("compute started") and time.monotonic() < deadline:
        time.sleep(0.05)
    (chosen,) = worker.events("backend chosen")
    assert chosen["backend"] == "cpu"
    assert "CuPy" in chosen["reason"]
    assert worker.terminate() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "batched"], "--backend batched needs a CUDA device"),
        (["--backend", "persistent"], "--emulate-device runs the persistent protocol on the CPU"),
        (["--backend", "cpu", "--emulate-device"], "only --backend persistent has a CPU"),
        (["--backend", "batched", "--staging", "mmap"], "--staging: must be one of"),
    ],
)
def test_a_backend_this_machine_cannot_run_fails_at_start(redis_server, args, message) -> None:
    if not NO_GPU and "needs a CUDA device" in message:
        pytest.skip("this machine has a CUDA device")
    run = subprocess.run(
        [sys.executable, "-m", "gpufeed", "worker", "--redis-url", redis_server.url, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert message in run.stderr


def test_a_message_that_takes_the_device_down_is_quarantined_then_dead_lettered(
    client, queue, start_worker
) -> None:
    # trap_echo raises DeviceLost on "poison…", as a GPU backend does after a
    # kernel trapped: the compute process must exit, and only the quarantine
    # tells the next one which message to run alone.
    stream, _, dead_key = keys(queue)
    ids, poison = send_around_poison(client, stream, 300, 300)
    worker = start_worker("--op", "user_ops:trap_echo", "--max-batch", "128")
    results = wait_for_results(client, queue, 601, worker=worker)
    assert set(results) == {*ids, poison} and all(len(r) == 1 for r in results.values())
    assert all(results[i][0][b"status"] == b"ok" for i in ids)
    assert results[poison][0][b"status"] == b"error"
    assert (
        b"quarantined: the GPU was lost each time this message ran" in results[poison][0][b"error"]
    )
    ((_, dead),) = client.xrange(dead_key)
    assert dead[b"src"] == poison and dead[b"data"] == b"poison pill"
    # Two losses: the batch holding the poison, then the poison on its own.
    restarts = worker.events("child died; restarting all children")
    assert [r["reason"] for r in restarts] == ["lost its GPU (its messages are quarantined)"] * 2
    lost = worker.events("GPU lost; exiting so that the supervisor starts a fresh compute process")
    assert [event["quarantined"] for event in lost][1] == 1
    assert 1 < lost[0]["quarantined"] <= 128
    assert worker.events("poison message answered with an error")
    assert worker.terminate() == 0
