"""Redis dies under a running worker.

With ``appendfsync always`` a crashed server comes back with every write it
acknowledged: nothing is lost and nothing answered twice. With ``everysec``
a *process* crash loses nothing either (the writes are in the page cache);
a *machine* crash loses up to the last second of writes. That is emulated
by rolling the append-only files back to a copy taken earlier. Inputs
acknowledged after the copy are gone (producers must be ready to resend),
but a result and its acknowledgement vanish together (one script call is one
MULTI/EXEC in the AOF), so no message is answered twice.
"""

from __future__ import annotations

import shutil
import time

import pytest
import redis
from harness import losses_and_duplicates, settle
from report import Row, record, sized

from conftest import WorkerProcess, keys
from gpufeed.embedded import RedisServer
from gpufeed.loadgen.produce import xadd_all

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]
# A slow op stretches the run, so the server dies while batches are in flight.
ARGS = ("--op", "user_ops:slow_echo", "--max-batch", "64")


def test_redis_killed_twice_with_appendfsync_always(queue, tmp_path) -> None:
    n = sized(10_000, 100_000)
    started = time.monotonic()
    with RedisServer(appendonly=True, fsync="always") as server:
        client = redis.Redis.from_url(server.url)
        ids = xadd_all(client, keys(queue)[0], [b"a%d" % i for i in range(n)])
        worker = WorkerProcess(server.url, queue, tmp_path, *ARGS)
        try:
            for pause in (1.5, 2.0):
                time.sleep(pause)
                server.kill()  # SIGKILL: no shutdown save, only what was fsynced
                server.start()
            settle(client, queue, n, worker, timeout=600)
            lost, duplicated = losses_and_duplicates(client, queue, ids)
        finally:
            worker.stop()
    record(Row("Redis SIGKILLed twice, appendfsync always", n, lost, duplicated,
               time.monotonic() - started, "restarted on the same AOF"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)


def test_a_machine_crash_with_appendfsync_everysec(queue, tmp_path) -> None:
    n, late = sized(10_000, 100_000), 1_000
    started = time.monotonic()
    with RedisServer(appendonly=True, fsync="everysec") as server:
        client = redis.Redis.from_url(server.url)
        ids = xadd_all(client, keys(queue)[0], [b"e%d" % i for i in range(n)])
        # Entries answered after the copy are pending again once it is restored, and
        # the worker cannot tell (its client reconnected on its own); the reclaimer
        # takes them back after the visibility timeout, shortened here from 30 s.
        worker = WorkerProcess(
            server.url, queue, tmp_path, *ARGS, "--visibility-timeout-ms", "3000"
        )
        try:
            time.sleep(1.5)
            # What the disk holds at this moment; everything after it is the
            # unsynced tail a power loss takes with it.
            shutil.copytree(server.dir / "appendonlydir", tmp_path / "on-disk")
            acked_late = xadd_all(client, keys(queue)[0], [b"late"] * late)
            time.sleep(1.5)
            server.kill()
            shutil.rmtree(server.dir / "appendonlydir")
            shutil.copytree(tmp_path / "on-disk", server.dir / "appendonlydir")
            server.start()
            survivors = [i for i, _ in client.xrange(keys(queue)[0])]
            settle(client, queue, len(survivors), worker, timeout=600)
            lost, duplicated = losses_and_duplicates(client, queue, survivors)
        finally:
            worker.stop()
    gone = len(set(ids + acked_late) - set(survivors))
    record(Row("machine crash emulated, appendfsync everysec (AOF rolled back 1.5 s)",
               n + late, gone, duplicated, time.monotonic() - started,
               f"lost: inputs acked after the copy; {lost} survivors unanswered"))  # fmt: skip
    assert set(ids) <= set(survivors)  # written before the copy: kept
    assert gone == late  # exactly the writes after it: lost
    assert (lost, duplicated) == (0, 0)  # every survivor answered exactly once
