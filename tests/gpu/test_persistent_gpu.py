"""The persistent kernel on a real GPU: every op against its reference, a million
messages through the worker, and that the kernel always stops."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gpu_support import DEVICES, needs_gpu, random_slots

from conftest import keys, results_by_src
from gpufeed.gpu.cpu import compute
from gpufeed.ops import BUILTINS, OpTable
from gpufeed.packing.layout import payload_capacity

pytestmark = [*needs_gpu, pytest.mark.timeout(900)]


@pytest.mark.parametrize("payload", ["mapped", "device"])
@pytest.mark.parametrize("op_name", sorted(BUILTINS))
def test_every_builtin_op_equals_its_reference(op_name, payload) -> None:
    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    slot_bytes = 256
    table = OpTable.for_worker(op_name, payload_capacity(slot_bytes))
    requests = random_slots(table[0], 0, 3000, slot_bytes, np.random.default_rng(3))
    with GpuQueue(QueueConfig(1024, slot_bytes, payload=payload), table=table) as queue:
        results, sent = [], 0
        while sent < len(requests):
            sent += queue.enqueue_slots(requests[sent : sent + 500])
            deadline = time.monotonic() + 30
            while len(results) * 500 < sent:
                got = queue.take_slots(len(results) * 500, min(500, sent - len(results) * 500))
                if got is not None:
                    results.append(got)
                assert time.monotonic() < deadline, "the kernel stopped answering"
    out = np.concatenate(results)
    want, want_lens = compute(table, requests, reference=True)
    lens = out[:, :4].copy().view("<u4")[:, 0].astype(np.int64)
    assert np.array_equal(lens, want_lens)
    for i, n in enumerate(want_lens.tolist()):
        got_row, want_row = out[i, 16 : 16 + n], want[i, :n]
        if op_name == "dense":
            assert np.allclose(got_row.view("<f4"), want_row.view("<f4"), rtol=1e-5, atol=1e-5)
        else:
            assert np.array_equal(got_row, want_row), (op_name, i)


def test_single_messages_round_trip_through_the_seed_api() -> None:
    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    with GpuQueue(QueueConfig(64, 256), op="sha256") as queue:
        import hashlib

        for i in range(2000):
            msg_id = queue.enqueue(b"m%d" % i, timeout_ms=1000)
            while not queue.done(msg_id):
                pass
            assert queue.poll_completions(10) == [msg_id]
            assert queue.try_dequeue_result(msg_id) == hashlib.sha256(b"m%d" % i).digest()
        stats = queue.stats()
        assert (stats.enq_count, stats.deq_count, stats.queue_depth) == (2000, 2000, 0)


def test_shutdown_with_messages_in_flight_finishes_them_and_stops_the_kernel() -> None:
    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    queue = GpuQueue(QueueConfig(1 << 16, 256), op="sha256")
    rows = np.frombuffer(b"x" * 200 * 60_000, np.uint8).reshape(60_000, 200)
    ids = queue.enqueue_batch(rows, timeout_ms=5000)
    assert len(ids) == 60_000
    queue.shutdown(timeout_s=60)
    device = queue._device
    assert device.join(0.0), "the kernel is still running after shutdown"
    assert device.failure() is None


def test_a_million_messages_through_the_worker_get_one_correct_result_each(
    client, queue, start_worker
) -> None:
    from gpufeed.loadgen.produce import xadd_all

    stream, out, _ = keys(queue)
    worker = start_worker("--backend", "persistent", "--ingest-procs", "4",
                          "--max-batch", "1024", "--delete-acked")  # fmt: skip
    worker.wait_ready(client, stream, consumers=4)
    n = 1_000_000
    payloads = [b"%07d" % i for i in range(n)]
    ids = xadd_all(client, stream, payloads)
    deadline = time.monotonic() + 600
    while client.xlen(out) < n and time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.5)
    results = results_by_src(client, queue)
    assert len(results) == n and all(len(r) == 1 for r in results.values())
    by_id = dict(zip(ids, payloads, strict=True))
    assert all(r[0][b"data"] == by_id[src] for src, r in results.items())
    assert worker.terminate() == 0
    (stopped,) = worker.events("persistent queue shut down")
    assert stopped["kernel_stopped"] is True


def test_the_kernel_stops_when_the_worker_gets_sigterm(client, queue, start_worker) -> None:
    from gpufeed.loadgen.produce import xadd_all

    stream = keys(queue)[0]
    worker = start_worker("--backend", "persistent")
    worker.wait_ready(client, stream)
    xadd_all(client, stream, [b"m%d" % i for i in range(50_000)])
    time.sleep(1.0)  # messages in flight
    assert worker.terminate(timeout=60) == 0
    (stopped,) = worker.events("persistent queue shut down")
    assert stopped["kernel_stopped"] is True
    assert stopped["unfinished"] == 0


def test_a_trapped_kernel_is_a_lost_device_at_once_not_a_stall() -> None:
    """A trap ends the kernel with error 719; the watchdog must read that from the
    stream's status (CuPy's Stream.done only says "not done") and fail the queue
    with DeviceLost well before the 10 s stall timeout."""
    from user_ops import trap_echo

    from gpufeed.errors import DeviceLost
    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    queue = GpuQueue(QueueConfig(64, 256), op=trap_echo)
    started = time.monotonic()
    queue.enqueue(b"poison pill")
    while queue.failure is None and time.monotonic() - started < 30:
        time.sleep(0.01)
    assert isinstance(queue.failure, DeviceLost), queue.failure
    assert time.monotonic() - started < 5
    assert "719" in str(queue.failure) or "launch failure" in str(queue.failure).lower()
    assert queue.unfinished_requests().shape[0] == 1  # the quarantine's suspects


@pytest.mark.skipif(DEVICES < 2, reason="needs two GPUs: device 0 is every thread's default")
def test_the_watchdog_thread_talks_to_the_queues_device() -> None:
    """With --device N, the watchdog's CUDA calls go to device N (selected on the
    calling thread), not to device 0, where they would create a second context."""
    import threading

    import cupy

    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    gpu = DEVICES - 1
    seen: list[int] = []
    with GpuQueue(QueueConfig(64, 256, gpu=gpu), op="echo") as queue:
        device = queue._device

        def probe() -> None:  # another thread, as the watchdog is
            device.failure()
            seen.append(int(cupy.cuda.runtime.getDevice()))

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join(10)
    assert seen == [gpu]


def test_the_kernel_is_launched_cooperatively_and_an_oversized_grid_is_refused() -> None:
    """Every block of the persistent kernel must be resident at once: the launch is
    cooperative (all blocks start, or error 720 at once), and a grid the GPU cannot
    hold is refused up front rather than hanging."""
    from gpufeed.errors import ConfigError
    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    with GpuQueue(QueueConfig(64, 256), op="echo") as queue:
        assert queue._device._kernel.enable_cooperative_groups
        msg_id = queue.enqueue(b"x")
        while not queue.done(msg_id):
            pass
        assert queue.try_dequeue_result(msg_id) == b"x"
    with pytest.raises(ConfigError, match="cannot all run at once"):
        GpuQueue(QueueConfig(64, 256, blocks=1_000_000), op="echo")
