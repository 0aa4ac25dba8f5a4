"""The ingest process: all Redis I/O for one request/response ring pair.

Loop: take finished results from the response ring; commit them (and any
rejects) with one script call per priority level (worker/answers.py); then,
if the request ring has room, read up to that many entries with XREADGROUP
(worker/levels.py), hold them back for a fuller batch or not
(worker/schedule.py), and pack them straight into the ring. A full ring means
no read: backpressure ends at Redis, where the messages wait.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import structlog

from gpufeed.ops.registry import OpTable
from gpufeed.packing import (
    Columns,
    Entry,
    PackedBatch,
    pack,
)
from gpufeed.packing.ids import ids_ms
from gpufeed.packing.layout import SlotArray, payload_capacity
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.answers import Answering, SentBatch
from gpufeed.worker.commit import CommitCounts
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.crashlog import Trials
from gpufeed.worker.isolate import NOT_ISOLATED, pack_each
from gpufeed.worker.levels import (
    LevelReader,
    Read,
    make_levels,
)
from gpufeed.worker.reader import make_client
from gpufeed.worker.schedule import (
    DRAIN,
    NO_DELAY,
    RECLAIM_OR_HISTORY,
    SEND,
    HeldBack,
    Scheduler,
)
from gpufeed.worker.suspects import answer_poison
from gpufeed.worker.timings import StageLog

log = structlog.get_logger()


# Longest wait for a batch's answer before reading again, after a read that
# emptied the stream (Ingest.step); a cpu-backend answer takes well under this.
ANSWER_WAIT_MS = 1
# The same wait while the compute process has a whole batch queued beyond what it
# computes; bounded only so that the process's periodic duties keep their pace.
QUEUED_ANSWER_WAIT_MS = 100

# Batches the request ring holds at most, unreleased by the compute process (Ingest.fill).
AHEAD_BATCHES = 2

# How often each ingest process logs a throughput summary (info level).
SUMMARY_INTERVAL_S = 5.0


class Ingest(Answering):
    def __init__(
        self,
        config: WorkerConfig,
        index: int,
        requests: RingProducer,
        responses: RingConsumer,
        trials: Trials | None = None,
    ) -> None:
        self.config = config
        self.consumer = config.consumer_name(index)
        self.requests = requests
        self.responses = responses
        self.table = OpTable.for_worker(
            config.op, payload_capacity(config.slot_bytes), dense_model=config.dense_model
        )
        self.client = make_client(config.redis)
        self.reply_to_check = config.reply_to_check()
        self.levels = make_levels(self.client, config, self.consumer, self.reply_to_check)
        self.reader = LevelReader(self.client, config, self.consumer, self.levels)
        self.counts = CommitCounts()
        self.in_flight: deque[SentBatch] = deque()
        self.to_commit_batches: list[SentBatch] = []
        self.scheduler = Scheduler(config)
        self.held = HeldBack()  # entries held back for a fuller batch
        self.timings = StageLog("batch timings", config.trace_timings)
        self.summary_at = time.monotonic()
        self.summary_answered = 0
        self.seq = 0
        self.draining = False
        self.stats = {"read": 0, "batches": 0, "rejected": 0}
        self.trials = trials  # entries pending across crashes (worker/crashlog.py)

    def summary(self) -> None:
        """Every few seconds, one info line with this process's throughput."""
        now = time.monotonic()
        if now - self.summary_at < SUMMARY_INTERVAL_S:
            return
        answered = self.counts.answered
        log.info(
            "throughput", stream=self.config.in_key, levels=len(self.levels),
            msgs_per_s=round((answered - self.summary_answered) / (now - self.summary_at), 1),
            answered=answered, in_flight=sum(f.batch.count - f.answered for f in self.in_flight),
            batch_cost_ms=round(self.scheduler.model.a * 1e3, 3),
            message_cost_us=round(self.scheduler.model.b * 1e6, 2),
            **self.stats,
        )  # fmt: skip
        self.summary_at, self.summary_answered = now, answered

    def _held(self, level: int) -> set[bytes]:
        """The ids of ``level``'s entries held back, in the request ring or waiting for
        their results."""
        held = {i for f in self.in_flight if f.level == level for i in f.batch.ids}
        held.update(self.held.ids(level))
        return held

    def fill(self, reclaim: bool = True) -> bool:
        """Read and pack one batch if the ring has room; False if nothing was read.

        ``reclaim=False``: a plain read, even when reclaiming is due.
        """
        # What waits in Redis can still be overtaken by a higher priority level, or
        # shed before its deadline; what is in the ring cannot. So the ring holds
        # at most two batches ahead of the compute process: the one it computes
        # and the next, ready when that one ends.
        want = min(self.config.max_batch, AHEAD_BATCHES * self.config.max_batch
                   - self.requests.unreleased())  # fmt: skip
        if want <= 0:
            return False
        first, second = self.requests.reserve(want)
        room = len(first) + len(second)
        if room == 0:
            return False  # ring full: leave the messages in Redis
        reads: Read
        fresh = False
        holding = len(self.held)
        room -= holding
        if room <= 0:  # cannot happen: a full batch is never held
            self.requests.commit(0)
            return self._send_held()
        reclaim = reclaim and not holding
        due = [lv for lv in reversed(self.levels) if lv.reclaimer.due()] if reclaim else []
        if due:
            level = due[0]  # one level per round, the highest first
            entries, dead = level.reclaimer.claim(room)
            # XAUTOCLAIM hands back our own entries too once they are idle past the
            # visibility timeout, such as a batch still computing: its copy in the
            # ring answers them. A second copy would be computed for nothing, and
            # could put two results for one entry into one commit.
            if self.in_flight:
                held = self._held(level.index)
                entries = [e for e in entries if e[0] not in held]
                dead = [d for d in dead if d.src not in held]
            level.to_commit.extend(dead)
            for d in dead:
                self.log_failed(d.src, d.reason, d.status, level.index)
            reads = [(level.index, entries)] if entries else []
        else:
            fresh = self.reader.live
            # Block only with nothing in hand: a result waiting for its commit
            # would wait for the block too.
            idle = not self.in_flight and not self.pending_commit()
            block = max(1, self.config.max_wait_ms) if idle else None
            if holding:  # no longer than the held entries may wait
                left_ms = self.held.left_ms()
                block = left_ms if left_ms >= 1 and idle else None
            reads = self.reader.read(room, block, self._held)
        read_ns = time.monotonic_ns()
        if reads and self.trials is not None and self.trials.poison:
            reads = [(k, answer_poison(self, k, e)) for k, e in reads]
        reads = [(k, e) for k, e in reads if len(e)]
        if fresh and reads:
            self.scheduler.arrived(sum(len(e) for _, e in reads), time.monotonic())
        why = NO_DELAY if fresh else RECLAIM_OR_HISTORY
        if self.scheduler.holds and fresh:
            reads = self.held.merged(reads)
            if reads:
                launch = self.held.decide(self.scheduler, reads, device_idle=not self.in_flight)
                if launch.hold_s > 0:
                    self.requests.commit(0)
                    return True
                why = launch.why
        if not reads:
            self.requests.commit(0)
            return False
        self._send_all(reads, (first, second), fresh, read_ns, why)
        return True

    def _send_all(
        self, reads: Read, out: tuple[SlotArray, SlotArray], fresh: bool, read_ns: int, why: str
    ) -> None:
        """Send one read's entries, level by level, into the slots reserved from ``out``
        on. One prediction of when they will be answered serves them all: the
        compute process takes them in one batch."""
        metrics.LAUNCHES.labels(why).inc()
        total = sum(len(e) for _, e in reads)
        finish_by = self.scheduler.finish_by_ms(total, self.requests.unreleased())
        for k, (level_index, some) in enumerate(reads):
            if k:  # the next level's batch goes after the last one's packed slots
                out = self.requests.reserve(len(some))
            self.send(some, out, fresh, read_ns, level_index, finish_by, why)

    def send(
        self,
        entries: list[Entry] | Columns,
        out: tuple[SlotArray, SlotArray],
        fresh: bool,
        read_ns: int = 0,
        level_index: int = 0,
        finish_by: int | None = None,
        why: str = NO_DELAY,
    ) -> None:
        """Pack ``entries`` of priority level ``level_index`` into the reserved slots
        ``out`` and hand them to compute; a deadline before ``finish_by`` (Unix ms, as
        the cost model predicts) and the margin its misses call for is shed; ``why``
        they went now is logged."""
        level = self.levels[level_index]
        read_ms = time.time() * 1000
        first_seq = self.seq
        batch = self._pack(entries, out, int(read_ms), self.scheduler.shed_before_ms(finish_by))
        packed_ns = time.monotonic_ns()
        self.requests.commit(batch.count)
        self.stats["read"] += len(entries)
        self.stats["batches"] += 1
        self.stats["rejected"] += len(batch.rejects)
        metrics.BATCHES.inc()
        metrics.BATCH_SIZE.observe(len(entries))
        if batch.shed:
            metrics.SHED.inc(batch.shed)
        for r in batch.rejects:
            self.log_failed(r.src, r.reason, r.status, level_index)
        level.to_commit.extend(batch.rejects)
        log.debug("batch read", stream=level.stream, read=len(entries), packed=batch.count,
                  rejected=len(batch.rejects), shed=batch.shed, why=why)  # fmt: skip
        if batch.count:
            born = ids_ms(batch.ids)
            metrics.observe_many(metrics.QUEUE_WAIT, np.maximum(read_ms - born, 0.0) / 1000)
            metrics.RING_OCCUPANCY.inc(batch.count)
            self.seq = (self.seq + batch.count) % (1 << 32)
            self.in_flight.append(
                SentBatch(
                    batch,
                    born,
                    read_ns or packed_ns,
                    packed_ns,
                    fresh,
                    first_seq,
                    level_index,
                    finish_by=finish_by,
                )
            )

    def _pack(
        self,
        entries: list[Entry] | Columns,
        out: tuple[SlotArray, SlotArray],
        now_ms: int,
        finish_by_ms: int | None = None,
    ) -> PackedBatch:
        """``pack``; if something unexpected raises, entry by entry (worker/isolate.py)."""

        def pack_some(some: Any, into: Any) -> PackedBatch:
            return pack(some, into, table=self.table, first_seq=self.seq, now_ms=now_ms,
                        reply_to_check=self.reply_to_check,
                        finish_by_ms=finish_by_ms)  # fmt: skip

        try:
            return pack_some(entries, out)
        except NOT_ISOLATED:
            raise
        except Exception as exc:
            return pack_each(entries, out, pack_some, self.config.slot_bytes, exc,
                             self.reply_to_check)  # fmt: skip

    def _send_held(self) -> bool:
        """Send what is held back for a fuller batch, now."""
        total = len(self.held)
        if not total:
            return False
        out = self.requests.reserve(total)
        if len(out[0]) + len(out[1]) < total:  # no room for them all yet: they wait
            self.requests.commit(0)
            return False
        reads = self.held.take()
        self._send_all(reads, out, True, time.monotonic_ns(), DRAIN if self.draining else SEND)
        return True

    # -- the loop ----------------------------------------------------------------------

    def step(self) -> bool:
        """One round; False once drained."""
        self.summary()
        if self.reader.burst_begun:
            self.reader.burst_begun = False
            if self.in_flight and not self.draining:
                # The rest of a burst whose first entries woke the read: read it
                # now, while those compute, rather than after their commit.
                # Reading it before packing them would delay a message that came
                # alone.
                self.fill(reclaim=False)
        self.collect()
        if self.held.reads and (self.draining or self.in_flight):
            # No waiting while draining, nor once the device is busy; before the
            # commit, so that what packing rejects is committed with the rest.
            self._send_held()
        self.commit()
        if self.draining:
            if not self.in_flight:
                return False  # everything collected was committed above
            self.collect(timeout=0.05)
            return True
        if self.in_flight and not self.reader.more_waiting:
            # The last read emptied the stream: another one now would most likely
            # come back empty, a round trip to Redis (and CPU taken from the
            # compute process) while the batch is being answered. Wait a little
            # for the answer instead; the next round reads what came meanwhile.
            # Bounded, so that a backend with batches to overlap (the GPU ones)
            # gets the next batch while a long one computes.
            self.reader.more_waiting = True
            self.collect(timeout=self._answer_wait_s())
            return True
        read = self.fill()
        if not read and self.in_flight:
            self.collect(timeout=self.config.max_wait_ms / 1000)
        return True

    def _answer_wait_s(self) -> float:
        """How long to wait for an answer, after a read that emptied the stream.

        Briefly, so that a backend with batches to overlap gets the next one
        soon; but while the request ring holds more than a batch that the compute
        process has not released, it has work queued beyond what it computes (it
        releases a batch once computed, or once handed to the device). What a
        read brought now could not start before an answer comes, and a read every
        few milliseconds takes the CPU from the compute process (on a 2-core
        machine serving a model on the CPU, 7% of a core, for nothing).
        """
        if self.requests.unreleased() > self.config.max_batch:
            return QUEUED_ANSWER_WAIT_MS / 1000
        return min(self.config.max_wait_ms, ANSWER_WAIT_MS) / 1000
