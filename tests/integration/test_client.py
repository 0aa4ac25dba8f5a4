"""gpufeed.Client and gpufeed.AsyncClient against a real worker and server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import Future

import numpy as np
import pytest
import redis
import user_ops

import gpufeed
from conftest import TESTS_DIR, keys
from gpufeed.client import AsyncClient, Client
from gpufeed.errors import ClientClosed, GpufeedError, ResultError, ResultExpired


@pytest.fixture
def served(client: redis.Redis, queue: str, start_worker):
    worker = start_worker("--backend", "cpu", "--op", "echo")
    worker.wait_ready(client, keys(queue)[0])
    return worker


def test_submit_returns_a_future_of_the_result(redis_server, queue, client, served) -> None:
    with gpufeed.Client(redis_server.url, queue) as c:
        assert c.submit(b"hello").result(60) == b"hello"
        assert c.submit("text goes as UTF-8", cid="a-1").result(60) == b"text goes as UTF-8"
        assert c.submit(b"abc", op="sha256").result(60) == hashlib.sha256(b"abc").digest()
        assert c.reply_key == f"gpufeed:{{{queue}}}:reply:{c.name}"
        assert client.xlen(c.reply_key) <= 1, "what it read is trimmed away"
    assert not client.exists(c.reply_key), "closing deletes the reply stream"
    assert client.xlen(keys(queue)[1]) == 0, "nothing went to the queue's output stream"


def test_submit_many_pipelines_and_keeps_the_order(redis_server, queue, served) -> None:
    payloads = [b"m%04d" % i for i in range(500)]
    with Client(redis_server.url, queue) as c:
        futures = c.submit_many(payloads, cids=[str(i) for i in range(500)])
        assert [f.result(60) for f in futures] == payloads


def test_an_error_or_expired_result_raises_with_the_workers_reason(
    redis_server, queue, served
) -> None:
    with Client(redis_server.url, queue) as c:
        with pytest.raises(ResultError, match="unknown op") as failed:
            c.submit(b"x", op="no-such-op", cid="c-9").result(60)
        assert isinstance(failed.value, GpufeedError) and failed.value.cid == b"c-9"
        with pytest.raises(ResultExpired, match="deadline"):
            c.submit(b"x", deadline_ms=int(time.time() * 1000) - 1000).result(60)
        assert c.submit(b"still fine").result(60) == b"still fine"


def test_close_fails_what_still_waits(redis_server, queue, client) -> None:
    c = Client(redis_server.url, queue)  # no worker: nothing is answered
    future: Future[bytes] = c.submit(b"never answered")
    c.close()
    with pytest.raises(ClientClosed):
        future.result(5)
    with pytest.raises(ClientClosed):
        c.submit(b"after close")
    assert not client.exists(c.reply_key)


def test_the_async_client_does_the_same(redis_server, queue, client, served) -> None:
    async def main() -> tuple[list[bytes], str]:
        async with AsyncClient(redis_server.url, queue) as c:
            one = await (await c.submit(b"async"))
            many = await asyncio.gather(*await c.submit_many([b"a", b"b", b"c"]))
            with pytest.raises(ResultError, match="unknown op"):
                await asyncio.wait_for(await c.submit(b"x", op="nope"), 60)
        return [one, *many], c.reply_key

    got, reply_key = asyncio.run(asyncio.wait_for(main(), 120))
    assert got == [b"async", b"a", b"b", b"c"]
    assert not client.exists(reply_key)


def test_closing_the_async_client_fails_what_still_waits(redis_server, queue) -> None:
    async def main() -> None:
        c = AsyncClient(redis_server.url, queue)  # no worker: nothing is answered
        waiting = await c.submit(b"never answered")
        await c.close()
        with pytest.raises(ClientClosed):
            await waiting
        with pytest.raises(ClientClosed):
            await c.submit(b"after close")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_tensor_op_served_end_to_end(redis_server, queue, client, start_worker) -> None:
    worker = start_worker("--backend", "cpu", "--op", "user_ops:double")
    worker.wait_ready(client, keys(queue)[0])
    x = np.arange(12, dtype=">f4").reshape(3, 4)  # big-endian: sent little-endian
    with Client(redis_server.url, queue) as c:
        # Given the op itself, the client sends arrays and gives back arrays.
        got = [f.result(60) for f in c.submit_many(list(x), op=user_ops.double)]
        assert all(g.dtype == np.dtype("<f4") and g.shape == (4,) for g in got)
        assert np.array_equal(np.stack(got), x * 2)
        raw = c.submit(x[0].astype("<f4").tobytes(), op="double").result(60)
        assert np.array_equal(np.frombuffer(raw, "<f4"), x[0] * 2), "by name: bytes"
        with pytest.raises(ResultError, match=r"exactly 16 bytes: float32 \(4,\)"):
            c.submit(b"12 bytes....", op=user_ops.double).result(60)


def test_the_persistent_backend_refuses_a_tensor_op_at_start(redis_server, queue) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gpufeed", "worker", "--redis-url", redis_server.url,
         "--queue", queue, "--backend", "persistent", "--emulate-device",
         "--op", "user_ops:double"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "'double' is a tensor op" in run.stderr and "--backend batched" in run.stderr
