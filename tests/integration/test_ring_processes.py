"""The ring between real processes: bulk transfer, close, peer death, ownership."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest

from gpufeed.ring import PeerGone, RingBusy, RingClosed, RingConsumer, RingProducer, RingSegment

CTX = mp.get_context("spawn")
K = np.uint64(0x9E3779B97F4A7C15)  # any odd constant: spreads sequence numbers over bits


def expected_slots(first_seq: int, n: int, slot_bytes: int) -> np.ndarray:
    """Slot contents for sequence numbers ``first_seq .. first_seq+n``: word j = seq*K + j."""
    seqs = np.arange(first_seq, first_seq + n, dtype=np.uint64)[:, None]
    words = seqs * K + np.arange(slot_bytes // 8, dtype=np.uint64)[None, :]
    return words.view(np.uint8)


def produce_sequence(name: str, total: int, seed: int, conn: Any) -> None:
    producer = RingProducer.attach(name)
    rng = np.random.default_rng(seed)
    sent, checksum = 0, np.uint64(0)
    slot_bytes = producer.segment.slot_bytes
    while sent < total:
        first, second = producer.reserve(min(int(rng.integers(1, 600)), total - sent), None)
        k1, k2 = len(first), len(second)
        data = expected_slots(sent, k1 + k2, slot_bytes)
        first[...] = data[:k1]
        second[...] = data[k1:]
        checksum ^= np.bitwise_xor.reduce(data.view(np.uint64), axis=None)
        producer.commit(k1 + k2)
        sent += k1 + k2
    conn.send(int(checksum))
    producer.close()


def attach_and_wait(name: str, role: str, conn: Any) -> None:
    endpoint = RingProducer.attach(name) if role == "producer" else RingConsumer.attach(name)
    conn.send("attached")
    time.sleep(3600)
    endpoint.close()


def start(target: Any, *args: Any) -> tuple[Any, Any]:
    parent, child = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    return proc, parent


@pytest.fixture
def reap():
    procs: list[Any] = []
    yield procs.append
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


@pytest.mark.timeout(120)
def test_ten_million_slots_arrive_complete_and_in_order(reap) -> None:
    total, slot_bytes = 10_000_000, 64
    consumer = RingConsumer.create(capacity=1024, slot_bytes=slot_bytes)
    proc, conn = start(produce_sequence, consumer.segment.name, total, 7)
    reap(proc)
    rng = np.random.default_rng(8)
    received, checksum = 0, np.uint64(0)
    while received < total:
        first, second = consumer.peek(int(rng.integers(1, 700)), timeout=30.0)
        got = np.concatenate([first, second]) if len(second) else first
        assert len(got), "producer stalled"
        assert np.array_equal(got, expected_slots(received, len(got), slot_bytes)), (
            f"wrong slot content at or after seq {received}"
        )
        checksum ^= np.bitwise_xor.reduce(got.view(np.uint64), axis=None)
        consumer.release(len(got))
        received += len(got)
    assert conn.poll(30)
    assert conn.recv() == int(checksum)
    with pytest.raises(RingClosed):
        consumer.peek(1, timeout=5.0)
    consumer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("survivor", ["consumer", "producer"])
def test_sigkilled_peer_gives_peer_gone_within_two_seconds(survivor: str, reap) -> None:
    peer_role = "producer" if survivor == "consumer" else "consumer"
    cls = RingConsumer if survivor == "consumer" else RingProducer
    endpoint = cls.create(capacity=4, slot_bytes=64)
    proc, conn = start(attach_and_wait, endpoint.segment.name, peer_role)
    reap(proc)
    assert conn.poll(30) and conn.recv() == "attached"
    if survivor == "producer":
        endpoint.reserve(4)
        endpoint.commit(4)  # full: the next reserve has to wait for the dead consumer
    os.kill(proc.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(PeerGone, match="died or stopped"):
        if survivor == "consumer":
            endpoint.peek(1, timeout=None)
        else:
            endpoint.reserve(1, timeout=None)
    assert time.monotonic() - started < 2.0
    endpoint.close()


@pytest.mark.timeout(60)
def test_a_frozen_peer_is_caught_by_its_heartbeat(reap) -> None:
    consumer = RingConsumer.create(capacity=4, slot_bytes=64, heartbeat_timeout_s=1.0)
    proc, conn = start(attach_and_wait, consumer.segment.name, "producer")
    reap(proc)
    assert conn.poll(30)
    conn.recv()
    os.kill(proc.pid, signal.SIGSTOP)  # alive as far as the pid goes, but silent
    started = time.monotonic()
    try:
        with pytest.raises(PeerGone):
            consumer.peek(1, timeout=None)
        assert time.monotonic() - started < 3.0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    consumer.close()


def close_after(name: str, role: str, delay: float, conn: Any) -> None:
    endpoint = RingProducer.attach(name) if role == "producer" else RingConsumer.attach(name)
    conn.send("attached")
    time.sleep(delay)
    endpoint.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("closer", ["producer", "consumer"])
def test_close_wakes_the_blocked_side_with_ring_closed(closer: str, reap) -> None:
    waiter_cls = RingConsumer if closer == "producer" else RingProducer
    waiter = waiter_cls.create(capacity=2, slot_bytes=64)
    if closer == "consumer":
        waiter.reserve(2)
        waiter.commit(2)
    proc, conn = start(close_after, waiter.segment.name, closer, 0.3)
    reap(proc)
    assert conn.poll(30)
    started = time.monotonic()
    with pytest.raises(RingClosed):
        if closer == "producer":
            waiter.peek(1, timeout=None)
        else:
            waiter.reserve(1, timeout=None)
    assert time.monotonic() - started < 2.0
    waiter.close()


@pytest.mark.timeout(60)
def test_a_second_live_producer_is_refused(reap) -> None:
    consumer = RingConsumer.create(capacity=4, slot_bytes=64)
    proc, conn = start(attach_and_wait, consumer.segment.name, "producer")
    reap(proc)
    assert conn.poll(30)
    with pytest.raises(RingBusy, match="already has a producer"):
        RingProducer.attach(consumer.segment.name)
    proc.kill()
    proc.join(10)
    RingProducer.attach(consumer.segment.name).close()  # a dead producer's place is free
    consumer.close()


def test_segments_are_private_and_removed_by_their_creator() -> None:
    segment = RingSegment.create(capacity=4, slot_bytes=64)
    path = f"/dev/shm/{segment.name}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    segment.close()
    assert not os.path.exists(path)


@pytest.mark.timeout(60)
def test_an_attaching_process_leaves_the_segment_alone_when_it_exits() -> None:
    segment = RingSegment.create(capacity=4, slot_bytes=64)
    code = textwrap.dedent(
        f"""
        from gpufeed.ring import RingConsumer
        consumer = RingConsumer.attach({segment.name!r})
        consumer.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr
    assert os.path.exists(f"/dev/shm/{segment.name}")
    RingSegment.attach(segment.name).close()
    segment.close()
