"""GpuQueue's host-side protocol, run against the CPU emulation of the device side.

The emulation serves the same memory layout (state words, control words,
request and result slots) as the persistent kernel, so everything the host
does here is what it does on a GPU: publishing READY after the request,
reading results after DONE, waiting for and freeing slots, wrapping around,
the watchdog, shutdown.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufeed.errors import (
    DeviceLost,
    InvalidPayload,
    KernelStalled,
    MessageFailed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    QueueShutdown,
    QueueTimeout,
)
from gpufeed.gpu.persistent import GpuQueue, QueueConfig
from gpufeed.gpu.persistent.emulated import EmulatedDevice
from gpufeed.gpu.persistent.memory import PHASE_DONE, PHASE_READY, STOP, tag, tags
from gpufeed.loadgen.payloads import sample_payloads
from gpufeed.ops import BUILTINS, Echo, OpTable, load_op

pytestmark = pytest.mark.timeout(60)


def emulated(capacity: int = 64, slot_bytes: int = 256, **options) -> QueueConfig:
    return QueueConfig(capacity=capacity, slot_bytes=slot_bytes, device="emulated", **options)


def reference(op_name: str, data: bytes, width: int = 240) -> bytes:
    payload = np.zeros((1, width), np.uint8)
    payload[0, : len(data)] = np.frombuffer(data, np.uint8)
    out, lens = load_op(op_name).reference(payload, np.array([len(data)], np.int64))
    return out[0, : lens[0]].tobytes()


def wait_result(queue: GpuQueue, msg_id: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return queue.try_dequeue_result(msg_id)
        except NotReady:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def wait_failure(queue: GpuQueue, timeout: float = 10.0) -> None:
    """Until the queue's watchdog has found something wrong."""
    deadline = time.monotonic() + timeout
    while queue.failure is None and time.monotonic() < deadline:
        time.sleep(0.02)


class Gate(Echo):
    """Echo that holds every batch until the test opens the gate: a busy device."""

    name = "gate"

    def __init__(self) -> None:
        self.open = threading.Event()

    def cpu(self, payloads, lens):
        self.open.wait(20)
        return self.reference(payloads, lens)


class Crash(BaseException):
    """Raised by the emulated device the way a trapped kernel takes a GPU down."""


class Crashing(Echo):
    name = "crashing"

    def cpu(self, payloads, lens):
        raise Crash("boom")


class Picky(Echo):
    """Echo that fails (an ordinary exception) on payloads starting with b"bad"."""

    name = "picky"

    def cpu(self, payloads, lens):
        if (payloads[:, :3] == np.frombuffer(b"bad", np.uint8)).all(axis=1).any():
            raise ValueError("bad payload")
        return self.reference(payloads, lens)


def test_state_tags_never_confuse_laps_or_phases() -> None:
    for log2 in (1, 4, 12):
        cap = 1 << log2
        ids = np.arange(0, 10 * cap, dtype=np.int64)
        ready, done = tags(ids, log2, PHASE_READY), tags(ids, log2, PHASE_DONE)
        assert (ready != 0).all() and (done != 0).all()  # 0 is a slot never used
        assert (ready != done).all()
        assert (ready[cap:] != ready[:-cap]).all()  # the same slot one lap apart
        assert [tag(int(i), log2, PHASE_DONE) for i in ids[:5]] == done[:5].tolist()


@pytest.mark.parametrize("op_name", sorted(BUILTINS))
def test_every_builtin_op_equals_its_reference(op_name) -> None:
    payloads = sample_payloads(load_op(op_name), 300, 240, seed=7)
    with GpuQueue(emulated(capacity=32), op=op_name) as queue:
        ids = queue.enqueue_batch(payloads, timeout_ms=5000)
        assert ids == list(range(300))
        for msg_id, data in zip(ids, payloads, strict=True):
            got = wait_result(queue, msg_id)
            if op_name == "dense":
                want = np.frombuffer(reference(op_name, data), "<f4")
                assert np.allclose(np.frombuffer(got, "<f4"), want, rtol=1e-5, atol=1e-6)
            else:
                assert got == reference(op_name, data)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([2, 4, 16]),
    st.lists(st.binary(max_size=48), min_size=1, max_size=60),
)
def test_wrap_around_keeps_each_result_with_its_message(capacity, datas) -> None:
    # Many laps over a tiny ring, one message at a time and in batches.
    with GpuQueue(emulated(capacity=capacity, slot_bytes=64), op="sha256") as queue:
        ids = [queue.enqueue(d, timeout_ms=5000) for d in datas[: len(datas) // 2]]
        ids += queue.enqueue_batch(datas[len(datas) // 2 :], timeout_ms=5000)
        assert ids == list(range(len(datas)))
        got = [wait_result(queue, i) for i in ids]
    assert got == [hashlib.sha256(d).digest() for d in datas]


def test_a_full_queue_refuses_waits_and_then_accepts() -> None:
    gate = Gate()
    with GpuQueue(emulated(capacity=4), op=gate) as queue:
        for i in range(4):
            queue.enqueue(f"m{i}".encode())
        with pytest.raises(QueueFull):
            queue.enqueue(b"one too many")
        start = time.monotonic()
        with pytest.raises(QueueTimeout):
            queue.enqueue(b"one too many", timeout_ms=100)
        assert time.monotonic() - start >= 0.09
        threading.Timer(0.2, gate.open.set).start()
        late = queue.enqueue(b"late", timeout_ms=5000)  # room comes as the device finishes
        assert late == 4
        stats = queue.stats()
        assert (stats.enq_count, stats.dropped_full) == (5, 2)
        assert stats.retries >= 3
        assert [wait_result(queue, i) for i in range(5)] == [b"m0", b"m1", b"m2", b"m3", b"late"]
        assert queue.stats().queue_depth == 0


def test_enqueue_batch_reports_partial_success_like_out_enqueued() -> None:
    gate = Gate()
    with GpuQueue(emulated(capacity=4), op=gate) as queue:
        items = [f"m{i}".encode() for i in range(10)]
        first = queue.enqueue_batch(items, timeout_ms=0)
        assert first == [0, 1, 2, 3]
        assert queue.stats().dropped_full == 6
        gate.open.set()
        rest = queue.enqueue_batch(items[4:], timeout_ms=5000)  # the caller passes the rest again
        assert rest == list(range(4, 10))
        assert [wait_result(queue, i) for i in range(10)] == items


def test_not_ready_while_processing_then_the_result_once() -> None:
    gate = Gate()
    with GpuQueue(emulated(), op=gate) as queue:
        msg_id = queue.enqueue(b"hello")
        with pytest.raises(NotReady):
            queue.try_dequeue_result(msg_id)
        assert queue.poll_completions(10) == []
        gate.open.set()
        assert wait_result(queue, msg_id) == b"hello"
        with pytest.raises(NotFound):
            queue.try_dequeue_result(msg_id)  # taken already
        with pytest.raises(NotFound):
            queue.try_dequeue_result(99)  # never enqueued


def test_poll_completions_reports_each_finished_message_once_oldest_first() -> None:
    with GpuQueue(emulated(capacity=8), op="echo") as queue:
        ids = queue.enqueue_batch([bytes([i]) for i in range(20)], timeout_ms=5000)
        deadline = time.monotonic() + 10
        seen: list[int] = []
        while len(seen) < 20 and time.monotonic() < deadline:
            got = queue.poll_completions(3)
            assert len(got) <= 3 and got == sorted(got)
            seen += got
        # 20 messages through 8 slots: the first 12 had to be parked in host
        # memory to make room, and are reported like the rest.
        assert seen == ids
        assert queue.poll_completions(100) == []
        assert [queue.try_dequeue_result(i) for i in ids] == [bytes([i]) for i in range(20)]


def test_bad_payloads_are_refused_and_enqueue_nothing() -> None:
    with GpuQueue(emulated(slot_bytes=64), table=OpTable([load_op("vector_add")], 48)) as queue:
        with pytest.raises(PayloadTooLarge, match="49 bytes is more than the 48-byte"):
            queue.enqueue(b"x" * 49)
        with pytest.raises(InvalidPayload, match="wrong payload length 12 for op 'vector_add'"):
            queue.enqueue(b"x" * 12)
        with pytest.raises(InvalidPayload, match="item 1: wrong payload length 3"):
            queue.enqueue_batch([b"x" * 8, b"abc"])
        with pytest.raises(InvalidPayload, match="no op 'nope'"):
            queue.enqueue(b"x" * 8, op="nope")
        assert queue.stats().enq_count == 0
        a, b = np.float32([1, 2]), np.float32([10, 20])
        msg_id = queue.enqueue(a.tobytes() + b.tobytes())
        assert np.frombuffer(wait_result(queue, msg_id), "<f4").tolist() == [11, 22]


def test_one_queue_serves_every_op_of_its_table() -> None:
    table = OpTable.for_worker("echo", 240)
    with GpuQueue(emulated(), table=table) as queue:
        plain = queue.enqueue(b"abc")
        hashed = queue.enqueue(b"abc", op="sha256")
        assert wait_result(queue, plain) == b"abc"
        assert wait_result(queue, hashed) == hashlib.sha256(b"abc").digest()


def test_a_failing_message_raises_message_failed_and_the_rest_succeed() -> None:
    with GpuQueue(emulated(), op=Picky()) as queue:
        ids = queue.enqueue_batch([b"ok1", b"bad!", b"ok2"], timeout_ms=1000)
        assert wait_result(queue, ids[0]) == b"ok1"
        with pytest.raises(MessageFailed, match="bad payload"):
            wait_result(queue, ids[1])
        assert wait_result(queue, ids[2]) == b"ok2"


def test_shutdown_waits_for_messages_in_flight_then_stops_the_device() -> None:
    gate = Gate()
    queue = GpuQueue(emulated(), op=gate)
    device = queue._device
    ids = queue.enqueue_batch([b"a", b"b", b"c"])
    threading.Timer(0.3, gate.open.set).start()
    start = time.monotonic()
    queue.shutdown(timeout_s=10)
    assert time.monotonic() - start >= 0.25  # it waited for the device to finish them
    assert device.memory.state[ids].tolist() == tags(np.array(ids), 6, PHASE_DONE).tolist()
    assert not device._thread.is_alive()
    with pytest.raises(QueueShutdown):
        queue.enqueue(b"x")
    with pytest.raises(QueueShutdown):
        queue.poll_completions(1)
    queue.shutdown()  # a second call is harmless


def test_shutdown_gives_up_on_a_device_that_will_not_finish() -> None:
    gate = Gate()
    queue = GpuQueue(emulated(), op=gate)
    queue.enqueue(b"stuck")
    start = time.monotonic()
    queue.shutdown(timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert queue._device.memory.control[STOP] == 1
    gate.open.set()  # the emulated device thread can end now
    assert queue._device.join(10)


def test_the_watchdog_reports_a_device_that_stopped_making_progress() -> None:
    gate = Gate()
    with GpuQueue(emulated(stall_timeout_s=0.3), op=gate) as queue:
        msg_id = queue.enqueue(b"slow")
        wait_failure(queue)
        assert isinstance(queue.failure, KernelStalled)
        with pytest.raises(KernelStalled, match="message 0 has waited"):
            queue.try_dequeue_result(msg_id)
        with pytest.raises(KernelStalled):
            queue.enqueue(b"more")
        gate.open.set()


def test_a_device_that_dies_surfaces_as_device_lost() -> None:
    with GpuQueue(emulated(), op=Crashing()) as queue:
        msg_id = queue.enqueue(b"x")
        wait_failure(queue)
        assert isinstance(queue.failure, DeviceLost)
        with pytest.raises(DeviceLost, match="Crash"):
            queue.try_dequeue_result(msg_id)
        # What the device held is still readable from host memory (the quarantine uses it).
        assert queue.unfinished_requests().shape[0] == 1


def test_a_queue_dropped_without_shutdown_still_stops_its_device() -> None:
    queue = GpuQueue(emulated(), op="echo")
    device = queue._device
    assert isinstance(device, EmulatedDevice)
    queue.enqueue(b"x")
    del queue
    gc.collect()
    assert device.memory.control[STOP] == 1
    assert device.join(5)
