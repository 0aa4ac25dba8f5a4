"""The persistent kernel's protocol run by a CPU thread, over the same memory layout.

It plays both device roles of ``cuda/persistent.cu``: like the dispatcher it
looks for the run of consecutive READY slots after the last one it saw and
polls STOP when idle; like the workers it answers those slots (with the ops'
NumPy code, as the ``cpu`` backend does) and marks each DONE after its result
is written. So the host side's whole protocol (full ring, timeouts,
completions, wrap-around, shutdown, the watchdog) runs and is tested on a
machine without a GPU.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from gpufeed.gpu.cpu import compute_isolating
from gpufeed.gpu.persistent.device import DeviceSide
from gpufeed.gpu.persistent.memory import (
    EXITED,
    HEARTBEAT,
    PHASE_DONE,
    PHASE_READY,
    STARTED,
    STOP,
    QueueMemory,
    tags,
)
from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import headers
from gpufeed.packing.results import write_results

# The most slots answered in one step (the kernel's warps work on many at once).
MAX_RUN = 1024
# Idle back-off: spin a little, then sleep up to this long between polls.
MAX_IDLE_SLEEP_S = 0.0005


class EmulatedDevice(DeviceSide):
    name = "emulated"

    def __init__(self, table: OpTable, capacity: int, slot_bytes: int) -> None:
        self.table = table
        self.memory = QueueMemory.host(capacity, slot_bytes)
        self._thread = threading.Thread(target=self._serve, name="gpufeed-emulated-device",
                                        daemon=True)  # fmt: skip
        self._error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def failure(self) -> str | None:
        if self._error is not None:
            return self._error
        ended = self._thread.ident is not None and not self._thread.is_alive()
        if ended and not self.memory.control[STOP]:
            return "the emulated device thread ended without being asked to stop"
        return None

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def close(self) -> None:
        pass

    def _serve(self) -> None:
        m = self.memory
        m.control[STARTED] = 1
        next_id = idle = 0
        window = min(m.capacity, MAX_RUN)
        offsets = np.arange(window, dtype=np.int64)
        try:
            while True:
                ids = next_id + offsets
                ready = m.state[ids & (m.capacity - 1)] == tags(ids, m.capacity_log2, PHASE_READY)
                run = window if ready.all() else int(np.argmin(ready))
                if run:
                    self._answer(next_id, run)
                    next_id += run
                    idle = 0
                    continue
                idle += 1
                m.control[HEARTBEAT] = idle
                if m.control[STOP]:
                    m.control[EXITED] = 1
                    return
                if idle > 100:
                    time.sleep(min(MAX_IDLE_SLEEP_S, 1e-6 * idle))
        except BaseException as exc:  # what a trapped kernel is to a GPU: the device is gone
            # Recorded, not re-raised: the host side reports it (DeviceLost).
            self._error = f"emulated device failed: {exc!r}"

    def _answer(self, first_id: int, count: int) -> None:
        m = self.memory
        for part in m.slots(first_id, count):
            requests = m.requests[part]
            out, out_lens, status = compute_isolating(self.table, requests)
            write_results(m.results[part], headers(requests), out, out_lens, status)
        ids = np.arange(first_id, first_id + count, dtype=np.int64)
        # DONE only after every result of the run is written (the kernel's
        # __threadfence_system() before its DONE store).
        m.state[ids & (m.capacity - 1)] = tags(ids, m.capacity_log2, PHASE_DONE)
