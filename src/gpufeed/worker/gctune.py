"""Python's cyclic garbage collector, tuned for the worker's hot loops.

Every XREADGROUP reply becomes thousands of short-lived containers (hiredis
builds a list per entry and per field pair; packing and commit arguments
add more). Reference counting frees them as soon as a batch is packed or
committed, and none of them is part of a cycle, but each still counts
towards the collector's young-generation threshold: at the default of 700
net allocations, one 1000-entry read sets off several young collections,
and every hundredth of those a full one that walks every object imported
at start-up. In ``bench e2e`` that scanning came to about 0.5 us of the
worker's CPU per message (ingest and compute processes), all of it finding
nothing.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

# Net container allocations before a young collection: large enough that a
# read, its packing and its commit fit between two collections, small enough
# that cyclic garbage from rare paths (an exception's traceback after a lost
# connection) is still found within a few batches.
YOUNG_THRESHOLD = 50_000


# Called after each collection with its generation, length in seconds and the number
# of objects it freed.
PauseReport = Callable[[int, float, int], None]


class _PauseTimer:
    """A ``gc.callbacks`` entry: a collection stops the whole process (every thread
    waits for the GIL), so its length is a stall the worker itself causes."""

    def __init__(self, report: PauseReport) -> None:
        self.report = report
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.report(info["generation"], time.perf_counter() - self.started, info["collected"])


def tune_for_hot_loop(on_pause: PauseReport | None = None) -> None:
    """Call once a process has finished starting, before its loop.

    ``gc.freeze`` moves everything alive now (modules, config, clients) to the
    permanent generation, which collections never scan again; the raised
    threshold spaces collections out. The older generations' thresholds stay
    relative to the young one, so they slow down alike. ``on_pause`` hears of every
    collection that follows (rare, at this threshold).
    """
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD)
    if on_pause is not None:
        gc.callbacks.append(_PauseTimer(on_pause))
