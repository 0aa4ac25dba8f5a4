"""What a GpuQueue needs from the side that serves its slots: the persistent
kernel (``cuda.py``) or its CPU emulation (``emulated.py``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from gpufeed.gpu.persistent.config import QueueConfig
from gpufeed.gpu.persistent.memory import STOP, QueueMemory
from gpufeed.ops.registry import OpTable


class DeviceSide(ABC):
    """Owns the queue's memory and the code that polls it.

    The host side (``GpuQueue``) writes requests and READY words into
    ``memory`` and reads DONE words and results from it; everything else
    about the device stays behind this interface.
    """

    name: str
    memory: QueueMemory

    @abstractmethod
    def start(self) -> None:
        """Start serving (launch the kernel); returns at once. The device sets
        ``control[STARTED]`` when it runs."""

    def publish(self, first_id: int, count: int) -> None:  # noqa: B027 - optional hook
        """Called after requests for ``count`` ids from ``first_id`` were written to
        ``memory.requests`` and before their READY words: a device that keeps
        requests in its own memory copies them there and waits for the copy."""

    @abstractmethod
    def failure(self) -> str | None:
        """Why the device stopped serving on its own (a CUDA error, a dead
        thread), or None while it is fine or after a requested stop."""

    @abstractmethod
    def join(self, timeout_s: float) -> bool:
        """After ``control[STOP]`` was set: wait for the device to exit; True if it did."""

    @abstractmethod
    def close(self) -> None:
        """Free the memory; only after ``join`` returned True."""


def make_device(config: QueueConfig, table: OpTable) -> DeviceSide:
    if config.device == "emulated":
        from gpufeed.gpu.persistent.emulated import EmulatedDevice

        return EmulatedDevice(table, config.capacity, config.slot_bytes)
    from gpufeed.gpu.persistent.cuda import CudaDevice

    return CudaDevice(table, config)


def stop_device(device: DeviceSide) -> None:
    """The finaliser of a queue dropped without ``shutdown``: never leave a kernel spinning."""
    device.memory.control[STOP] = 1
    if device.join(5.0):
        device.close()
