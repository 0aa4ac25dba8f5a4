"""Running ``gpufeed worker`` as a child process: for the demo, the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from gpufeed.errors import ProcessFailed


@contextlib.contextmanager
def worker_process(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``gpufeed worker`` in its own session, logging to ``log_path``; drained on exit."""
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpufeed", "worker", *args],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def log_events(log_path: Path, event: str) -> Iterator[dict[str, Any]]:
    """The ``event`` records of a worker's JSON log (``--log-format json``, or the
    default when its output is a file), in order."""
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record: dict[str, Any] = json.loads(line)
            if record.get("event") == event:
                yield record


def wait_for_consumers(
    client: redis.Redis, stream: str, count: int, proc: subprocess.Popen[bytes], log_path: Path
) -> None:
    """Wait until the worker's ingest processes have joined the group (read once)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessFailed(f"worker exited at start:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(redis.ResponseError):
            groups: Any = client.xinfo_groups(stream)
            if groups and int(groups[0]["consumers"]) >= count:
                return
        time.sleep(0.05)
    raise ProcessFailed("worker did not start reading within 60 s")
