"""``--backend batched``: whole batches on the GPU over K CUDA streams.

Each stream is a *lane* with its own buffers, all allocated once: device
input and output slots for ``max_batch`` messages, pinned host slots for the
results and, with ``staging="pinned"``, for the requests. A batch runs as
async H2D → kernel (one warp per slot, ``gpufeed_batch``) → async D2H →
event on one lane, so up to K batches overlap (one copying in, one
computing, one copying out). Batches are handed back in submission order,
which keeps every response ring in FIFO order.

Staging: ``pinned`` copies the ring's slots into the lane's pinned buffer
(a host memcpy) and returns at once; ``registered`` page-locks the request
rings themselves (``cudaHostRegister``) and copies straight from them, then
waits for that copy before returning, because the ring reuses the slots as
soon as ``submit`` returns.

Failures: a CUDA error that leaves the context usable (a launch refused)
recreates the lanes and retries the batch once, then splits it in halves
until the failing messages stand alone; they get error results (and dead
letters), the rest their results. An error that loses the context (a kernel
that faulted or trapped) raises ``DeviceLost``: only a new process can use
the GPU again, and the compute process's quarantine takes it from there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from gpufeed.errors import ConfigError
from gpufeed.gpu.backend import Backend, Completed, completed_from_slots
from gpufeed.gpu.cuda_runtime import (
    MEMCPY_DEVICE_TO_HOST,
    MEMCPY_HOST_TO_DEVICE,
    DeviceOpParams,
    compile_table,
    import_cupy,
    is_sticky,
    lost,
    work_done,
)
from gpufeed.ops.program import BATCH_KERNEL, WARP
from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import Headers, SlotArray, headers
from gpufeed.packing.results import write_error_results

log = structlog.get_logger()

STAGINGS = ("pinned", "registered")
MAX_STREAMS = 64
THREADS_PER_BLOCK = 256


def check_lanes(streams: int, staging: str) -> None:
    """``ConfigError`` unless ``streams`` lanes with ``staging`` can be built."""
    if not 1 <= streams <= MAX_STREAMS:
        raise ConfigError(f"--cuda-streams: must be between 1 and {MAX_STREAMS}, got {streams}")
    if staging not in STAGINGS:
        raise ConfigError(f"--staging: must be one of {', '.join(STAGINGS)}, got {staging!r}")


@dataclass
class _InFlight:
    ring: int
    requests: Headers
    lane: int
    count: int


class _Lane:
    """One CUDA stream and the buffers of one batch on it.

    A lane is ``free``, has a batch in ``flight``, holds a finished batch's
    results in ``host_out`` (``ready``: not yet returned by ``poll``), or has
    had them returned (``handed``: the compute process writes them into its
    response ring before it calls ``submit`` or ``poll`` again, which free
    the lane).
    """

    def __init__(self, cp: Any, max_batch: int, slot_bytes: int, staging: str) -> None:
        shape = (max_batch, slot_bytes)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.device_in = cp.zeros(shape, np.uint8)
        self.device_out = cp.zeros(shape, np.uint8)
        nbytes = max_batch * slot_bytes
        # The pinned pool may hand out more than asked for: count= takes what we use.
        self._pinned = [cp.cuda.alloc_pinned_memory(nbytes)]
        self.host_out = np.frombuffer(self._pinned[0], np.uint8, nbytes).reshape(shape)
        self.host_in: npt.NDArray[np.uint8] | None = None
        if staging == "pinned":
            self._pinned.append(cp.cuda.alloc_pinned_memory(nbytes))
            self.host_in = np.frombuffer(self._pinned[1], np.uint8, nbytes).reshape(shape)
        self.copied = cp.cuda.Event(disable_timing=True)
        self.done = cp.cuda.Event(disable_timing=True)
        self.state = "free"
        self.completed: Completed | None = None


class BatchedBackend(Backend):
    name = "batched"

    def __init__(
        self,
        table: OpTable,
        slot_bytes: int,
        max_batch: int,
        *,
        streams: int = 4,
        gpu: int = 0,
        staging: str = "pinned",
    ) -> None:
        super().__init__(table, slot_bytes, max_batch)
        check_lanes(streams, staging)
        cp = self._cp = import_cupy()
        self._runtime = cp.cuda.runtime
        cp.cuda.Device(gpu).use()
        self.staging = staging
        self._kernel = compile_table(cp, table).get_function(BATCH_KERNEL)
        self._params = DeviceOpParams(cp, table)
        # Ops with a whole-batch GPU path (dense: one cuBLAS GEMM), by op id.
        self._whole: dict[int, Callable[[Any, Any, Any], None]] = {}
        for op_id, op in enumerate(table.ops):
            path = op.batch_gpu()
            if path is not None:
                prepare = getattr(path, "prepare", None)
                if prepare is not None:
                    prepare(cp)
                self._whole[op_id] = path
        self._streams = streams
        self._lanes = self._make_lanes()  # synchronises the device: see there
        self._next = 0
        self._flight: deque[_InFlight] = deque()
        self._ready: list[Completed] = []
        self._registered: list[int] = []

    def _make_lanes(self) -> list[_Lane]:
        cp = self._cp
        lanes = [_Lane(cp, self.max_batch, self.slot_bytes, self.staging)
                 for _ in range(self._streams)]  # fmt: skip
        # The lanes' zeroed buffers, the op table's OpParams and the ops' prepared
        # constants were written on the legacy default stream, which the lanes'
        # non-blocking streams do not wait for: finish it all before a batch starts.
        self._runtime.deviceSynchronize()
        return lanes

    def attach_request_rings(self, rings: list[SlotArray]) -> None:
        """``registered`` staging: page-lock the request rings' slots for direct DMA."""
        if self.staging != "registered":
            return
        for slots in rings:
            ptr = int(slots.ctypes.data)
            self._runtime.hostRegister(ptr, slots.nbytes, 0)
            self._registered.append(ptr)

    # --- the Backend interface ------------------------------------------------------------

    def submit(self, ring: int, requests: SlotArray) -> None:
        self._release_handed()
        lane_id = self._free_lane()
        lane = self._lanes[lane_id]
        header = headers(requests).copy()
        # In flight before it starts: if starting it reveals a lost context, it
        # is among the suspects (in_flight_requests) with the batches before it.
        lane.state = "flight"
        self._flight.append(_InFlight(ring, header, lane_id, len(requests)))
        try:
            self._start(lane, requests)
        except Exception as exc:
            if is_sticky(exc):
                raise lost(exc, "a batch could not be started") from exc
            self._flight.pop()
            lane.state = "free"
            self._ready.append(self._recover(ring, header, requests.copy(), exc))

    def poll(self, timeout: float = 0.0) -> list[Completed]:
        self._release_handed()
        self._collect(wait=timeout > 0 and not self._ready)
        done, self._ready = self._ready, []
        for lane in self._lanes:
            if lane.state == "ready":
                lane.state = "handed"
        return done

    def in_flight(self) -> int:
        return len(self._flight) + len(self._ready)

    def in_flight_requests(self) -> list[SlotArray]:
        # Pinned staging keeps each batch's requests in host memory; registered
        # staging only had them in the ring, which has moved on.
        held = []
        for batch in self._flight:
            staged = self._lanes[batch.lane].host_in
            if staged is not None:
                held.append(staged[: batch.count].copy())
        return held

    def close(self) -> None:
        try:
            for lane in self._lanes:
                lane.stream.synchronize()
            for ptr in self._registered:
                self._runtime.hostUnregister(ptr)
        except Exception as exc:  # a lost context: process exit frees everything
            log.warning("GPU resources not released", error=str(exc))
        self._registered.clear()
        self._flight.clear()

    # --- lanes ----------------------------------------------------------------------------

    def _release_handed(self) -> None:
        for lane in self._lanes:
            if lane.state == "handed":
                lane.state, lane.completed = "free", None

    def _free_lane(self) -> int:
        """The next lane in turn, once it no longer holds a batch."""
        lane_id = self._next
        self._next = (self._next + 1) % len(self._lanes)
        lane = self._lanes[lane_id]
        while lane.state == "flight":
            self._collect(wait=True)
        if lane.state == "ready" and lane.completed is not None:
            # Its results wait for the next poll: give them their own memory.
            lane.completed.out = lane.completed.out.copy()
        lane.state, lane.completed = "free", None
        return lane_id

    def _collect(self, wait: bool) -> None:
        """Move finished batches, oldest first, from flight to ready; with ``wait``,
        block until at least the oldest has finished."""
        while self._flight:
            batch = self._flight[0]
            lane = self._lanes[batch.lane]
            try:
                if wait:
                    lane.done.synchronize()  # batches take microseconds to milliseconds
                    wait = False
                elif not work_done(self._cp, self._runtime.eventQuery(lane.done.ptr)):
                    return
            except Exception as exc:
                if is_sticky(exc):
                    raise lost(exc, "a batch failed on the GPU") from exc
                self._flight.popleft()
                lane.state = "free"
                inputs = self._inputs_of(lane, batch.count)
                # Its place is here, before the later batches that _recover finishes
                # first: each ring's batches must come back in submission order.
                at = len(self._ready)
                self._ready.insert(at, self._recover(batch.ring, batch.requests, inputs, exc))
                continue
            self._flight.popleft()
            done = completed_from_slots(self.table, batch.ring, batch.requests,
                                        lane.host_out[: batch.count])  # fmt: skip
            lane.state, lane.completed = "ready", done
            self._ready.append(done)

    def _start(self, lane: _Lane, requests: SlotArray) -> None:
        """H2D → kernel (or the op's whole-batch path) → D2H → event, on the lane's stream."""
        n = len(requests)
        nbytes = n * self.slot_bytes
        if lane.host_in is not None:
            lane.host_in[:n] = requests
            src = int(lane.host_in.ctypes.data)
        else:
            src = int(requests.ctypes.data)  # a registered ring: contiguous rows of slots
        stream = lane.stream
        self._runtime.memcpyAsync(
            lane.device_in.data.ptr, src, nbytes, MEMCPY_HOST_TO_DEVICE, stream.ptr
        )
        if lane.host_in is None:
            lane.copied.record(stream)
        self._compute(lane, n, headers(requests)["op"])
        self._runtime.memcpyAsync(int(lane.host_out.ctypes.data), lane.device_out.data.ptr,
                                  nbytes, MEMCPY_DEVICE_TO_HOST, stream.ptr)  # fmt: skip
        lane.done.record(stream)
        if lane.host_in is None:
            lane.copied.synchronize()  # the ring reuses these slots once submit returns

    def _compute(self, lane: _Lane, n: int, op_ids: npt.NDArray[np.uint16]) -> None:
        """Results for the lane's first ``n`` device slots, on its stream."""
        first = int(op_ids[0]) if len(op_ids) else 0
        whole = self._whole.get(first)
        with lane.stream:
            if whole is not None and bool((op_ids == first).all()):
                whole(self._cp, lane.device_in[:n], lane.device_out[:n])
                return
            blocks = (n * WARP + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
            self._kernel(
                (blocks,), (THREADS_PER_BLOCK,),
                (lane.device_in, lane.device_out, np.uint32(n), np.uint32(self.slot_bytes),
                 self._params.array, self._params.count),
            )  # fmt: skip
            # A batch that mixes ops: the kernel answered the rows of an op without a
            # device function (a tensor op) with errors; its own path redoes them.
            for op_id in np.unique(op_ids[:n]).tolist():
                path = self._whole.get(op_id)
                if path is None or self.table[op_id].cuda_function:
                    continue
                rows = self._cp.asarray(np.flatnonzero(op_ids[:n] == op_id))
                answered = self._cp.empty((len(rows), self.slot_bytes), self._cp.uint8)
                path(self._cp, lane.device_in[rows], answered)
                lane.device_out[rows] = answered

    # --- recovery -------------------------------------------------------------------------

    def _inputs_of(self, lane: _Lane, n: int) -> SlotArray:
        """A failed batch's requests: the pinned staging copy, or (registered staging:
        the ring has moved on) the lane's device input, which the kernel only read."""
        if lane.host_in is not None:
            return lane.host_in[:n].copy()
        inputs: SlotArray = self._cp.asnumpy(lane.device_in[:n], stream=lane.stream)
        lane.stream.synchronize()
        return inputs

    def _recover(
        self, ring: int, requests: Headers, inputs: SlotArray, exc: Exception
    ) -> Completed:
        """A batch whose launch or run failed with the context intact: recreate the
        lanes, retry it once, then isolate the failing messages by halving."""
        n = len(inputs)
        log.warning("GPU batch failed; recreating streams and buffers, retrying once",
                    error=str(exc), messages=n)  # fmt: skip
        while self._flight:  # finish the others before their lanes are replaced
            self._collect(wait=True)
        for lane in self._lanes:
            if lane.state == "ready" and lane.completed is not None:
                lane.completed.out = lane.completed.out.copy()
        self._lanes = self._make_lanes()
        self._next = 0
        out = np.zeros((n, self.slot_bytes), np.uint8)
        self._isolate(inputs, out, 0, n)
        return completed_from_slots(self.table, ring, requests, out)

    def _isolate(self, inputs: SlotArray, out: SlotArray, start: int, end: int) -> None:
        """Run inputs[start:end] at once; if that fails, split it until the failing
        messages stand alone, each answered with an error."""
        lane = self._lanes[0]
        try:
            self._start(lane, inputs[start:end])
            lane.done.synchronize()
            out[start:end] = lane.host_out[: end - start]
            return
        except Exception as exc:
            if is_sticky(exc):
                raise lost(exc, "isolating a failing batch") from exc
            if end - start == 1:
                reason = f"the GPU failed on this message: {exc}"
                write_error_results(out[start:end], headers(inputs[start:end]), reason)
                return
        mid = (start + end) // 2
        self._isolate(inputs, out, start, mid)
        self._isolate(inputs, out, mid, end)
