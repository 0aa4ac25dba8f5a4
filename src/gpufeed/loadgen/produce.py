"""Writing messages to a queue: the load generator behind ``gpufeed produce``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import redis

PIPELINE_CHUNK = 500


def xadd_chunks(
    client: redis.Redis,
    stream: str,
    payloads: Sequence[bytes],
    *,
    op: str | None = None,
    cid_prefix: str = "",
    rate: float = 0.0,
) -> Iterator[list[bytes]]:
    """XADD one entry per payload, one pipeline at a time; yields each pipeline's
    entry ids.

    ``rate`` > 0 paces the writes to about that many messages per second. A
    long-running caller that needs no ids should not keep them: a producer
    that kept millions of them needed more CPU per message the longer it ran.
    """
    started = time.monotonic()
    chunk = PIPELINE_CHUNK if rate <= 0 else max(1, min(PIPELINE_CHUNK, int(rate / 100)))
    written = 0
    for start in range(0, len(payloads), chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + chunk, len(payloads))):
            fields: dict[str, bytes | str] = {"data": payloads[i]}
            if op:
                fields["op"] = op
            if cid_prefix:
                fields["cid"] = f"{cid_prefix}{i}"
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids = pipe.execute()
        written += len(ids)
        yield ids
        if rate > 0:
            ahead = written / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def xadd_all(
    client: redis.Redis,
    stream: str,
    payloads: Sequence[bytes],
    *,
    op: str | None = None,
    cid_prefix: str = "",
    rate: float = 0.0,
) -> list[bytes]:
    """XADD one entry per payload (pipelined); returns the entry ids in order."""
    ids: list[bytes] = []
    for written in xadd_chunks(client, stream, payloads, op=op, cid_prefix=cid_prefix, rate=rate):
        ids += written
    return ids
