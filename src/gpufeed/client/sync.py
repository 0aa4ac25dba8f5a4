"""``gpufeed.Client``: submit messages from threads, wait on futures."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from gpufeed.client.messages import (
    LOST,
    READ_BLOCK_MS,
    ClientCore,
    Decode,
    OpSpec,
    Payload,
    decoder,
    message,
    messages,
    outcome,
    settle,
    stream_entries,
)
from gpufeed.connect import Client as RedisClient
from gpufeed.connect import RedisTarget
from gpufeed.errors import ClientClosed, ResultError


class Client(ClientCore):
    """Submit messages to queue ``queue`` and get their results back.

    ``submit`` returns a ``concurrent.futures.Future`` whose ``result(timeout)``
    is the result's data (bytes), or raises ``ResultError`` /
    ``ResultExpired`` with the worker's reason. Thread-safe. Use it as a
    context manager, or call ``close``, which fails what is still waiting
    with ``ClientClosed`` and deletes the reply stream.

    ``redis_url`` takes the worker's forms (``rediss://``,
    ``redis+cluster://``); ``connection`` uses a redis-py client of your own
    instead (it is not closed with this one). ``name`` names the reply stream
    ``gpufeed:{QUEUE}:reply:NAME`` (default: host, pid and a random tag); an
    ACL user made with ``gpufeed acl producer --reply NAME`` may use it.
    """

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        queue: str = "default",
        *,
        op: OpSpec = None,
        name: str | None = None,
        connection: RedisClient | None = None,
        tls_ca_cert: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        target = RedisTarget(redis_url, tls_ca_cert, tls_cert, tls_key)
        super().__init__(queue, op, name, connection, target.connect)
        self._waiting: dict[bytes, tuple[Future[Any], Decode]] = {}
        # Results read before their XADD's reply came back to the submitting thread.
        self._early: dict[bytes, bytes | ResultError] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        # Results already in a reused stream (a fixed name, as an ACL user has)
        # belong to an earlier client: start after them.
        newest: Any = self._redis.xrevrange(self.reply_key, count=1)
        self._reader = threading.Thread(
            target=self._read, args=(newest[0][0] if newest else b"0-0",),
            name=f"gpufeed replies {self.name}", daemon=True,
        )  # fmt: skip
        self._reader.start()

    # -- submitting --------------------------------------------------------------------

    def submit(
        self,
        data: Payload,
        *,
        op: OpSpec = None,
        cid: str | bytes | None = None,
        deadline_ms: int | None = None,
    ) -> Future[Any]:
        """Send one message; its future settles when its result comes back."""
        fields = message(data, self.reply_key, op=op or self.op, cid=cid, deadline_ms=deadline_ms)
        self._check_open()
        return self._expect(self._redis.xadd(self.keys.in_key, fields), decoder(op or self.op))

    def submit_many(
        self,
        items: Iterable[Payload],
        *,
        op: OpSpec = None,
        cids: Sequence[str | bytes] | None = None,
        deadline_ms: int | None = None,
    ) -> list[Future[Any]]:
        """Send many messages in one pipeline (one round trip); their futures, in order."""
        fields = messages(
            items, self.reply_key, op=op or self.op, cids=cids, deadline_ms=deadline_ms
        )
        self._check_open()
        pipe = self._redis.pipeline(transaction=False)
        for f in fields:
            pipe.xadd(self.keys.in_key, f)
        decode = decoder(op or self.op)
        return [self._expect(entry_id, decode) for entry_id in pipe.execute()]

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"client {self.name} is closed")

    def _expect(self, entry_id: bytes, decode: Decode) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            early = self._early.pop(entry_id, None)
            if early is None:
                self._waiting[entry_id] = (future, decode)
        if early is not None:
            settle(future, early, decode)
        return future

    # -- results -----------------------------------------------------------------------

    def _read(self, after: bytes) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                reply: Any = self._redis.xread(
                    {self.reply_key: after}, count=1000, block=READ_BLOCK_MS
                )
                failures = 0
            except LOST:
                failures += 1
                self._stop.wait(min(1.0, 0.05 * 2**failures))
                continue
            entries = stream_entries(reply)
            if not entries:
                continue
            for _, fields in entries:
                self._deliver(*outcome(fields))
            after = entries[-1][0]
            # What was read is not needed again: keep the stream short.
            with contextlib.suppress(*LOST):
                self._redis.xtrim(self.reply_key, minid=after, approximate=False)

    def _deliver(self, src: bytes, value: bytes | ResultError) -> None:
        with self._lock:
            waiting = self._waiting.pop(src, None)
            if waiting is None:
                self._early[src] = value
                return
        settle(waiting[0], value, waiting[1])

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, fail what still waits with ``ClientClosed``, delete the reply
        stream. A result committed after this is written to a stream nobody reads
        (the worker trims it to ``--out-maxlen``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting, self._waiting = self._waiting, {}
        self._stop.set()
        self._reader.join(READ_BLOCK_MS / 1000 + 5)
        for future, _ in waiting.values():
            future.set_exception(ClientClosed(f"client {self.name} closed before the result"))
        try:
            self._redis.delete(self.reply_key)
        finally:
            if self._own:
                self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
