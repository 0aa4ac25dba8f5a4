"""Property tests: any interleaving of reserve/commit/peek/release behaves like a
FIFO of slots, across wrap-around, in one process."""

from __future__ import annotations

import os
import threading
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpufeed.errors import ConfigError, InternalError
from gpufeed.ring import RingClosed, RingConsumer, RingProducer

CAPACITY = 8
SLOT_BYTES = 64


class RingModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.producer = RingProducer.create(capacity=CAPACITY, slot_bytes=SLOT_BYTES)
        self.consumer = RingConsumer.attach(self.producer.segment.name)
        self.fifo: deque[bytes] = deque()
        self.reserved: list[np.ndarray] = []
        self.peeked: list[bytes] = []
        self.next_value = 0

    def teardown(self) -> None:
        self.consumer.close()
        self.producer.close()

    @rule(n=st.integers(1, CAPACITY + 3))
    def reserve(self, n: int) -> None:
        first, second = self.producer.reserve(n)
        free = CAPACITY - len(self.fifo)
        assert len(first) + len(second) == min(n, free)
        assert len(second) == 0 or len(first) > 0
        self.reserved = [*first, *second]
        for slot in self.reserved:
            slot[:] = np.frombuffer(
                self.next_value.to_bytes(8, "little") * (SLOT_BYTES // 8), dtype=np.uint8
            )
            self.next_value += 1

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        m = data.draw(st.integers(0, len(self.reserved)))
        self.producer.commit(m)
        self.fifo.extend(bytes(slot) for slot in self.reserved[:m])
        self.reserved = []

    @rule(max_n=st.integers(1, CAPACITY + 3))
    def peek(self, max_n: int) -> None:
        first, second = self.consumer.peek(max_n)
        got = [bytes(slot) for slot in (*first, *second)]
        assert got == list(self.fifo)[: min(max_n, len(self.fifo))]
        assert not first.flags.writeable and not second.flags.writeable
        self.peeked = got

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        m = data.draw(st.integers(0, len(self.peeked)))
        self.consumer.release(m)
        for _ in range(m):
            self.fifo.popleft()
        self.peeked = []

    @precondition(lambda self: self.reserved)
    @rule()
    def over_commit_is_refused(self) -> None:
        with pytest.raises(InternalError, match="reserved"):
            self.producer.commit(len(self.reserved) + 1)

    @invariant()
    def counts_agree(self) -> None:
        assert self.consumer.ready() == len(self.fifo)
        assert self.producer.free() == CAPACITY - len(self.fifo)


RingModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRingModel = RingModel.TestCase


@given(st.lists(st.integers(1, 2 * CAPACITY), min_size=1, max_size=40))
@settings(deadline=None, max_examples=60)
def test_slots_arrive_in_order_whatever_the_batch_sizes(batches: list[int]) -> None:
    with RingProducer.create(capacity=CAPACITY, slot_bytes=SLOT_BYTES) as producer:
        consumer = RingConsumer.attach(producer.segment.name)
        sent = received = 0
        for n in batches:
            first, second = producer.reserve(n)
            for slot in (*first, *second):
                slot[:8] = np.frombuffer(sent.to_bytes(8, "little"), dtype=np.uint8)
                sent += 1
            producer.commit(len(first) + len(second))
            first, second = consumer.peek(n // 2 + 1)
            for slot in (*first, *second):
                assert int.from_bytes(bytes(slot[:8]), "little") == received
                received += 1
            consumer.release(len(first) + len(second))
        consumer.close()


def test_closed_ring_still_delivers_committed_slots_then_raises() -> None:
    producer = RingProducer.create(capacity=4, slot_bytes=64)
    consumer = RingConsumer.attach(producer.segment.name)
    first, _ = producer.reserve(3)
    first[:, 0] = [1, 2, 3]
    producer.commit(3)
    producer.close()
    first, _ = consumer.peek(8)
    assert list(first[:, 0]) == [1, 2, 3]
    consumer.release(3)
    with pytest.raises(RingClosed):
        consumer.peek(1, timeout=1.0)
    consumer.close()


def test_reserve_on_a_ring_the_consumer_closed_raises() -> None:
    producer = RingProducer.create(capacity=4, slot_bytes=64)
    consumer = RingConsumer.attach(producer.segment.name)
    consumer.close()
    with pytest.raises(RingClosed):
        producer.reserve(1)
    producer.close()


def test_geometry_is_checked_on_create() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        RingProducer.create(capacity=6, slot_bytes=64)
    with pytest.raises(ConfigError, match="slot_bytes"):
        RingProducer.create(capacity=8, slot_bytes=32)
    with pytest.raises(ConfigError, match="slot_bytes"):
        RingProducer.create(capacity=8, slot_bytes=96)


def test_full_ring_times_out_with_an_empty_reservation() -> None:
    with RingProducer.create(capacity=2, slot_bytes=64) as producer:
        first, _ = producer.reserve(2)
        producer.commit(2)
        first, second = producer.reserve(1, timeout=0.05)
        assert len(first) == 0 and len(second) == 0


def test_empty_ring_peek_times_out_with_nothing() -> None:
    producer = RingProducer.create(capacity=2, slot_bytes=64)
    consumer = RingConsumer.attach(producer.segment.name)
    first, second = consumer.peek(1, timeout=0.05)
    assert len(first) == 0 and len(second) == 0
    consumer.close()
    producer.close()


def test_a_waiter_spins_only_while_its_waits_are_short() -> None:
    """A consumer whose producer took long goes straight to sleep next time instead
    of burning a core on checks; one that finds the data at once spins again."""
    producer = RingProducer.create(capacity=4, slot_bytes=64)
    consumer = RingConsumer.attach(producer.segment.name, spin=200)
    checks = 0
    ready = consumer._ready

    def counted() -> bool:
        nonlocal checks
        checks += 1
        return ready()

    consumer._ready = counted  # type: ignore[method-assign]

    def checks_in_an_empty_wait() -> int:
        nonlocal checks
        checks = 0
        assert not consumer.wait_ready(0.02)
        return checks

    try:
        assert checks_in_an_empty_wait() >= 200, "it spins at first"
        late = threading.Timer(0.02, lambda: producer.commit(len(producer.reserve(1)[0])))
        late.start()
        assert consumer.wait_ready(5.0)
        late.join()
        consumer.peek(1)
        consumer.release(1)
        assert checks_in_an_empty_wait() < 10, "after a long wait it sleeps at once"
        late = threading.Timer(0.02, lambda: producer.commit(len(producer.reserve(1)[0])))
        late.start()
        assert consumer.wait_ready(5.0), "and a commit still wakes it"
        late.join()
        consumer.peek(1)
        consumer.release(1)
        producer.reserve(1)
        producer.commit(1)
        assert consumer.wait_ready(5.0), "data already there: found without sleeping"
        consumer.peek(1)
        consumer.release(1)
        assert checks_in_an_empty_wait() >= 200, "so it spins again"
    finally:
        consumer.close()
        producer.close()


SHM_DIR = "/dev/shm"


def test_a_ring_larger_than_the_free_shared_memory_is_refused_not_created() -> None:
    """A segment is created sparse, so an oversized one would only fail on first
    touch, with SIGBUS: the size is checked against /dev/shm first."""
    stat = os.statvfs(SHM_DIR)
    free = stat.f_bavail * stat.f_frsize
    slot_bytes = 1 << 24
    capacity = 1 << max(1, (free // slot_bytes).bit_length())  # more than is free
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(ConfigError, match=r"MiB of shared memory .* --shm-size"):
        RingProducer.create(capacity=capacity, slot_bytes=slot_bytes)
    assert set(os.listdir(SHM_DIR)) - before == set()


def test_on_a_weakly_ordered_cpu_each_batch_costs_one_fence_per_cursor(weak_fences) -> None:
    """x86-64 needs no fence on the data path; AArch64 (Grace) does. With the fences a
    weakly ordered CPU uses switched on (libatomic's, here a `lock or`), every slot
    still arrives intact, and the fences come per batch and cursor read, not per slot."""
    calls = weak_fences
    batches, per_batch = 25, 40
    with (
        RingProducer.create(capacity=64, slot_bytes=64) as producer,
        RingConsumer.attach(producer.segment.name) as consumer,
    ):
        for b in range(batches):
            first, second = producer.reserve(per_batch)
            assert len(first) + len(second) == per_batch
            for part, base in ((first, 0), (second, len(first))):
                part[:, 0] = np.arange(base, base + len(part)) + b * per_batch
            producer.commit(per_batch)
            first, second = consumer.peek(per_batch)
            got = np.concatenate([first[:, 0], second[:, 0]])
            want = (np.arange(per_batch) + b * per_batch) % 256
            assert got.tolist() == want.tolist()
            consumer.release(per_batch)
    assert calls["release"] == 2 * batches + 2  # one per commit, per release and per close
    assert 0 < calls["acquire"] <= 2 * batches  # at most one per reserve and per peek
    assert sum(calls.values()) <= 4 * batches + 2  # per batch and cursor, never per slot


def test_without_libatomic_a_weakly_ordered_cpu_is_told_what_to_install(monkeypatch) -> None:
    import ctypes.util

    from gpufeed.ring import order

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(ConfigError, match=r"install GCC's runtime library .*libatomic1"):
        order.atomic_fence()


@pytest.mark.parametrize("have_proc", [True, False])
def test_process_alive_tells_live_from_reaped_with_or_without_proc(monkeypatch, have_proc) -> None:
    """Without /proc (macOS) every stat file is missing: liveness must come from the
    kernel then, or a live lease holder or ring peer would count as dead."""
    import subprocess
    import sys

    from gpufeed.ring import _wait

    monkeypatch.setattr(_wait, "_HAVE_PROC", have_proc)
    if not have_proc:
        monkeypatch.setattr(_wait, "open", _no_proc, raising=False)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _wait.process_alive(os.getpid())
        assert _wait.process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not _wait.process_alive(child.pid)


def _no_proc(path, *args, **kwargs):
    if str(path).startswith("/proc/"):
        raise FileNotFoundError(path)
    return open(path, *args, **kwargs)
