"""Real Redis servers and real worker processes for the integration and chaos tests."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gpufeed.embedded import RedisServer
from gpufeed.loadgen.launch import log_events

# Ops the worker subprocesses load (--op user_ops:NAME) live beside the integration tests.
TESTS_DIR = Path(__file__).parent / "integration"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def queue() -> str:
    return f"t{secrets.token_hex(4)}"


def keys(queue: str) -> tuple[str, str, str]:
    return (f"gpufeed:{{{queue}}}:in", f"gpufeed:{{{queue}}}:out", f"gpufeed:{{{queue}}}:dead")


class WorkerProcess:
    """``gpufeed worker`` as a child in its own process group, logging to a file."""

    def __init__(
        self, url: str, queue: str, log_dir: Path, *args: str, consumer: str = "testhost"
    ) -> None:
        self.log_path = log_dir / f"worker-{secrets.token_hex(3)}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpufeed", "worker", "--redis-url", url, "--queue", queue,
             "--consumer", consumer, *args],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str) -> list[dict[str, Any]]:
        """The ``event`` records of the log, oldest first (``--log-format json``)."""
        return list(log_events(self.log_path, event))

    def records(self) -> list[dict[str, Any]]:
        """Every JSON record of the log; a line that is not one (a traceback) as such."""
        out: list[dict[str, Any]] = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line, "level": "error"})
        return out

    def wait_ready(self, client: redis.Redis, stream: str, consumers: int = 1) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited:\n{self.log()}"
            try:
                groups: Any = client.xinfo_groups(stream)
                names = {c["name"] for c in client.xinfo_consumers(stream, "gpufeed")}
                if groups and len(names) >= consumers:
                    return
            except redis.ResponseError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"worker never started reading:\n{self.log()}")

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        """SIGKILL the supervisor and every child it started (they share its group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(30)
        self.kill_group()
        self._log.close()


@pytest.fixture
def start_worker(redis_server: RedisServer, tmp_path: Path, queue: str):
    started: list[WorkerProcess] = []

    def start(
        *args: str,
        url: str | None = None,
        queue_name: str | None = None,
        consumer: str = "testhost",
    ) -> WorkerProcess:
        worker = WorkerProcess(
            url or redis_server.url, queue_name or queue, tmp_path, *args, consumer=consumer
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def send_around_poison(
    client: redis.Redis, stream: str, before: int, after: int
) -> tuple[list[bytes], bytes]:
    """``before`` good messages, one whose payload starts with b"poison", ``after`` more:
    (the good ones' ids, the poison's id)."""
    from gpufeed.loadgen.produce import xadd_all

    ids = xadd_all(client, stream, [b"fine %d" % i for i in range(before)])
    poison: bytes = client.xadd(stream, {"data": b"poison pill"})
    ids += xadd_all(client, stream, [b"fine again %d" % i for i in range(after)])
    return ids, poison


def results_by_src(client: redis.Redis, queue: str) -> dict[bytes, list[dict[bytes, bytes]]]:
    out: dict[bytes, list[dict[bytes, bytes]]] = {}
    for _id, fields in client.xrange(keys(queue)[1]):
        out.setdefault(fields[b"src"], []).append(fields)
    return out


def wait_for_results(
    client: redis.Redis, queue: str, count: int, timeout: float = 120, worker: Any = None
) -> dict[bytes, list[dict[bytes, bytes]]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.xlen(keys(queue)[1]) >= count:
            return results_by_src(client, queue)
        if worker is not None:
            assert worker.proc.poll() is None, f"worker exited:\n{worker.log()}"
        time.sleep(0.05)
    got = client.xlen(keys(queue)[1])
    log = worker.log()[-3000:] if worker is not None else ""
    raise AssertionError(f"{got} of {count} results after {timeout} s\n{log}")


# A scrape: each sample's value by its name and labels.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """A worker's metrics endpoint: each sample's value by its name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def spawned_children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():  # not the resource tracker
                        found.append(int(entry))
    return found


@pytest.fixture
def weak_fences(monkeypatch) -> dict[str, int]:
    """The fences a weakly ordered CPU (AArch64) uses on the ring's data path, switched
    on here (libatomic's full fence) and counted by kind."""
    from gpufeed.ring import order

    fence = order.atomic_fence()
    calls = {"release": 0, "acquire": 0}

    def counted(kind: str) -> Callable[[], None]:
        def call() -> None:
            calls[kind] += 1
            fence()

        return call

    monkeypatch.setattr(order, "release_fence", counted("release"))
    monkeypatch.setattr(order, "acquire_fence", counted("acquire"))
    return calls


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    """A chaos row whose test then failed says so in the report."""
    outcome = yield
    result = outcome.get_result()
    report = sys.modules.get("report")
    if report is not None and result.when == "call" and result.failed:
        report.mark_failed(item.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """After a run with chaos scenarios, print their report (and write it if asked)."""
    report = sys.modules.get("report")  # tests/chaos/report.py, imported by the scenarios
    if report is not None and report.ROWS:
        terminalreporter.write_line("")
        terminalreporter.write(report.render())
        report.write_if_asked()
