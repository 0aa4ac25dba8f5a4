"""The ring's on-memory layout: one 4 KiB header page, then ``capacity`` slots.

Header page (all integers little-endian)::

    line 0  (fixed, covered by the CRC)
      0   magic        8s   b"GPUFRING"
      8   major        u16
      10  minor        u16
      12  header_len   u32  4096
      16  capacity     u64  power of two
      24  slot_bytes   u64  power of two, >= 64
      32  total_len    u64  header_len + capacity * slot_bytes
      40  creator_pid  u64
      48  created_ns   u64  wall-clock creation time: tells two incarnations apart
      56  crc32        u32  zlib.crc32 of bytes [0, 56)
      60  reserved     u32  zero
    line 1   closed            u64  0 open, 1 closed
    line 2   head              u64  written by the producer only
    line 3   tail              u64  written by the consumer only
    line 4   consumer_waiting  u64  consumer is (about to be) asleep on data_event
    line 5   data_event        u64  futex word (low 32 bits) the consumer sleeps on
    line 6   producer_waiting  u64  producer is (about to be) asleep on space_event
    line 7   space_event       u64  futex word (low 32 bits) the producer sleeps on
    line 8   producer pid, pid-namespace inode, heartbeat (CLOCK_MONOTONIC ns)
    line 9   consumer pid, pid-namespace inode, heartbeat

Each line is 64 bytes, so the two cursors, written by different processes on
different cores, never share a cache line. Slots start at offset 4096, so the
slot area is page-aligned (it can be registered with the CUDA driver as is).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from gpufeed.errors import ConfigError, RingCorrupt

MAGIC = b"GPUFRING"
MAJOR = 1
MINOR = 0
HEADER_LEN = 4096
CACHE_LINE = 64
MIN_SLOT_BYTES = 64
MAX_CAPACITY = 1 << 24
MAX_SLOT_BYTES = 1 << 24

_FIXED = struct.Struct("<8sHHIQQQQQ")  # bytes [0, 56): what the CRC covers
_CRC = struct.Struct("<II")  # crc32, reserved
FIXED_LEN = _FIXED.size
assert FIXED_LEN == 56

# Indices into the header viewed as an array of u64 words (byte offset / 8).
W_CLOSED = 64 // 8
W_HEAD = 128 // 8
W_TAIL = 192 // 8
W_CONSUMER_WAITING = 256 // 8
W_DATA_EVENT = 320 // 8
W_PRODUCER_WAITING = 384 // 8
W_SPACE_EVENT = 448 // 8
W_PRODUCER_PID = 512 // 8
W_PRODUCER_PIDNS = W_PRODUCER_PID + 1
W_PRODUCER_BEAT = W_PRODUCER_PID + 2
W_CONSUMER_PID = 576 // 8
W_CONSUMER_PIDNS = W_CONSUMER_PID + 1
W_CONSUMER_BEAT = W_CONSUMER_PID + 2
HEADER_WORDS = HEADER_LEN // 8


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class RingGeometry:
    """The fixed fields of a ring header."""

    capacity: int
    slot_bytes: int
    creator_pid: int
    created_ns: int
    header_len: int = HEADER_LEN
    major: int = MAJOR
    minor: int = MINOR

    @property
    def total_len(self) -> int:
        return self.header_len + self.capacity * self.slot_bytes


def check_geometry(capacity: int, slot_bytes: int) -> None:
    """Reject a capacity or slot size the ring cannot use (``ConfigError``)."""
    if not is_power_of_two(capacity) or capacity > MAX_CAPACITY:
        raise ConfigError(f"capacity must be a power of two <= {MAX_CAPACITY}, got {capacity}")
    if not is_power_of_two(slot_bytes) or not MIN_SLOT_BYTES <= slot_bytes <= MAX_SLOT_BYTES:
        raise ConfigError(
            f"slot_bytes must be a power of two in [{MIN_SLOT_BYTES}, {MAX_SLOT_BYTES}], "
            f"got {slot_bytes}"
        )


def encode_fixed(geometry: RingGeometry) -> bytes:
    """The first 64 header bytes for ``geometry``, CRC included."""
    fixed = _FIXED.pack(
        MAGIC,
        geometry.major,
        geometry.minor,
        geometry.header_len,
        geometry.capacity,
        geometry.slot_bytes,
        geometry.total_len,
        geometry.creator_pid,
        geometry.created_ns,
    )
    return fixed + _CRC.pack(zlib.crc32(fixed), 0)


def decode_fixed(buf: memoryview | bytes, mapped_len: int) -> RingGeometry:
    """Validate the fixed header fields of a mapped segment.

    Checks run from the most basic to the most derived, so the error names the
    field that is actually wrong: a truncated mapping, then magic, version,
    header length, the geometry against the mapped length, and last the CRC,
    which catches damage to fields that still look plausible (a flipped bit in
    ``creator_pid``, say).
    """
    if mapped_len < HEADER_LEN or len(buf) < HEADER_LEN:
        raise RingCorrupt(
            "total_len", f"segment is {mapped_len} bytes, shorter than a {HEADER_LEN}-byte header"
        )
    magic, major, minor, header_len, capacity, slot_bytes, total_len, pid, created_ns = (
        _FIXED.unpack_from(buf, 0)
    )
    crc, reserved = _CRC.unpack_from(buf, FIXED_LEN)
    if magic != MAGIC:
        raise RingCorrupt("magic", f"expected {MAGIC!r}, found {bytes(magic)!r}")
    if major != MAJOR:
        raise RingCorrupt("version", f"major version {major}, this gpufeed reads {MAJOR}")
    if header_len != HEADER_LEN:
        raise RingCorrupt("header_len", f"expected {HEADER_LEN}, found {header_len}")
    if not is_power_of_two(capacity) or capacity > MAX_CAPACITY:
        raise RingCorrupt("capacity", f"{capacity} is not a power of two <= {MAX_CAPACITY}")
    if not is_power_of_two(slot_bytes) or not MIN_SLOT_BYTES <= slot_bytes <= MAX_SLOT_BYTES:
        raise RingCorrupt("slot_bytes", f"{slot_bytes} is not a power of two >= {MIN_SLOT_BYTES}")
    expected_total = header_len + capacity * slot_bytes
    if total_len != expected_total:
        raise RingCorrupt(
            "total_len", f"header says {total_len}, capacity and slot_bytes give {expected_total}"
        )
    if total_len > mapped_len:
        raise RingCorrupt(
            "total_len", f"header says {total_len} bytes but only {mapped_len} are mapped"
        )
    actual_crc = zlib.crc32(bytes(buf[:FIXED_LEN]))
    if crc != actual_crc or reserved != 0:
        raise RingCorrupt("crc", f"stored {crc:#010x}, computed {actual_crc:#010x}")
    return RingGeometry(
        capacity=capacity,
        slot_bytes=slot_bytes,
        creator_pid=pid,
        created_ns=created_ns,
        header_len=header_len,
        major=major,
        minor=minor,
    )


def check_cursors(head: int, tail: int, capacity: int) -> None:
    """Raise ``RingCorrupt`` unless ``tail <= head <= tail + capacity``."""
    if not tail <= head <= tail + capacity:
        raise RingCorrupt(
            "cursors",
            f"head={head} tail={tail} capacity={capacity} break tail<=head<=tail+capacity",
        )
