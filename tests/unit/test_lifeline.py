"""A worker's children die with their supervisor (worker/lifeline.py). Real processes:
what is tested is the OS's part."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gpufeed.ring import process_alive

pytestmark = pytest.mark.timeout(60)

# A parent that starts a child tied to it, prints the child's pid, and dies.
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(1.0)  # long enough for the child to tie itself
os._exit(0)
"""
CHILD = {
    "kernel": "import sys, time\nfrom gpufeed.worker.lifeline import tie_to_parent\n"
              "tie_to_parent(int(sys.argv[1]))\ntime.sleep(60)",
    "thread": "import sys, time\nfrom gpufeed.worker.lifeline import _watch_parent\n"
              "_watch_parent(int(sys.argv[1]))\ntime.sleep(60)",
}  # fmt: skip


@pytest.mark.parametrize("how", ["kernel", "thread"])
def test_a_child_dies_within_a_second_of_its_parent(how: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD[how]], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert parent.wait(10) == 0
        died = time.monotonic()
        while process_alive(child) and time.monotonic() - died < 5:
            time.sleep(0.02)
        assert not process_alive(child), "the child outlived its parent"
        assert time.monotonic() - died < 1.5
    finally:
        if process_alive(child):
            subprocess.run(["kill", "-9", str(child)], check=False)
