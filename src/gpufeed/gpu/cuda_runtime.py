"""CuPy, imported on demand, and what both GPU backends build with it.

CuPy itself is imported only when a GPU backend is created (``import_cupy``)
or devices are counted (``gpu.select.cuda_devices``), so a machine without
CuPy can import all of gpufeed.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt

from gpufeed.errors import BackendError, ConfigError, DeviceLost
from gpufeed.ops.program import table_program
from gpufeed.ops.registry import OpTable

# gpufeed::OpParams in cuda/gpufeed_op.cuh: { const void* tensors[4]; uint32_t dims[4]; }.
OP_PARAMS_DTYPE = np.dtype([("tensors", "<u8", (4,)), ("dims", "<u4", (4,))])
assert OP_PARAMS_DTYPE.itemsize == 48

# CUDA errors that leave the context unusable ("sticky"): a kernel that
# faulted, trapped or asserted. Runtime (cudaError) and driver (CUresult)
# codes agree on these numbers.
STICKY_ERRORS = {
    700,  # illegal address
    702,  # launch timeout
    709,  # context is destroyed
    710,  # device-side assert
    714,  # hardware stack error
    715,  # illegal instruction
    716,  # misaligned address
    717,  # invalid address space
    718,  # invalid program counter
    719,  # launch failure (__trap() lands here)
    999,  # unknown
}
CUDA_SUCCESS = 0
CUDA_ERROR_NOT_READY = 600  # cudaStreamQuery/cudaEventQuery: work still running
_HOST_ALLOC_MAPPED = 2  # cudaHostAllocMapped
MEMCPY_HOST_TO_DEVICE, MEMCPY_DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind


def import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise ConfigError(
            "the GPU backends need CuPy: pip install 'gpufeed[cuda12]' (CUDA 12) or "
            "'gpufeed[cuda13]' (CUDA 13)"
        ) from exc
    return cupy


def is_sticky(exc: BaseException) -> bool:
    """Whether a CuPy error means the CUDA context is lost (only a new process helps)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status in STICKY_ERRORS:
        return True
    text = str(exc)
    return any(word in text for word in ("ILLEGAL", "LAUNCH_FAILED", "illegal", "launch failure"))


def work_done(cp: Any, status: int) -> bool:
    """Whether a ``cudaStreamQuery``/``cudaEventQuery`` status says the work is done.

    Ask ``cp.cuda.runtime.streamQuery(stream.ptr)`` (or ``eventQuery``), never
    CuPy's ``Stream.done``/``Event.done``: they return ``status == 0`` without
    looking further, so after a kernel traps (error 719, or 700 for a fault)
    they say "not done" forever instead of reporting it. Any status but
    success and not-ready raises CuPy's ``CUDARuntimeError`` for it, which
    ``is_sticky`` classifies like any other CUDA error.
    """
    if status == CUDA_SUCCESS:
        return True
    if status == CUDA_ERROR_NOT_READY:
        return False
    raise cp.cuda.runtime.CUDARuntimeError(status)


def classify(exc: BaseException, what: str) -> BackendError:
    """A CUDA error as gpufeed's: ``DeviceLost`` when it is sticky (only a new process
    gets a working context), else a ``BackendError`` the caller may retry."""
    if is_sticky(exc):
        return lost(exc, what)
    return BackendError(f"{what}: {exc}")


def cooperative_launch_refused(exc: BaseException, blocks: int, threads: int) -> ConfigError | None:
    """The ``ConfigError`` for a cooperative launch the driver refused (720: the grid
    cannot all be resident), or None for any other error."""
    if getattr(exc, "status", None) != COOPERATIVE_LAUNCH_TOO_LARGE:
        return None
    return ConfigError(
        f"the persistent kernel's {blocks} blocks of {threads} threads cannot all be "
        "resident at once on this GPU now (an MPS limit on this process's share of the "
        "GPU, say): free the GPU or raise the limit, or use --backend batched"
    )


def lost(exc: BaseException, what: str) -> DeviceLost:
    return DeviceLost(f"{what}: {exc} (the CUDA context is unusable; a new process gets a new one)")


def compile_table(cp: Any, table: OpTable, *, cooperative: bool = False) -> Any:
    """The op table's program as a CuPy RawModule (NVRTC; CuPy caches the binary on disk).

    ``cooperative``: its kernels are launched with ``cuLaunchCooperativeKernel``,
    which starts every block at once or fails (the persistent kernel's blocks
    wait for each other, so a grid that is only partly resident would hang).
    """
    return cp.RawModule(
        code=table_program(table.ops), options=("--std=c++17",),
        enable_cooperative_groups=cooperative,
    )  # fmt: skip


COOPERATIVE_LAUNCH_TOO_LARGE = 720  # cudaErrorCooperativeLaunchTooLarge


class DeviceOpParams:
    """The table's ``OpParams`` array and the tensors it points at, in device memory."""

    def __init__(self, cp: Any, table: OpTable) -> None:
        host = np.zeros(len(table), OP_PARAMS_DTYPE)
        self.tensors: list[Any] = []
        for op_id, op in enumerate(table.ops):
            tensors, dims = op.device_tensors(), op.device_dims()
            if len(tensors) > 4 or len(dims) > 4:
                raise ConfigError(f"op {op.name!r}: at most 4 device tensors and 4 dims")
            for k, tensor in enumerate(tensors):
                on_device = cp.asarray(np.ascontiguousarray(tensor))
                self.tensors.append(on_device)
                host["tensors"][op_id, k] = on_device.data.ptr
            host["dims"][op_id, : len(dims)] = dims
        self.array = cp.asarray(host.view(np.uint8))
        self.count = np.uint32(len(table))


class MappedHostMemory:
    """Pinned host memory mapped into the device's address space (cudaHostAllocMapped).

    The host reads and writes it as a NumPy array; kernels reach the same
    bytes across the bus at ``device_ptr``. Freed by ``free()`` only: freeing
    pinned memory synchronises the device, which a running persistent kernel
    would never let finish.
    """

    def __init__(self, cp: Any, nbytes: int) -> None:
        runtime = cp.cuda.runtime
        self._runtime = runtime
        self.nbytes = nbytes
        self.ptr: int = runtime.hostAlloc(nbytes, _HOST_ALLOC_MAPPED)
        self.device_ptr: int = runtime.pointerGetAttributes(self.ptr).devicePointer
        buffer = (ctypes.c_uint8 * nbytes).from_address(self.ptr)
        self.bytes: npt.NDArray[np.uint8] = np.frombuffer(memoryview(buffer), np.uint8)
        self.bytes[:] = 0

    def view(self, dtype: Any, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        array: npt.NDArray[Any] = self.bytes.view(dtype).reshape(shape)
        return array

    def free(self) -> None:
        if self.ptr:
            self._runtime.freeHost(self.ptr)
            self.ptr = 0
