"""The commit step: one script call writes results and acknowledges inputs atomically."""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis
import structlog
from redis.backoff import ExponentialBackoff

from gpufeed.packing import ResultEntry, Results
from gpufeed.packing.ids import id_range
from gpufeed.worker import metrics
from gpufeed.worker.config import WorkerConfig

log = structlog.get_logger()

# What a lost or stalled connection raises; everything else is a real failure.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)

COMMIT_LUA = resources.files("gpufeed.worker").joinpath("commit.lua").read_text()
# Entries per script call: bounds the time one call holds the Redis core.
COMMIT_CHUNK = 1024
# The record head of an entry that is not a plain ok result (see commit.lua).
_RECORD = struct.Struct(">cHH")
_STATUS_CODES = {"ok": b"o", "error": b"e", "expired": b"x"}


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

    def __init__(self, client: redis.Redis, config: WorkerConfig, consumer: str) -> None:
        self._script = client.register_script(COMMIT_LUA)
        self._static = [
            config.group,
            consumer,
            config.out_maxlen,
            "1" if config.delete_acked else "0",
        ]
        self._keys = [config.in_key, config.out_key, config.dead_key]

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
            head = _RECORD.pack(_STATUS_CODES[e.status], dest, cid_field)
            other += (e.src, head + (e.cid or b"") + e.body)
        ids = [*results.ids, *(e.src for e in results.other)] if results.other else results.ids
        lowest, highest = id_range(ids)
        args = [*self._static, len(plain) // 2, len(other) // 2, lowest, highest, len(replies),
                *replies, *plain, *other]  # fmt: skip
        return CommitCounts(*map(int, self._script(keys=self._keys, args=args)))


_Work = tuple[Results, Any]  # results, their entry-id times (NumPy) or ()


class BackgroundCommitter:
    """Runs commits on a thread, so the next read and pack overlap the script call.

    While one thread waits for Redis to run a commit script (the GIL is free
    during socket waits), the ingest loop reads and packs the next batch:
    Redis and the ingest process work at the same time instead of taking
    turns. At most ``depth`` commits wait; ``submit`` blocks beyond that, which
    in turn stops reading (backpressure). A commit that fails on a lost
    connection is retried with backoff until it succeeds: the script is
    idempotent. Any other failure is raised from the next ``submit``/``flush``.
    """

    def __init__(self, committer: Committer, *, depth: int = 2) -> None:
        self._committer = committer
        self._queue: queue.Queue[_Work] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.counts = CommitCounts()
        self._thread = threading.Thread(target=self._run, name="gpufeed-commit", daemon=True)
        self._thread.start()

    @property
    def answered(self) -> int:
        return self.counts.answered

    @property
    def skipped(self) -> int:
        return self.counts.skipped

    def load(self) -> None:
        """Load the commit script now (see ``Committer.load``)."""
        self._committer.load()

    def submit(self, results: Results, born_ms: Any = ()) -> None:
        """Queue ``results`` for commit; ``born_ms`` (entry-id times of computed
        results) feed the end-to-end latency histogram once they are committed."""
        self.check()
        self._queue.put((results, born_ms))

    def busy(self) -> bool:
        """Whether commits are queued or running."""
        return self._queue.unfinished_tasks > 0

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every submitted commit; True when all are done."""
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.001)
        self.check()
        return not self.busy()

    def check(self) -> None:
        """Raise the error a commit failed with, if one did (lost connections are
        retried, not raised): the ingest loop calls this every round, so a failed
        commit stops the process even when nothing more is submitted."""
        if self._error is not None:
            raise self._error

    def _commit(self, results: Results) -> CommitCounts:
        backoff = ExponentialBackoff(cap=2.0, base=0.05)
        failures = 0
        while True:
            try:
                return self._committer.commit(results)
            except REDIS_ERRORS as exc:
                failures += 1
                pause = backoff.compute(failures)
                log.warning("commit failed; retrying", error=str(exc), pause_s=pause)
                time.sleep(pause)

    def _run(self) -> None:
        while True:
            results, born_ms = self._queue.get()
            try:
                started = time.perf_counter()
                counts = self._commit(results)
                metrics.COMMIT.observe(time.perf_counter() - started)
                metrics.record_commit(counts, born_ms)
                self.counts = self.counts.plus(counts)
                log.debug("batch committed", **counts._asdict())
                if counts.skipped:
                    log.info(
                        "results skipped: entries no longer pending for us", **counts._asdict()
                    )
            except BaseException as exc:
                self._error = exc
                log.error("commit failed", error=repr(exc))
            finally:
                self._queue.task_done()
