"""The hot-loop GC tuning spaces collections out but still frees cyclic garbage."""

from __future__ import annotations

import subprocess
import sys

# Run in a fresh interpreter: gc.freeze() and the thresholds are process-wide.
PROGRAM = """
import gc, weakref
from gpufeed.worker.gctune import YOUNG_THRESHOLD, tune_for_hot_loop

tune_for_hot_loop()
before = gc.get_count()[0]

class Node:
    pass

freed = []
# Reference cycles no refcount can free: only the collector can.
for i in range(3 * YOUNG_THRESHOLD // 2):
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    if i % 1000 == 0:
        weakref.finalize(a, freed.append, i)
    del a, b
print(gc.isenabled(), before < 10, len(freed) > 0)
"""


def test_cycles_are_still_collected_without_an_explicit_collect() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    # the collector stays on; start-up objects were frozen out of the young
    # generation; cycles made in the loop were found by a young collection
    assert out == ["True", "True", "True"]


PAUSES = """
import gc, json
from gpufeed.worker import metrics
from gpufeed.worker.gctune import tune_for_hot_loop

heard = []
tune_for_hot_loop(on_pause=lambda *report: heard.append(report))
metrics.SLOW_GC_S = 0.0  # every collection counts as slow here: its log line is checked
tune_for_hot_loop(on_pause=metrics.gc_paused)
junk = [[] for _ in range(200_000)]  # a full collection has this much to walk
gc.collect()
(generation, seconds, collected), = heard[-1:]
from prometheus_client import REGISTRY
count = REGISTRY.get_sample_value("gpufeed_gc_pause_seconds_count", {"generation": "2"}) >= 1
print(json.dumps([generation, seconds > 0, count]))
"""


def test_each_collection_is_timed_counted_and_logged_when_long() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PAUSES], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert "[2, true, true]" in lines, done.stdout
    assert any("garbage collection stalled the process" in line and "generation=2" in line
               for line in lines), done.stdout  # fmt: skip
