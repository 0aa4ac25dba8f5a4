"""The device side of a GpuQueue on a GPU: the persistent kernel and its memory.

CUDA rules this module keeps (``docs/gpu.md``):

* every block of the kernel must be resident at once (the workers wait for
  the dispatcher): the grid is sized from the occupancy the GPU allows (a
  MIG slice reports its own SMs), and launched cooperatively, so where the
  driver knows better (an MPS limit on this process's share) it refuses the
  launch at once (error 720) instead of leaving blocks waiting for SMs;
* every buffer is allocated before the kernel is launched, and freed only
  after it has exited: allocating or freeing can synchronise the device,
  which would wait forever for a kernel that never ends;
* the kernel runs on its own non-blocking stream, and nothing here uses the
  legacy default stream while it runs (that stream would wait for it);
* the host only reads and writes mapped pinned memory while the kernel runs,
  except for ``payload="device"``, whose request copies run on a second
  non-blocking stream.
"""

from __future__ import annotations

import time

import numpy as np

from gpufeed.errors import ConfigError
from gpufeed.gpu.cuda_runtime import (
    MEMCPY_HOST_TO_DEVICE,
    DeviceOpParams,
    MappedHostMemory,
    classify,
    compile_table,
    cooperative_launch_refused,
    import_cupy,
    is_sticky,
    work_done,
)
from gpufeed.gpu.persistent.config import QueueConfig
from gpufeed.gpu.persistent.device import DeviceSide
from gpufeed.gpu.persistent.memory import CONTROL_WORDS, STOP, QueueMemory
from gpufeed.ops.program import PERSISTENT_KERNEL
from gpufeed.ops.registry import OpTable

SYNC_WORDS = 64  # cuda/persistent.cu: TICKET, VISIBLE and DEVICE_STOP, a 128-byte line each


class CudaDevice(DeviceSide):
    name = "cuda"

    def __init__(self, table: OpTable, config: QueueConfig) -> None:
        cp = self._cp = import_cupy()
        self._device = cp.cuda.Device(config.gpu)
        self._device.use()
        cap, sb = config.capacity, config.slot_bytes
        self._module = compile_table(cp, table, cooperative=True)
        self._kernel = self._module.get_function(PERSISTENT_KERNEL)
        self._params = DeviceOpParams(cp, table)
        sms = int(self._device.attributes["MultiProcessorCount"])
        self._blocks = config.blocks or sms
        self._threads = 32 * config.warps_per_block
        if self._blocks + 1 > sms * self._max_blocks_per_sm():
            raise ConfigError(
                f"{self._blocks} worker blocks of {self._threads} threads cannot all run at "
                f"once on this GPU ({sms} SMs): the persistent kernel needs every block resident"
            )
        self._host: list[MappedHostMemory] = []
        self._state = self._mapped(cap * 4)
        self._control = self._mapped(CONTROL_WORDS * 8)
        self._results = self._mapped(cap * sb)
        self._requests = self._mapped(cap * sb)  # the requests, or their staging copy
        self._sync = cp.zeros(SYNC_WORDS, np.uint64)
        self._scratch = cp.zeros(self._blocks * config.warps_per_block * 2 * sb, np.uint8)
        self._device_requests = None
        if config.payload == "device":
            self._device_requests = cp.zeros(cap * sb, np.uint8)
            self._copy_stream = cp.cuda.Stream(non_blocking=True)
        self._stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.runtime.deviceSynchronize()  # every allocation and upload done before launch
        self._slot_bytes = sb
        self.memory = QueueMemory(
            cap, sb, self._state.view(np.uint32, (cap,)),
            self._control.view(np.uint64, (CONTROL_WORDS,)),
            self._requests.view(np.uint8, (cap, sb)), self._results.view(np.uint8, (cap, sb)),
        )  # fmt: skip
        self._requests_ptr = (
            self._device_requests.data.ptr
            if self._device_requests is not None
            else self._requests.device_ptr
        )
        self._launched = False
        self._error: str | None = None

    def _mapped(self, nbytes: int) -> MappedHostMemory:
        memory = MappedHostMemory(self._cp, nbytes)
        self._host.append(memory)
        return memory

    def _max_blocks_per_sm(self) -> int:
        try:
            occupancy = self._cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor
            return int(occupancy(self._kernel.kernel.ptr, self._threads, 0))
        except (AttributeError, TypeError):  # older CuPy: assume the hardware minimum
            return 1

    def start(self) -> None:
        m = self.memory
        # gpufeed_persistent's parameters, in order (cuda/persistent.cu).
        args = (
            np.uint64(self._requests_ptr),
            np.uint64(self._results.device_ptr),
            np.uint64(self._state.device_ptr),
            np.uint64(self._control.device_ptr),
            self._sync,
            self._scratch,
            np.uint32(m.capacity_log2),
            np.uint32(m.slot_bytes),
            self._params.array,
            self._params.count,
        )
        try:
            with self._stream:
                self._kernel((self._blocks + 1,), (self._threads,), args)
        except Exception as exc:
            refused = cooperative_launch_refused(exc, self._blocks + 1, self._threads)
            if refused is not None:
                raise refused from exc
            raise
        self._launched = True

    def publish(self, first_id: int, count: int) -> None:
        if self._device_requests is None:
            return  # the kernel reads the mapped requests themselves
        runtime = self._cp.cuda.runtime
        try:
            for part in self.memory.slots(first_id, count):
                offset = part.start * self._slot_bytes
                nbytes = (part.stop - part.start) * self._slot_bytes
                runtime.memcpyAsync(
                    self._device_requests.data.ptr + offset, self._requests.ptr + offset,
                    nbytes, MEMCPY_HOST_TO_DEVICE, self._copy_stream.ptr,
                )  # fmt: skip
            # The copy must have landed before READY is written.
            self._copy_stream.synchronize()
        except Exception as exc:
            # A copy fails when the context is gone (the kernel trapped): the device.
            raise classify(exc, "copying requests to the device") from exc

    def failure(self) -> str | None:
        if self._error is None and self._launched and self._host:
            try:
                if self._kernel_ended() and not self.memory.control[STOP]:
                    self._error = "the persistent kernel exited without being asked to stop"
            except Exception as exc:
                self._error = f"the persistent kernel failed: {exc}" + (
                    " (the CUDA context is lost)" if is_sticky(exc) else ""
                )
        return self._error

    def join(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._kernel_ended():
                    return True
            except Exception as exc:  # the kernel ended with an error: it is not running
                self._error = self._error or f"the persistent kernel failed: {exc}"
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def _kernel_ended(self) -> bool:
        """Whether the kernel's stream is idle; raises for the error it ended with."""
        with self._device:  # the calling thread's device: the watchdog's is its own
            return work_done(self._cp, self._cp.cuda.runtime.streamQuery(self._stream.ptr))

    def close(self) -> None:
        for memory in self._host:
            try:
                memory.free()
            except Exception:  # a lost context cannot free; process exit will
                break
        self._host.clear()
        self._sync = self._scratch = self._device_requests = None
        self._params = None  # type: ignore[assignment]
