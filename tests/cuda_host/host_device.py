"""``HostKernelDevice``: a GpuQueue's device side running ``gpufeed_persistent``'s own
source on CPU threads (host_program.py), over the queue's host memory layout."""

from __future__ import annotations

import numpy as np
from host_program import HostParams, Launch, build

from gpufeed.gpu.persistent.config import QueueConfig
from gpufeed.gpu.persistent.cuda import SYNC_WORDS
from gpufeed.gpu.persistent.device import DeviceSide
from gpufeed.gpu.persistent.memory import STOP, QueueMemory
from gpufeed.ops import OpTable

# A small grid: every lane is an OS thread, and this machine may have two cores.
BLOCKS = 2  # worker blocks, besides block 0 (the dispatcher's)
WARPS_PER_BLOCK = 1


class HostKernelDevice(DeviceSide):
    name = "host"

    def __init__(self, table: OpTable, config: QueueConfig, *, blocks: int = BLOCKS,
                 warps_per_block: int = WARPS_PER_BLOCK) -> None:  # fmt: skip
        self.program = build(table.ops)
        self.params = HostParams(table.ops)
        m = self.memory = QueueMemory.host(config.capacity, config.slot_bytes)
        self.sync = np.zeros(SYNC_WORDS, np.uint64)
        self.scratch = np.zeros(blocks * warps_per_block * 2 * config.slot_bytes, np.uint8)
        self._pointers = [a.ctypes.data for a in (m.requests, m.results, m.state, m.control,
                                                  self.sync, self.scratch)]  # fmt: skip
        self._blocks, self._threads = blocks, 32 * warps_per_block
        self.launch: Launch | None = None

    def start(self) -> None:
        m = self.memory
        self.launch = self.program.persistent(
            self._pointers, m.capacity_log2, m.slot_bytes, self.params, self._blocks + 1,
            self._threads,
        )  # fmt: skip

    def failure(self) -> str | None:
        if self.launch is None:
            return None
        why = self.launch.why
        if why:
            return f"the persistent kernel was aborted: {why}"
        if not self.memory.control[STOP] and self.launch.join(0.0):
            return "the persistent kernel exited without being asked to stop"
        return None

    def join(self, timeout_s: float) -> bool:
        return self.launch is None or self.launch.join(timeout_s)

    def close(self) -> None:
        if self.launch is not None:
            self.launch.free()
