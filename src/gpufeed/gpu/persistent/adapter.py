"""``--backend persistent``: the compute process feeds a GpuQueue from its request rings.

Each submitted run of request slots goes into the queue whole (headers and
all, so the results carry the ring's sequence numbers) and comes back, once
every message of it is DONE, as one ``Completed``, in submission order, so
each response ring is answered in FIFO order.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from gpufeed.errors import ConfigError
from gpufeed.gpu.backend import Backend, Completed, completed_from_slots
from gpufeed.gpu.persistent.config import QueueConfig
from gpufeed.gpu.persistent.queue import GpuQueue
from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import Headers, SlotArray, headers

# poll(timeout) spins this long for a result before it starts sleeping:
# results of a persistent kernel arrive microseconds apart.
SPIN_S = 0.0002
SLEEP_S = 0.00005


@dataclass
class _Batch:
    ring: int
    requests: Headers
    first_id: int


def queue_capacity(max_batch: int) -> int:
    """Room for several batches in flight: the smallest power of two >= 4 × max_batch."""
    return max(1024, 1 << (4 * max_batch - 1).bit_length())


class PersistentBackend(Backend):
    name = "persistent"

    def __init__(
        self, table: OpTable, slot_bytes: int, max_batch: int, config: QueueConfig | None = None
    ) -> None:
        super().__init__(table, slot_bytes, max_batch)
        config = config or QueueConfig(queue_capacity(max_batch), slot_bytes)
        if config.slot_bytes != slot_bytes or config.capacity < max_batch:
            raise ConfigError("the queue's slots must match the rings' and hold a whole batch")
        self.queue = GpuQueue(config, table=table)
        # The emulated device is a thread of this process: spinning would keep
        # the GIL from it.
        self._spin_s = 0.0 if config.device == "emulated" else SPIN_S
        self._flight: deque[_Batch] = deque()
        self._done: list[Completed] = []

    def submit(self, ring: int, requests: SlotArray) -> None:
        batch = _Batch(ring, headers(requests).copy(), self.queue.stats().enq_count)
        sent = 0
        while sent < len(requests):
            sent += self.queue.enqueue_slots(requests[sent:])
            if sent < len(requests):  # full: earlier batches must finish first
                self._harvest()
                time.sleep(SLEEP_S)
        self._flight.append(batch)

    def poll(self, timeout: float = 0.0) -> list[Completed]:
        self._harvest()
        if not self._done and self._flight and timeout > 0:
            start = time.monotonic()
            while not self._done and time.monotonic() - start < timeout:
                if time.monotonic() - start > self._spin_s:
                    time.sleep(SLEEP_S)
                self._harvest()
        done, self._done = self._done, []
        return done

    def in_flight(self) -> int:
        return len(self._flight) + len(self._done)

    def close(self) -> None:
        self.queue.shutdown()

    def in_flight_requests(self) -> list[SlotArray]:
        return [self.queue.unfinished_requests()]

    def _harvest(self) -> None:
        while self._flight:
            batch = self._flight[0]
            results = self.queue.take_slots(batch.first_id, len(batch.requests))
            if results is None:
                return
            self._flight.popleft()
            self._done.append(completed_from_slots(self.table, batch.ring, batch.requests, results))
