"""Choosing and building the compute backend: what ``--backend`` and its options mean."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from gpufeed.errors import ConfigError, InternalError
from gpufeed.gpu.backend import Backend
from gpufeed.gpu.batched import BatchedBackend, check_lanes
from gpufeed.gpu.cpu import CpuBackend
from gpufeed.gpu.persistent.adapter import PersistentBackend, queue_capacity
from gpufeed.gpu.persistent.config import PAYLOADS, QueueConfig
from gpufeed.ops.registry import OpTable

log = structlog.get_logger()

BACKENDS = ("auto", "cpu", "batched", "persistent")


@dataclass(frozen=True)
class BackendSettings:
    """Which backend a compute process runs, and its own options; checked when made,
    with errors that name the worker's flags."""

    name: str = "auto"  # auto, cpu, batched or persistent
    device: int = 0  # CUDA device ordinal of the GPU backends
    cuda_streams: int = 4  # batched: lanes, one batch in flight on each
    staging: str = "pinned"  # batched: "pinned" staging buffers or "registered" request rings
    persistent_payload: str = "mapped"  # persistent: requests in "mapped" host or "device" memory
    emulate_device: bool = False  # persistent: the device side as a CPU thread (no GPU needed)

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ConfigError(f"--backend: must be one of {', '.join(BACKENDS)}, got {self.name!r}")
        if self.emulate_device and self.name != "persistent":
            raise ConfigError("--emulate-device: only --backend persistent has a CPU emulation")
        if self.device < 0:
            raise ConfigError("--device: must be >= 0")
        check_lanes(self.cuda_streams, self.staging)
        if self.persistent_payload not in PAYLOADS:
            raise ConfigError(f"--persistent-payload: must be one of {', '.join(PAYLOADS)}")


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


def auto_backend(settings: BackendSettings) -> tuple[str, str]:
    """What ``--backend auto`` runs on this machine, and why."""
    count, why = cuda_devices()
    if count > settings.device:
        return "batched", f"CUDA device {settings.device} found"
    return "cpu", why or f"no CUDA device {settings.device}"


def check_ops(backend: str, table: OpTable) -> None:
    """``ConfigError`` if ``backend`` cannot run every op of ``table``: the persistent
    kernel calls each op's device function, and a tensor op has none."""
    if backend != "persistent":
        return
    missing = [op.name for op in table.ops if not op.cuda_function]
    if missing:
        raise ConfigError(
            f"--backend persistent runs each op as a CUDA device function, and "
            f"{', '.join(repr(m) for m in missing)} is a tensor op, which has none; "
            "use --backend batched (or cpu)"
        )


def check_backend(settings: BackendSettings) -> str:
    """The backend ``settings`` will run, or ``ConfigError`` saying why it cannot.

    Run before any process starts, so that ``--backend batched`` on a machine
    without a GPU fails at once instead of in a restart loop.
    """
    name = settings.name
    if name == "cpu" or (name == "persistent" and settings.emulate_device):
        return name
    if name == "auto":
        return auto_backend(settings)[0]
    count, why = cuda_devices()
    if count == 0:
        raise ConfigError(f"--backend {name} needs a CUDA device: {why}"
                          + ("; --emulate-device runs the persistent protocol on the CPU"
                             if name == "persistent" else ""))  # fmt: skip
    if settings.device >= count:
        raise ConfigError(f"--device {settings.device}: this machine has {count} CUDA device(s)")
    return name


def make_backend(
    settings: BackendSettings, table: OpTable, slot_bytes: int, max_batch: int
) -> Backend:
    """The backend ``settings`` name, for slots of ``slot_bytes`` and batches of ``max_batch``."""
    name = settings.name
    if name == "auto":
        name, reason = auto_backend(settings)
        log.info("backend chosen", backend=name, reason=reason)
    if name == "cpu":
        return CpuBackend(table, slot_bytes, max_batch)
    if name == "batched":
        return BatchedBackend(
            table, slot_bytes, max_batch, streams=settings.cuda_streams, gpu=settings.device,
            staging=settings.staging,
        )  # fmt: skip
    if name != "persistent":
        raise InternalError(f"no backend {name!r}")  # BackendSettings checked the name
    check_ops(name, table)
    queue = QueueConfig(
        queue_capacity(max_batch), slot_bytes,
        device="emulated" if settings.emulate_device else "cuda",
        payload=settings.persistent_payload, gpu=settings.device,
    )  # fmt: skip
    return PersistentBackend(table, slot_bytes, max_batch, queue)
