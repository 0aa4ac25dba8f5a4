"""A persistent queue's shape (``QueueConfig``) and counters (``GpuQueueStats``)."""

from __future__ import annotations

from dataclasses import dataclass

from gpufeed.errors import ConfigError
from gpufeed.ring import is_power_of_two

DEVICES = ("cuda", "emulated")
PAYLOADS = ("mapped", "device")
MAX_CAPACITY = 1 << 24


@dataclass(frozen=True)
class QueueConfig:
    """A persistent queue's shape, fixed at creation.

    ``slot_bytes`` is the whole slot, as in the worker: a 16-byte header and
    ``slot_bytes - 16`` bytes of payload (and of result).
    """

    capacity: int = 4096
    slot_bytes: int = 256
    device: str = "cuda"  # "cuda": the persistent kernel; "emulated": the CPU emulation
    payload: str = "mapped"  # requests in mapped pinned host memory, or in "device" memory
    gpu: int = 0  # CUDA device ordinal
    warps_per_block: int = 4
    blocks: int = 0  # worker blocks of the kernel; 0: one per SM
    stall_timeout_s: float = 10.0
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not is_power_of_two(self.capacity) or not 2 <= self.capacity <= MAX_CAPACITY:
            raise ConfigError(f"capacity must be a power of two in [2, {MAX_CAPACITY}]")
        if not is_power_of_two(self.slot_bytes) or self.slot_bytes < 64:
            raise ConfigError("slot_bytes must be a power of two >= 64")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.payload not in PAYLOADS:
            raise ConfigError(f"payload must be one of {', '.join(PAYLOADS)}")
        if not 1 <= self.warps_per_block <= 32 or self.blocks < 0:
            raise ConfigError("warps_per_block must be in [1, 32] and blocks >= 0")
        if self.stall_timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ConfigError("stall_timeout_s and start_timeout_s must be positive")


@dataclass(frozen=True)
class GpuQueueStats:
    enq_count: int  # messages enqueued
    deq_count: int  # results taken
    dropped_full: int  # messages refused because no slot was free
    retries: int  # enqueue calls that found the queue full and waited or parked results
    queue_depth: int  # messages holding a slot: enqueued, result not yet taken
