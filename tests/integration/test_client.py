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
from gpufeed.errors import ClientClosed, ConfigError, GpufeedError, ResultError, ResultExpired
from gpufeed.ops import Tensor, TensorOp


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
        assert c.reply_key.startswith(f"gpufeed:{{{queue}}}:reply:{c.name}:")
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


def test_a_result_the_client_cannot_decode_fails_only_its_own_future(
    redis_server, queue, client, start_worker
) -> None:
    """The worker serves another version of the op (other output shape): that
    future fails saying so, and the client's reader goes on."""
    worker = start_worker("--backend", "cpu", "--op", "user_ops:double")
    worker.wait_ready(client, keys(queue)[0])
    other = TensorOp("double", lambda x: x, Tensor("float32", (4,)), Tensor("float32", (3,)))
    x = np.ones(4, "float32")
    with Client(redis_server.url, queue) as c:
        with pytest.raises(ResultError, match="does not fit the op's output"):
            c.submit(x, op=other).result(60)
        assert np.array_equal(c.submit(x, op=user_ops.double).result(60), x * 2)
        with pytest.raises(ConfigError, match=r"takes float32, got int32"):
            c.submit(np.ones(4, "int32"), op=user_ops.double)


def test_a_cancelled_future_leaves_the_others_and_close_alone(
    redis_server, queue, client, start_worker
) -> None:
    with Client(redis_server.url, queue) as c:
        first, second = c.submit(b"one"), c.submit(b"two")  # no worker yet
        assert first.cancel()
        worker = start_worker("--backend", "cpu", "--op", "echo")
        worker.wait_ready(client, keys(queue)[0])
        assert second.result(60) == b"two"
        third = c.submit(b"three")
        assert third.cancel() or third.result(60) == b"three"
        assert c.submit(b"four").result(60) == b"four"
    assert first.cancelled()
    assert not client.exists(c.reply_key)


def test_clients_of_one_name_keep_their_own_results(redis_server, queue, client, served) -> None:
    """Two processes of one ACL user run clients of one name: neither trims nor
    deletes the other's results."""
    with Client(redis_server.url, queue, name="shared") as a, \
            Client(redis_server.url, queue, name="shared") as b:  # fmt: skip
        assert a.reply_key != b.reply_key
        fa = a.submit_many([b"a%d" % i for i in range(300)])
        fb = b.submit_many([b"b%d" % i for i in range(300)])
        assert [f.result(60) for f in fb] == [b"b%d" % i for i in range(300)]
        b.close()
        assert [f.result(60) for f in fa] == [b"a%d" % i for i in range(300)]
        assert a.submit(b"after b closed").result(60) == b"after b closed"


def test_concurrent_first_submits_start_one_reader(redis_server, queue, served) -> None:
    async def main() -> list[bytes]:
        async with AsyncClient(redis_server.url, queue) as c:
            futures = await asyncio.gather(*(c.submit(b"%d" % i) for i in range(20)))
            readers = [t for t in asyncio.all_tasks() if "AsyncClient._read" in repr(t)]
            assert len(readers) == 1
            return list(await asyncio.gather(*futures))

    assert asyncio.run(asyncio.wait_for(main(), 120)) == [b"%d" % i for i in range(20)]


@pytest.mark.parametrize("device", [["--emulate-device"], []], ids=["emulated", "as-is"])
def test_the_persistent_backend_refuses_a_tensor_op_at_start(redis_server, queue, device) -> None:
    """With or without a GPU here: the combination is what cannot work."""
    run = subprocess.run(
        [sys.executable, "-m", "gpufeed", "worker", "--redis-url", redis_server.url,
         "--queue", queue, "--backend", "persistent", *device, "--op", "user_ops:double"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "'double' is a tensor op" in run.stderr and "--backend batched" in run.stderr
