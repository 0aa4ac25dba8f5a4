"""The slot layout shared by request and result slots.

A slot is ``slot_bytes`` bytes: a 16-byte header, then the payload area::

    0   len       u32  payload (or result) bytes
    4   op        u16  op id in the worker's OpTable
    6   flags     u16  results: ``Status.flag`` (0 ok, 1 error)
    8   seq       u32  per-ring sequence number, wraps at 2**32
    12  reserved  u32  zero

All little-endian; the same struct is ``gpufeed::SlotHeader`` on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

HEADER_BYTES = 16
HEADER_DTYPE = np.dtype(
    [("len", "<u4"), ("op", "<u2"), ("flags", "<u2"), ("seq", "<u4"), ("reserved", "<u4")]
)
assert HEADER_DTYPE.itemsize == HEADER_BYTES

SEQ_MOD = 1 << 32

SlotArray = npt.NDArray[np.uint8]
Headers = npt.NDArray[np.void]


def payload_capacity(slot_bytes: int) -> int:
    return slot_bytes - HEADER_BYTES


def headers(slots: SlotArray) -> Headers:
    """The slot headers of ``slots`` (n, slot_bytes) as a structured view, no copy."""
    return slots[:, :HEADER_BYTES].view(HEADER_DTYPE)[:, 0]


def payload_area(slots: SlotArray) -> SlotArray:
    return slots[:, HEADER_BYTES:]


def slot_parts(slots: SlotArray | Sequence[SlotArray]) -> list[SlotArray]:
    """A slot array, or a ring's (first, second) views, as its non-empty parts in order."""
    if isinstance(slots, np.ndarray):
        return [slots]
    return [part for part in slots if len(part)]
