"""The persistent queue's memory, as the host sees it (``cuda/persistent.cu`` is the
device's side of the same words).

Message ids count from 0; message ``id`` lives in slot ``id % capacity``.

* ``state``: one u32 per slot. The host writes ``READY(id)`` once the slot's
  request is in place; the device writes ``DONE(id)`` once its result is.
  A tag is ``(lap << 2) | phase`` with ``lap = id // capacity``, so a slot's
  previous message can never pass for the current one.
* ``control``: u64 words, one 64-byte line each: ``STOP`` (host → device) and
  ``STARTED``, ``HEARTBEAT``, ``EXITED`` (device → host).
* ``requests`` and ``results``: ``capacity`` gpufeed slots each (16-byte
  header + payload, ``gpufeed.packing.layout``).

On a GPU, ``state``, ``control`` and ``results`` are mapped pinned host
memory (the device reads and writes them across the bus), and ``requests``
is either mapped pinned memory too or a host staging copy of a device
buffer. The CPU emulation uses the same arrays in ordinary memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpufeed.packing.layout import SlotArray

# Indices into ``control`` (u64 words; 8 words = one 64-byte line).
STOP = 0
STARTED = 8
HEARTBEAT = 16
EXITED = 24
CONTROL_WORDS = 32

PHASE_READY = 1
PHASE_DONE = 2
_LAP_MASK = 0x3FFFFFFF

Ids = npt.NDArray[np.int64]
States = npt.NDArray[np.uint32]


def tags(ids: Ids, capacity_log2: int, phase: int) -> States:
    """The state word each message id in ``ids`` has in ``phase``."""
    laps = (ids >> capacity_log2) & _LAP_MASK
    return ((laps << 2) | phase).astype(np.uint32)


def tag(msg_id: int, capacity_log2: int, phase: int) -> int:
    return (((msg_id >> capacity_log2) & _LAP_MASK) << 2) | phase


@dataclass
class QueueMemory:
    """The arrays the host side works on (views of whatever the device allocated)."""

    capacity: int
    slot_bytes: int
    state: States
    control: npt.NDArray[np.uint64]
    requests: SlotArray
    results: SlotArray

    @property
    def capacity_log2(self) -> int:
        return self.capacity.bit_length() - 1

    @classmethod
    def host(cls, capacity: int, slot_bytes: int) -> QueueMemory:
        """The layout in ordinary host memory (the CPU emulation's)."""
        return cls(
            capacity,
            slot_bytes,
            np.zeros(capacity, np.uint32),
            np.zeros(CONTROL_WORDS, np.uint64),
            np.zeros((capacity, slot_bytes), np.uint8),
            np.zeros((capacity, slot_bytes), np.uint8),
        )

    def slots(self, first_id: int, count: int) -> list[slice]:
        """The slot ranges holding ``count`` messages from ``first_id`` (at most two)."""
        start = first_id % self.capacity
        end = start + count
        if end <= self.capacity:
            return [slice(start, end)]
        return [slice(start, self.capacity), slice(0, end - self.capacity)]
