"""Least-privilege ACL users: the documented rules are enough, and no more than that."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time

import pytest
import redis
import structlog

from conftest import keys, wait_for_results
from gpufeed.admin.acl import acl_rules
from gpufeed.client import AsyncClient, Client
from gpufeed.embedded import RedisServer
from gpufeed.errors import ReplyRefused
from gpufeed.worker.access import check_worker_access
from gpufeed.worker.config import WorkerConfig

pytestmark = pytest.mark.timeout(180)


def make_user(client: redis.Redis, rules: list[str]) -> tuple[str, str]:
    name, password = f"u{secrets.token_hex(4)}", secrets.token_hex(8)
    client.execute_command("ACL", "SETUSER", name, "on", f">{password}", *rules)
    return name, password


def url_for(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def test_worker_and_producer_users_work_with_least_privilege(
    client, redis_server, queue, start_worker
) -> None:
    worker_user = make_user(client, acl_rules("worker", queue))
    producer_user = make_user(client, acl_rules("producer", queue, reply="p1"))
    # Two priority levels: the worker's start-up check probes both streams.
    worker = start_worker("--priorities", "2", url=url_for(redis_server, *worker_user))
    producer = redis.Redis.from_url(url_for(redis_server, *producer_user))
    stream, out, dead = keys(queue)
    reply = f"gpufeed:{{{queue}}}:reply:p1"
    for i in range(20):
        producer.xadd(stream, {"data": f"m{i}", "cid": str(i), "reply_to": reply})
    for i in range(5):
        producer.xadd(stream, {"data": f"plain{i}"})
    producer.xadd(stream, {"op": "no-such-op", "data": "x"})  # an error: a dead letter too
    wait_for_results(client, queue, 6, worker=worker)
    deadline = time.monotonic() + 60
    while producer.xlen(reply) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    replies = producer.xread({reply: "0"}, count=100)[0][1]
    assert sorted(int(f[b"cid"]) for _, f in replies) == list(range(20))
    assert {f[b"data"] for _, f in replies} == {f"m{i}".encode() for i in range(20)}
    # gpufeed.Client, named for the user's reply stream, needs nothing more.
    with Client(url_for(redis_server, *producer_user), queue, name="p1") as producer_client:
        futures = producer_client.submit_many([b"c%d" % i for i in range(10)])
        assert [f.result(60) for f in futures] == [b"c%d" % i for i in range(10)]
        assert producer_client.submit(b"urgent", priority=1).result(60) == b"urgent"
    assert not client.exists(producer_client.reply_key), "the client deleted its reply stream"
    assert client.xlen(dead) == 1 and client.xpending(stream, "gpufeed")["pending"] == 0
    urgent = f"{stream}:1"
    assert client.xlen(urgent) == 1 and client.xpending(urgent, "gpufeed")["pending"] == 0

    # The producer can do nothing else: not read the queue, not write results,
    # not read another producer's replies, not touch another queue.
    denied = [
        lambda: producer.xadd(out, {"src": "forged"}),
        lambda: producer.xrange(stream),
        lambda: producer.xreadgroup("gpufeed", "p", {stream: ">"}),
        lambda: producer.xrange(f"gpufeed:{{{queue}}}:reply:p2"),
        lambda: producer.xrange(f"gpufeed:{{{queue}}}:reply:p2:tag"),
        lambda: producer.xrange(f"gpufeed:{{{queue}}}:reply:p1x"),
        lambda: producer.xadd(f"gpufeed:{{other{queue}}}:in", {"data": "x"}),
        lambda: producer.get("anything"),
        lambda: producer.delete(stream),
    ]
    for attempt in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # The worker's user is confined to the queue's keys and stream commands.
    worker_client = redis.Redis.from_url(url_for(redis_server, *worker_user))
    for attempt in [
        lambda: worker_client.xadd(f"gpufeed:{{other{queue}}}:out", {"src": "x"}),
        lambda: worker_client.set(f"gpufeed:{{{queue}}}:x", "1"),
        lambda: worker_client.flushall(),
        lambda: worker_client.config_get("*"),
    ]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def test_a_reply_to_the_worker_may_not_write_gets_an_error_result(
    client, redis_server, queue, start_worker
) -> None:
    worker = start_worker(url=url_for(redis_server, *make_user(client, acl_rules("worker", queue))))
    stream, _out, dead = keys(queue)
    client.xadd(stream, {"data": "a", "cid": "1", "reply_to": f"outside:{{{queue}}}"})
    client.xadd(stream, {"data": "b", "cid": "2"})
    results = wait_for_results(client, queue, 2, worker=worker)
    by_cid = {f[0][b"cid"]: f[0] for f in results.values()}
    assert by_cid[b"2"][b"status"] == b"ok"
    assert by_cid[b"1"][b"status"] == b"error"
    assert b"cannot write reply_to" in by_cid[b"1"][b"error"]
    assert b"No permissions" in by_cid[b"1"][b"error"]  # the ACL refusal, verbatim
    assert client.xlen(dead) == 1 and client.xpending(stream, "gpufeed")["pending"] == 0
    assert worker.proc.poll() is None


@pytest.mark.parametrize("dropped", ["xautoclaim", "evalsha", "xadd"])
def test_a_worker_missing_a_permission_fails_at_start_naming_it(
    client, redis_server, queue, dropped
) -> None:
    rules = [r for r in acl_rules("worker", queue) if r != f"+{dropped}"]
    url = url_for(redis_server, *make_user(client, rules))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "gpufeed", "worker", "--redis-url", url, "--queue", queue,
         "--log-format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "worker cannot start" in run.stderr
    assert f"+{dropped} on gpufeed:{{{queue}}}:" in run.stderr
    assert "ingest started" not in run.stderr  # no process was started
    assert time.monotonic() - started < 30


def test_the_start_up_check_changes_nothing_in_redis(client, redis_server, queue) -> None:
    config = WorkerConfig(redis_url=redis_server.url, queue=queue, delete_acked=True,
                          metrics_port=9400)  # fmt: skip
    stream, out, dead = keys(queue)
    check_worker_access(config)  # a queue that does not exist yet stays so
    assert not client.exists(stream, out, dead)
    client.xgroup_create(stream, "gpufeed", id="0", mkstream=True)
    client.xadd(stream, {"data": "x"})
    before = client.xinfo_stream(stream, full=True)
    check_worker_access(config)
    assert client.xinfo_stream(stream, full=True) == before  # no consumer, no read, no ack
    assert not client.exists(out, dead)


def test_a_client_whose_user_may_not_trim_still_gets_every_result(
    client, redis_server, queue, start_worker
) -> None:
    """The reader's XTRIM is refused (NOPERM) after every read; the reader goes on,
    says so once, and does not take the refusal for a failed read (which backs the
    reads off, up to a second each)."""
    rules = [r.replace(" +xtrim", "") for r in acl_rules("producer", queue, reply="p3")]
    user = make_user(client, rules)
    worker = start_worker()
    worker.wait_ready(client, keys(queue)[0])
    url = url_for(redis_server, *user)
    with structlog.testing.capture_logs() as logs, Client(url, queue, name="p3") as c:
        for round_ in range(3):
            futures = c.submit_many([b"r%d-%d" % (round_, i) for i in range(50)])
            assert [f.result(60) for f in futures] == [b"r%d-%d" % (round_, i) for i in range(50)]
    events = [e["event"] for e in logs]
    assert events.count("reply stream cannot be trimmed: it grows until the client closes") == 1
    assert "reply reader failed; retrying" not in events


def test_a_client_whose_user_may_not_read_its_replies_fails_at_once_saying_why(
    client, redis_server, queue
) -> None:
    """A producer user made for --reply p5, a client of another name: Redis refuses
    every read of its reply stream, so nothing it waits for could come back. Its
    futures fail with the reason, long before their timeout; no worker is needed."""
    user = make_user(client, acl_rules("producer", queue, reply="p5"))
    url = url_for(redis_server, *user)
    with Client(url, queue, name="not-p5") as c:
        future = c.submit(b"x")
        with pytest.raises(ReplyRefused, match="gpufeed acl producer --reply NAME") as caught:
            future.result(20)
        assert "'not-p5'" in str(caught.value)

    async def main() -> None:
        async with AsyncClient(url, queue, name="not-p5") as c:
            with pytest.raises(ReplyRefused):
                await asyncio.wait_for(await c.submit(b"y"), 20)

    asyncio.run(asyncio.wait_for(main(), 60))
