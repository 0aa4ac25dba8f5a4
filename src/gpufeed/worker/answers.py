"""The answering side of an ingest process: results from the response ring to the
commit, one script call per priority level (the ``Ingest`` class's half that
does not read)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from gpufeed.packing import PackedBatch, Results, Status, collect_results
from gpufeed.packing.layout import cost_samples, headers
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.commit import CommitCounts
from gpufeed.worker.isolate import NOT_ISOLATED, commit_each
from gpufeed.worker.levels import Level
from gpufeed.worker.schedule import Scheduler
from gpufeed.worker.timings import StageLog

log = structlog.get_logger()


@dataclass
class SentBatch:
    """A packed batch in the request ring, or partly answered in the response ring."""

    batch: PackedBatch
    born_ms: Any  # entry-id times of the packed messages (NumPy float64)
    # time.monotonic_ns() when XREADGROUP's reply was in, and when the batch went
    # into the request ring (worker/timings.py)
    read_ns: int
    packed_ns: int
    # From a ">" read: its ids follow those of the batches before it. Pending
    # history and reclaimed entries are older than what is in flight.
    ordered: bool
    first_seq: int  # the sequence number of its first slot
    level: int = 0  # the priority level whose stream it came from
    answered: int = 0
    collected_ns: int = 0  # its last result taken from the response ring
    finish_by: int | None = None  # when the cost model said it would be answered (Unix ms)


class Answering:
    """What ``Ingest`` does with answers: collect them from the response ring, commit
    them. The attributes below are ``Ingest``'s."""

    requests: RingProducer
    responses: RingConsumer
    in_flight: deque[SentBatch]
    levels: list[Level]
    scheduler: Scheduler
    timings: StageLog
    counts: CommitCounts
    to_commit_batches: list[SentBatch]

    def collect(self, timeout: float = 0.0) -> None:
        """Move finished results from the response ring to the commit list."""
        while self.in_flight:
            head = self.in_flight[0]
            remaining = head.batch.count - head.answered
            first, second = self.responses.peek(remaining, timeout)
            got = len(first) + len(second)
            if got == 0:
                return
            for part in (first, second):
                if len(part):
                    self.scheduler.observe(*cost_samples(headers(part)["reserved"]))
            level = self.levels[head.level]
            to_commit = level.to_commit
            failed = len(to_commit.other)
            to_commit.ordered &= head.ordered
            collect_results((first, second), head.batch, head.answered, to_commit)
            level.born.append(head.born_ms[head.answered : head.answered + got])
            self.responses.release(got)
            metrics.RING_OCCUPANCY.dec(got)
            for r in to_commit.other[failed:]:
                if r.status != Status.OK:
                    self.log_failed(r.src, r.reason, r.status, head.level)
            head.answered += got
            if head.answered == head.batch.count:
                self.in_flight.popleft()
                head.collected_ns = time.monotonic_ns()
                metrics.COMPUTE.observe((head.collected_ns - head.packed_ns) / 1e9)
                if head.finish_by is not None:
                    self.scheduler.answered(head.finish_by, time.time() * 1000)
                if self.timings.enabled:
                    self.to_commit_batches.append(head)
            timeout = 0.0

    def pending_commit(self) -> bool:
        """Whether results wait for their commit."""
        return any(level.to_commit for level in self.levels)

    def commit(self) -> None:
        """Commit the collected results, one script call per level that has any, in
        this thread.

        The commit runs between reads, not beside them on a thread of its own:
        where Redis, producers and workers share the cores, a second thread's
        GIL hand-offs and wake-ups cost more CPU per message than the overlap
        gains (``bench e2e``: 6.0-6.8 against 8.0-8.8 us per message), and
        the compute process works on the ring meanwhile. A lost connection
        raises; ``run`` backs off and the next round commits the same results
        again, which the script makes safe (entries already acknowledged are
        skipped).
        """
        for level in reversed(self.levels):
            if level.to_commit:
                self._commit_level(level)

    def _commit_level(self, level: Level) -> None:
        to_commit = level.to_commit
        born = np.concatenate(level.born) if level.born else ()
        started = time.monotonic_ns()
        try:
            counts = level.committer.commit(to_commit)
        except NOT_ISOLATED:
            raise
        except Exception as exc:  # one result's doing, perhaps: see worker/isolate.py
            counts = commit_each(to_commit, level.committer.commit, exc)
        ended = time.monotonic_ns()
        metrics.committed((ended - started) / 1e9, len(to_commit))
        if self.to_commit_batches:
            self._trace(self.to_commit_batches, started, ended)
            self.to_commit_batches = []
        metrics.record_commit(counts, born)
        self.counts = self.counts.plus(counts)
        level.to_commit = Results(ordered=True)
        level.born = []
        log.debug("batch committed", stream=level.stream, **counts._asdict())
        if counts.skipped:
            log.info("results skipped: entries no longer pending for us", **counts._asdict())

    def _trace(self, batches: list[SentBatch], committing_ns: int, committed_ns: int) -> None:
        for sent in batches:
            self.timings.add({
                "ring": self.requests.segment.name, "seq": sent.first_seq,
                "ids": [i.decode() for i in sent.batch.ids],
                "read": sent.read_ns, "packed": sent.packed_ns,
                "collected": sent.collected_ns, "committing": committing_ns,
                "committed": committed_ns,
            })  # fmt: skip

    def log_failed(self, entry_id: bytes, reason: str, status: str, level: int = 0) -> None:
        # Expired ones at debug: under overload they come by the thousand, and a log
        # line each (tens of us) is time the messages that can still make it need.
        say = log.debug if status == Status.EXPIRED else log.warning
        say(
            "message failed", stream=self.levels[level].stream, entry_id=entry_id.decode(),
            status=str(status), reason=reason,
        )  # fmt: skip
