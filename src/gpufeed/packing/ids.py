"""Stream entry ids ("<ms>-<seq>"): their time parts, one by one or a batch at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def id_ms(entry_id: bytes) -> int:
    """The millisecond part of a stream entry id: when Redis added the entry."""
    return int(entry_id.split(b"-", 1)[0])


_MS_DIGITS = 13  # Unix milliseconds from September 2001 to 2286
_POWERS = 10 ** np.arange(_MS_DIGITS - 1, -1, -1, dtype=np.int64)


def _ms13(entry_ids: Sequence[bytes]) -> npt.NDArray[np.int64] | None:
    """The millisecond parts in one vectorised step when every id has 13 of them
    (ids stamped by a real clock), else None."""
    n = len(entry_ids)
    if n == 0:
        return np.empty(0, np.int64)
    raw = np.array(entry_ids, dtype=f"S{_MS_DIGITS + 1}").view(np.uint8).reshape(n, -1)
    if not bool((raw[:, _MS_DIGITS] == ord("-")).all()):
        return None
    return (raw[:, :_MS_DIGITS] - ord("0")).astype(np.int64) @ _POWERS


def ids_ms(entry_ids: Sequence[bytes]) -> npt.NDArray[np.float64]:
    """``id_ms`` of each entry id, as one array.

    Ids stamped by a real clock have 13 millisecond digits, so their first 13
    bytes are read as digits in one vectorised step; anything else (hand-made
    ids such as ``5-0``) goes through ``id_ms`` one by one.
    """
    ms = _ms13(entry_ids)
    if ms is not None:
        return ms.astype(np.float64)
    return np.fromiter(map(id_ms, entry_ids), dtype=np.float64, count=len(entry_ids))


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1])


def id_range(entry_ids: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The lowest and the highest of ``entry_ids`` (which must not be empty), in
    stream-id order, exact for any id, hand-made ones included.

    Only the ids in the first and the last millisecond have their sequence part
    parsed: a batch read under load spans a few milliseconds, so that is a few
    dozen ids, not all of them. The commit script's ownership check lists the
    consumer's pending entries in this range, so a range rounded out to whole
    milliseconds would list every entry read in those milliseconds but not yet
    committed as well.
    """
    ms = _ms13(entry_ids)
    if ms is None:  # Python ints: a hand-made id may have more ms digits than a float holds
        keys = [(id_ms(i), _seq(i)) for i in entry_ids]
        (lo, lo_seq), (hi, hi_seq) = min(keys), max(keys)
    else:
        lo, hi = int(ms.min()), int(ms.max())
        lo_seq = min(_seq(entry_ids[i]) for i in np.flatnonzero(ms == lo).tolist())
        hi_seq = max(_seq(entry_ids[i]) for i in np.flatnonzero(ms == hi).tolist())
    return b"%d-%d" % (lo, lo_seq), b"%d-%d" % (hi, hi_seq)
