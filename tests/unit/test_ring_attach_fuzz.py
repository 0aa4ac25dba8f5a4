"""Header fuzzing: every damaged header is refused with ``RingCorrupt``, at attach or mid-run.

The damage is written through a file descriptor, never through a mapping, so a
segment truncated by the harness cannot SIGBUS the harness itself.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from gpufeed.ring import RingConsumer, RingCorrupt, RingNotFound, RingProducer, RingSegment
from gpufeed.ring import _header as L
from gpufeed.ring.spsc import HEADER_CHECK_EVERY

CASES_PER_KIND = 2500  # four kinds: 10,000 corrupted headers in all


@pytest.fixture
def segment_file():
    segment = RingSegment.create(capacity=4, slot_bytes=64)
    path = f"/dev/shm/{segment.name}"
    with open(path, "r+b", buffering=0) as f:
        original = os.pread(f.fileno(), L.HEADER_LEN, 0)
        yield segment.name, f.fileno(), original
    segment.close()


def _assert_refused(name: str) -> RingCorrupt:
    with pytest.raises(RingCorrupt) as info:
        RingSegment.attach(name)
    return info.value


def _restore(fd: int, original: bytes, total_len: int) -> None:
    os.ftruncate(fd, total_len)
    os.pwrite(fd, original, 0)


def test_random_bytes_in_the_fixed_fields(segment_file) -> None:
    name, fd, original = segment_file
    rng = np.random.default_rng(2)
    fields = set()
    for _ in range(CASES_PER_KIND):
        start = int(rng.integers(0, L.CACHE_LINE))
        length = int(rng.integers(1, L.CACHE_LINE - start + 1))
        junk = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        if junk == original[start : start + length]:
            continue
        os.pwrite(fd, junk, start)
        fields.add(_assert_refused(name).field)
        os.pwrite(fd, original[:64], 0)
    assert {"magic", "crc"} <= fields


def test_single_bit_flips_in_the_fixed_fields(segment_file) -> None:
    name, fd, original = segment_file
    rng = np.random.default_rng(3)
    for _ in range(CASES_PER_KIND):
        bit = int(rng.integers(0, L.CACHE_LINE * 8))
        damaged = bytearray(original[: L.CACHE_LINE])
        damaged[bit // 8] ^= 1 << (bit % 8)
        os.pwrite(fd, bytes(damaged), 0)
        _assert_refused(name)
    os.pwrite(fd, original[:64], 0)
    RingSegment.attach(name).close()  # the repaired header is accepted again


def test_truncated_segments(segment_file) -> None:
    name, fd, original = segment_file
    total_len = L.HEADER_LEN + 4 * 64
    rng = np.random.default_rng(4)
    for _ in range(CASES_PER_KIND):
        os.ftruncate(fd, int(rng.integers(0, total_len)))
        assert _assert_refused(name).field == "total_len"
        _restore(fd, original, total_len)


def test_insane_cursors(segment_file) -> None:
    name, fd, _ = segment_file
    rng = np.random.default_rng(5)
    for _ in range(CASES_PER_KIND):
        tail = int(rng.integers(0, 1 << 62))
        if rng.random() < 0.5:
            head = tail - int(rng.integers(1, 1 << 20))  # head behind tail
        else:
            head = tail + 4 + int(rng.integers(1, 1 << 20))  # more than capacity ahead
        os.pwrite(fd, struct.pack("<Q", head % (1 << 64)), L.W_HEAD * 8)
        os.pwrite(fd, struct.pack("<Q", tail), L.W_TAIL * 8)
        assert _assert_refused(name).field == "cursors"


def test_cursor_damage_after_attach_is_caught_on_the_next_read() -> None:
    producer = RingProducer.create(capacity=4, slot_bytes=64)
    consumer = RingConsumer.attach(producer.segment.name)
    producer.reserve(2)
    producer.commit(2)
    producer.segment.words[L.W_HEAD] = 1000  # a wild write by a broken peer
    with pytest.raises(RingCorrupt, match="cursors"):
        consumer.peek(4)
    with pytest.raises(RingCorrupt, match="cursors"):
        producer.free()
    producer.segment.words[L.W_HEAD] = 2
    consumer.close()
    producer.close()


def test_header_damage_on_a_busy_ring_is_caught_within_a_few_batches(segment_file) -> None:
    name, fd, original = segment_file
    producer, consumer = RingProducer.attach(name), RingConsumer.attach(name)
    os.pwrite(fd, b"SCRIBBLE", 0)  # another process overwrites the magic mid-run
    with pytest.raises(RingCorrupt, match="magic") as info:
        for _ in range(2 * HEADER_CHECK_EVERY):  # a busy ring: data every round
            producer.reserve(1)
            producer.commit(1)
            consumer.peek(1)
            consumer.release(1)
    assert info.value.field == "magic"
    os.pwrite(fd, original[:64], 0)
    consumer.close()
    producer.close()


def test_header_damage_on_an_idle_ring_wakes_a_waiting_reader(segment_file) -> None:
    name, fd, _ = segment_file
    consumer = RingConsumer.attach(name, wait_slice_s=0.01)
    damaged = bytearray(os.pread(fd, 64, 0))
    damaged[40] ^= 1  # creator_pid: still plausible, so only the CRC can tell
    os.pwrite(fd, bytes(damaged), 0)
    with pytest.raises(RingCorrupt) as info:
        consumer.peek(1, timeout=5.0)
    assert info.value.field == "crc"
    consumer.close()


def test_attaching_a_missing_name_says_so() -> None:
    with pytest.raises(RingNotFound, match="no ring segment"):
        RingSegment.attach("gpufeed-does-not-exist")
