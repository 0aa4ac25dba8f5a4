"""A stand-in for the slice of CuPy the batched backend uses, in host memory with NumPy.

It lets CI run the batched backend's own logic (lanes in turn, FIFO order, how
long result buffers stay valid, retry and halving after an error that keeps
the context, DeviceLost after one that loses it) without a GPU. Copies are
memmoves and the batch kernel is the ops' NumPy code; tests/gpu runs the real
thing.

Where CUDA's behaviour decides what the backend sees, it behaves as CuPy does
(cupy/cuda/stream.pyx, cupy_backends/cuda/api/runtime.pyx): a kernel that
faults does so when it runs, not when it is launched, so the launch returns
and the error shows at the next query or synchronisation; ``runtime.eventQuery``
and ``streamQuery`` return the status and never raise; ``Event.done`` is
``eventQuery(ptr) == 0``, so after a fault it is False for ever; and after a
fault that loses the context every other call fails with it.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from gpufeed.gpu.cpu import compute_isolating
from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import headers
from gpufeed.packing.results import write_results


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"cudaError {status}")


class DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr``."""

    @property
    def data(self) -> Any:  # type: ignore[override]
        return SimpleNamespace(ptr=int(self.ctypes.data))


def _device(array: Any) -> DeviceArray:
    return np.asarray(array).view(DeviceArray)


class FakeCuPy:
    """``faults(slots)`` returns a CUDA error code to fail a kernel launch over
    ``slots`` with, or None. Illegal address (700), illegal instruction (715)
    and launch failure (719) lose the context, as on a GPU: every later call
    fails too; launch out of resources (701) does not. A negative code, -N,
    is error N reported when the batch completes (by its stream's next event),
    with the context intact."""

    float32 = np.float32
    uint8 = np.uint8
    uint32 = np.uint32
    int64 = np.int64

    def __init__(self, table: OpTable, faults: Callable[[np.ndarray], int | None]) -> None:
        self.table = table
        self.faults = faults
        self.lost = 0  # the sticky error that lost the context, 0 while it is fine
        self.pending = 0  # the status of a launched kernel that will fault when it runs
        self.stream_errors: dict[int, int] = {}  # stream -> error its next event reports
        self.event_errors: dict[int, int] = {}  # event -> error its next query reports
        self.running: set[int] = set()  # events whose first query says not-ready (600)
        self.launches: list[int] = []  # batch sizes, in launch order
        self.streams_made = 0
        self.registered: list[tuple[int, int]] = []
        # What ran on which stream, in order: ("write", stream) for zeros/asarray,
        # ("sync",) for deviceSynchronize, ("launch", stream) for a kernel. Stream 0
        # is the legacy default stream, CuPy's current one outside a `with stream:`;
        # non-blocking streams do not wait for it.
        self.log: list[tuple[Any, ...]] = []
        self.current = 0
        ids = itertools.count(1)
        fake = self

        def run_pending() -> None:
            """Work queued so far runs: a kernel that faults loses the context now."""
            if fake.pending:
                fake.lost, fake.pending = fake.pending, 0

        def status() -> int:
            run_pending()
            return fake.lost or 0

        def check() -> None:
            if fake.lost:
                raise CUDARuntimeError(fake.lost)

        class Stream:
            def __init__(self, non_blocking: bool = False) -> None:
                assert non_blocking, "the backends use non-blocking streams only"
                fake.streams_made += 1
                self.ptr = next(ids)

            def __enter__(self) -> Stream:
                self.previous, fake.current = fake.current, self.ptr
                return self

            def __exit__(self, *exc: object) -> None:
                fake.current = self.previous

            @property
            def done(self) -> bool:
                return bool(runtime.streamQuery(self.ptr) == 0)  # CuPy's own definition

            def synchronize(self) -> None:
                run_pending()
                check()

        class Event:
            def __init__(self, disable_timing: bool = False) -> None:
                self.ptr = next(ids)

            def record(self, stream: Any) -> None:
                check()
                error = fake.stream_errors.pop(stream.ptr, 0)
                if error:
                    fake.event_errors[self.ptr] = error
                fake.running.add(self.ptr)  # its work is still running at the first query

            @property
            def done(self) -> bool:
                return bool(runtime.eventQuery(self.ptr) == 0)  # CuPy's own definition

            def synchronize(self) -> None:
                fake.running.discard(self.ptr)
                run_pending()
                check()
                error = fake.event_errors.pop(self.ptr, 0)
                if error:
                    raise CUDARuntimeError(error)

        def event_query(ptr: int) -> int:
            if ptr in fake.running:  # work takes a moment on a GPU: not done at first look
                fake.running.discard(ptr)
                return 600
            error = fake.event_errors.pop(ptr, 0)
            return error or status()

        def memcpy(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
            check()
            ctypes.memmove(dst, src, nbytes)

        runtime = SimpleNamespace(
            CUDARuntimeError=CUDARuntimeError,
            deviceSynchronize=lambda: (run_pending(), check(), fake.log.append(("sync",))),
            eventQuery=event_query,
            streamQuery=lambda ptr: status(),
            memcpyAsync=memcpy,
            hostRegister=lambda ptr, n, flags: fake.registered.append((ptr, n)),
            hostUnregister=lambda ptr: None,
        )
        self.cuda = SimpleNamespace(
            Stream=Stream,
            Event=Event,
            runtime=runtime,
            Device=lambda gpu: SimpleNamespace(use=lambda: None),
            alloc_pinned_memory=lambda n: bytearray(n),
        )

    # --- array functions --------------------------------------------------------------

    def zeros(self, shape: Any, dtype: Any) -> DeviceArray:
        self.log.append(("write", self.current))
        return _device(np.zeros(shape, dtype))

    def asarray(self, array: Any) -> DeviceArray:
        self.log.append(("write", self.current))
        return _device(np.array(array))

    def asnumpy(self, array: Any, stream: Any = None) -> np.ndarray:
        return np.array(array)

    def ascontiguousarray(self, array: Any, dtype: Any = None) -> DeviceArray:
        return _device(np.ascontiguousarray(array, dtype=dtype))

    def empty(self, shape: Any, dtype: Any) -> DeviceArray:
        return _device(np.full(shape, 0xAB, dtype))  # not zeroed, as on a device

    def from_dlpack(self, array: Any) -> DeviceArray:
        return _device(np.from_dlpack(array))

    def maximum(self, a: Any, b: Any) -> DeviceArray:
        return _device(np.maximum(a, b))

    # --- the module -------------------------------------------------------------------

    def RawModule(
        self, code: str, options: tuple[str, ...] = (), enable_cooperative_groups: bool = False
    ) -> Any:
        assert "gpufeed_batch" in code
        return SimpleNamespace(get_function=self._kernel)

    def _kernel(self, name: str) -> Callable[..., None]:
        assert name == "gpufeed_batch"

        def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
            device_in, device_out, n = args[0], args[1], int(args[2])
            if self.lost:
                raise CUDARuntimeError(self.lost)
            assert grid[0] * block[0] >= 32 * n, "one warp per slot"
            status = self.faults(np.asarray(device_in[:n]))
            if status in (700, 715, 719):
                self.pending = status  # it faults when it runs, after the launch returned
                return
            if status is not None and status < 0:  # fails as it runs; the context survives
                self.stream_errors[self.current] = -status
                return
            if status is not None:  # refused at launch (701: out of resources)
                raise CUDARuntimeError(status)
            self.launches.append(n)
            self.log.append(("launch", self.current))
            requests = np.asarray(device_in[:n])
            out, lens, flags = compute_isolating(self.table, requests)
            # As the compiled program's dispatch: no device function, an error result.
            for i, op_id in enumerate(headers(requests)["op"].tolist()):
                if not self.table[op_id].cuda_function:
                    lens[i], flags[i] = 0, 1
            write_results(np.asarray(device_out[:n]), headers(requests), out, lens, flags)

        return launch
