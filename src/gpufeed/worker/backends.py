"""Choosing and building the compute backend."""

from __future__ import annotations

import structlog

from gpufeed.errors import ConfigError
from gpufeed.gpu.backend import Backend
from gpufeed.gpu.cpu import CpuBackend
from gpufeed.gpu.ops.registry import OpTable
from gpufeed.worker.config import WorkerConfig

log = structlog.get_logger()


def cuda_devices() -> tuple[int, str]:
    """How many CUDA devices CuPy sees, and if none, why not."""
    try:
        import cupy
    except ImportError:
        return 0, "CuPy is not installed (pip install 'gpufeed[cuda12]' or 'gpufeed[cuda13]')"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return 0, f"CuPy sees no CUDA device: {exc}"
    return count, "" if count else "CuPy sees no CUDA device"


def cuda_device_count() -> int:
    """CUDA devices CuPy can see; 0 without CuPy or a driver."""
    return cuda_devices()[0]


def auto_backend(config: WorkerConfig) -> tuple[str, str]:
    """What ``--backend auto`` runs on this machine, and why."""
    count, why = cuda_devices()
    if count > config.device:
        return "batched", f"CUDA device {config.device} found"
    return "cpu", why or f"no CUDA device {config.device}"


def check_backend(config: WorkerConfig) -> str:
    """The backend ``config`` will run, or ``ConfigError`` saying why it cannot.

    Run by the CLI before any process starts, so that ``--backend batched`` on a
    machine without a GPU fails at once instead of in a restart loop.
    """
    if config.backend == "cpu" or (config.backend == "persistent" and config.emulate_device):
        return config.backend
    if config.backend == "auto":
        return auto_backend(config)[0]
    count, why = cuda_devices()
    if count == 0:
        raise ConfigError(f"--backend {config.backend} needs a CUDA device: {why}"
                          + ("; --emulate-device runs the persistent protocol on the CPU"
                             if config.backend == "persistent" else ""))  # fmt: skip
    if config.device >= count:
        raise ConfigError(f"--device {config.device}: this machine has {count} CUDA device(s)")
    return config.backend


def make_backend(config: WorkerConfig, table: OpTable) -> Backend:
    name = config.backend
    if name == "auto":
        name, reason = auto_backend(config)
        log.info("backend chosen", backend=name, reason=reason)
    if name == "cpu":
        return CpuBackend(table, config.slot_bytes, config.max_batch)
    if name == "batched":
        from gpufeed.gpu.batched import BatchedBackend

        return BatchedBackend(
            table, config.slot_bytes, config.max_batch, streams=config.cuda_streams,
            gpu=config.device, staging=config.staging,
        )  # fmt: skip
    if name == "persistent":
        from gpufeed.gpu.persistent.backend import PersistentBackend, queue_capacity
        from gpufeed.gpu.persistent.config import QueueConfig

        queue = QueueConfig(
            queue_capacity(config.max_batch), config.slot_bytes,
            device="emulated" if config.emulate_device else "cuda",
            payload=config.persistent_payload, gpu=config.device,
        )  # fmt: skip
        return PersistentBackend(table, config.slot_bytes, config.max_batch, queue)
    raise ConfigError(f"--backend {name}: unknown backend")
