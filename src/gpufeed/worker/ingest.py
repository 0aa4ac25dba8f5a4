"""The ingest process: all Redis I/O for one request/response ring pair.

Loop: take finished results from the response ring; commit them (and any
rejects) with one script call; then, if the request ring has room, read up to
that many entries with XREADGROUP and pack them straight into the ring.
A full ring means no read: backpressure ends at Redis, where the messages wait.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gpufeed.connect import Client, RedisTarget, cluster_reply_check
from gpufeed.errors import QueueMisconfigured, RingClosed
from gpufeed.ops.registry import OpTable
from gpufeed.packing import (
    Columns,
    Entry,
    PackedBatch,
    Results,
    Status,
    collect_results,
    pack,
    read_entries,
    reply_entries,
)
from gpufeed.packing.ids import ids_ms
from gpufeed.packing.layout import SlotArray, payload_capacity
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.commit import REDIS_ERRORS, CommitCounts, Committer
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.exits import exit_on_known_failures
from gpufeed.worker.gctune import tune_for_hot_loop
from gpufeed.worker.isolate import NOT_ISOLATED, commit_each, pack_each
from gpufeed.worker.reclaim import Reclaimer

log = structlog.get_logger()

HISTORY = "0"
NEW = ">"
# A blocked read that woke with fewer entries than this reads once more (Ingest._top_up).
TOP_UP_BELOW = 64


def make_client(target: RedisTarget) -> Client:
    """A client that retries lost connections with capped exponential backoff.

    XREADGROUP replies are left unparsed (``read_entries`` reads them: a
    data-only read becomes two lists, with no dict per message); a cluster
    client parses them on the node anyway, which ``reply_entries`` reads as well.
    """
    client = target.connect(
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.02), retries=8),
        retry_on_error=list(REDIS_ERRORS),
        health_check_interval=30,
        socket_keepalive=True,
        protocol=2,
    )
    client.set_response_callback("XREADGROUP", lambda response, **options: response)
    return client


def ensure_group(client: Client, config: WorkerConfig) -> None:
    """Create the consumer group (and the stream) unless it exists."""
    try:
        client.xgroup_create(config.in_key, config.group, id=config.start_id, mkstream=True)
        log.info("consumer group created", stream=config.in_key, group=config.group)
    except redis.ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            raise QueueMisconfigured(f"{config.in_key}: {exc}") from exc
        if "BUSYGROUP" not in str(exc):
            raise


# How often each ingest process logs a throughput summary (info level).
SUMMARY_INTERVAL_S = 5.0


@dataclass
class _SentBatch:
    """A packed batch in the request ring, or partly answered in the response ring."""

    batch: PackedBatch
    born_ms: Any  # entry-id times of the packed messages (NumPy float64)
    packed_at: float  # time.perf_counter() when it went into the request ring
    # From a ">" read: its ids follow those of the batches before it. Pending
    # history and reclaimed entries are older than what is in flight.
    ordered: bool
    answered: int = 0


class Ingest:
    def __init__(
        self, config: WorkerConfig, index: int, requests: RingProducer, responses: RingConsumer
    ) -> None:
        self.config = config
        self.consumer = config.consumer_name(index)
        self.requests = requests
        self.responses = responses
        self.table = OpTable.for_worker(
            config.op, payload_capacity(config.slot_bytes), dense_model=config.dense_model
        )
        self.client = make_client(config.redis)
        # On a cluster the commit script can only write reply_to streams in our slot.
        self.reply_to_check = cluster_reply_check(config.in_key) if config.redis.cluster else None
        self.committer = Committer(self.client, config, self.consumer)
        self.counts = CommitCounts()
        self.reclaimer = Reclaimer(self.client, config, self.consumer)
        self.in_flight: deque[_SentBatch] = deque()
        self.to_commit = Results(ordered=True)
        self.to_commit_born: list[Any] = []
        self.summary_at = time.monotonic()
        self.summary_answered = 0
        self.seq = 0
        self.read_id = HISTORY
        self.draining = False
        self.stats = {"read": 0, "batches": 0, "rejected": 0}

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
                metrics.COMPUTE.observe(time.perf_counter() - head.packed_at)
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
        started = time.perf_counter()
        try:
            counts = self.committer.commit(self.to_commit)
        except NOT_ISOLATED:
            raise
        except Exception as exc:  # one result's doing, perhaps: see worker/isolate.py
            counts = commit_each(self.to_commit, self.committer.commit, exc)
        metrics.COMMIT.observe(time.perf_counter() - started)
        metrics.record_commit(counts, born)
        self.counts = self.counts.plus(counts)
        self.to_commit = Results(ordered=True)
        self.to_commit_born = []
        log.debug("batch committed", **counts._asdict())
        if counts.skipped:
            log.info("results skipped: entries no longer pending for us", **counts._asdict())

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

    # -- reading -----------------------------------------------------------------------

    def _xreadgroup(self, count: int, block: int | None) -> Any:
        try:
            return self.client.xreadgroup(
                self.config.group,
                self.consumer,
                {self.config.in_key: self.read_id},
                count=count,
                block=block,
            )
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc) or "NOGROUP" in str(exc):
                # The input stream was replaced by another type, or deleted with its
                # group: wait for someone to fix it (the group is made again below).
                raise QueueMisconfigured(f"{self.config.in_key}: {exc}") from exc
            raise

    def read(self, room: int) -> list[Entry] | Columns:
        block: int | None = None if self.in_flight else max(1, self.config.max_wait_ms)
        reply: Any = self._xreadgroup(room, block)
        if self.read_id == NEW:
            if block is not None and reply:
                reply = self._top_up(reply, room)
            return read_entries(reply)
        # Pending history comes back in id order; page through it, then go live.
        entries = reply_entries(reply)
        if entries:
            self.read_id = entries[-1][0].decode()
            held = self._held()
            entries = [e for e in entries if e[0] not in held]
        else:
            self.read_id = NEW
        return entries

    def _top_up(self, reply: Any, room: int) -> Any:
        """After a blocked read wakes, read once more without blocking.

        Redis wakes a blocked reader as soon as the first entry of a producer's
        pipelined burst is added, so that read holds one entry or a few, and the
        rest of the burst is in the stream by the time the next command is
        served. Taking it now makes one batch, computed and committed once,
        instead of a tiny batch whose commit the rest waits behind.
        """
        got = len(reply[0][1])
        if got >= min(room, TOP_UP_BELOW):
            return reply
        more: Any = self._xreadgroup(room - got, None)
        if not more:
            return reply
        return [[reply[0][0], [*reply[0][1], *more[0][1]]]]

    def _held(self) -> set[bytes]:
        """The ids of the entries in the request ring or waiting for their results."""
        return {i for f in self.in_flight for i in f.batch.ids}

    def fill(self) -> bool:
        """Read and pack one batch if the ring has room; False if nothing was read."""
        first, second = self.requests.reserve(self.config.max_batch)
        room = len(first) + len(second)
        if room == 0:
            return False  # ring full: leave the messages in Redis
        entries: list[Entry] | Columns
        fresh = False
        if self.reclaimer.due():
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
            fresh = self.read_id == NEW
            entries = self.read(room)
        if not entries:
            self.requests.commit(0)
            return False
        read_ms = time.time() * 1000
        batch = self._pack(entries, (first, second), int(read_ms))
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
            self.in_flight.append(_SentBatch(batch, born, time.perf_counter(), fresh))
        return True

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
            return pack_each(entries, out, pack_some, self.config.slot_bytes, exc)

    # -- the loop ----------------------------------------------------------------------

    def step(self) -> bool:
        """One round; False once drained."""
        self.summary()
        self.collect()
        self.commit()
        if self.draining:
            if not self.in_flight:
                return False  # everything collected was committed above
            self.collect(timeout=0.05)
            return True
        read = self.fill()
        if not read and self.in_flight:
            self.collect(timeout=self.config.max_wait_ms / 1000)
        return True

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
                if not self.step():
                    break
                failures = 0
            except QueueMisconfigured as exc:
                # Nothing was written; the results wait here (and no more is read)
                # until someone fixes the key.
                group_ready = False
                failures += 1
                pause = backoff.compute(failures)
                if failures == 1 or failures % 30 == 0:
                    log.error("queue misconfigured; results are kept and the commit retried",
                              error=str(exc), attempts=failures)  # fmt: skip
                time.sleep(pause)
            except REDIS_ERRORS as exc:
                failures += 1
                pause = backoff.compute(failures)
                log.warning("redis unavailable; retrying", error=str(exc), pause_s=round(pause, 3))
                time.sleep(pause)
                # A reply lost with the connection may have delivered entries we never
                # saw: re-read our pending history (entries in flight are filtered out).
                self.read_id = HISTORY
        log.info(
            "ingest drained",
            consumer=self.consumer,
            answered=self.counts.answered,
            skipped=self.counts.skipped,
            **self.stats,
        )


def ingest_main(
    config: WorkerConfig,
    index: int,
    requests_name: str,
    responses_name: str,
    drain: Any,
    setup: Callable[[str], None] | None = None,
) -> None:
    """Entry point of ingest process ``index`` (started with ``spawn``)."""
    if setup is not None:
        setup(f"ingest-{index}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains
    with exit_on_known_failures(requests_name, responses_name):
        requests = RingProducer.attach(requests_name)
        responses = RingConsumer.attach(responses_name)
        ingest = Ingest(config, index, requests, responses)

        def on_term(signum: int, frame: Any) -> None:
            ingest.draining = True

        signal.signal(signal.SIGTERM, on_term)
        tune_for_hot_loop()
        log.info("ingest started", consumer=ingest.consumer, stream=config.in_key)
        try:
            ingest.run(drain)
        except RingClosed:
            log.warning("ring closed under the ingest process; exiting")
        finally:
            requests.close()
            responses.close()
