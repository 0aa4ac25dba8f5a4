"""Choosing and building the compute backend."""

from __future__ import annotations

import structlog

from gpufeed.errors import ConfigError
from gpufeed.gpu.backend import Backend
from gpufeed.gpu.cpu import CpuBackend
from gpufeed.gpu.ops.registry import OpTable

log = structlog.get_logger()


def cuda_device_count() -> int:
    """CUDA devices CuPy can see; 0 without CuPy or a driver."""
    try:
        import cupy
    except ImportError:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def make_backend(name: str, table: OpTable, slot_bytes: int, max_batch: int) -> Backend:
    if name == "auto":
        devices = cuda_device_count()
        name = "cpu"
        log.info(
            "backend chosen",
            backend=name,
            reason=f"{devices} CUDA device(s); GPU backends are not part of this build yet",
        )
    if name == "cpu":
        return CpuBackend(table, slot_bytes, max_batch)
    raise ConfigError(f"--backend {name}: not available in this build of gpufeed yet")
