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

from gpufeed.keys import MAX_LEVELS, QueueKeys


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # Redis >= 7.2: time since the last successful read


@dataclass(frozen=True)
class LevelStats:
    """One priority level's input stream (``in`` is level 0)."""

    level: int
    stream: str
    stream_length: int
    lag: int | None
    pending: int
    oldest_pending_idle_ms: int | None


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
    levels: list[LevelStats] = field(default_factory=list)  # when the queue has several

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def text(value: Any) -> str:
    """A reply value as ``str``, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_stats(client: redis.Redis, keys: QueueKeys, group_name: str) -> QueueStats:
    """One consistent-enough snapshot of a queue and its consumer group ``group_name``
    (several reads, not a transaction).

    Summed over the queue's priority levels (every ``in:LEVEL`` stream that exists);
    ``levels`` has each level's own figures when there are several.
    """
    pipe = client.pipeline(transaction=False)
    for level in range(1, MAX_LEVELS):
        pipe.exists(keys.level_key(level))
    found = [0] + [k for k, there in enumerate(pipe.execute(), start=1) if there]
    levels = [_level_stats(client, k, keys.level_key(k), group_name) for k in found]
    consumers: dict[str, ConsumerInfo] = {}
    for lv in levels:
        for c in lv.consumers:
            seen = consumers.get(c.name)
            consumers[c.name] = c if seen is None else _merged(seen, c)
    oldest = [lv for lv in levels if lv.stats.oldest_pending_idle_ms is not None]
    first = max(oldest, key=lambda lv: lv.stats.oldest_pending_idle_ms or 0) if oldest else None
    lags = [lv.stats.lag for lv in levels]
    return QueueStats(
        queue=keys.queue,
        stream_length=sum(lv.stats.stream_length for lv in levels),
        group_exists=levels[0].group_exists,
        lag=None if None in lags else sum(int(n or 0) for n in lags),
        pending=sum(lv.stats.pending for lv in levels),
        oldest_pending_id=first.oldest_pending_id if first else None,
        oldest_pending_idle_ms=first.stats.oldest_pending_idle_ms if first else None,
        consumers=list(consumers.values()),
        dead_letters=int(client.xlen(keys.dead_key)),
        results=int(client.xlen(keys.out_key)),
        taken_at_ms=int(time.time() * 1000),
        levels=[lv.stats for lv in levels] if len(levels) > 1 else [],
    )


@dataclass(frozen=True)
class _Level:
    """One level's figures, and what the queue's totals need besides."""

    stats: LevelStats
    group_exists: bool
    oldest_pending_id: str | None
    consumers: list[ConsumerInfo]


def _level_stats(client: redis.Redis, level: int, stream: str, group_name: str) -> _Level:
    stream_length = int(client.xlen(stream))
    group: dict[str, Any] | None = None
    if stream_length or client.exists(stream):
        for g in client.xinfo_groups(stream):
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
            (row,) = client.xpending_range(stream, group_name, "-", "+", 1)
            oldest_id = text(row["message_id"])
            oldest_idle = int(row["time_since_delivered"])
        for c in client.xinfo_consumers(stream, group_name):
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
    lag = None if lag is None else int(lag)
    stats = LevelStats(level, stream, stream_length, lag, pending, oldest_idle)
    return _Level(stats, group is not None, oldest_id, consumers)


def _merged(a: ConsumerInfo, b: ConsumerInfo) -> ConsumerInfo:
    """One consumer seen on two levels' streams: its pending entries summed, its most
    recent activity kept."""
    inactive = [x for x in (a.inactive_ms, b.inactive_ms) if x is not None]
    return ConsumerInfo(
        a.name, a.pending + b.pending, min(a.idle_ms, b.idle_ms), min(inactive, default=None)
    )
