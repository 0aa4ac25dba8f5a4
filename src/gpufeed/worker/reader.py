"""Reading a queue's input stream as one consumer of its group: pending history first,
then new entries, and the client and group that takes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gpufeed.connect import Client, RedisTarget
from gpufeed.errors import QueueMisconfigured
from gpufeed.packing import Columns, Entry, read_entries, reply_entries
from gpufeed.worker.commit import REDIS_ERRORS
from gpufeed.worker.config import WorkerConfig

log = structlog.get_logger()

HISTORY = "0"
NEW = ">"
# A blocked read that wakes with fewer entries than this may have woken at the
# start of a burst (GroupReader.burst_begun).
BURST_BELOW = 64


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


@contextlib.contextmanager
def read_refusals(stream: str) -> Iterator[None]:
    """A read Redis refuses because the input stream was replaced by another type, or
    deleted with its group, raises ``QueueMisconfigured``: the ingest process waits
    for someone to fix it (``ensure_group`` makes the group again)."""
    try:
        yield
    except redis.ResponseError as exc:
        if "WRONGTYPE" in str(exc) or "NOGROUP" in str(exc):
            raise QueueMisconfigured(f"{stream}: {exc}") from exc
        raise


def ensure_group(client: Client, config: WorkerConfig) -> None:
    """Create the consumer group (and the stream) of each priority level unless it exists."""
    for stream in config.level_keys:
        try:
            client.xgroup_create(stream, config.group, id=config.start_id, mkstream=True)
            log.info("consumer group created", stream=stream, group=config.group)
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise QueueMisconfigured(f"{stream}: {exc}") from exc
            if "BUSYGROUP" not in str(exc):
                raise


class GroupReader:
    """XREADGROUP for one consumer: its pending history (what it read and did not
    answer before a restart or a lost connection), page by page, then new entries."""

    def __init__(
        self, client: Client, config: WorkerConfig, consumer: str, stream: str | None = None
    ) -> None:
        """``stream``: one priority level's input stream (default: the queue's ``in``)."""
        self.client = client
        self.config = config
        self.consumer = consumer
        self.stream = stream or config.in_key
        self.read_id = HISTORY
        # Whether the last read may have left entries in the stream: it was
        # filled, or it paged through history. A short read emptied the stream.
        self.more_waiting = True
        # Whether the last read was a blocked one that woke with a few entries.
        # Redis wakes a blocked reader as soon as the first entry of a producer's
        # pipelined burst is added, so that read may hold one entry while the
        # rest of the burst lands; the ingest process looks for the rest while
        # the first entries compute (Ingest.step).
        self.burst_begun = False

    @property
    def live(self) -> bool:
        """Reading new entries (``>``), past the pending history."""
        return self.read_id == NEW

    def reread_history(self) -> None:
        """A reply lost with the connection may have delivered entries we never saw."""
        self.read_id = HISTORY

    def _xreadgroup(self, count: int, block: int | None) -> Any:
        with read_refusals(self.stream):
            return self.client.xreadgroup(
                self.config.group,
                self.consumer,
                {self.stream: self.read_id},
                count=count,
                block=block,
            )

    def read(
        self, room: int, block: int | None, held: Callable[[], set[bytes]]
    ) -> list[Entry] | Columns:
        """Up to ``room`` entries; waits up to ``block`` ms (None: not at all) for new
        ones. History already ``held`` (in flight) is left out."""
        reply: Any = self._xreadgroup(room, block)
        if self.read_id == NEW:
            entries = read_entries(reply)
            self.more_waiting = len(entries) >= room
            self.burst_begun = block is not None and 0 < len(entries) < min(room, BURST_BELOW)
            return entries
        # Pending history comes back in id order; page through it, then go live.
        self.more_waiting, self.burst_begun = True, False
        history = reply_entries(reply)
        if history:
            self.read_id = history[-1][0].decode()
            holding = held()
            history = [e for e in history if e[0] not in holding]
        else:
            self.read_id = NEW
        return history
