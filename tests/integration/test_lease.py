"""One consumer name, one live worker (worker/lease.py), against a real server."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import keys
from gpufeed.errors import ConfigError
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.lease import STALE_AFTER_S, ConsumerLease

pytestmark = pytest.mark.timeout(120)


def lease_key(queue: str, consumer: str = "testhost") -> str:
    return f"gpufeed:{{{queue}}}:consumer:{consumer}"


def test_a_second_worker_under_a_live_workers_name_exits_2_naming_both(
    client, queue, start_worker
) -> None:
    first = start_worker("--log-format", "json")
    first.wait_ready(client, keys(queue)[0])
    second = start_worker("--log-format", "json")
    assert second.proc.wait(30) == 2
    (refused,) = second.events("worker cannot start")
    assert "consumer name 'testhost' is held by a live worker" in refused["reason"]
    assert f"pid {first.proc.pid} on {socket.gethostname()}" in refused["reason"]
    assert f"this one is pid {second.proc.pid}" in refused["reason"]
    assert "--consumer" in refused["reason"]
    assert first.proc.poll() is None, "the first one serves on"
    assert first.terminate() == 0
    assert not client.exists(lease_key(queue)), "a clean stop lets go of the name"


def test_a_crashed_workers_successor_starts_at_once(client, queue, start_worker) -> None:
    first = start_worker("--log-format", "json")
    first.wait_ready(client, keys(queue)[0])
    first.kill_group()
    assert client.exists(lease_key(queue)), "a killed worker cannot let go of its name"
    started = time.monotonic()
    second = start_worker("--log-format", "json")
    while not second.events("ingest started"):
        assert time.monotonic() - started < 10 and second.proc.poll() is None, second.log()
        time.sleep(0.05)
    assert second.events("consumer name taken over from a dead worker")


def test_a_name_held_from_another_host_is_taken_over_only_once_its_holder_stops_renewing(
    client, redis_server, queue
) -> None:
    config = WorkerConfig(redis_url=redis_server.url, queue=queue, consumer="shared")
    key = lease_key(queue, "shared")
    client.set(key, "abc other-host - 1234 7", px=60_000)
    renewing = threading.Event()
    renewing.set()

    def renew() -> None:  # a live holder on another host
        n = 8
        while renewing.is_set():
            client.set(key, f"abc other-host - 1234 {n}", px=60_000)
            n += 1
            time.sleep(0.5)

    holder = threading.Thread(target=renew, daemon=True)
    holder.start()
    with pytest.raises(ConfigError, match="held by a live worker \\(pid 1234 on other-host\\)"):
        ConsumerLease(client, config).acquire()
    renewing.clear()
    holder.join()
    started = time.monotonic()
    lease = ConsumerLease(client, config)
    lease.acquire()  # the holder stopped renewing: taken over after a few seconds
    assert STALE_AFTER_S <= time.monotonic() - started < STALE_AFTER_S + 3
    assert client.get(key) == str(lease.mine).encode()


def test_a_name_held_by_a_dead_process_of_this_host_is_taken_over_at_once(
    client, redis_server, queue
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    config = WorkerConfig(redis_url=redis_server.url, queue=queue, consumer="solo")
    here = ConsumerLease(client, config).mine  # this host, boot and pid namespace
    client.set(lease_key(queue, "solo"), f"abc {here.host} {here.place} {gone.stdout.strip()} 3")
    started = time.monotonic()
    ConsumerLease(client, config).acquire()
    assert time.monotonic() - started < 1


def test_a_worker_whose_name_was_taken_over_stops_with_exit_2(client, queue, start_worker) -> None:
    worker = start_worker("--log-format", "json")
    worker.wait_ready(client, keys(queue)[0])
    client.set(lease_key(queue), "xyz other-host - 99 0", px=60_000)  # as if it looked dead
    assert worker.proc.wait(30) == 2
    assert worker.events("another worker took over this worker's consumer name; stopping")
    assert client.get(lease_key(queue)) == b"xyz other-host - 99 0", "the new holder keeps it"


def test_a_server_that_lost_recent_writes_does_not_cost_the_worker_its_name(
    client, redis_server, queue
) -> None:
    """Restarted from an older snapshot of its data, the server may hold an earlier
    renewal of the lease, or none: still this worker's."""
    config = WorkerConfig(redis_url=redis_server.url, queue=queue, consumer="w")
    lease = ConsumerLease(client, config)
    lease.acquire()
    older = str(lease.mine)
    lease.renew()
    lease.renew()
    client.set(lease.key, older)  # two renewals lost
    lease.renew()
    assert not lease.lost and client.get(lease.key) == str(lease.mine).encode()
    client.delete(lease.key)  # the key lost altogether
    lease.renew()
    assert not lease.lost and client.get(lease.key) == str(lease.mine).encode()
    client.set(lease.key, "other other-host - 5 0")
    lease.renew()
    assert lease.lost


def test_the_same_host_name_in_another_pid_namespace_is_not_taken_over_at_once(
    client, redis_server, queue
) -> None:
    """Containers sharing a host name (host networking): the holder's pid means nothing
    here, so it must show it is dead by not renewing."""
    config = WorkerConfig(redis_url=redis_server.url, queue=queue, consumer="c")
    here = ConsumerLease(client, config).mine
    client.set(lease_key(queue, "c"), f"abc {here.host} other:1 1 0", px=60_000)
    started = time.monotonic()
    ConsumerLease(client, config).acquire()
    assert time.monotonic() - started >= STALE_AFTER_S


def test_a_lease_key_of_another_type_is_named(client, redis_server, queue) -> None:
    config = WorkerConfig(redis_url=redis_server.url, queue=queue, consumer="t")
    client.xadd(lease_key(queue, "t"), {"src": "x"})
    with pytest.raises(ConfigError, match=r"consumer:t holds another type of value.*delete it"):
        ConsumerLease(client, config).acquire()
