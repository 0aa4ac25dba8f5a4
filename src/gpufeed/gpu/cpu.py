"""The ``cpu`` backend: each op's NumPy code over whole batches of request slots."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gpufeed.errors import DeviceLost
from gpufeed.gpu.backend import Backend, Completed
from gpufeed.ops.base import failure_reason
from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import (
    HEADER_BYTES,
    SlotArray,
    headers,
    payload_capacity,
    slot_parts,
)
from gpufeed.packing.results import write_results
from gpufeed.packing.status import STATUS_ERROR, STATUS_OK

Outputs = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.uint16]]


def compute(
    table: OpTable, requests: SlotArray, *, reference: bool = False
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Run each request slot's op over ``requests``; ``(out, out_lens)`` row for row.

    Slots are grouped by op so every op sees one batch. ``reference=True`` runs
    the NumPy reference even where an op has a faster CPU path (tests use it).
    """
    header = headers(requests)
    lens = header["len"].astype(np.int64)
    op_ids = header["op"]
    area = requests[:, HEADER_BYTES:]
    first = int(op_ids[0]) if len(op_ids) else 0
    if len(op_ids) == 0 or bool((op_ids == first).all()):
        op = table[first]
        return op.reference(area, lens) if reference else op.cpu(area, lens)
    out = np.zeros((len(lens), payload_capacity(requests.shape[1])), dtype=np.uint8)
    out_lens = np.zeros(len(lens), dtype=np.int64)
    for op_id in np.unique(op_ids).tolist():
        rows = np.flatnonzero(op_ids == op_id)
        op = table[op_id]
        sub = area[rows]
        got, got_lens = op.reference(sub, lens[rows]) if reference else op.cpu(sub, lens[rows])
        width = min(got.shape[1], out.shape[1])
        out[rows, :width] = got[:, :width]
        out_lens[rows] = got_lens
    return out, out_lens


def compute_isolating(table: OpTable, requests: SlotArray) -> Outputs:
    """``compute``, but an op that raises does not fail the whole batch.

    The batch is split in halves until the failing messages stand alone; each
    of those gets an error result with the exception (and is dead-lettered by
    the commit), every other message its normal result.
    """
    n = len(requests)
    width = payload_capacity(requests.shape[1])
    try:
        out, out_lens = compute(table, requests)
    except DeviceLost:
        raise  # not one message's fault: the process must go (see worker/quarantine.py)
    except Exception as exc:
        if n == 1:
            op = table[int(headers(requests)["op"][0])]
            text = failure_reason(op, exc).encode()[:width]
            out = np.zeros((1, width), np.uint8)
            out[0, : len(text)] = np.frombuffer(text, np.uint8)
            return out, np.array([len(text)], np.int64), np.array([STATUS_ERROR], np.uint16)
        half = n // 2
        a, b = compute_isolating(table, requests[:half]), compute_isolating(table, requests[half:])
        outs = [
            np.pad(x[0][:, :width], ((0, 0), (0, width - min(width, x[0].shape[1]))))
            for x in (a, b)
        ]
        return np.concatenate(outs), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])
    return out, out_lens, np.full(n, STATUS_OK, np.uint16)


def process(
    table: OpTable,
    requests: Sequence[SlotArray],
    results: Sequence[SlotArray],
    *,
    reference: bool = False,
) -> int:
    """Answer the request slots (a ring peek) in the result slots (a ring reservation)."""
    parts = slot_parts(requests)
    if not parts:
        return 0
    batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
    out, out_lens = compute(table, batch, reference=reference)
    write_results(results, headers(batch), out, out_lens)
    return len(batch)


class CpuBackend(Backend):
    """Computes synchronously in ``submit``; ``poll`` hands the results over."""

    name = "cpu"

    def __init__(self, table: OpTable, slot_bytes: int, max_batch: int) -> None:
        super().__init__(table, slot_bytes, max_batch)
        self._done: list[Completed] = []
        self._current: SlotArray | None = None

    def submit(self, ring: int, requests: SlotArray) -> None:
        self._current = requests
        out, out_lens, status = compute_isolating(self.table, requests)
        self._current = None
        if np.may_share_memory(out, requests):  # a user op returned a view of its input
            out = out.copy()
        self._done.append(Completed(ring, headers(requests).copy(), out, out_lens, status,
                                    time.monotonic_ns()))  # fmt: skip

    def poll(self, timeout: float = 0.0) -> list[Completed]:
        done, self._done = self._done, []
        return done

    def in_flight(self) -> int:
        return len(self._done)

    def in_flight_requests(self) -> list[SlotArray]:
        return [] if self._current is None else [self._current.copy()]
