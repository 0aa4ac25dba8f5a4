"""The persistent queue's watchdog: a device that died or stopped making progress
fails the queue, so that its calls raise instead of waiting forever."""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING

from gpufeed.errors import DeviceLost, KernelStalled
from gpufeed.gpu.persistent.memory import HEARTBEAT, STOP

if TYPE_CHECKING:
    from gpufeed.gpu.persistent.queue import GpuQueue


class Watchdog(threading.Thread):
    """Notices a device that died or stopped making progress, so that calls raise
    ``DeviceLost`` / ``KernelStalled`` instead of waiting forever."""

    def __init__(self, queue: GpuQueue) -> None:
        super().__init__(name="gpufeed-queue-watchdog", daemon=True)
        # A weak reference: a dropped queue's finaliser must still be able to run.
        self._queue = weakref.ref(queue)
        self._stall_s = queue.config.stall_timeout_s
        self._interval = min(0.1, self._stall_s / 10)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join(5)

    def run(self) -> None:
        queue = self._queue()
        if queue is None:
            return
        control = queue._memory.control
        beat, beat_at = int(control[HEARTBEAT]), time.monotonic()
        waiting, waiting_since = -1, beat_at
        del queue
        while not self._stopped.wait(self._interval):
            queue = self._queue()
            if queue is None:
                return
            now = time.monotonic()
            why = queue._device.failure()
            if why is not None:
                queue._fail(DeviceLost(why))
                return
            oldest = queue._slots.oldest_unfinished()
            if oldest != waiting:
                waiting, waiting_since = oldest, now
            elif oldest >= 0 and now - waiting_since > self._stall_s:
                queue._fail(KernelStalled(
                    f"message {oldest} has waited {now - waiting_since:.1f} s for the device "
                    f"(stall timeout {self._stall_s} s)"
                ))  # fmt: skip
                return
            if int(control[HEARTBEAT]) != beat:
                beat, beat_at = int(control[HEARTBEAT]), now
            elif oldest < 0 and not control[STOP] and now - beat_at > self._stall_s:
                queue._fail(KernelStalled(f"no heartbeat from the device for {self._stall_s} s"))
                return
            del queue
