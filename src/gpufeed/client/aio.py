"""``gpufeed.AsyncClient``: the same as ``Client``, for asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import redis

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
from gpufeed.connect import RedisTarget
from gpufeed.errors import ClientClosed, ResultError


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
        self._waiting: dict[bytes, tuple[asyncio.Future[Any], Decode]] = {}
        self._early: dict[bytes, bytes | ResultError] = {}
        self._closed = False
        self._reader: asyncio.Task[None] | None = None

    async def submit(
        self,
        data: Payload,
        *,
        op: OpSpec = None,
        cid: str | bytes | None = None,
        deadline_ms: int | None = None,
    ) -> asyncio.Future[Any]:
        """Send one message; await the future for its result."""
        fields = message(data, self.reply_key, op=op or self.op, cid=cid, deadline_ms=deadline_ms)
        await self._start()
        return self._expect(
            await self._redis.xadd(self.keys.in_key, fields), decoder(op or self.op)
        )

    async def submit_many(
        self,
        items: Iterable[Payload],
        *,
        op: OpSpec = None,
        cids: Sequence[str | bytes] | None = None,
        deadline_ms: int | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Send many messages in one pipeline; their futures, in order."""
        fields = messages(
            items, self.reply_key, op=op or self.op, cids=cids, deadline_ms=deadline_ms
        )
        await self._start()
        pipe = self._redis.pipeline(transaction=False)
        for f in fields:
            pipe.xadd(self.keys.in_key, f)
        decode = decoder(op or self.op)
        return [self._expect(entry_id, decode) for entry_id in await pipe.execute()]

    async def _start(self) -> None:
        if self._closed:
            raise ClientClosed(f"client {self.name} is closed")
        if self._reader is None:
            # As Client: start after what a reused stream already holds.
            newest: Any = await self._redis.xrevrange(self.reply_key, count=1)
            after = newest[0][0] if newest else b"0-0"
            self._reader = asyncio.get_running_loop().create_task(self._read(after))

    def _expect(self, entry_id: bytes, decode: Decode) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        early = self._early.pop(entry_id, None)
        if early is None:
            self._waiting[entry_id] = (future, decode)
        else:
            settle(future, early, decode)
        return future

    async def _read(self, after: bytes) -> None:
        failures = 0
        while not self._closed:
            try:
                reply: Any = await self._redis.xread(
                    {self.reply_key: after}, count=1000, block=READ_BLOCK_MS
                )
                failures = 0
            except LOST:
                failures += 1
                await asyncio.sleep(min(1.0, 0.05 * 2**failures))
                continue
            entries = stream_entries(reply)
            if not entries:
                continue
            for _, fields in entries:
                src, value = outcome(fields)
                waiting = self._waiting.pop(src, None)
                if waiting is None:
                    self._early[src] = value
                elif not waiting[0].done():  # a caller may have cancelled it
                    settle(waiting[0], value, waiting[1])
            after = entries[-1][0]
            with contextlib.suppress(*LOST):
                await self._redis.xtrim(self.reply_key, minid=after, approximate=False)

    async def close(self) -> None:
        """As ``Client.close``."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            # Not cancelled: a task cancelled inside redis-py's blocked XREAD did
            # not come back (redis-py 8.2, seconds after its 200 ms block). Left
            # alone, the read ends within its block and the loop sees _closed.
            with contextlib.suppress(redis.RedisError):
                await asyncio.wait_for(self._reader, READ_BLOCK_MS / 1000 + 5)
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(ClientClosed(f"client {self.name} closed before the result"))
        try:
            await self._redis.delete(self.reply_key)
        finally:
            if self._own:
                await self._redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
