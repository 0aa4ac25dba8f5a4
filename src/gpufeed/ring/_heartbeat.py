"""The heartbeat thread that tells a ring's peer this side is alive."""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Protocol

HEARTBEAT_INTERVAL_S = 0.25


class Beating(Protocol):
    def _beat(self) -> None: ...


class _Heartbeat:
    """One daemon thread per process that stamps every live endpoint's heartbeat.

    A thread, rather than stamping on each ring call, because a side may
    legitimately be busy for seconds (a slow op, a long GPU batch) without
    touching its ring and must not be mistaken for dead.
    """

    def __init__(self) -> None:
        self._endpoints: weakref.WeakSet[Beating] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._pid = 0

    def add(self, endpoint: Beating) -> None:
        with self._lock:
            self._endpoints.add(endpoint)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(
                    target=self._run, name="gpufeed-ring-heartbeat", daemon=True
                ).start()

    def discard(self, endpoint: Beating) -> None:
        with self._lock:
            self._endpoints.discard(endpoint)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_INTERVAL_S)
            with self._lock:
                endpoints = list(self._endpoints)
            for endpoint in endpoints:
                endpoint._beat()


heartbeat = _Heartbeat()
