"""The compute-backend interface: what the compute process needs from ``cpu``,
``batched`` and ``persistent``.

The compute process hands each backend contiguous runs of request slots and
collects finished batches; it never looks inside. A backend may keep several
batches in flight (the GPU backends do), but must return each ring's batches
in the order they were submitted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpufeed.gpu.ops.registry import OpTable
from gpufeed.packing.layout import Headers, SlotArray


@dataclass
class Completed:
    """One finished batch: the request headers (for ``op`` and ``seq``) and the outputs."""

    ring: int
    requests: Headers
    out: npt.NDArray[np.uint8]
    out_lens: npt.NDArray[np.int64]
    status: npt.NDArray[np.uint16]


class Backend(ABC):
    """Runs ops over batches of request slots."""

    name: str

    def __init__(self, table: OpTable, slot_bytes: int, max_batch: int) -> None:
        self.table = table
        self.slot_bytes = slot_bytes
        self.max_batch = max_batch

    @abstractmethod
    def submit(self, ring: int, requests: SlotArray) -> None:
        """Start work on ``requests`` (at most ``max_batch`` slots of one ring).

        The slots belong to the ring and are released as soon as this returns,
        so a backend copies what it needs before returning.
        """

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> list[Completed]:
        """Batches finished since the last call, each ring's in submission order.

        Waits up to ``timeout`` seconds for at least one when some are in flight.
        """

    @abstractmethod
    def in_flight(self) -> int:
        """Batches submitted and not yet returned by ``poll``."""

    def close(self) -> None:  # noqa: B027 - optional hook; the cpu backend holds nothing
        """Release devices and buffers."""
