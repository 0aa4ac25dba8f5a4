"""Looking into a queue from outside: its backlog, what is stuck, what died.

Everything here is read from Redis alone (XINFO, XPENDING, XLEN), so it works
from any machine, against workers that are running, stuck or gone. The
dead-letter tools move entries with one script call each, so a replayed
entry is never both back in the input stream and still in the dead letters.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from gpufeed.worker.config import WorkerConfig

# Fields the commit script and the reclaimer add to a dead letter; a replay strips them.
DEAD_LETTER_FIELDS = frozenset({b"src", b"error", b"deliveries", b"consumer", b"fields_dropped"})

# Moves dead letters back to the input stream: XADD with the original fields,
# then XDEL, in one atomic step. KEYS[1] dead, KEYS[2] input; ARGV ids.
# Returns the new input ids ('' for an id that is not in the dead letters).
REPLAY_LUA = """
local added = {}
for i, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then
    added[i] = ''
  else
    local fields, keep = found[1][2], {}
    for f = 1, #fields - 1, 2 do
      local name = fields[f]
      if name ~= 'src' and name ~= 'error' and name ~= 'deliveries' and name ~= 'consumer'
          and name ~= 'fields_dropped' then
        keep[#keep + 1] = name
        keep[#keep + 1] = fields[f + 1]
      end
    end
    if #keep == 0 then keep = {'data', ''} end  -- an entry had no fields of its own
    added[i] = redis.call('XADD', KEYS[2], '*', unpack(keep))
    redis.call('XDEL', KEYS[1], id)
  end
end
return added
"""


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # Redis >= 7.2: time since the last successful read


@dataclass(frozen=True)
class QueueStats:
    queue: str
    stream_length: int
    group_exists: bool
    lag: int | None  # entries never delivered to the group (None: Redis cannot tell)
    pending: int
    oldest_pending_id: str | None
    oldest_pending_idle_ms: int | None
    consumers: list[ConsumerInfo] = field(default_factory=list)
    dead_letters: int = 0
    results: int = 0
    taken_at_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_stats(client: redis.Redis, config: WorkerConfig) -> QueueStats:
    """One consistent-enough snapshot of a queue (several reads, not a transaction)."""
    stream_length = int(client.xlen(config.in_key))
    group: dict[str, Any] | None = None
    if stream_length or client.exists(config.in_key):
        for g in client.xinfo_groups(config.in_key):
            if _text(g["name"]) == config.group:
                group = g
    pending = 0
    oldest_id: str | None = None
    oldest_idle: int | None = None
    consumers: list[ConsumerInfo] = []
    if group is not None:
        pending = int(group["pending"])
        if pending:
            # The lowest pending id is the one waiting longest for an answer.
            (row,) = client.xpending_range(config.in_key, config.group, "-", "+", 1)
            oldest_id = _text(row["message_id"])
            oldest_idle = int(row["time_since_delivered"])
        for c in client.xinfo_consumers(config.in_key, config.group):
            inactive = c.get("inactive")
            consumers.append(
                ConsumerInfo(
                    name=_text(c["name"]),
                    pending=int(c["pending"]),
                    idle_ms=int(c["idle"]),
                    inactive_ms=None if inactive is None else int(inactive),
                )
            )
    lag = group.get("lag") if group is not None else stream_length
    return QueueStats(
        queue=config.queue,
        stream_length=stream_length,
        group_exists=group is not None,
        lag=None if lag is None else int(lag),
        pending=pending,
        oldest_pending_id=oldest_id,
        oldest_pending_idle_ms=oldest_idle,
        consumers=consumers,
        dead_letters=int(client.xlen(config.dead_key)),
        results=int(client.xlen(config.out_key)),
        taken_at_ms=int(time.time() * 1000),
    )


@dataclass(frozen=True)
class DeadLetter:
    id: str
    src: str
    error: str
    deliveries: int | None
    consumer: str
    fields: dict[str, bytes]  # the original message's fields


def dead_letters(
    client: redis.Redis, config: WorkerConfig, count: int = 100, start: str = "-"
) -> list[DeadLetter]:
    """The oldest ``count`` dead letters from ``start`` (an id, or ``-``)."""
    rows: Any = client.xrange(config.dead_key, min=start, count=count)
    out = []
    for entry_id, fields in rows:
        deliveries = fields.get(b"deliveries")
        out.append(
            DeadLetter(
                id=_text(entry_id),
                src=_text(fields.get(b"src", b"")),
                error=fields.get(b"error", b"").decode(errors="replace"),
                deliveries=int(deliveries) if deliveries is not None else None,
                consumer=_text(fields.get(b"consumer", b"")),
                fields={_text(k): v for k, v in fields.items() if k not in DEAD_LETTER_FIELDS},
            )
        )
    return out


def _all_dead_ids(client: redis.Redis, config: WorkerConfig) -> list[str]:
    ids: list[str] = []
    start = "-"
    while True:
        rows: Any = client.xrange(config.dead_key, min=start, count=1000)
        ids += [_text(r[0]) for r in rows]
        if len(rows) < 1000:
            return ids
        start = "(" + ids[-1]


def replay(
    client: redis.Redis, config: WorkerConfig, ids: list[str] | None = None
) -> dict[str, str]:
    """Move dead letters (``ids``, or all) back to the input stream.

    Returns {dead-letter id: new input id}; ids not found are left out.
    """
    chosen = ids if ids is not None else _all_dead_ids(client, config)
    script = client.register_script(REPLAY_LUA)
    moved: dict[str, str] = {}
    for start in range(0, len(chosen), 500):
        part = chosen[start : start + 500]
        added = script(keys=[config.dead_key, config.in_key], args=part)
        moved.update({d: _text(a) for d, a in zip(part, added, strict=True) if a})
    return moved


def purge(client: redis.Redis, config: WorkerConfig, ids: list[str] | None = None) -> int:
    """Delete dead letters (``ids``, or all); returns how many were deleted."""
    if ids is None:
        pipe = client.pipeline(transaction=True)  # count and delete in one MULTI
        pipe.xlen(config.dead_key)
        pipe.delete(config.dead_key)
        count, _ = pipe.execute()
        return int(count)
    deleted = 0
    for start in range(0, len(ids), 1000):
        deleted += int(client.xdel(config.dead_key, *ids[start : start + 1000]))
    return deleted
