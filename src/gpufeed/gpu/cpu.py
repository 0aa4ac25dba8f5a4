"""The ``cpu`` compute: each op's NumPy code over whole batches of request slots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gpufeed.gpu.ops.registry import OpTable
from gpufeed.packing.layout import HEADER_BYTES, SlotArray, headers, payload_capacity
from gpufeed.packing.results import write_results


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


def process(
    table: OpTable,
    requests: Sequence[SlotArray],
    results: Sequence[SlotArray],
    *,
    reference: bool = False,
) -> int:
    """Answer the request slots (a ring peek) in the result slots (a ring reservation).

    Returns the number of slots answered (all of them; the caller reserved as many).
    """
    parts = [p for p in requests if len(p)]
    if not parts:
        return 0
    batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
    out, out_lens = compute(table, batch, reference=reference)
    write_results(results, headers(batch), out, out_lens)
    return len(batch)
