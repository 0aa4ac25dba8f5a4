"""Back packing: result slots → result entries, and the compute side's writer.

The compute process writes one result slot per request slot, in order, with
the request's ``op`` and ``seq`` copied into the header and the status in
``flags``. The ingest process checks each ``seq`` against its side table, so a
desynchronised pair of rings is caught instead of answering the wrong message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from gpufeed.errors import ResultOutOfOrder
from gpufeed.packing.forward import STATUS_ERROR_NAME, PackedBatch, Reject
from gpufeed.packing.layout import (
    HEADER_BYTES,
    HEADER_DTYPE,
    SEQ_MOD,
    STATUS_ERROR,
    STATUS_OK,
    Headers,
    SlotArray,
    headers,
    slot_parts,
)

STATUS_OK_NAME = "ok"
_STATUS_NAMES = {STATUS_OK: STATUS_OK_NAME, STATUS_ERROR: STATUS_ERROR_NAME}


class ResultEntry(NamedTuple):
    """One result to write back to Redis (a tuple: one is made per message).

    ``body`` is the result data when ``status`` is ``ok`` and the reason
    otherwise; ``reply_to`` None means the queue's output stream.
    """

    src: bytes
    status: str
    body: bytes
    cid: bytes | None = None
    reply_to: bytes | None = None

    @classmethod
    def from_reject(cls, reject: Reject) -> ResultEntry:
        return cls(reject.entry_id, reject.status, reject.reason.encode(), reject.cid,
                   reject.reply_to)  # fmt: skip


def write_results(
    dst: SlotArray | Sequence[SlotArray],
    requests: Headers,
    out: npt.NDArray[np.uint8],
    out_lens: npt.NDArray[np.int64],
    status: int | npt.NDArray[np.uint16] = STATUS_OK,
) -> None:
    """Write ``len(requests)`` result slots: header from the request, payload from ``out``.

    A result longer than the payload area (a misbehaving user op) is not
    truncated silently: that message gets an error result saying so.
    """
    n = len(requests)
    parts = slot_parts(dst)
    capacity = parts[0].shape[1] - HEADER_BYTES if n else 0
    header = np.zeros(n, dtype=HEADER_DTYPE)
    header["op"] = requests["op"]
    header["seq"] = requests["seq"]
    header["flags"] = status
    header["len"] = out_lens
    too_long = out_lens > capacity
    width = min(out.shape[1], capacity)
    row = 0
    for part in parts:
        count = min(len(part), n - row)
        if count == 0:
            break
        part[:count, :HEADER_BYTES] = header[row : row + count].view(np.uint8).reshape(count, -1)
        part[:count, HEADER_BYTES : HEADER_BYTES + width] = out[row : row + count, :width]
        row += count
    if row < n:
        raise ValueError(f"{n} results to write but only {row} slots given")
    for i in np.flatnonzero(too_long).tolist():
        _write_error_row(
            dst, i, f"op returned {int(out_lens[i])} bytes, more than the {capacity}-byte slot"
        )


def write_error_results(
    dst: SlotArray | Sequence[SlotArray], requests: Headers, reason: str
) -> None:
    """Answer every request in ``requests`` with an error result carrying ``reason``."""
    message = np.frombuffer(reason.encode()[:256], dtype=np.uint8)
    n = len(requests)
    out = np.broadcast_to(message, (n, len(message)))
    write_results(dst, requests, out, np.full(n, len(message), np.int64), STATUS_ERROR)


def _write_error_row(dst: SlotArray | Sequence[SlotArray], index: int, reason: str) -> None:
    for part in slot_parts(dst):
        if index < len(part):
            capacity = part.shape[1] - HEADER_BYTES
            text = reason.encode()[:capacity]
            header = headers(part[index : index + 1])
            header["len"] = len(text)
            header["flags"] = STATUS_ERROR
            part[index, HEADER_BYTES : HEADER_BYTES + len(text)] = np.frombuffer(text, np.uint8)
            return
        index -= len(part)


def unpack_results(
    slots: SlotArray | Sequence[SlotArray], batch: PackedBatch, start: int = 0
) -> list[ResultEntry]:
    """Result entries for result slots that answer ``batch`` from its ``start``-th message.

    Raises ``ResultOutOfOrder`` if a slot's ``seq`` is not the expected one.
    """
    entries: list[ResultEntry] = []
    row = start
    for part in slot_parts(slots):
        count = len(part)
        if row + count > batch.count:
            raise ResultOutOfOrder(
                f"{count} results for messages {row}.. of a batch of {batch.count}"
            )
        header = headers(part)
        expected = (np.arange(row, row + count, dtype=np.uint64) + batch.first_seq) % SEQ_MOD
        seqs = header["seq"]
        if not np.array_equal(seqs, expected):
            at = int(np.flatnonzero(seqs != expected)[0])
            raise ResultOutOfOrder(
                f"result slot carries seq {int(seqs[at])}, expected {int(expected[at])}"
            )
        lens = header["len"].astype(np.int64)
        capacity = part.shape[1] - HEADER_BYTES
        lens = np.minimum(lens, capacity)  # never read past a slot, whatever a header says
        bodies = _bodies(part[:, HEADER_BYTES:], lens)
        flags = header["flags"]
        end = row + count
        if not flags.any():  # all ok, the common case: no per-message status lookup
            names: Iterable[str] = repeat(STATUS_OK_NAME, count)
        else:
            names = [_STATUS_NAMES.get(f, STATUS_ERROR_NAME) for f in flags.tolist()]
        entries += map(
            ResultEntry, batch.ids[row:end], names, bodies, batch.cids[row:end],
            batch.reply_to[row:end],
        )  # fmt: skip
        row = end
    return entries


def _bodies(area: SlotArray, lens: npt.NDArray[np.int64]) -> list[bytes]:
    """Each row's first ``lens[i]`` bytes as its own ``bytes``, with one bulk copy."""
    n = len(lens)
    if n == 0:
        return []
    if bool((lens == lens[0]).all()):
        width = int(lens[0])
        blob = area[:, :width].tobytes()
        return [blob[i * width : (i + 1) * width] for i in range(n)]
    mask = np.arange(area.shape[1])[None, :] < lens[:, None]
    blob = area[mask].tobytes()
    ends = np.cumsum(lens).tolist()
    starts = [0, *ends[:-1]]
    return [blob[s:e] for s, e in zip(starts, ends, strict=True)]
