"""The compute-backend interface: what the compute process needs from ``cpu``,
``batched`` and ``persistent``.

The compute process hands each backend contiguous runs of request slots and
collects finished batches; it never looks inside. A backend may keep several
batches in flight (the GPU backends do), but must return each ring's batches
in the order they were submitted.

The arrays of a ``Completed`` may be views of a backend's buffers: they stay
valid until the backend's next ``submit`` or ``poll``, and the compute process
writes them into the response ring before calling it again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import HEADER_BYTES, Headers, SlotArray, headers
from gpufeed.packing.status import STATUS_OK


@dataclass
class Completed:
    """One finished batch: the request headers (for ``op`` and ``seq``) and the outputs."""

    ring: int
    requests: Headers
    out: npt.NDArray[np.uint8]
    out_lens: npt.NDArray[np.int64]
    status: npt.NDArray[np.uint16]
    # time.monotonic_ns() when it finished, for a backend that computes in submit()
    # (its poll() comes only after the round's other submits); 0: when polled.
    finished_ns: int = 0


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

    def attach_request_rings(self, rings: list[SlotArray]) -> None:  # noqa: B027 - optional
        """Called once with every request ring's slot array, before the first submit
        (the batched backend can page-lock them for direct copies)."""

    def in_flight_requests(self) -> list[SlotArray]:
        """After ``DeviceLost``: host copies of the request slots the device held,
        for the compute process's quarantine. Empty when the backend cannot tell."""
        return []


def completed_from_slots(
    table: OpTable, ring: int, requests: Headers, results: SlotArray
) -> Completed:
    """A ``Completed`` from result slots a device wrote (header and payload each).

    A device function reports failure with an error status and, having no
    way to say more, an empty body; such results get a reason naming the op.
    """
    header = headers(results)
    out = results[:, HEADER_BYTES:]
    out_lens = header["len"].astype(np.int64)
    status = header["flags"].astype(np.uint16)
    mute = np.flatnonzero((status != STATUS_OK) & (out_lens == 0))
    for i in mute.tolist():
        op_id = int(requests["op"][i])
        name = table[op_id].name if op_id < len(table) else f"#{op_id}"
        text = f"op {name!r} reported an error on the GPU".encode()[: out.shape[1]]
        out[i, : len(text)] = np.frombuffer(text, np.uint8)
        out_lens[i] = len(text)
    return Completed(ring, requests, out, out_lens, status)
