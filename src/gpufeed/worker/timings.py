"""Per-batch stage timestamps (``--trace-timings``), for ``gpufeed bench latency``.

Each process stamps the moments a batch passes through it on the monotonic
clock (``time.monotonic_ns``, the same clock in every process of a machine,
so stamps from the ingest process, the compute process and a client compare
directly). The ingest process takes its stamps always (a few clock reads per
batch; its compute-time metric comes from them); the compute process only
while tracing. Records are buffered and logged many to a line: one log call
per ``FLUSH_EVERY`` batches, and one when the process stops. A debugging aid:
a record lists its batch's entry ids, so under load the lines grow long.

The ingest process logs ``batch timings`` records::

    {"ring": "<request ring>", "seq": 17, "ids": ["1733-0"], "read": ...,
     "packed": ..., "collected": ..., "committing": ..., "committed": ...}

and the compute process ``compute timings`` records, one per part it took::

    {"ring": "<request ring>", "seq": 17, "n": 1, "peeked": ..., "computed": ...,
     "written": ...}

where ``seq`` is the sequence number of the first slot: a batch's compute
records are those whose slots overlap its own (``bench/latency.py``).
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger()

FLUSH_EVERY = 256


class StageLog:
    """Buffered trace records of one process; a no-op unless ``enabled``."""

    def __init__(self, event: str, enabled: bool) -> None:
        self.event = event
        self.enabled = enabled
        self._records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        if len(self._records) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._records:
            log.info(self.event, batches=self._records)
            self._records = []
