"""Priority levels: one input stream per level, read highest first, committed per stream.

A queue with ``--priorities N`` has the streams ``in`` (level 0, where producers
that know nothing of levels write) and ``in:1`` … ``in:N-1``; a higher level is
served first. All of them carry the queue's hash tag, so on Redis Cluster they
share a slot with the output and dead-letter streams.

Each level has its own reader (its pending history, its place in the stream),
its own reclaimer and its own commit script keys: an entry is acknowledged in
the stream it came from. The entries of one read are packed as one batch per
level, highest first, back to back in the request ring; the compute process
takes what the ring holds, so they still compute together.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpufeed.connect import Client
from gpufeed.packing import Columns, Entry, ReplyToCheck, Results, read_entries
from gpufeed.worker.commit import Committer
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.isolate import as_entries
from gpufeed.worker.reader import BURST_BELOW, NEW, GroupReader, read_refusals
from gpufeed.worker.reclaim import Reclaimer

Read = list[tuple[int, "list[Entry] | Columns"]]  # (level, its entries), highest level first


@dataclass
class Level:
    """One priority level of one ingest process, and its results waiting for the commit."""

    index: int
    stream: str
    reader: GroupReader
    committer: Committer
    reclaimer: Reclaimer
    to_commit: Results = field(default_factory=lambda: Results(ordered=True))
    born: list[Any] = field(default_factory=list)  # entry-id times of to_commit's messages


def make_levels(
    client: Client, config: WorkerConfig, consumer: str, reply_to_check: ReplyToCheck
) -> list[Level]:
    """The levels of ``config``'s queue, lowest (``in``) first: index = level."""
    return [
        Level(
            k,
            stream,
            GroupReader(client, config, consumer, stream),
            Committer(client, config, consumer, stream),
            Reclaimer(client, config, consumer, reply_to_check, stream),
        )
        for k, stream in enumerate(config.level_keys)
    ]


def crash_id(level: int, entry_id: bytes) -> bytes:
    """How the crash log names an entry: its id, prefixed with its level above 0
    (ids of different streams may be equal)."""
    return entry_id if level == 0 else b"%d/%s" % (level, entry_id)


def parse_crash_id(name: bytes) -> tuple[int, bytes]:
    """``crash_id``'s inverse: (level, entry id)."""
    level, sep, entry_id = name.partition(b"/")
    return (int(level), entry_id) if sep else (0, name)


def split(room: int, levels: int, share: float) -> list[int]:
    """How many entries each level may take of ``room``, highest level first.

    Every level below the top is kept ``share`` of the batch, split evenly
    among them, and at least one entry while ``room`` allows: under a backlog
    of urgent work, lower levels still move. What a level leaves unused goes
    to the levels that have more (``LevelReader.read``'s second round).
    """
    if levels == 1:
        return [room]
    below = levels - 1
    each = math.floor(share * room / below)
    if share > 0 and room >= levels:
        each = max(each, 1)
    each = min(each, room // levels)
    return [room - each * below, *([each] * below)]


class LevelReader:
    """Reads for every level of one consumer: fills a batch from the highest level
    first, keeping lower levels their share; when idle, one blocked read waits on
    every level's stream at once."""

    def __init__(self, client: Client, config: WorkerConfig, consumer: str, levels: list[Level]):
        self.client = client
        self.config = config
        self.consumer = consumer
        self.top_first = sorted(levels, key=lambda lv: -lv.index)
        self.more_waiting = True
        self.burst_begun = False
        # Which streams a refused read of several levels names.
        self.label = f"{config.in_key} (or a level above)"

    @property
    def live(self) -> bool:
        return all(lv.reader.live for lv in self.top_first)

    def reread_history(self) -> None:
        for lv in self.top_first:
            lv.reader.reread_history()

    def read(self, room: int, block: int | None, held: Callable[[int], set[bytes]]) -> Read:
        """Up to ``room`` entries over all levels; waits up to ``block`` ms (None: not at
        all) for new ones. History already ``held`` (in flight) is left out."""
        if len(self.top_first) == 1:
            level = self.top_first[0]
            entries = level.reader.read(room, block, functools.partial(held, level.index))
            self.more_waiting = level.reader.more_waiting
            self.burst_begun = level.reader.burst_begun
            return [(level.index, entries)] if entries else []
        for level in self.top_first:  # pending history first, a page at a time
            if not level.reader.live:
                entries = level.reader.read(room, None, functools.partial(held, level.index))
                self.more_waiting, self.burst_begun = True, False
                return [(level.index, entries)] if entries else []
        if block is not None and room >= len(self.top_first):
            return self._read_blocked(room, block)
        return self._read_busy(room)

    def _read_blocked(self, room: int, block: int) -> Read:
        """One XREADGROUP on every level's stream: it wakes on the first entry anywhere.
        COUNT applies per stream, so each asks for its part of ``room``."""
        per = room // len(self.top_first)  # >= 1: read() sees to it
        streams = {lv.stream: NEW for lv in self.top_first}
        with read_refusals(self.label):
            reply: Any = self.client.xreadgroup(
                self.config.group, self.consumer, streams, count=per, block=block
            )
        by_stream = _by_stream(reply)
        got: Read = []
        for level in self.top_first:
            entries = by_stream.get(level.stream.encode())
            if entries:
                got.append((level.index, entries))
        total = sum(len(e) for _, e in got)
        self.more_waiting = any(len(e) >= per for _, e in got)
        self.burst_begun = 0 < total < min(room, BURST_BELOW)
        return got

    def _read_busy(self, room: int) -> Read:
        """Each level's share in one pipelined round trip; then what is left to the
        levels that may have more (those that filled their share, and those given
        none), highest first, one read each."""
        counts = split(room, len(self.top_first), self.config.lowest_share)
        asked = [(lv, c) for lv, c in zip(self.top_first, counts, strict=True) if c > 0]
        pipe = self.client.pipeline(transaction=False)
        for level, count in asked:
            pipe.xreadgroup(self.config.group, self.consumer, {level.stream: NEW}, count=count)
        with read_refusals(self.label):
            replies: Any = pipe.execute()
        got: dict[int, list[Entry] | Columns] = {}
        drained: set[int] = set()  # levels whose read came back short: nothing more
        for (level, count), reply in zip(asked, replies, strict=True):
            entries = read_entries(reply)
            if entries:
                got[level.index] = entries
            if len(entries) < count:
                drained.add(level.index)
        left = room - sum(len(e) for e in got.values())
        for level in [lv for lv in self.top_first if lv.index not in drained]:
            if left <= 0:
                break
            with read_refusals(level.stream):
                more = read_entries(
                    self.client.xreadgroup(
                        self.config.group, self.consumer, {level.stream: NEW}, count=left
                    )
                )
            if len(more) < left:
                drained.add(level.index)
            if more:
                got[level.index] = joined(got.get(level.index), more)
                left -= len(more)
        self.more_waiting = any(lv.index not in drained for lv in self.top_first)
        self.burst_begun = False
        return [(lv.index, got[lv.index]) for lv in self.top_first if lv.index in got]


def _by_stream(reply: Any) -> dict[bytes, list[Entry] | Columns]:
    """A multi-stream XREADGROUP reply, split by stream name (RESP2 list or RESP3 map)."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else ((s[0], s[1]) for s in reply)
    out: dict[bytes, list[Entry] | Columns] = {}
    for name, entries in pairs:
        key = name if isinstance(name, bytes) else str(name).encode()
        out[key] = read_entries([[key, entries]])
    return out


def joined(
    first: list[Entry] | Columns | None, second: list[Entry] | Columns
) -> list[Entry] | Columns:
    """Two reads of one stream as one batch, in order."""
    if first is None:
        return second
    if isinstance(first, Columns) and isinstance(second, Columns):
        return Columns(first.ids + second.ids, first.datas + second.datas)
    return [*as_entries(first), *as_entries(second)]
