"""Scaling out on Redis itself: many workers in one group, and Redis Cluster."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from conftest import WorkerProcess, keys, wait_for_results
from gpufeed.admin.acl import acl_rules
from gpufeed.client import Client
from gpufeed.connect import RedisTarget
from gpufeed.embedded import LocalCluster
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(300)


def drained(worker: WorkerProcess) -> dict[str, int]:
    """What a worker's ingest process says it did, from its JSON log after SIGTERM."""
    assert worker.terminate() == 0
    for line in worker.log().splitlines():
        if line.startswith("{") and json.loads(line)["event"] == "ingest drained":
            event = json.loads(line)
            return {k: event[k] for k in ("answered", "skipped", "read")}
    raise AssertionError(f"no 'ingest drained' event:\n{worker.log()[-3000:]}")


def exactly_one_each(results, ids) -> None:
    assert set(results) == set(ids), f"lost {len(set(ids) - set(results))}"
    duplicated = [i for i in ids if len(results[i]) != 1]
    assert not duplicated, f"{len(duplicated)} messages have more than one result"


def test_four_workers_share_a_group_with_concurrent_reclaims(client, queue, start_worker) -> None:
    # 100 ms batches and a 150 ms visibility timeout: an entry waits in one worker's
    # ring behind the batch computing, then computes, longer than that, so the
    # others reclaim it while that worker still has it. The commit script's
    # ownership check must keep one result per message.
    args = ("--op", "user_ops:model_paced", "--max-batch", "16", "--ring-capacity", "256",
            "--visibility-timeout-ms", "150", "--reclaim-interval-ms", "100",
            "--max-deliveries", "1000", "--log-format", "json")  # fmt: skip
    workers = [start_worker(*args, consumer=f"w{i}") for i in range(4)]
    for w in workers:
        w.wait_ready(client, keys(queue)[0], consumers=len(workers))
    ids = xadd_all(client, keys(queue)[0], [f"m{i}".encode() for i in range(2000)])
    results = wait_for_results(client, queue, len(ids), timeout=180, worker=workers[0])
    exactly_one_each(results, ids)
    assert all(r[0][b"status"] == b"ok" for r in results.values())
    reports = [drained(w) for w in workers]
    assert sum(r["answered"] for r in reports) == len(ids)
    assert all(r["answered"] > 0 for r in reports), reports  # everyone took a share
    reclaims = sum(w.log().count('"reclaimed idle entries"') for w in workers)
    assert reclaims > 0, "the scenario must make workers reclaim each other's entries"


def test_a_worker_does_not_compute_again_what_it_reclaims_from_itself(
    client, queue, start_worker
) -> None:
    # Entries wait in the ring and compute longer than the visibility timeout, so
    # XAUTOCLAIM hands the worker its own entries back while their first copy computes.
    # The worker reclaims when it reads its next batch, as the one computing has
    # waited about one batch time (100 ms) since it was read: more than 60 ms.
    args = ("--op", "user_ops:model_paced", "--max-batch", "16", "--ring-capacity", "256",
            "--visibility-timeout-ms", "60", "--reclaim-interval-ms", "100",
            "--max-deliveries", "1000", "--log-format", "json")  # fmt: skip
    worker = start_worker(*args, consumer="solo")
    worker.wait_ready(client, keys(queue)[0], consumers=1)
    ids = xadd_all(client, keys(queue)[0], [f"m{i}".encode() for i in range(800)])
    results = wait_for_results(client, queue, len(ids), timeout=180, worker=worker)
    exactly_one_each(results, ids)
    assert worker.log().count('"reclaimed idle entries"') > 0, "the scenario must reclaim"
    report = drained(worker)
    assert report == {"answered": len(ids), "skipped": 0, "read": len(ids)}, (
        "every entry read and computed once"
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as local:
        yield local


def test_three_queues_on_a_three_master_cluster_two_workers_each(cluster, start_worker) -> None:
    client = RedisTarget(cluster.url).connect()
    queues = cluster.queue_per_master(f"c{secrets.token_hex(3)}")
    homes = {client.get_node_from_key(keys(q)[0]).port for q in queues}
    assert homes == {node.port for node in cluster.nodes}  # one queue on each master
    args = ("--max-batch", "64", "--log-format", "json")
    workers = {
        q: [start_worker(*args, url=cluster.url, queue_name=q, consumer=f"w{i}") for i in (0, 1)]
        for q in queues
    }
    for q, pair in workers.items():
        for w in pair:
            w.wait_ready(client, keys(q)[0], consumers=2)
    sent = {}
    for q in queues:
        stream = keys(q)[0]
        # data and op on every entry: a cluster client hands the ingest parsed
        # entries, and two fields each must not be mistaken for a flat pair list
        ids = xadd_all(client, stream, [f"{q}-{i}".encode() for i in range(3000)], op="echo")
        good = client.xadd(stream, {"data": "r", "reply_to": f"gpufeed:{{{q}}}:reply:me"})
        bad = client.xadd(stream, {"data": "r", "reply_to": "replies:me"})
        sent[q] = (ids, good, bad)
    for q, (ids, good, bad) in sent.items():
        results = wait_for_results(client, q, len(ids) + 1, worker=workers[q][0])
        exactly_one_each(results, [*ids, bad])
        assert all(results[i][0][b"data"] == f"{q}-{n}".encode() for n, i in enumerate(ids))
        assert results[bad][0][b"status"] == b"error"
        assert b"hash slot" in results[bad][0][b"error"]
        [(_, replied)] = client.xrange(f"gpufeed:{{{q}}}:reply:me")
        assert replied[b"src"] == good and replied[b"status"] == b"ok"
        assert client.xlen(keys(q)[2]) == 1  # the bad reply_to is dead-lettered
        reports = [drained(w) for w in workers[q]]
        assert sum(r["answered"] for r in reports) == len(ids) + 2
        assert all(r["answered"] > 0 for r in reports), reports


def test_least_privilege_users_on_a_cluster(cluster, start_worker) -> None:
    queue = cluster.queue_per_master(f"a{secrets.token_hex(3)}")[0]
    users = {
        "wk": acl_rules("worker", queue, cluster=True),
        "pr": acl_rules("producer", queue, reply="me", cluster=True),
        "no-slots": [r for r in acl_rules("worker", queue, cluster=True) if r != "+cluster|slots"],
    }
    for node in cluster.nodes:
        for name, rules in users.items():
            redis.Redis(port=node.port).acl_setuser(name, enabled=True, passwords=["+pw"])
            redis.Redis(port=node.port).execute_command("ACL", "SETUSER", name, *rules)
    url = {name: cluster.url.replace("//", f"//{name}:pw@") for name in users}
    # Two priority levels: both streams in the queue's slot, read in one pipeline.
    worker = start_worker("--priorities", "2", url=url["wk"], queue_name=queue)
    producer = RedisTarget(url["pr"]).connect()
    reply = f"gpufeed:{{{queue}}}:reply:me"
    ids = xadd_all(producer, keys(queue)[0], [b"x"] * 500)
    xadd_all(producer, keys(queue)[0] + ":1", [b"urgent"] * 300)
    asked = producer.xadd(keys(queue)[0], {"data": "y", "reply_to": reply})
    admin = RedisTarget(cluster.url).connect()
    wait_for_results(admin, queue, len(ids) + 300, worker=worker)
    answered = sorted(f[b"data"] for _, f in admin.xrange(keys(queue)[1]))
    assert answered == [b"urgent"] * 300 + [b"x"] * 500
    for stream in (keys(queue)[0], keys(queue)[0] + ":1"):
        assert admin.xpending(stream, "gpufeed")["pending"] == 0
    deadline = time.monotonic() + 30
    while not producer.xlen(reply) and time.monotonic() < deadline:
        time.sleep(0.05)
    [(_, replied)] = producer.xrange(reply)
    assert replied[b"src"] == asked and replied[b"data"] == b"y"
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.xrange(keys(queue)[1])
    # gpufeed.Client, on the cluster, as that user: its reply stream is "me:TAG".
    with Client(url["pr"], queue, name="me") as c:
        assert [f.result(60) for f in c.submit_many([b"c1", b"c2"])] == [b"c1", b"c2"]
        assert c.submit(b"c3", priority=1).result(60) == b"c3"
    assert not admin.exists(c.reply_key)

    run = subprocess.run(
        [sys.executable, "-m", "gpufeed", "worker", "--redis-url", url["no-slots"],
         "--queue", queue, "--log-format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "lacks +cluster|slots" in run.stderr, run.stderr
