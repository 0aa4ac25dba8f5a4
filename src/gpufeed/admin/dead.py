"""``gpufeed dead``: list, replay and purge a queue's dead letters.

A dead letter is the original entry's fields plus why it died (``src``,
``error``, ``deliveries``, ``consumer``; see the commit script). Replay moves
entries with one script call per chunk, so a replayed entry is never both
back in the input stream and still in the dead letters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from gpufeed.admin.stats import text
from gpufeed.keys import QueueKeys

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
class DeadLetter:
    id: str
    src: str
    error: str
    deliveries: int | None
    consumer: str
    fields: dict[str, bytes]  # the original message's fields


def dead_letters(
    client: redis.Redis, keys: QueueKeys, count: int = 100, start: str = "-"
) -> list[DeadLetter]:
    """The oldest ``count`` dead letters from ``start`` (an id, or ``-``)."""
    rows: Any = client.xrange(keys.dead_key, min=start, count=count)
    out = []
    for entry_id, fields in rows:
        deliveries = fields.get(b"deliveries")
        out.append(
            DeadLetter(
                id=text(entry_id),
                src=text(fields.get(b"src", b"")),
                error=fields.get(b"error", b"").decode(errors="replace"),
                deliveries=int(deliveries) if deliveries is not None else None,
                consumer=text(fields.get(b"consumer", b"")),
                fields={text(k): v for k, v in fields.items() if k not in DEAD_LETTER_FIELDS},
            )
        )
    return out


def _all_dead_ids(client: redis.Redis, keys: QueueKeys) -> list[str]:
    ids: list[str] = []
    start = "-"
    while True:
        rows: Any = client.xrange(keys.dead_key, min=start, count=1000)
        ids += [text(r[0]) for r in rows]
        if len(rows) < 1000:
            return ids
        start = "(" + ids[-1]


def replay(
    client: redis.Redis, keys: QueueKeys, ids: list[str] | None = None, priority: int = 0
) -> dict[str, str]:
    """Move dead letters (``ids``, or all) back to the input stream of priority level
    ``priority`` (0: ``in``).

    Returns {dead-letter id: new input id}; ids not found are left out.
    """
    chosen = ids if ids is not None else _all_dead_ids(client, keys)
    script = client.register_script(REPLAY_LUA)
    moved: dict[str, str] = {}
    for start in range(0, len(chosen), 500):
        part = chosen[start : start + 500]
        added = script(keys=[keys.dead_key, keys.level_key(priority)], args=part)
        moved.update({d: text(a) for d, a in zip(part, added, strict=True) if a})
    return moved


def purge(client: redis.Redis, keys: QueueKeys, ids: list[str] | None = None) -> int:
    """Delete dead letters (``ids``, or all); returns how many were deleted."""
    if ids is None:
        pipe = client.pipeline(transaction=True)  # count and delete in one MULTI
        pipe.xlen(keys.dead_key)
        pipe.delete(keys.dead_key)
        count, _ = pipe.execute()
        return int(count)
    deleted = 0
    for start in range(0, len(ids), 1000):
        deleted += int(client.xdel(keys.dead_key, *ids[start : start + 1000]))
    return deleted
