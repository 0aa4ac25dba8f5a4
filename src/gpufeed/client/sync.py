"""``gpufeed.Client``: submit messages from threads, wait on futures."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import redis

from gpufeed.client.core import READ_BLOCK_MS, ClientCore, Pending, read_refused, reader_pause
from gpufeed.client.messages import (
    OpSpec,
    Payload,
    decoder,
    message,
    messages,
    stream_entries,
)
from gpufeed.connect import Client as RedisClient
from gpufeed.connect import RedisTarget


class Client(ClientCore):
    """Submit messages to queue ``queue`` and get their results back.

    ``submit`` returns a ``concurrent.futures.Future`` whose ``result(timeout)``
    is the result's data (bytes), or raises ``ResultError`` /
    ``ResultExpired`` with the worker's reason. Thread-safe. Use it as a
    context manager, or call ``close``, which fails what is still waiting
    with ``ClientClosed`` and deletes the reply stream.

    ``redis_url`` takes the worker's forms (``rediss://``,
    ``redis+cluster://``); ``connection`` uses a redis-py client of your own
    instead (it is not closed with this one). Results come back on a stream
    of this client's own, ``gpufeed:{QUEUE}:reply:NAME:TAG`` with a random
    tag; ``name`` defaults to host and pid. An ACL user made with ``gpufeed acl
    producer --reply NAME`` may run any number of clients named ``NAME``.
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
        self._pending = Pending(self.name)
        self._stop = threading.Event()
        self._reader = threading.Thread(
            target=self._read, name=f"gpufeed replies {self.name}", daemon=True
        )
        self._reader.start()

    # -- submitting --------------------------------------------------------------------

    def submit(
        self,
        data: Payload,
        *,
        op: OpSpec = None,
        cid: str | bytes | None = None,
        deadline_ms: int | None = None,
        priority: int = 0,
    ) -> Future[Any]:
        """Send one message; its future settles when its result comes back.

        ``priority``: the level whose stream it goes to (``in:PRIORITY``; 0 is the
        plain ``in``); the worker must run with ``--priorities`` above it.
        """
        stream = self.keys.level_key(priority)
        fields = message(data, self.reply_key, op=op or self.op, cid=cid, deadline_ms=deadline_ms)
        self._pending.begin()
        try:
            future: Future[Any] = Future()
            self._pending.expect(self._redis.xadd(stream, fields), future, decoder(op or self.op))
            return future
        finally:
            self._pending.end()

    def submit_many(
        self,
        items: Iterable[Payload],
        *,
        op: OpSpec = None,
        cids: Sequence[str | bytes] | None = None,
        deadline_ms: int | None = None,
        priority: int = 0,
    ) -> list[Future[Any]]:
        """Send many messages in one pipeline (one round trip); their futures, in
        order. A message Redis refused has its future failed with Redis's error;
        the others go on."""
        stream = self.keys.level_key(priority)
        fields = messages(
            items, self.reply_key, op=op or self.op, cids=cids, deadline_ms=deadline_ms
        )
        self._pending.begin()
        try:
            pipe = self._redis.pipeline(transaction=False)
            for f in fields:
                pipe.xadd(stream, f)
            replies = pipe.execute(raise_on_error=False)
            return self._pending.expect_all(replies, Future, decoder(op or self.op))
        finally:
            self._pending.end()

    # -- results -----------------------------------------------------------------------

    def _read(self) -> None:
        """Read the reply stream until closed; survive anything Redis answers."""
        after, failures = b"0-0", 0
        while not self._stop.is_set():
            try:
                entries = self._xread(after)
                if entries:
                    after = entries[-1][0]
                    try:
                        # What was read is not needed again: keep the stream short.
                        # Trimmed before the futures resolve, so that a caller who
                        # has its result finds the stream already short.
                        self._trim(after)
                    finally:
                        self._pending.deliver_entries(entries)
                failures = 0
            except Exception as exc:  # a lost connection, a failover, a refused command
                failures += 1
                self._stop.wait(reader_pause(failures, exc, self.name))

    def _trim(self, after: bytes) -> None:
        try:
            self._redis.xtrim(self.reply_key, minid=after, approximate=False)
        except redis.exceptions.NoPermissionError as exc:
            self.trim_refused(exc)

    def _xread(self, after: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            reply = self._redis.xread({self.reply_key: after}, count=1000, block=READ_BLOCK_MS)
        except redis.exceptions.NoPermissionError as exc:
            self._pending.fail_waiting(read_refused(self, exc))
            raise
        return stream_entries(reply)

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, fail what still waits with ``ClientClosed``, delete the reply
        stream. A result committed after this is written to a stream nobody reads
        (the worker trims it to ``--out-maxlen``)."""
        if self._pending.closed:
            return
        self._pending.close()
        self._stop.set()
        self._reader.join(READ_BLOCK_MS / 1000 + 5)
        try:
            with contextlib.suppress(redis.RedisError):
                self._redis.delete(self.reply_key)
        finally:
            if self._own:
                self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
