"""The commit step: one script call writes results and acknowledges inputs atomically."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis

from gpufeed.errors import QueueMisconfigured
from gpufeed.packing import ResultEntry, Results
from gpufeed.packing.ids import id_range
from gpufeed.packing.status import RECORD_CODE
from gpufeed.worker.config import WorkerConfig

# What a lost or stalled connection raises; everything else is a real failure.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)

COMMIT_LUA = resources.files("gpufeed.worker").joinpath("commit.lua").read_text()
# How commit.lua refuses an output or dead-letter key of another type than a stream.
WRONGTYPE = "GPUFEED_WRONGTYPE"
# Entries per script call: bounds the time one call holds the Redis core.
COMMIT_CHUNK = 1024
# The record head of an entry that is not a plain ok result (see commit.lua).
_RECORD = struct.Struct(">cHH")


class CommitCounts(NamedTuple):
    """What one commit did: results written (of which dead-lettered errors and
    expired), and entries skipped because they were no longer pending for us."""

    answered: int = 0
    skipped: int = 0
    dead: int = 0
    expired: int = 0

    @property
    def ok(self) -> int:
        return self.answered - self.dead - self.expired

    def plus(self, other: CommitCounts) -> CommitCounts:
        return CommitCounts(*map(sum, zip(self, other, strict=True)))


class Committer:
    """Commits result entries for one consumer with the cached commit script.

    redis-py's ``Script`` runs EVALSHA and, on NOSCRIPT (a restarted or
    flushed server), loads the script and retries, so the cache needs no care
    here.
    """

    def __init__(
        self, client: redis.Redis, config: WorkerConfig, consumer: str, stream: str | None = None
    ) -> None:
        """``stream``: the input stream whose entries it acknowledges (one priority
        level's; default: the queue's ``in``)."""
        self._script = client.register_script(COMMIT_LUA)
        self._static = [
            config.group,
            consumer,
            config.out_maxlen,
            "1" if config.delete_acked else "0",
        ]
        self._keys = [stream or config.in_key, config.out_key, config.dead_key]

    def load(self) -> None:
        """Load the script now, so the first commit does not pay a NOSCRIPT round trip."""
        self._script.sha = self._script.registered_client.script_load(COMMIT_LUA)

    def commit(self, results: Results | Sequence[ResultEntry]) -> CommitCounts:
        """Write and acknowledge ``results``."""
        if not isinstance(results, Results):
            results = Results.of(results)
        counts = CommitCounts()
        for chunk in results.chunks(COMMIT_CHUNK):
            counts = counts.plus(self._commit_chunk(chunk))
        return counts

    def _commit_chunk(self, results: Results) -> CommitCounts:
        replies: dict[bytes, int] = {}  # reply_to stream -> its 1-based index
        plain: list[Any] = [None] * (2 * len(results.ids))
        plain[0::2] = results.ids
        plain[1::2] = results.bodies
        other: list[Any] = []
        for e in results.other:
            dest = 0
            if e.reply_to is not None:
                dest = replies.setdefault(e.reply_to, len(replies) + 1)
            cid_field = 0 if e.cid is None else len(e.cid) + 1
            head = _RECORD.pack(RECORD_CODE[e.status], dest, cid_field)
            other += (e.src, head + (e.cid or b"") + e.body)
        # Ids in stream order bound themselves: only the two ends need parsing.
        ids = [results.ids[0], results.ids[-1]] if results.ordered and results.ids else results.ids
        lowest, highest = id_range([*ids, *(e.src for e in results.other)])
        args = [*self._static, len(plain) // 2, len(other) // 2, lowest, highest, len(replies),
                *replies, *plain, *other]  # fmt: skip
        try:
            return CommitCounts(*map(int, self._script(keys=self._keys, args=args)))
        except redis.ResponseError as exc:
            if str(exc).startswith(WRONGTYPE):  # the script checked before writing anything
                raise QueueMisconfigured(str(exc).removeprefix(WRONGTYPE).strip()) from exc
            raise
