"""Results: result slots → result entries, and the compute side's writer.

The compute process writes one result slot per request slot, in order, with
the request's ``op`` and ``seq`` copied into the header and the status in
``flags``. The ingest process checks each ``seq`` against its side table, so a
desynchronised pair of rings is caught instead of answering the wrong message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from gpufeed.errors import InternalError, ResultOutOfOrder
from gpufeed.packing.layout import (
    HEADER_BYTES,
    HEADER_DTYPE,
    SEQ_MOD,
    Headers,
    SlotArray,
    headers,
    slot_parts,
)
from gpufeed.packing.status import STATUS_ERROR, STATUS_OF_FLAG, STATUS_OK, Status

_OK: str = Status.OK.value  # a plain str: comparing with it is the fast path

if TYPE_CHECKING:  # requests.py builds its rejects as ResultEntry, so it imports this module
    from gpufeed.packing.requests import PackedBatch


class ResultEntry(NamedTuple):
    """One result to write back to Redis (a tuple: one is made per message).

    ``body`` is the result data when ``status`` is ``ok`` and the reason
    otherwise; ``reply_to`` None means the queue's output stream. A message
    answered without compute (bad input, expired, delivered too often) is one
    of these from the start.
    """

    src: bytes
    status: Status
    body: bytes
    cid: bytes | None = None
    reply_to: bytes | None = None

    @property
    def plain(self) -> bool:
        """An ok result for the queue's output stream, without a cid."""
        return self.status == _OK and self.cid is None and self.reply_to is None

    @property
    def reason(self) -> str:
        """Why a result is not ``ok``, as text."""
        return self.body.decode(errors="replace")


@dataclass
class Results:
    """Results on their way to one commit.

    Plain results (``ResultEntry.plain``: nearly all of them) are kept as two
    columns, their entry ids and bodies; a tuple per message, taken apart
    again for the script's arguments, would cost more than the rest of the
    ingest loop. Everything else is a ``ResultEntry`` in ``other``.

    ``ordered`` is the caller's word that ``ids`` are in stream order (the
    ingest process's, for results of ``>`` reads collected first in, first
    out): the commit then takes its id range from the two ends instead of
    parsing every id. A wrong word costs time, never a result (commit.lua).
    """

    ids: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    other: list[ResultEntry] = field(default_factory=list)
    ordered: bool = False

    @classmethod
    def of(cls, entries: Iterable[ResultEntry]) -> Results:
        results = cls()
        results.extend(entries)
        return results

    def __len__(self) -> int:
        return len(self.ids) + len(self.other)

    def extend(self, entries: Iterable[ResultEntry]) -> None:
        for e in entries:
            if e.plain:
                self.ids.append(e.src)
                self.bodies.append(e.body)
            else:
                self.other.append(e)

    def entries(self) -> list[ResultEntry]:
        """Every result as a ``ResultEntry``, the plain ones first."""
        return [*map(ResultEntry, self.ids, repeat(Status.OK), self.bodies), *self.other]

    def chunks(self, size: int) -> Iterator[Results]:
        """Consecutive pieces of at most ``size`` results, the plain ones first."""
        n_plain = len(self.ids)
        for start in range(0, len(self), size):
            end = start + size
            yield Results(
                self.ids[start:end],
                self.bodies[start:end],
                self.other[max(start - n_plain, 0) : max(end - n_plain, 0)],
                self.ordered,
            )


def write_results(
    dst: SlotArray | Sequence[SlotArray],
    requests: Headers,
    out: npt.NDArray[np.uint8],
    out_lens: npt.NDArray[np.int64],
    status: int | npt.NDArray[np.uint16] = STATUS_OK,
    stamp: int = 0,
) -> None:
    """Write ``len(requests)`` result slots: header from the request, payload from ``out``;
    ``stamp`` in the first one's ``reserved`` word (``layout.cost_stamp``).

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
    if n:
        header["reserved"][0] = stamp
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
        raise InternalError(f"{n} results to write but only {row} slots given")
    for i in np.flatnonzero(too_long).tolist():
        _write_error_row(
            dst, i, f"op returned {int(out_lens[i])} bytes, more than the {capacity}-byte slot"
        )


def write_error_results(
    dst: SlotArray | Sequence[SlotArray], requests: Headers, reason: str
) -> None:
    """Answer every request in ``requests`` with an error result carrying ``reason``
    (cut to the slots' payload area)."""
    capacity = slot_parts(dst)[0].shape[1] - HEADER_BYTES if len(requests) else 0
    message = np.frombuffer(reason.encode()[:capacity], dtype=np.uint8)
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
    for row, end, bodies, flags in _answers(slots, batch, start):
        entries += _entries(batch, row, end, bodies, flags)
    return entries


def collect_results(
    slots: SlotArray | Sequence[SlotArray], batch: PackedBatch, start: int, into: Results
) -> int:
    """``unpack_results`` into ``into``; returns how many results were added.

    A batch without cids or reply_to whose results are all ok, the common
    case, goes straight into the columns.
    """
    added = 0
    for row, end, bodies, flags in _answers(slots, batch, start):
        if batch.plain and not flags.any():
            into.ids += batch.ids[row:end]
            into.bodies += bodies
        else:
            into.extend(_entries(batch, row, end, bodies, flags))
        added += end - row
    return added


def _entries(
    batch: PackedBatch, row: int, end: int, bodies: list[bytes], flags: npt.NDArray[np.uint16]
) -> Iterable[ResultEntry]:
    if not flags.any():  # all ok: no per-message status lookup
        names: Iterable[Status] = repeat(Status.OK, end - row)
    else:
        names = [STATUS_OF_FLAG.get(f, Status.ERROR) for f in flags.tolist()]
    return map(
        ResultEntry, batch.ids[row:end], names, bodies, batch.cids[row:end],
        batch.reply_to[row:end],
    )  # fmt: skip


def _answers(
    slots: SlotArray | Sequence[SlotArray], batch: PackedBatch, start: int
) -> Iterator[tuple[int, int, list[bytes], npt.NDArray[np.uint16]]]:
    """Per slot part: the batch rows it answers, their bodies and status flags."""
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
        yield row, row + count, _bodies(part[:, HEADER_BYTES:], lens), header["flags"]
        row += count


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
