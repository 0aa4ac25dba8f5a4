"""The slot layout shared by request and result slots.

A slot is ``slot_bytes`` bytes: a 16-byte header, then the payload area::

    0   len       u32  payload (or result) bytes
    4   op        u16  op id in the worker's OpTable
    6   flags     u16  results: ``Status.flag`` (0 ok, 1 error)
    8   seq       u32  per-ring sequence number, wraps at 2**32
    12  reserved  u32  requests: zero; results: a cost stamp (below) or zero

All little-endian; the same struct is ``gpufeed::SlotHeader`` on the device.

The first result slot of each batch the compute process ran carries the
batch's *cost stamp* in ``reserved``: its size and the time it held the
compute process (from its start, or from the end of the batch before it if
that was later: batches that overlap on a device are not counted twice). The
ingest process's cost model fits batch time = a + b·n from them
(worker/schedule.py). The other result slots carry zero.
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

# A cost stamp: the batch size in the top 13 bits (up to 4096), its time in the
# low 19 bits in units of 10 us (up to 5.2 s; a longer batch saturates and is
# not a sample).
_STAMP_TIME_BITS = 19
_STAMP_TIME_MAX = (1 << _STAMP_TIME_BITS) - 1
STAMP_UNIT_S = 1e-5


def cost_stamp(n: int, seconds: float) -> int:
    """The ``reserved`` word of a batch's first result slot: never zero."""
    units = min(max(1, round(seconds / STAMP_UNIT_S)), _STAMP_TIME_MAX)
    return (min(n, 4096) << _STAMP_TIME_BITS) | units


def cost_samples(reserved: npt.NDArray[np.uint32]) -> tuple[list[int], list[float]]:
    """The (sizes, seconds) of the cost stamps among result headers' ``reserved``
    words; saturated ones left out."""
    # A few stamps among many words: found by one NumPy call, then read as ints
    # (array arithmetic on them cost 6 us a batch, on the way to its commit).
    sizes, seconds = [], []
    for stamp in reserved[np.flatnonzero(reserved)].tolist():
        units = stamp & _STAMP_TIME_MAX
        if units < _STAMP_TIME_MAX:
            sizes.append(stamp >> _STAMP_TIME_BITS)
            seconds.append(units * STAMP_UNIT_S)
    return sizes, seconds


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
