"""How a worker's child processes end, and how the supervisor words it."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from gpufeed.errors import InternalError, RingCorrupt

log = structlog.get_logger()

# A child that finds one of its rings damaged exits with this code. The
# supervisor then rebuilds every ring, as after any crash: nothing is lost,
# because whatever was in the rings is still pending in Redis.
EXIT_RING_CORRUPT = 3
# The compute process lost its GPU (a kernel faulted or trapped, which leaves
# the CUDA context unusable) and recorded what it held in the quarantine.
EXIT_DEVICE_LOST = 4
# A child found one of gpufeed's own invariants broken (``InternalError``).
EXIT_INTERNAL = 5
# An ingest process drained and stopped because it was sent SIGTERM (often with
# the whole process group, the supervisor included): asked to stop, not dead.
EXIT_STOPPED = 6


@contextmanager
def exit_on_known_failures(*rings: str) -> Iterator[None]:
    """Turn ``RingCorrupt`` into one error line and ``EXIT_RING_CORRUPT``, and an
    ``InternalError`` (a result out of order, say) into one and ``EXIT_INTERNAL``.

    Not a traceback: both are events the worker recovers from (the supervisor
    rebuilds the rings and restarts the children; whatever they held is still
    pending in Redis), and the line says what was found.
    """
    try:
        yield
    except RingCorrupt as exc:
        log.error(
            "ring corrupt; exiting so that the supervisor rebuilds the rings",
            rings=list(rings), field=exc.field, detail=exc.detail,
        )  # fmt: skip
        sys.exit(EXIT_RING_CORRUPT)
    except InternalError as exc:
        log.error(
            "internal error; exiting so that the supervisor starts afresh",
            kind=type(exc).__name__, error=str(exc), rings=list(rings),
        )  # fmt: skip
        sys.exit(EXIT_INTERNAL)


# Signals a process gets for its own fault (or its own abort()): an entry can cause
# them, in an op or in a library it calls. SIGKILL and SIGTERM come from outside (an
# operator, a container runtime, the out-of-memory killer).
_FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                            signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP})  # fmt: skip
# Exits that are nobody's entry's doing: a damaged ring, and a lost GPU, which has a
# quarantine of its own (worker/quarantine.py).
_NOT_AN_ENTRYS = frozenset({0, EXIT_RING_CORRUPT, EXIT_DEVICE_LOST, EXIT_STOPPED})


def may_be_an_entrys_doing(code: int | None) -> bool:
    """Whether a child that ended with ``code`` may have been killed by an entry it
    held: a fault signal, or an exit other than the known ones (an uncaught
    ``MemoryError``, an internal error an entry keeps provoking)."""
    if code is None or code in _NOT_AN_ENTRYS:
        return False
    if code < 0:
        return -code in _FAULT_SIGNALS
    return True


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code == EXIT_RING_CORRUPT:
        return "found a ring corrupt"
    if code == EXIT_DEVICE_LOST:
        return "lost its GPU (its messages are quarantined)"
    if code == EXIT_INTERNAL:
        return "found an internal error (a bug; see its log line)"
    if code == EXIT_STOPPED:
        return "stopped on request (SIGTERM)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
