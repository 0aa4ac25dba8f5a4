"""The ingest process: all Redis I/O for one request/response ring pair.

Loop: take finished results from the response ring; commit them (and any
rejects) with one script call; then, if the request ring has room, read up to
that many entries with XREADGROUP and pack them straight into the ring.
A full ring means no read: backpressure ends at Redis, where the messages wait.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import structlog
from redis.backoff import ExponentialBackoff

from gpufeed.errors import QueueMisconfigured
from gpufeed.ops.registry import OpTable
from gpufeed.packing import (
    Columns,
    Entry,
    PackedBatch,
    Results,
    Status,
    collect_results,
    error_result,
    pack,
)
from gpufeed.packing.ids import ids_ms
from gpufeed.packing.layout import SlotArray, payload_capacity
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.commit import REDIS_ERRORS, CommitCounts, Committer
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.crashlog import Trials
from gpufeed.worker.isolate import NOT_ISOLATED, as_entries, commit_each, pack_each
from gpufeed.worker.reader import GroupReader, ensure_group, make_client
from gpufeed.worker.reclaim import Reclaimer
from gpufeed.worker.timings import StageLog

log = structlog.get_logger()

# What ends a suspect's trial without saying anything about the suspect.
GIVEN_UP_ON = (*REDIS_ERRORS, redis.ResponseError, QueueMisconfigured)


# Longest wait for a batch's answer before reading again, after a read that
# emptied the stream (Ingest.step); a cpu-backend answer takes well under this.
ANSWER_WAIT_MS = 1
# The same wait while the compute process has a whole batch queued beyond what it
# computes; bounded only so that the process's periodic duties keep their pace.
QUEUED_ANSWER_WAIT_MS = 100

# How often each ingest process logs a throughput summary (info level).
SUMMARY_INTERVAL_S = 5.0


@dataclass
class _SentBatch:
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
    answered: int = 0
    collected_ns: int = 0  # its last result taken from the response ring


class Ingest:
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
        self.reader = GroupReader(self.client, config, self.consumer)
        self.reply_to_check = config.reply_to_check()
        self.committer = Committer(self.client, config, self.consumer)
        self.counts = CommitCounts()
        self.reclaimer = Reclaimer(self.client, config, self.consumer, self.reply_to_check)
        self.in_flight: deque[_SentBatch] = deque()
        self.to_commit = Results(ordered=True)
        self.to_commit_born: list[Any] = []
        self.to_commit_batches: list[_SentBatch] = []
        self.timings = StageLog("batch timings", config.trace_timings)
        self.summary_at = time.monotonic()
        self.summary_answered = 0
        self.seq = 0
        self.draining = False
        self.stats = {"read": 0, "batches": 0, "rejected": 0}
        self.trials = trials  # entries pending across crashes (worker/crashlog.py)

    # -- results -----------------------------------------------------------------------

    def collect(self, timeout: float = 0.0) -> None:
        """Move finished results from the response ring to the commit list."""
        while self.in_flight:
            head = self.in_flight[0]
            remaining = head.batch.count - head.answered
            first, second = self.responses.peek(remaining, timeout)
            got = len(first) + len(second)
            if got == 0:
                return
            failed = len(self.to_commit.other)
            self.to_commit.ordered &= head.ordered
            collect_results((first, second), head.batch, head.answered, self.to_commit)
            self.to_commit_born.append(head.born_ms[head.answered : head.answered + got])
            self.responses.release(got)
            metrics.RING_OCCUPANCY.dec(got)
            for r in self.to_commit.other[failed:]:
                if r.status != Status.OK:
                    self._log_failed(r.src, r.reason, r.status)
            head.answered += got
            if head.answered == head.batch.count:
                self.in_flight.popleft()
                head.collected_ns = time.monotonic_ns()
                metrics.COMPUTE.observe((head.collected_ns - head.packed_ns) / 1e9)
                if self.timings.enabled:
                    self.to_commit_batches.append(head)
            timeout = 0.0

    def commit(self) -> None:
        """Commit the collected results, in this thread.

        The commit runs between reads, not beside them on a thread of its own:
        where Redis, producers and workers share the cores, a second thread's
        GIL hand-offs and wake-ups cost more CPU per message than the overlap
        gains (``bench e2e``: 6.0-6.8 against 8.0-8.8 us per message), and
        the compute process works on the ring meanwhile. A lost connection
        raises; ``run`` backs off and the next round commits the same results
        again, which the script makes safe (entries already acknowledged are
        skipped).
        """
        if not self.to_commit:
            return
        born = np.concatenate(self.to_commit_born) if self.to_commit_born else ()
        started = time.monotonic_ns()
        try:
            counts = self.committer.commit(self.to_commit)
        except NOT_ISOLATED:
            raise
        except Exception as exc:  # one result's doing, perhaps: see worker/isolate.py
            counts = commit_each(self.to_commit, self.committer.commit, exc)
        ended = time.monotonic_ns()
        metrics.committed((ended - started) / 1e9, len(self.to_commit))
        if self.to_commit_batches:
            self._trace(self.to_commit_batches, started, ended)
            self.to_commit_batches = []
        metrics.record_commit(counts, born)
        self.counts = self.counts.plus(counts)
        self.to_commit = Results(ordered=True)
        self.to_commit_born = []
        log.debug("batch committed", **counts._asdict())
        if counts.skipped:
            log.info("results skipped: entries no longer pending for us", **counts._asdict())

    def _trace(self, batches: list[_SentBatch], committing_ns: int, committed_ns: int) -> None:
        for sent in batches:
            self.timings.add({
                "ring": self.requests.segment.name, "seq": sent.first_seq,
                "ids": [i.decode() for i in sent.batch.ids],
                "read": sent.read_ns, "packed": sent.packed_ns,
                "collected": sent.collected_ns, "committing": committing_ns,
                "committed": committed_ns,
            })  # fmt: skip

    def _log_failed(self, entry_id: bytes, reason: str, status: str) -> None:
        level = log.info if status == Status.EXPIRED else log.warning
        level(
            "message failed", stream=self.config.in_key, entry_id=entry_id.decode(),
            status=str(status), reason=reason,
        )  # fmt: skip

    def summary(self) -> None:
        """Every few seconds, one info line with this process's throughput."""
        now = time.monotonic()
        if now - self.summary_at < SUMMARY_INTERVAL_S:
            return
        answered = self.counts.answered
        log.info(
            "throughput", stream=self.config.in_key,
            msgs_per_s=round((answered - self.summary_answered) / (now - self.summary_at), 1),
            answered=answered, in_flight=sum(f.batch.count - f.answered for f in self.in_flight),
            **self.stats,
        )  # fmt: skip
        self.summary_at, self.summary_answered = now, answered

    def _held(self) -> set[bytes]:
        """The ids of the entries in the request ring or waiting for their results."""
        return {i for f in self.in_flight for i in f.batch.ids}

    def fill(self, reclaim: bool = True) -> bool:
        """Read and pack one batch if the ring has room; False if nothing was read.

        ``reclaim=False``: a plain read, even when reclaiming is due.
        """
        first, second = self.requests.reserve(self.config.max_batch)
        room = len(first) + len(second)
        if room == 0:
            return False  # ring full: leave the messages in Redis
        entries: list[Entry] | Columns
        fresh = False
        if reclaim and self.reclaimer.due():
            entries, dead = self.reclaimer.claim(room)
            # XAUTOCLAIM hands back our own entries too once they are idle past the
            # visibility timeout, such as a batch still computing: its copy in the
            # ring answers them. A second copy would be computed for nothing, and
            # could put two results for one entry into one commit.
            if self.in_flight:
                held = self._held()
                entries = [e for e in entries if e[0] not in held]
                dead = [d for d in dead if d.src not in held]
            self.to_commit.extend(dead)
            for d in dead:
                self._log_failed(d.src, d.reason, d.status)
        else:
            fresh = self.reader.live
            # Block only with nothing in hand: a result waiting for its commit
            # would wait for the block too.
            idle = not self.in_flight and not self.to_commit
            block = max(1, self.config.max_wait_ms) if idle else None
            entries = self.reader.read(room, block, self._held)
        read_ns = time.monotonic_ns()
        if entries and self.trials is not None and self.trials.poison:
            entries = self._answer_poison(entries)
        if not entries:
            self.requests.commit(0)
            return False
        self._send(entries, (first, second), fresh, read_ns)
        return True

    def _send(
        self,
        entries: list[Entry] | Columns,
        out: tuple[SlotArray, SlotArray],
        fresh: bool,
        read_ns: int = 0,
    ) -> None:
        """Pack ``entries`` into the reserved slots ``out`` and hand them to compute."""
        read_ms = time.time() * 1000
        first_seq = self.seq
        batch = self._pack(entries, out, int(read_ms))
        packed_ns = time.monotonic_ns()
        self.requests.commit(batch.count)
        self.stats["read"] += len(entries)
        self.stats["batches"] += 1
        self.stats["rejected"] += len(batch.rejects)
        metrics.BATCHES.inc()
        metrics.BATCH_SIZE.observe(len(entries))
        for r in batch.rejects:
            self._log_failed(r.src, r.reason, r.status)
        self.to_commit.extend(batch.rejects)
        log.debug("batch read", stream=self.config.in_key, read=len(entries),
                  packed=batch.count, rejected=len(batch.rejects))  # fmt: skip
        if batch.count:
            born = ids_ms(batch.ids)
            metrics.observe_many(metrics.QUEUE_WAIT, np.maximum(read_ms - born, 0.0) / 1000)
            metrics.RING_OCCUPANCY.inc(batch.count)
            self.seq = (self.seq + batch.count) % (1 << 32)
            self.in_flight.append(
                _SentBatch(batch, born, read_ns or packed_ns, packed_ns, fresh, first_seq)
            )

    # -- entries that keep killing the worker (worker/crashlog.py) -----------------------

    def _answer_poison(self, entries: list[Entry] | Columns) -> list[Entry] | Columns:
        """Answer the entries convicted of crashing the worker with an error; the rest."""
        assert self.trials is not None
        poison = self.trials.poison
        ids = entries.ids if isinstance(entries, Columns) else [e[0] for e in entries]
        if not poison.keys() & set(ids):
            return entries
        kept: list[Entry] = []
        for entry in as_entries(entries):
            why = poison.get(entry[0])
            if why is None:
                kept.append(entry)
                continue
            self.to_commit.extend([error_result(entry[0], why, entry[1], self.reply_to_check)])
            self._log_failed(entry[0], why, Status.ERROR)
            self.trials.answered(entry[0])
        return kept

    def run_trials(self) -> None:
        """Before any other work: run each suspect of this consumer alone, through the
        ring and the compute process to its commit; then wait for the other ingest
        processes' suspects."""
        assert self.trials is not None
        for entry_id in list(self.trials.mine):
            while self.in_flight:  # a trial cut short by a lost connection, say
                self.collect(timeout=0.05)
            self.commit()  # nothing of ours beside the suspect, not even in Redis's hands
            with self.trials.alone(entry_id, given_up_on=GIVEN_UP_ON):
                found: Any = self.client.xrange(self.config.in_key, entry_id, entry_id)
                entries: list[Entry] = [(entry_id, found[0][1] if found else None)]
                if self.trials.poison:
                    entries = self._answer_poison(entries)  # type: ignore[assignment]
                if entries:
                    self._send(entries, self.requests.reserve(1, timeout=None), fresh=False)
                while self.in_flight:
                    self.collect(timeout=0.05)
                self.commit()
            log.info("suspect ran alone and was answered", entry_id=entry_id.decode())
        self.trials.wait_for_the_others(stop=lambda: self.draining)

    def _pack(
        self, entries: list[Entry] | Columns, out: tuple[SlotArray, SlotArray], now_ms: int
    ) -> PackedBatch:
        """``pack``; if something unexpected raises, entry by entry (worker/isolate.py)."""

        def pack_some(some: Any, into: Any) -> PackedBatch:
            return pack(some, into, table=self.table, first_seq=self.seq, now_ms=now_ms,
                        reply_to_check=self.reply_to_check)  # fmt: skip

        try:
            return pack_some(entries, out)
        except NOT_ISOLATED:
            raise
        except Exception as exc:
            return pack_each(entries, out, pack_some, self.config.slot_bytes, exc,
                             self.reply_to_check)  # fmt: skip

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

    def run(self, drain: Any | None = None) -> None:
        """Serve until drained: by ``draining`` (SIGTERM) or the supervisor's ``drain`` event."""
        backoff = ExponentialBackoff(cap=2.0, base=0.05)
        failures = 0
        group_ready = False
        while True:
            if drain is not None and not self.draining and drain.is_set():
                self.draining = True
            try:
                if not group_ready:
                    ensure_group(self.client, self.config)
                    self.committer.load()
                    group_ready = True
                if self.trials is not None and self.trials.pending:
                    self.run_trials()
                if not self.step():
                    break
                failures = 0
            except (QueueMisconfigured, redis.ResponseError) as exc:
                # Nothing was written; the results wait here (and no more is read)
                # until someone fixes the key, or the server takes writes again (it
                # was out of memory, a replica, the group was deleted...). Not a
                # restart: a restarted process would meet the same refusal.
                if self.draining:
                    break  # what was not committed is still pending in Redis
                group_ready = False
                failures += 1
                pause = backoff.compute(failures)
                if failures == 1 or failures % 30 == 0:
                    what = "queue misconfigured" if isinstance(exc, QueueMisconfigured) \
                        else "redis refused a command"  # fmt: skip
                    log.error(f"{what}; results are kept and the commit retried",
                              error=str(exc), attempts=failures)  # fmt: skip
                time.sleep(pause)
            except REDIS_ERRORS as exc:
                failures += 1
                pause = backoff.compute(failures)
                log.warning("redis unavailable; retrying", error=str(exc), pause_s=round(pause, 3))
                time.sleep(pause)
                # A reply lost with the connection may have delivered entries we never
                # saw: re-read our pending history (entries in flight are filtered out).
                self.reader.reread_history()
        log.info(
            "ingest drained",
            consumer=self.consumer,
            answered=self.counts.answered,
            skipped=self.counts.skipped,
            **self.stats,
        )
