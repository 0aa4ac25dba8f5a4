"""Crash isolation: an entry that makes something unexpected raise costs that entry alone.

Bad input that packing knows about is answered by packing itself (an error
result and a dead letter). Anything else that raises while a batch is packed
or committed, other than a lost connection (retried) or gpufeed's own broken
invariant (the process restarts), would end the ingest process; restarted, it
would re-read the same entry from its pending history and end again, for
ever, answering nothing. Instead the batch is redone entry by entry: the ones
that go through are answered as usual, and an entry that raises on its own
gets an error result, ``internal error: <type>: <message>``, and a dead
letter, in the same commit as its neighbours' results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import redis
import structlog

from gpufeed.errors import InternalError, QueueMisconfigured, RingError
from gpufeed.packing import (
    Columns,
    Entry,
    PackedBatch,
    ReplyToCheck,
    ResultEntry,
    Results,
    Status,
    error_result,
)
from gpufeed.packing.layout import SlotArray
from gpufeed.worker.commit import REDIS_ERRORS, CommitCounts

log = structlog.get_logger()

# Not one entry's doing: retried (Redis away, a misconfigured key, a command Redis
# refused: the commit script answers its entries' own failures, such as a wrongly
# typed reply_to stream, itself), or a restart (a ring gone or damaged, a broken
# invariant).
NOT_ISOLATED = (*REDIS_ERRORS, redis.ResponseError, QueueMisconfigured, RingError, InternalError)
MAX_REASON_BYTES = 1000

PackSome = Callable[[Sequence[Entry] | Columns, SlotArray | Sequence[SlotArray]], PackedBatch]
CommitSome = Callable[[Results], CommitCounts]


def internal_error(
    entry_id: bytes,
    exc: BaseException,
    echo: ResultEntry | None = None,
) -> ResultEntry:
    """The error result of an entry on which ``exc`` was raised, with the cid and
    reply_to of ``echo`` (checked already) and why its reply_to was not usable."""
    cid, reply_to = (echo.cid, echo.reply_to) if echo is not None else (None, None)
    why_not_reply = echo.reason.removeprefix("; ") if echo is not None and echo.reason else ""
    text = f"internal error: {type(exc).__name__}: {exc}"
    if why_not_reply:
        text = f"{text}; {why_not_reply}"
    reason = text.encode(errors="replace")[:MAX_REASON_BYTES]
    return ResultEntry(entry_id, Status.ERROR, reason, cid, reply_to)


def as_entries(entries: Sequence[Entry] | Columns) -> list[Entry]:
    """Entries one by one, whether a read came as entries or as ``Columns``."""
    if isinstance(entries, Columns):
        return [(i, {b"data": d}) for i, d in zip(entries.ids, entries.datas, strict=True)]
    return list(entries)


def as_ids(entries: Sequence[Entry] | Columns) -> list[bytes]:
    """The entry ids of a read."""
    return entries.ids if isinstance(entries, Columns) else [e[0] for e in entries]


def pack_each(
    entries: Sequence[Entry] | Columns,
    out: SlotArray | Sequence[SlotArray],
    pack_some: PackSome,
    slot_bytes: int,
    first: BaseException,
    reply_to_check: ReplyToCheck | None = None,
) -> PackedBatch:
    """After packing ``entries`` raised ``first``: pack each alone (into a scratch
    slot) to find the ones that raise, then the others together into ``out``; the
    ones that raise become error results among the batch's rejects."""
    scratch = np.zeros((1, slot_bytes), np.uint8)
    good: list[Entry] = []
    failed: list[ResultEntry] = []
    for entry in as_entries(entries):
        try:
            pack_some([entry], scratch)
        except NOT_ISOLATED:
            raise
        except Exception as exc:
            echo = error_result(entry[0], "", entry[1], reply_to_check)
            failed.append(internal_error(entry[0], exc, echo))
        else:
            good.append(entry)
    log.warning("a batch could not be packed; packed entry by entry", error=repr(first),
                entries=len(good) + len(failed), failed=len(failed))  # fmt: skip
    batch = pack_some(good, out)
    batch.rejects += failed
    return batch


def commit_each(results: Results, commit_some: CommitSome, first: BaseException) -> CommitCounts:
    """After committing ``results`` raised ``first``: commit each result alone; one that
    raises is replaced by its error result (and dead letter). A result that cannot be
    committed even so stays uncommitted: its entry is still pending in Redis, and comes
    back through the reclaimer (and is dead-lettered after --max-deliveries)."""
    log.warning("a commit failed; committing result by result", error=repr(first),
                results=len(results))  # fmt: skip
    counts = CommitCounts()
    for entry in results.entries():
        try:
            counts = counts.plus(commit_some(Results.of([entry])))
            continue
        except NOT_ISOLATED:
            raise
        except Exception as exc:
            error = internal_error(entry.src, exc, entry._replace(body=b""))
        log.warning("message failed", entry_id=entry.src.decode(errors="replace"),
                    status=str(error.status), reason=error.reason)  # fmt: skip
        try:
            counts = counts.plus(commit_some(Results.of([error])))
        except NOT_ISOLATED:
            raise
        except Exception as exc:
            log.error("result could not be committed; its entry stays pending",
                      entry_id=entry.src.decode(errors="replace"), error=repr(exc))  # fmt: skip
    return counts
