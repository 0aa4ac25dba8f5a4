"""The commit step: one script call writes results and acknowledges inputs atomically."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

from gpufeed.packing import ResultEntry
from gpufeed.worker.config import WorkerConfig

COMMIT_LUA = resources.files("gpufeed.worker").joinpath("commit.lua").read_text()
# Entries per script call: bounds the time one call holds the Redis core.
COMMIT_CHUNK = 1024


class Committer:
    """Commits result entries for one consumer with the cached commit script.

    redis-py's ``Script`` runs EVALSHA and, on NOSCRIPT (a restarted or
    flushed server), loads the script and retries, so the cache needs no care
    here.
    """

    def __init__(self, client: redis.Redis, config: WorkerConfig, consumer: str) -> None:
        self._script = client.register_script(COMMIT_LUA)
        self._static = [
            config.group,
            consumer,
            config.out_maxlen,
            "1" if config.delete_acked else "0",
        ]
        self._keys = [config.in_key, config.out_key, config.dead_key]

    def commit(self, entries: Sequence[ResultEntry]) -> tuple[int, int]:
        """Write and acknowledge ``entries``; returns (answered, skipped)."""
        answered = skipped = 0
        for start in range(0, len(entries), COMMIT_CHUNK):
            a, s = self._commit_chunk(entries[start : start + COMMIT_CHUNK])
            answered += a
            skipped += s
        return answered, skipped

    def _commit_chunk(self, entries: Sequence[ResultEntry]) -> tuple[int, int]:
        keys = list(self._keys)
        key_index: dict[bytes, int] = {}
        args: list[Any] = [*self._static, len(entries)]
        for e in entries:
            if e.reply_to is None:
                dest = 2
            else:
                dest = key_index.get(e.reply_to, 0)
                if not dest:
                    keys.append(e.reply_to)  # type: ignore[arg-type]
                    dest = key_index[e.reply_to] = len(keys)
            has_cid = e.cid is not None
            args += (e.src, dest, e.status, e.body, "1" if has_cid else "0", e.cid or b"")
        answered, skipped = self._script(keys=keys, args=args)
        return int(answered), int(skipped)
