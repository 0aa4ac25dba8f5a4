"""Per-batch stage timestamps (``--trace-timings``), for ``gpufeed bench latency``.

Each process stamps the moments a batch passes through it on the monotonic
clock (``time.monotonic_ns``, the same clock in every process of a machine,
so stamps from the ingest process, the compute process and a client compare
directly). The stamps are taken always, and cost a few clock reads per batch;
only writing them out is optional. Records are buffered and logged many to a
line, so tracing adds no log call to a message's path: one flush per
``FLUSH_EVERY`` batches, and one when the process stops.

The ingest process logs ``batch timings`` records::

    {"ring": 0, "seq": 17, "ids": ["1733-0"], "read": ..., "packed": ...,
     "collected": ..., "committing": ..., "committed": ...}

and the compute process ``compute timings`` records::

    {"ring": 0, "seq": 17, "n": 1, "peeked": ..., "computed": ..., "written": ...}

joined on (``ring``, ``seq``): the sequence number of the batch's first slot.
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
