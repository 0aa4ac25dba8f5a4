"""Taking over entries other consumers (or our own earlier life) left pending too long."""

from __future__ import annotations

import time
from typing import Any

import redis
import structlog

from gpufeed.packing import Entry, ReplyToCheck, ResultEntry, error_result
from gpufeed.worker import metrics
from gpufeed.worker.config import WorkerConfig

log = structlog.get_logger()


class Reclaimer:
    """Periodic XAUTOCLAIM with min-idle = the visibility timeout.

    Claimed entries go through the pipeline again, except those delivered more
    than ``max_deliveries`` times: they get an error result and a dead-letter
    entry instead (both written by the commit script).
    """

    def __init__(
        self,
        client: redis.Redis,
        config: WorkerConfig,
        consumer: str,
        reply_to_check: ReplyToCheck | None = None,
        stream: str | None = None,
    ) -> None:
        """``reply_to_check``: as ``pack`` takes it; a dead letter's result goes to the
        entry's reply_to stream only if it passes. ``stream``: one priority level's
        input stream (default: the queue's ``in``)."""
        self.stream = stream or config.in_key
        self.client = client
        self.reply_to_check = reply_to_check
        self.config = config
        self.consumer = consumer
        self.cursor = "0-0"
        self.last = time.monotonic()
        self.more = False  # the last claim was full: more idle entries may be waiting

    def due(self) -> bool:
        """Time for a claim: every reclaim interval, and at once after a full claim,
        so a backlog of idle entries (a dead consumer's, or a server rolled back to
        an older AOF) comes back at batch speed, not one batch per interval."""
        if self.more:
            return True
        return (time.monotonic() - self.last) * 1000 >= self.config.reclaim_interval_ms

    def claim(self, room: int) -> tuple[list[Entry], list[ResultEntry]]:
        """Claim up to ``room`` idle entries: (entries to process, dead-letter results)."""
        self.last = time.monotonic()
        cfg = self.config
        reply: Any = self.client.xautoclaim(
            self.stream,
            cfg.group,
            self.consumer,
            min_idle_time=cfg.visibility_timeout_ms,
            start_id=self.cursor,
            count=room,
        )
        cursor = reply[0]
        self.cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        claimed: list[Entry] = [(e[0], e[1]) for e in reply[1]]
        self.more = len(claimed) >= room
        if not claimed:
            return [], []
        metrics.RECLAIMED.inc(len(claimed))
        log.info("reclaimed idle entries", stream=self.stream, count=len(claimed))
        deliveries = self._deliveries([e[0] for e in claimed])
        keep: list[Entry] = []
        dead: list[ResultEntry] = []
        for entry_id, fields in claimed:
            times = deliveries.get(entry_id, 0)
            if times > cfg.max_deliveries:
                reason = f"delivered {times} times, more than --max-deliveries {cfg.max_deliveries}"
                dead.append(error_result(entry_id, reason, fields, self.reply_to_check))
            else:
                keep.append((entry_id, fields))
        return keep, dead

    def _deliveries(self, ids: list[bytes]) -> dict[bytes, int]:
        """Delivery counts from XPENDING for ``ids`` (sorted, all now ours)."""
        cfg = self.config
        rows = self.client.xpending_range(
            self.stream, cfg.group, min=ids[0], max=ids[-1], count=2 * len(ids) + 64,
            consumername=self.consumer,
        )  # fmt: skip
        rows_: Any = rows
        counts: dict[bytes, int] = {r["message_id"]: int(r["times_delivered"]) for r in rows_}
        for missing in (i for i in ids if i not in counts):  # range held more than we asked
            one = self.client.xpending_range(
                self.stream, cfg.group, min=missing, max=missing, count=1,
                consumername=self.consumer,
            )  # fmt: skip
            if one:
                counts[missing] = int(one[0]["times_delivered"])
        return counts
