"""GpuQueue's host-side protocol, against two device sides that serve its memory layout
(state words, control words, request and result slots) on the CPU:

* ``emulated``: the protocol re-implemented in Python (``--emulate-device``);
* ``host``: the persistent kernel's own source, ``gpufeed_persistent`` in
  ``ops/cuda/persistent.cu``, compiled as host C++ and run on CPU threads, one
  per lane (tests/cuda_host; marked ``cuda_host``).

So everything the host does here is what it does on a GPU: publishing READY
after the request, reading results after DONE, waiting for and freeing slots,
wrapping around, the watchdog, shutdown; and, with ``host``, the kernel's own
claiming, waiting and lap logic on the other side.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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
from gpufeed.gpu.persistent.memory import PHASE_DONE, PHASE_READY, STOP, tag, tags
from gpufeed.loadgen.payloads import sample_payloads
from gpufeed.ops import BUILTINS, Echo, Op, OpTable, load_op
from gpufeed.packing import payload_capacity

sys.path.insert(0, str(Path(__file__).parents[1] / "cuda_host"))

pytestmark = pytest.mark.timeout(120)
DEVICES = ["emulated", pytest.param("host", marks=pytest.mark.cuda_host)]
# What a device side that died reports: the emulation's exception, the kernel's trap.
DIED = {"emulated": "Crash", "host": "__trap"}


# The kernels run on the host in this test; each must end without breaking a warp rule.
_host_devices: list = []


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest):
    _host_devices.clear()
    yield str(request.param)
    for side in _host_devices:
        assert side.launch.why == "", "the persistent kernel was aborted"


def open_queue(
    device: str,
    *,
    capacity: int = 64,
    slot_bytes: int = 256,
    op: Op | str = "echo",
    table: OpTable | None = None,
    **options,
) -> GpuQueue:
    """A GpuQueue served by ``device``: ``emulated`` or ``host`` (the kernel's own code)."""
    config = QueueConfig(capacity=capacity, slot_bytes=slot_bytes, device="emulated", **options)
    if table is None:
        table = OpTable([load_op(op) if isinstance(op, str) else op], payload_capacity(slot_bytes))
    if device == "host":
        from host_device import HostKernelDevice

        side = HostKernelDevice(table, config)
        _host_devices.append(side)
        return GpuQueue(config, table=table, device=side)
    return GpuQueue(config, table=table)


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


# The test ops below each do the same on both devices: in NumPy (``cpu``) for the
# emulation, in a device function (``cuda_source``) for the kernel.
ECHO_BODY = """
  for (uint32_t i = lane; i < in.len; i += lanes) out.out[i] = in.payload[i];
  if (lane == 0) {
    *out.out_len = in.len;
    *out.status = gpufeed::STATUS_OK;
  }
"""


class Gate(Echo):
    """Echo that holds every message until the test opens the gate: a busy device.

    The gate is a word in host memory; the device function reads it in place,
    through ``OpParams`` (the host build does not copy device tensors).
    """

    name = "gate"
    cuda_function = "test_gate"

    def __init__(self) -> None:
        self.word = np.zeros(4, np.uint32)

    def open(self) -> None:
        self.word[0] = 1

    def cpu(self, payloads, lens):
        deadline = time.monotonic() + 20
        while not self.word[0] and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.reference(payloads, lens)

    def device_tensors(self):
        return [self.word]

    @property
    def cuda_source(self) -> str:
        return (
            "GPUFEED_OP(test_gate) {\n"
            "  const volatile uint32_t* word = static_cast<const volatile uint32_t*>("
            "params.tensors[0]);\n"
            "  if (lane == 0)\n"
            "    while (*word == 0) __nanosleep(100000);\n"
            "  __syncwarp();\n" + ECHO_BODY + "}\n"
        )


class Crash(BaseException):
    """Raised by the emulated device the way a trapped kernel takes a GPU down."""


class Crashing(Echo):
    name = "crashing"
    cuda_function = "test_crashing"

    def cpu(self, payloads, lens):
        raise Crash("boom")

    @property
    def cuda_source(self) -> str:
        return "GPUFEED_OP(test_crashing) { __trap(); }\n"


class Picky(Echo):
    """Echo that fails on payloads starting with b"bad", saying "bad payload"."""

    name = "picky"
    cuda_function = "test_picky"

    def cpu(self, payloads, lens):
        if (payloads[:, :3] == np.frombuffer(b"bad", np.uint8)).all(axis=1).any():
            raise ValueError("bad payload")
        return self.reference(payloads, lens)

    @property
    def cuda_source(self) -> str:
        return (
            "GPUFEED_OP(test_picky) {\n"
            "  if (in.len >= 3 && in.payload[0] == 'b' && in.payload[1] == 'a' &&\n"
            "      in.payload[2] == 'd') {\n"
            '    const char reason[] = "bad payload";\n'
            "    if (lane == 0) {\n"
            "      for (uint32_t i = 0; i + 1 < sizeof reason; ++i) out.out[i] = reason[i];\n"
            "      *out.out_len = sizeof reason - 1;\n"
            "      *out.status = gpufeed::STATUS_ERROR;\n"
            "    }\n"
            "    return;\n"
            "  }\n" + ECHO_BODY + "}\n"
        )


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
def test_every_builtin_op_equals_its_reference(device, op_name) -> None:
    payloads = sample_payloads(load_op(op_name), 300, 240, seed=7)
    with open_queue(device, capacity=32, op=op_name) as queue:
        ids = queue.enqueue_batch(payloads, timeout_ms=5000)
        assert ids == list(range(300))
        for msg_id, data in zip(ids, payloads, strict=True):
            got = wait_result(queue, msg_id)
            if op_name == "dense":
                want = np.frombuffer(reference(op_name, data), "<f4")
                assert np.allclose(np.frombuffer(got, "<f4"), want, rtol=1e-5, atol=1e-6)
            else:
                assert got == reference(op_name, data)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from([2, 4, 16]),
    st.lists(st.binary(max_size=48), min_size=1, max_size=60),
)
def test_wrap_around_keeps_each_result_with_its_message(device, capacity, datas) -> None:
    # Many laps over a tiny ring, one message at a time and in batches.
    with open_queue(device, capacity=capacity, slot_bytes=64, op="sha256") as queue:
        ids = [queue.enqueue(d, timeout_ms=5000) for d in datas[: len(datas) // 2]]
        ids += queue.enqueue_batch(datas[len(datas) // 2 :], timeout_ms=5000)
        assert ids == list(range(len(datas)))
        got = [wait_result(queue, i) for i in ids]
    assert got == [hashlib.sha256(d).digest() for d in datas]


def test_a_full_queue_refuses_waits_and_then_accepts(device) -> None:
    gate = Gate()
    with open_queue(device, capacity=4, op=gate) as queue:
        for i in range(4):
            queue.enqueue(f"m{i}".encode())
        with pytest.raises(QueueFull):
            queue.enqueue(b"one too many")
        start = time.monotonic()
        with pytest.raises(QueueTimeout):
            queue.enqueue(b"one too many", timeout_ms=100)
        assert time.monotonic() - start >= 0.09
        threading.Timer(0.2, gate.open).start()
        late = queue.enqueue(b"late", timeout_ms=5000)  # room comes as the device finishes
        assert late == 4
        stats = queue.stats()
        assert (stats.enq_count, stats.dropped_full) == (5, 2)
        assert stats.retries >= 3
        assert [wait_result(queue, i) for i in range(5)] == [b"m0", b"m1", b"m2", b"m3", b"late"]
        assert queue.stats().queue_depth == 0


def test_enqueue_batch_reports_partial_success_like_out_enqueued(device) -> None:
    gate = Gate()
    with open_queue(device, capacity=4, op=gate) as queue:
        items = [f"m{i}".encode() for i in range(10)]
        first = queue.enqueue_batch(items, timeout_ms=0)
        assert first == [0, 1, 2, 3]
        assert queue.stats().dropped_full == 6
        gate.open()
        rest = queue.enqueue_batch(items[4:], timeout_ms=5000)  # the caller passes the rest again
        assert rest == list(range(4, 10))
        assert [wait_result(queue, i) for i in range(10)] == items


def test_not_ready_while_processing_then_the_result_once(device) -> None:
    gate = Gate()
    with open_queue(device, op=gate) as queue:
        msg_id = queue.enqueue(b"hello")
        with pytest.raises(NotReady):
            queue.try_dequeue_result(msg_id)
        assert queue.poll_completions(10) == []
        gate.open()
        assert wait_result(queue, msg_id) == b"hello"
        with pytest.raises(NotFound):
            queue.try_dequeue_result(msg_id)  # taken already
        with pytest.raises(NotFound):
            queue.try_dequeue_result(99)  # never enqueued


def test_poll_completions_reports_each_finished_message_once_oldest_first(device) -> None:
    with open_queue(device, capacity=8, op="echo") as queue:
        ids = queue.enqueue_batch([bytes([i]) for i in range(20)], timeout_ms=5000)
        deadline = time.monotonic() + 10
        seen: list[int] = []
        while len(seen) < 20 and time.monotonic() < deadline:
            got = queue.poll_completions(3)
            assert len(got) <= 3 and got == sorted(got)
            seen += got
        # 20 messages through 8 slots: the first 12 had to be parked in host
        # memory to make room, and are reported like the rest. Each call lists its
        # ids oldest first; a later call may list an older id that finished later
        # (the kernel's warps finish in any order; the emulation in order).
        assert sorted(seen) == ids
        assert queue.poll_completions(100) == []
        assert [queue.try_dequeue_result(i) for i in ids] == [bytes([i]) for i in range(20)]


def test_bad_payloads_are_refused_and_enqueue_nothing(device) -> None:
    table = OpTable([load_op("vector_add")], 48)
    with open_queue(device, slot_bytes=64, table=table) as queue:
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


def test_one_queue_serves_every_op_of_its_table(device) -> None:
    table = OpTable.for_worker("echo", 240)
    with open_queue(device, table=table) as queue:
        plain = queue.enqueue(b"abc")
        hashed = queue.enqueue(b"abc", op="sha256")
        assert wait_result(queue, plain) == b"abc"
        assert wait_result(queue, hashed) == hashlib.sha256(b"abc").digest()


def test_a_failing_message_raises_message_failed_and_the_rest_succeed(device) -> None:
    with open_queue(device, op=Picky()) as queue:
        ids = queue.enqueue_batch([b"ok1", b"bad!", b"ok2"], timeout_ms=1000)
        assert wait_result(queue, ids[0]) == b"ok1"
        with pytest.raises(MessageFailed, match="bad payload"):
            wait_result(queue, ids[1])
        assert wait_result(queue, ids[2]) == b"ok2"


def test_shutdown_waits_for_messages_in_flight_then_stops_the_device(device) -> None:
    gate = Gate()
    queue = open_queue(device, op=gate)
    side = queue._device
    ids = queue.enqueue_batch([b"a", b"b", b"c"])
    threading.Timer(0.3, gate.open).start()
    start = time.monotonic()
    queue.shutdown(timeout_s=10)
    assert time.monotonic() - start >= 0.25  # it waited for the device to finish them
    assert side.memory.state[ids].tolist() == tags(np.array(ids), 6, PHASE_DONE).tolist()
    assert side.join(0.0)  # the device has ended
    with pytest.raises(QueueShutdown):
        queue.enqueue(b"x")
    with pytest.raises(QueueShutdown):
        queue.poll_completions(1)
    queue.shutdown()  # a second call is harmless


def test_after_shutdown_nothing_reads_the_freed_memory(device) -> None:
    """On a GPU, shutdown frees the mapped memory the queue's words live in: a call
    that read it then would crash the process, so every call refuses instead."""
    queue = open_queue(device, op="echo")
    msg_id = queue.enqueue(b"x")
    wait_result(queue, msg_id)
    queue.shutdown()
    calls = [
        lambda: queue.done(msg_id),
        queue.unfinished_requests,
        lambda: queue.try_dequeue_result(msg_id),
        lambda: queue.take_slots(0, 1),
    ]
    for call in calls:
        with pytest.raises(QueueShutdown):
            call()


def test_shutdown_gives_up_on_a_device_that_will_not_finish(device) -> None:
    gate = Gate()
    queue = open_queue(device, op=gate)
    queue.enqueue(b"stuck")
    start = time.monotonic()
    queue.shutdown(timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert queue._device.memory.control[STOP] == 1
    gate.open()  # the device can end now
    assert queue._device.join(10)


def test_the_watchdog_reports_a_device_that_stopped_making_progress(device) -> None:
    gate = Gate()
    with open_queue(device, op=gate, stall_timeout_s=0.3) as queue:
        msg_id = queue.enqueue(b"slow")
        wait_failure(queue)
        assert isinstance(queue.failure, KernelStalled)
        with pytest.raises(KernelStalled, match="message 0 has waited"):
            queue.try_dequeue_result(msg_id)
        with pytest.raises(KernelStalled):
            queue.enqueue(b"more")
        gate.open()


def test_a_device_that_dies_surfaces_as_device_lost(device) -> None:
    with open_queue(device, op=Crashing()) as queue:
        msg_id = queue.enqueue(b"x")
        wait_failure(queue)
        assert isinstance(queue.failure, DeviceLost)
        with pytest.raises(DeviceLost, match=DIED[device]):
            queue.try_dequeue_result(msg_id)
        # What the device held is still readable from host memory (the quarantine uses it).
        assert queue.unfinished_requests().shape[0] == 1
    _host_devices.clear()  # this kernel was meant to trap


def test_a_queue_dropped_without_shutdown_still_stops_its_device(device) -> None:
    queue = open_queue(device, op="echo")
    side = queue._device
    assert side.name == device
    queue.enqueue(b"x")
    del queue
    gc.collect()
    assert side.memory.control[STOP] == 1
    assert side.join(5)


def test_on_a_weakly_ordered_cpu_requests_are_fenced_before_ready_once_per_batch(
    device, weak_fences
) -> None:
    """A Grace host must not let the device see READY before the request: with the
    fences a weakly ordered CPU uses, one release per published batch, and an
    acquire between seeing DONE and reading the results."""
    calls = weak_fences
    with open_queue(device, capacity=256, op="sha256") as queue:
        datas = [b"m%d" % i for i in range(200)]
        ids = queue.enqueue_batch(datas, timeout_ms=5000)
        assert calls["release"] == 1
        got = [wait_result(queue, i) for i in ids]
        assert queue.enqueue(b"one more") == 200
        assert calls["release"] == 2
    assert got == [hashlib.sha256(d).digest() for d in datas]
    assert calls["acquire"] > 0
