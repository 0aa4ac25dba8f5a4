"""``gpufeed.AsyncClient``: the same as ``Client``, for asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
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
from gpufeed.connect import RedisTarget


class AsyncClient(ClientCore):
    """``Client`` for asyncio: ``await submit(...)`` gives an ``asyncio.Future``
    to await (``asyncio.wait_for`` bounds the wait). Use ``async with``, or
    ``await close()``. ``connection`` takes a ``redis.asyncio`` client of your own.
    """

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        queue: str = "default",
        *,
        op: OpSpec = None,
        name: str | None = None,
        connection: Any = None,
        tls_ca_cert: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        target = RedisTarget(redis_url, tls_ca_cert, tls_cert, tls_key)
        super().__init__(queue, op, name, connection, target.connect_async)
        self._pending = Pending(self.name)
        self._reader: asyncio.Task[None] | None = None

    async def submit(
        self,
        data: Payload,
        *,
        op: OpSpec = None,
        cid: str | bytes | None = None,
        deadline_ms: int | None = None,
        priority: int = 0,
    ) -> asyncio.Future[Any]:
        """Send one message; await the future for its result."""
        stream = self.keys.level_key(priority)
        fields = message(data, self.reply_key, op=op or self.op, cid=cid, deadline_ms=deadline_ms)
        self._pending.begin()
        try:
            self._start()
            future = asyncio.get_running_loop().create_future()
            entry_id = await self._redis.xadd(stream, fields)
            self._pending.expect(entry_id, future, decoder(op or self.op))
            return future
        finally:
            self._pending.end()

    async def submit_many(
        self,
        items: Iterable[Payload],
        *,
        op: OpSpec = None,
        cids: Sequence[str | bytes] | None = None,
        deadline_ms: int | None = None,
        priority: int = 0,
    ) -> list[asyncio.Future[Any]]:
        """Send many messages in one pipeline; their futures, in order (as
        ``Client.submit_many``)."""
        stream = self.keys.level_key(priority)
        fields = messages(
            items, self.reply_key, op=op or self.op, cids=cids, deadline_ms=deadline_ms
        )
        self._pending.begin()
        try:
            self._start()
            pipe = self._redis.pipeline(transaction=False)
            for f in fields:
                pipe.xadd(stream, f)
            replies = await pipe.execute(raise_on_error=False)
            make = asyncio.get_running_loop().create_future
            return self._pending.expect_all(replies, make, decoder(op or self.op))
        finally:
            self._pending.end()

    def _start(self) -> None:
        """The reader, started by the first submit (it needs the running loop);
        set before any await, so concurrent first submits start one."""
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        """As ``Client._read``."""
        after, failures = b"0-0", 0
        while not self._pending.closed:
            try:
                entries = await self._xread(after)
                if entries:
                    after = entries[-1][0]
                    try:
                        await self._trim(after)
                    finally:
                        self._pending.deliver_entries(entries)
                failures = 0
            except Exception as exc:
                failures += 1
                await asyncio.sleep(reader_pause(failures, exc, self.name))

    async def _trim(self, after: bytes) -> None:
        try:
            await self._redis.xtrim(self.reply_key, minid=after, approximate=False)
        except redis.exceptions.NoPermissionError as exc:
            self.trim_refused(exc)

    async def _xread(self, after: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            reply = await self._redis.xread(
                {self.reply_key: after}, count=1000, block=READ_BLOCK_MS
            )
        except redis.exceptions.NoPermissionError as exc:
            self._pending.fail_waiting(read_refused(self, exc))
            raise
        return stream_entries(reply)

    async def close(self) -> None:
        """As ``Client.close``."""
        if self._pending.closed:
            return
        self._pending.close()
        if self._reader is not None:
            # Not cancelled: a task cancelled inside redis-py's blocked XREAD did
            # not come back (redis-py 8.2, seconds after its 200 ms block). Left
            # alone, the read ends within its block and the loop sees the close.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, READ_BLOCK_MS / 1000 + 5)
        try:
            with contextlib.suppress(redis.RedisError):
                await self._redis.delete(self.reply_key)
        finally:
            if self._own:
                await self._redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
