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
  children as well as the supervisor. An ingest process drains on SIGTERM
  and exits with ``EXIT_STOPPED``, which tells the supervisor it was asked to
  stop, not that it died; the supervisor, stopping too, drains. (A child
  still starting up when the signal comes dies of it; the supervisor is
  stopping then, and says so, not that a child died. A signal mask would not
  help: multiprocessing's ``spawn`` starts children with an empty one.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_CHECK_S = 0.5


def tie_to_parent(parent_pid: int) -> None:
    """In a child, first thing: die with the supervisor ``parent_pid``."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            _watch_parent(parent_pid)  # refused (a sandbox, say): the thread does it
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # it died before the kernel was told to watch
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="gpufeed-parent-watch", daemon=True).start()
