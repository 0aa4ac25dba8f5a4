"""``gpufeed stats``: a queue's backlog, read from Redis alone.

XINFO, XPENDING and XLEN only, so it works from any machine, against workers
that are running, stuck or gone. The worker's metrics endpoint reports the
same figures when scraped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from gpufeed.keys import QueueKeys


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


def text(value: Any) -> str:
    """A reply value as ``str``, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_stats(client: redis.Redis, keys: QueueKeys, group_name: str) -> QueueStats:
    """One consistent-enough snapshot of a queue and its consumer group ``group_name``
    (several reads, not a transaction)."""
    stream_length = int(client.xlen(keys.in_key))
    group: dict[str, Any] | None = None
    if stream_length or client.exists(keys.in_key):
        for g in client.xinfo_groups(keys.in_key):
            if text(g["name"]) == group_name:
                group = g
    pending = 0
    oldest_id: str | None = None
    oldest_idle: int | None = None
    consumers: list[ConsumerInfo] = []
    if group is not None:
        pending = int(group["pending"])
        if pending:
            # The lowest pending id is the one waiting longest for an answer.
            (row,) = client.xpending_range(keys.in_key, group_name, "-", "+", 1)
            oldest_id = text(row["message_id"])
            oldest_idle = int(row["time_since_delivered"])
        for c in client.xinfo_consumers(keys.in_key, group_name):
            inactive = c.get("inactive")
            consumers.append(
                ConsumerInfo(
                    name=text(c["name"]),
                    pending=int(c["pending"]),
                    idle_ms=int(c["idle"]),
                    inactive_ms=None if inactive is None else int(inactive),
                )
            )
    lag = group.get("lag") if group is not None else stream_length
    return QueueStats(
        queue=keys.queue,
        stream_length=stream_length,
        group_exists=group is not None,
        lag=None if lag is None else int(lag),
        pending=pending,
        oldest_pending_id=oldest_id,
        oldest_pending_idle_ms=oldest_idle,
        consumers=consumers,
        dead_letters=int(client.xlen(keys.dead_key)),
        results=int(client.xlen(keys.out_key)),
        taken_at_ms=int(time.time() * 1000),
    )
