"""Memory fences for data handed to another process (or a device) with plain stores.

The rings and the persistent queue publish the same way: the payload first
(slot bytes, a request), then a word that says it is there (a ring cursor, a
READY word); the reader loads the word, then the payload. Nothing in Python or
NumPy orders those accesses for another CPU core, so the hardware's model
decides:

* x86-64 is TSO: stores become visible in program order and loads are not
  reordered with earlier loads, so publishing needs no fence, and
  ``release_fence``/``acquire_fence`` are not even called there;
* AArch64 (Grace Hopper, Grace Blackwell) and POWER are weakly ordered: the
  payload stores need a fence before the word's store (release), and the word's
  load a fence before the payload loads (acquire), else a reader can see the
  word and stale bytes. CPython has no fence of its own, so these call
  libatomic's ``atomic_thread_fence`` (GCC's runtime library, ``libatomic1``;
  ``dmb ish`` on AArch64) through ctypes: once per batch published or cursor
  read, never per slot.

``full_fence`` is the StoreLoad fence of the rings' sleep/wake handshake,
which even x86-64 needs (its store buffer can hold a store past a later load).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Callable

from gpufeed.errors import ConfigError

STRONGLY_ORDERED = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}
_SEQ_CST = 5  # memory_order_seq_cst in C11's enum


def atomic_fence() -> Callable[[], None]:
    """libatomic's ``atomic_thread_fence(memory_order_seq_cst)`` as a function, or
    ``ConfigError`` saying what to install."""
    path = ctypes.util.find_library("atomic")
    if path is None:
        raise ConfigError(
            f"gpufeed needs libatomic on {platform.machine()} (a weakly ordered CPU) for the "
            "memory fences of its shared-memory rings: install GCC's runtime library "
            "(apt-get install libatomic1, dnf install libatomic)"
        )
    fence = ctypes.CDLL(path).atomic_thread_fence
    fence.argtypes = [ctypes.c_int]
    fence.restype = None
    return lambda: fence(_SEQ_CST)


# Acquiring and releasing an uncontended threading.Lock executes a locked
# read-modify-write on x86-64 (lock cmpxchg/xadd, via sem_trywait/sem_post on
# 3.11-3.12 and PyMutex on 3.13), which drains the store buffer: every store
# before it is visible before any load after it. On a weakly ordered CPU a
# lock's acquire and release are not a full fence, so there libatomic's is used.
_fence_lock = threading.Lock()


def _lock_fence() -> None:
    _fence_lock.acquire()
    _fence_lock.release()


def check_fences() -> None:
    """``ConfigError`` if this CPU needs fences and they cannot be had."""
    if not STRONGLY_ORDERED:
        atomic_fence()


def _missing_fence() -> None:
    atomic_fence()  # raises ConfigError, saying what to install


def _weak_fence() -> Callable[[], None]:
    try:
        return atomic_fence()
    except ConfigError:
        return _missing_fence  # fails where a ring is used, not where gpufeed is imported


if STRONGLY_ORDERED:
    full_fence: Callable[[], None] = _lock_fence
    release_fence: Callable[[], None] | None = None  # None: not needed, not called
    acquire_fence: Callable[[], None] | None = None
else:
    full_fence = release_fence = acquire_fence = _weak_fence()
