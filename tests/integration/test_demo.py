"""``gpufeed demo``, the command behind ``make demo``, end to end on an embedded server."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(240)
def test_the_demo_checks_every_result_and_names_its_backend() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpufeed", "demo", "--messages-per-op", "500"],
        capture_output=True, text=True, timeout=220, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED: every message has exactly one correct result" in done.stdout
    # auto picks the backend; the demo reports the one the worker chose
    assert re.search(r"backend: (cpu|batched|persistent)\)", done.stdout), done.stdout
    for op in ("dense", "echo", "sha256", "vector_add"):
        assert f"│ {op}" in done.stdout


@pytest.mark.timeout(240)
def test_the_demo_on_your_own_server_says_how_it_goes_and_leaves_nothing_behind(
    redis_server, client
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpufeed", "demo", "--messages-per-op", "300",
         "--redis-url", redis_server.url],
        capture_output=True, text=True, timeout=220, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: worker up, backend" in done.stderr
    assert "demo: sent 300 sha256 messages" in done.stderr
    assert list(client.scan_iter("gpufeed:{demo-*", count=1000)) == []
