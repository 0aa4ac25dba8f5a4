"""The host's books over a persistent queue's slots: which message holds which.

Message ``id`` holds slot ``id % capacity`` from its enqueue until its result
leaves the slot: taken by the caller (``release``), or moved into host memory
(``park_done``) when an enqueue needs room. ``tail`` is the oldest id that
may still hold its slot and ``head`` the next id to enqueue, so ``head -
tail`` slots are in use. The watchdog thread reads these books too; it only
reads.
"""

from __future__ import annotations

import struct

import numpy as np

from gpufeed.gpu.persistent.memory import PHASE_DONE, Ids, QueueMemory, tag, tags
from gpufeed.ops.base import Bools
from gpufeed.packing.layout import HEADER_BYTES, payload_capacity
from gpufeed.ring import order

HEADER = struct.Struct("<IHHII")  # gpufeed.packing.layout.HEADER_DTYPE
_SCAN = 4096  # ids looked at per vectorised step when freeing slots


class SlotLedger:
    def __init__(self, memory: QueueMemory) -> None:
        self.memory = memory
        self.capacity = memory.capacity
        self._mask = memory.capacity - 1
        self._log2 = memory.capacity_log2
        self._slot_bytes = memory.slot_bytes
        self._payload_cap = payload_capacity(memory.slot_bytes)
        self._results = memory.results.data.cast("B")
        self._state = memory.state.data
        self.owner = np.full(self.capacity, -1, np.int64)  # message id in each slot; -1: free
        self.reported = np.zeros(self.capacity, bool)  # returned by poll_completions already
        self.parked: dict[int, tuple[int, bytes, bool]] = {}  # id -> (status, data, reported)
        self.head = self.tail = 0

    @property
    def in_use(self) -> int:
        return self.head - self.tail

    def claim(self, ids: Ids) -> None:
        """``ids`` (the next ones from ``head``) now hold their slots."""
        slots = ids & self._mask
        self.owner[slots] = ids
        self.reported[slots] = False
        self.head += len(ids)

    def holds(self, msg_id: int) -> bool:
        return self.tail <= msg_id < self.head and self.owner[msg_id & self._mask] == msg_id

    def is_done(self, msg_id: int) -> bool:
        """One state-word read: for callers that spin on one message."""
        done = bool(self._state[msg_id & self._mask] == tag(msg_id, self._log2, PHASE_DONE))
        if done and order.acquire_fence is not None:  # its result after its DONE word
            order.acquire_fence()
        return done

    def release(self, msg_ids: Ids) -> None:
        """The results of ``msg_ids`` were taken: their slots are free."""
        self.owner[msg_ids & self._mask] = -1
        self.advance_tail()

    def window(self, limit: int | None = None) -> tuple[Ids, Ids, Bools, Bools]:
        """The ids from the tail (at most ``limit``), their slots, whether each still
        holds its slot, and whether each is DONE."""
        tail, head = self.tail, self.head
        ids = np.arange(tail, head if limit is None else min(head, tail + limit), dtype=np.int64)
        slots = ids & self._mask
        held = self.owner[slots] == ids
        done = self.memory.state[slots] == tags(ids, self._log2, PHASE_DONE)
        # What the caller reads of the DONE ones (results), or writes into their slots
        # (new requests), comes after their DONE words.
        if order.acquire_fence is not None:
            order.acquire_fence()
        return ids, slots, held, done

    def advance_tail(self) -> None:
        """Move the tail over slots whose results were taken."""
        if self.tail < self.head and self.owner[self.tail & self._mask] == self.tail:
            return  # the oldest still holds its slot: nothing to move over
        while self.tail < self.head:
            ids, _, held, _ = self.window(_SCAN)
            k = len(ids) if not held.any() else int(np.argmax(held))
            self.tail += k
            if k < len(ids):
                return

    def park_done(self) -> None:
        """Free the slots of finished messages by moving their results to host memory."""
        while self.tail < self.head:
            ids, slots, held, done = self.window(_SCAN)
            movable = ~held | done
            k = len(ids) if movable.all() else int(np.argmin(movable))
            for i in np.flatnonzero(done[:k] & held[:k]).tolist():
                slot = int(slots[i])
                status, data = self.read_result(slot)
                self.parked[int(ids[i])] = (status, data, bool(self.reported[slot]))
                self.owner[slot] = -1
            self.tail += k
            if k < len(ids):
                return

    def free_slots(self) -> int:
        """Slots free now, after parking the results of finished messages if need be."""
        if self.in_use == self.capacity:
            self.park_done()
        return self.capacity - self.in_use

    def read_result(self, slot: int) -> tuple[int, bytes]:
        """A result slot's status and data."""
        offset = slot * self._slot_bytes
        length, _op, flags, _seq, _ = HEADER.unpack_from(self._results, offset)
        length = min(length, self._payload_cap)  # never read past a slot, whatever a header says
        start = offset + HEADER_BYTES
        return flags, bytes(self._results[start : start + length])

    def unfinished(self, limit: int | None = None) -> tuple[Ids, Ids]:
        """Ids (and slots) of the messages enqueued and not DONE, oldest first."""
        ids, slots, held, done = self.window(limit)
        waiting = held & ~done
        return ids[waiting], slots[waiting]

    def oldest_unfinished(self) -> int:
        """The lowest id enqueued and not yet DONE, or -1."""
        ids, _ = self.unfinished(_SCAN)
        return int(ids[0]) if len(ids) else -1
