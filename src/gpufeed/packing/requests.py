"""Packing requests: one XREADGROUP reply → request slots plus the side table.

Per message, Python does only what the reply format forces: a few dict
lookups, and none at all for a read whose entries carry only ``data`` (nearly
every read), which is taken as two lists (``Columns``). Lengths, validation,
headers and the payload copy are vectorised over the batch: the payloads are
joined into one bytes object and scattered into the slots with a single
boolean-mask assignment (rows of the mask are filled in order, which is
exactly the order of the joined bytes), or a plain 2-D copy when every
payload has the same length.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gpufeed.errors import InternalError
from gpufeed.packing.layout import HEADER_BYTES, HEADER_DTYPE, SEQ_MOD, SlotArray, slot_parts
from gpufeed.packing.rejects import (
    Fields,
    ReplyToCheck,
    metadata_problem,
    reject,
)
from gpufeed.packing.results import ResultEntry
from gpufeed.packing.status import Status

Entry = tuple[bytes, Fields | None]


class LengthRule(Protocol):
    """What packing needs of one op: its name and which payload lengths it takes."""

    @property
    def name(self) -> str: ...
    @property
    def length_rule(self) -> str: ...  # the accepted lengths in words, quoted in errors

    def valid_lengths(self, lens: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]: ...


class OpRules(Protocol):
    """What packing needs of the worker's op table (``gpufeed.ops.OpTable`` is one):
    the ops by id (id 0 is the default), their ids by name, and why an op that
    cannot run with this slot size cannot."""

    @property
    def payload_capacity(self) -> int: ...
    @property
    def ids_by_bytes(self) -> Mapping[bytes, int]: ...
    @property
    def unusable(self) -> Mapping[str, str]: ...
    @property
    def ops(self) -> Sequence[LengthRule]: ...


@dataclass
class PackedBatch:
    """The side table the ingest process keeps for one packed batch.

    Packed message ``i`` sits in request slot ``i`` with sequence number
    ``(first_seq + i) % 2**32``; its result comes back in that order.
    """

    first_seq: int
    ids: list[bytes] = field(default_factory=list)
    cids: list[bytes | None] = field(default_factory=list)
    reply_to: list[bytes | None] = field(default_factory=list)
    ops: npt.NDArray[np.uint16] = field(default_factory=lambda: np.empty(0, np.uint16))
    # Messages answered without compute (bad input, expired), in read order.
    rejects: list[ResultEntry] = field(default_factory=list)
    shed: int = 0  # of the rejects: expired because they were predicted to finish late

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def plain(self) -> bool:
        """No packed message has a cid or a reply_to (an empty cid counts), so its
        ok results are plain."""
        n = len(self.ids)
        return self.cids.count(None) == n and self.reply_to.count(None) == n


@dataclass
class Columns:
    """A read whose every entry carries only ``data``: entry ids and payloads.

    Nearly every read looks like this; kept as two lists, it is packed without
    a dict or a tuple per message.
    """

    ids: list[bytes]
    datas: list[bytes]

    def __len__(self) -> int:
        return len(self.ids)


_first, _second = itemgetter(0), itemgetter(1)


def plain_columns(reply: Any) -> Columns | None:
    """The entries of an unparsed RESP2 XREADGROUP reply as ``Columns``, or None
    when the reply is another shape or any entry has other fields than ``data``."""
    if not isinstance(reply, list) or len(reply) != 1:
        return None
    entries = reply[0][1]
    fields = list(map(_second, entries))
    if set(map(type, fields)) != {list}:  # parsed (dicts), or deleted (None)
        return None
    if set(map(len, fields)) != {2} or set(map(_first, fields)) != {b"data"}:
        return None
    return Columns(list(map(_first, entries)), list(map(_second, fields)))


def read_entries(reply: Any) -> list[Entry] | Columns:
    """What ``pack`` takes from an XREADGROUP reply: ``Columns`` where it can."""
    return plain_columns(reply) or reply_entries(reply)


def _as_fields(raw: Any) -> Fields | None:
    """Fields as a mapping: a dict as redis-py parses it, or the raw flat list."""
    if raw is None or isinstance(raw, dict):
        return raw
    if len(raw) == 2:
        return {raw[0]: raw[1]}
    return dict(zip(raw[::2], raw[1::2], strict=False))


def reply_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply, in order.

    Accepts what redis-py returns, RESP2 ``[[stream, [(id, fields), ...]], ...]``
    or RESP3 ``{stream: [[id, fields], ...]}``, and the unparsed RESP2 reply,
    where fields are a flat ``[name, value, ...]`` list (the ingest process
    reads that way: redis-py's per-entry dict building costs more than packing).
    An empty read gives ``[]``/``None``/``{}``. Entries deleted while pending
    come back with ``None`` (or empty) fields.
    """
    if not reply:
        return []
    streams: Iterable[Any] = reply.values() if isinstance(reply, dict) else (s[1] for s in reply)
    entries: list[Entry] = []
    for stream_entries in streams:
        entries.extend([(e[0], _as_fields(e[1])) for e in stream_entries])
    return entries


# Deadlines are packed into an int64 column: a larger number is no deadline a
# clock will reach, and NumPy would raise OverflowError for the whole batch.
MAX_DEADLINE_MS = 2**63 - 1


def parse_deadline(raw: bytes) -> int:
    # ASCII digits only: int() would also take " 5", "+5" and "1_000".
    if not raw.isdigit() or int(raw) > MAX_DEADLINE_MS:
        raise ValueError(raw)
    return int(raw)


def pack(
    entries: Sequence[Entry] | Columns,
    out: SlotArray | Sequence[SlotArray],
    *,
    table: OpRules,
    first_seq: int,
    now_ms: int,
    reply_to_check: ReplyToCheck | None = None,
    finish_by_ms: int | None = None,
) -> PackedBatch:
    """Write the valid messages of ``entries`` into request slots, in order.

    ``out`` is a slot array or a ring reservation ``(first, second)``; it must
    have a slot for every entry (reserve before reading). Invalid or expired
    messages become ``rejects`` and take no slot. ``reply_to_check`` says why
    a ``reply_to`` stream cannot be used, beyond its length: on Redis Cluster
    the commit script can only write streams in the queue's hash slot.

    ``finish_by_ms``: when the batch is predicted to be answered (Unix ms); a
    message whose ``deadline_ms`` falls before it is *shed*: expired now, with
    no compute spent on a result that would come too late.
    """
    parts = slot_parts(out)
    capacity = table.payload_capacity
    batch = PackedBatch(first_seq=first_seq % SEQ_MOD)
    if isinstance(entries, Columns):
        # Only data: no op, no deadline, nothing to look up per message.
        ids, datas = entries.ids, entries.datas
        kept_fields: list[Fields] | None = None
        op_ids = np.zeros(len(ids), np.uint16)
        deadlines = None
    else:
        ids, datas, kept_fields, ops, deadline_list = _triage(entries, table, reply_to_check, batch)
        op_ids = np.array(ops, dtype=np.uint16)
        deadlines = np.array(deadline_list, np.int64)

    n = len(ids)
    lens = np.fromiter(map(len, datas), dtype=np.int64, count=n)
    bad = _invalid(lens, op_ids, table, capacity, deadlines, now_ms, finish_by_ms)
    if bad is not None:
        for i in np.flatnonzero(bad).tolist():
            code = int(bad[i])
            reason = _reason(code, int(lens[i]), table.ops[int(op_ids[i])], capacity)
            if code == _SHED:
                batch.shed += 1
                reason = f"{reason}: predicted at {finish_by_ms}, deadline_ms {int(deadlines[i])}"  # type: ignore[index]
            status = Status.EXPIRED if code in (_EXPIRED, _SHED) else Status.ERROR
            fields = {b"data": datas[i]} if kept_fields is None else kept_fields[i]
            batch.rejects.append(reject(ids[i], reason, fields, status, reply_to_check))
        keep = np.flatnonzero(bad == 0)
        kept = keep.tolist()
        ids = [ids[i] for i in kept]
        datas = [datas[i] for i in kept]
        if kept_fields is not None:
            kept_fields = [kept_fields[i] for i in kept]
        lens = lens[keep]
        op_ids = op_ids[keep]
        n = len(ids)

    room = sum(len(p) for p in parts)
    if n > room:
        raise InternalError(f"{n} messages to pack but only {room} slots given")
    write_requests(parts, datas, lens, op_ids, batch.first_seq)
    batch.ids = ids
    batch.ops = op_ids
    if kept_fields is None:
        batch.cids, batch.reply_to = [None] * n, [None] * n
    else:
        batch.cids = [f.get(b"cid") if len(f) > 1 else None for f in kept_fields]
        batch.reply_to = [f.get(b"reply_to") if len(f) > 1 else None for f in kept_fields]
    return batch


def _triage(
    entries: Sequence[Entry], table: OpRules, reply_to_check: ReplyToCheck | None,
    batch: PackedBatch,
) -> tuple[list[bytes], list[bytes], list[Fields], list[int], list[int]]:  # fmt: skip
    """Per message: its payload, op and deadline, or a reject (added to ``batch``)
    when its fields are unusable."""
    rejects = batch.rejects
    ids_by_name = table.ids_by_bytes
    ids: list[bytes] = []
    datas: list[bytes] = []
    kept_fields: list[Fields] = []
    ops: list[int] = []
    deadlines: list[int] = []
    for entry_id, fields in entries:
        data = fields.get(b"data") if fields else None
        if data is None:
            reason = "missing data field" if fields else "entry has no fields (deleted?)"
            rejects.append(reject(entry_id, reason, fields, Status.ERROR, reply_to_check))
            continue
        assert fields is not None
        op_id = 0
        deadline = -1
        if len(fields) > 1:  # anything beyond data: look at the optional fields
            problem = metadata_problem(fields, reply_to_check)
            if problem is not None:
                rejects.append(reject(entry_id, problem, fields, Status.ERROR, reply_to_check))
                continue
            op_name = fields.get(b"op")
            if op_name is not None:
                found = ids_by_name.get(op_name)
                if found is None:
                    name = op_name.decode(errors="replace")
                    reason = table.unusable.get(name) or f"unknown op {name!r}"
                    rejects.append(reject(entry_id, reason, fields, Status.ERROR, reply_to_check))
                    continue
                op_id = found
            raw_deadline = fields.get(b"deadline_ms")
            if raw_deadline is not None:
                try:
                    deadline = parse_deadline(raw_deadline)
                except ValueError:
                    reason = (
                        f"malformed deadline_ms {raw_deadline[:40]!r}: "
                        "expected Unix time in milliseconds"
                    )
                    rejects.append(reject(entry_id, reason, fields, Status.ERROR, reply_to_check))
                    continue
        ids.append(entry_id)
        datas.append(data)
        kept_fields.append(fields)
        ops.append(op_id)
        deadlines.append(deadline)
    return ids, datas, kept_fields, ops, deadlines


_TOO_LARGE, _WRONG_LENGTH, _EXPIRED, _SHED = 1, 2, 3, 4


def _invalid(
    lens: npt.NDArray[np.int64],
    op_ids: npt.NDArray[np.uint16],
    table: OpRules,
    capacity: int,
    deadlines: npt.NDArray[np.int64] | None,
    now_ms: int,
    finish_by_ms: int | None = None,
) -> npt.NDArray[np.uint8] | None:
    """Per message: 0 fine, else why not; None when every message is fine."""
    bad = np.zeros(len(lens), dtype=np.uint8)
    if len(table.ops) == 1 or not op_ids.any():
        bad[~table.ops[0].valid_lengths(lens)] = _WRONG_LENGTH
    else:
        for op_id in np.unique(op_ids).tolist():
            sel = op_ids == op_id
            bad[sel & ~_valid_for(table, op_id, lens, sel)] = _WRONG_LENGTH
    if deadlines is not None:
        expired = (deadlines >= 0) & (deadlines < now_ms)
        bad[expired & (bad == 0)] = _EXPIRED
        if finish_by_ms is not None:
            late = (deadlines >= 0) & (deadlines < finish_by_ms)
            bad[late & (bad == 0)] = _SHED
    bad[lens > capacity] = _TOO_LARGE
    return bad if bad.any() else None


def _valid_for(
    table: OpRules, op_id: int, lens: npt.NDArray[np.int64], sel: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    valid = np.ones(len(lens), dtype=bool)
    valid[sel] = table.ops[op_id].valid_lengths(lens[sel])
    return valid


def _reason(code: int, length: int, op: LengthRule, capacity: int) -> str:
    if code == _TOO_LARGE:
        return f"payload of {length} bytes is larger than the {capacity}-byte slot payload area"
    if code == _WRONG_LENGTH:
        return f"wrong payload length {length} for op {op.name!r}: {op.length_rule}"
    if code == _SHED:
        return "deadline_ms would pass before the message could be answered"
    return "deadline_ms passed before the message was processed"


def write_requests(
    parts: list[SlotArray],
    datas: list[bytes] | SlotArray,
    lens: npt.NDArray[np.int64],
    op_ids: npt.NDArray[np.uint16],
    first_seq: int,
) -> None:
    """Write request slots for ``datas`` (already validated) into ``parts``, in order.

    ``parts`` are one or two slot arrays (a ring reservation) with room for
    every message; slot ``i`` gets sequence number ``(first_seq + i) % 2**32``.
    ``datas`` may also be a 2-D uint8 array, one payload per row.
    """
    n = len(datas)
    if n == 0:
        return
    header = np.zeros(n, dtype=HEADER_DTYPE)
    header["len"] = lens
    header["op"] = op_ids
    header["seq"] = (np.arange(first_seq, first_seq + n, dtype=np.uint64) % SEQ_MOD).astype(
        np.uint32
    )
    header_bytes = header.view(np.uint8).reshape(n, HEADER_BYTES)
    if isinstance(datas, np.ndarray):
        blob = np.ascontiguousarray(datas).reshape(-1)
    else:
        blob = np.frombuffer(b"".join(datas), dtype=np.uint8)
    uniform = int(lens[0]) if bool((lens == lens[0]).all()) else -1
    row = offset = 0
    for part in parts:
        count = min(len(part), n - row)
        if count == 0:
            break
        part[:count, :HEADER_BYTES] = header_bytes[row : row + count]
        area = part[:count, HEADER_BYTES:]
        if uniform >= 0:
            size = count * uniform
            area[:, :uniform] = blob[offset : offset + size].reshape(count, uniform)
        else:
            part_lens = lens[row : row + count]
            size = int(part_lens.sum())
            mask = np.arange(area.shape[1])[None, :] < part_lens[:, None]
            area[mask] = blob[offset : offset + size]
        row += count
        offset += size
