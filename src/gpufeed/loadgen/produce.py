"""Writing messages to a queue: the load generator behind ``gpufeed produce``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

PIPELINE_CHUNK = 500


def xadd_all(
    client: redis.Redis,
    stream: str,
    payloads: Sequence[bytes],
    *,
    op: str | None = None,
    cid_prefix: str = "",
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> list[bytes]:
    """XADD one entry per payload (pipelined); returns the entry ids in order.

    ``rate`` > 0 paces the writes to about that many messages per second.
    """
    ids: list[bytes] = []
    started = time.monotonic()
    chunk = PIPELINE_CHUNK if rate <= 0 else max(1, min(PIPELINE_CHUNK, int(rate / 100)))
    for start in range(0, len(payloads), chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + chunk, len(payloads))):
            fields: dict[str, bytes | str] = {"data": payloads[i]}
            if op:
                fields["op"] = op
            if cid_prefix:
                fields["cid"] = f"{cid_prefix}{i}"
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids += pipe.execute()
        if progress:
            progress(len(ids))
        if rate > 0:
            ahead = len(ids) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return ids
