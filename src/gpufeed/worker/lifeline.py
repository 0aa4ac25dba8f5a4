"""How a worker's children start and stop with their supervisor.

* **They never outlive it.** A child whose supervisor is gone would go on
  serving the queue with no one watching it, no metrics endpoint, and beside
  the supervisor's successor under the same consumer name. On Linux the kernel
  kills it when the supervisor dies (``PR_SET_PDEATHSIG``); elsewhere a thread
  checks its parent twice a second. SIGKILL loses nothing: what a child held
  is still pending in Redis for the successor, and the rings' shared memory is
  unlinked by the resource tracker of the supervisor that created it.
* **A stop signal sent to the whole process group** (Ctrl-C, ``timeout``,
  ``docker stop`` on a shell, systemd's default KillMode) reaches the
  children as well as the supervisor. The children start with SIGINT and
  SIGTERM blocked (a signal mask survives ``fork`` and ``exec``), so none
  arrives half-way through Python's start-up; each then installs its own
  handling and unblocks them. An ingest process drains on SIGTERM and exits
  with ``EXIT_STOPPED``, which tells the supervisor it was asked to stop, not
  that it died.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_CHECK_S = 0.5


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM while children are started: they inherit the mask.
    A signal that comes meanwhile waits, and reaches the supervisor after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def tie_to_parent(parent_pid: int) -> None:
    """In a child, first thing: die with the supervisor ``parent_pid``; then take the
    stop signals, whose handling the caller has installed."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            _watch_parent(parent_pid)  # refused (a sandbox, say): the thread does it
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # it died before the kernel was told to watch
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="gpufeed-parent-watch", daemon=True).start()
