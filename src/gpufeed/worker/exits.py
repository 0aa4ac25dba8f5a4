"""How a worker's child processes end, and how the supervisor words it."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from gpufeed.errors import RingCorrupt

log = structlog.get_logger()

# A child that finds one of its rings damaged exits with this code. The
# supervisor then rebuilds every ring, as after any crash: nothing is lost,
# because whatever was in the rings is still pending in Redis.
EXIT_RING_CORRUPT = 3
# The compute process lost its GPU (a kernel faulted or trapped, which leaves
# the CUDA context unusable) and recorded what it held in the quarantine.
EXIT_DEVICE_LOST = 4


@contextmanager
def exit_on_ring_corruption(*rings: str) -> Iterator[None]:
    """Turn ``RingCorrupt`` into one error line and ``EXIT_RING_CORRUPT``.

    Not a traceback: a damaged ring is an event the worker recovers from, and
    the line names the rings this process used and the field found bad.
    """
    try:
        yield
    except RingCorrupt as exc:
        log.error(
            "ring corrupt; exiting so that the supervisor rebuilds the rings",
            rings=list(rings), field=exc.field, detail=exc.detail,
        )  # fmt: skip
        sys.exit(EXIT_RING_CORRUPT)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code == EXIT_RING_CORRUPT:
        return "found a ring corrupt"
    if code == EXIT_DEVICE_LOST:
        return "lost its GPU (its messages are quarantined)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
