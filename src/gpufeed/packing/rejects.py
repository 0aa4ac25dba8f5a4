"""Answering a message without computing it: rejects its sender can match.

Every reject echoes the message's ``cid`` and goes to its ``reply_to`` stream
wherever those are usable themselves, whatever else is wrong with the
message; an unusable ``reply_to`` sends the result to the queue's output
stream, saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gpufeed.packing.results import ResultEntry
from gpufeed.packing.status import Status

Fields = Mapping[bytes, bytes]
# Why a reply_to stream cannot be written (None: it can); see ``pack``.
ReplyToCheck = Callable[[bytes], str | None]

# Limits on the optional fields: a message is a payload plus a little metadata.
MAX_FIELDS = 64
MAX_CID_BYTES = 256
MAX_REPLY_TO_BYTES = 512


def reject(
    entry_id: bytes,
    reason: str,
    fields: Fields | None,
    status: Status = Status.ERROR,
    reply_to_check: ReplyToCheck | None = None,
) -> ResultEntry:
    """A reject its sender can match, whatever else is wrong with the entry: it echoes
    the cid, and goes to the reply_to stream, each where it is usable itself. An
    unusable reply_to sends the result to the output stream, saying why."""
    fields = fields or {}
    cid = fields.get(b"cid")
    if cid is not None and _cid_problem(cid) is not None:
        cid = None
    reply_to = fields.get(b"reply_to")
    if reply_to is not None:
        unusable = _reply_to_problem(reply_to, reply_to_check)
        if unusable is not None:
            if unusable not in reason:
                reason = f"{reason}; not answered on reply_to: {unusable}"
            reply_to = None
    return ResultEntry(entry_id, status, reason.encode(), cid, reply_to)


def error_result(
    entry_id: bytes, reason: str, fields: Fields | None, reply_to_check: ReplyToCheck | None
) -> ResultEntry:
    """An error result for an entry answered without packing it (delivered too often,
    convicted of crashing the worker, failed unexpectedly), echoing what it can."""
    return reject(entry_id, reason, fields, Status.ERROR, reply_to_check)


def _cid_problem(cid: bytes) -> str | None:
    if len(cid) > MAX_CID_BYTES:
        return f"cid is {len(cid)} bytes, at most {MAX_CID_BYTES}"
    try:
        cid.decode()
    except UnicodeDecodeError:
        return "cid is not valid UTF-8"
    return None


def _reply_to_problem(reply_to: bytes, reply_to_check: ReplyToCheck | None) -> str | None:
    if not 0 < len(reply_to) <= MAX_REPLY_TO_BYTES:
        return f"reply_to must be a stream key of 1 to {MAX_REPLY_TO_BYTES} bytes"
    return reply_to_check(reply_to) if reply_to_check is not None else None


def metadata_problem(fields: Fields, reply_to_check: ReplyToCheck | None = None) -> str | None:
    """Why a message's optional fields are unusable, or None."""
    if len(fields) > MAX_FIELDS:
        return f"too many fields: {len(fields)}, at most {MAX_FIELDS}"
    cid = fields.get(b"cid")
    if cid is not None and (problem := _cid_problem(cid)) is not None:
        return problem
    reply_to = fields.get(b"reply_to")
    if reply_to is not None:
        return _reply_to_problem(reply_to, reply_to_check)
    return None
