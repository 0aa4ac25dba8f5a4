"""Sleeping and waking across processes: a futex on a shared word, and peer
liveness checks (the fences are in ``order.py``).

The futex is used *shared* (no ``FUTEX_PRIVATE_FLAG``) because the word lives
in a ``MAP_SHARED`` mapping seen by two processes; the kernel keys it by the
page and offset, not by the virtual address, so the two sides may map the
segment at different addresses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import sys
import time

_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower()
)

HAVE_FUTEX = sys.platform.startswith("linux") and _SYS_FUTEX is not None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


if HAVE_FUTEX:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the u32 at ``addr`` equals ``expected``, at most ``timeout_s``.

    The kernel compares the word and queues us atomically, so a wake that comes
    after our last look at the word is never lost: the compare fails and we
    return at once. Spurious returns are fine; callers re-check their condition.
    ctypes releases the GIL for the call, so other threads keep running.
    """
    if not HAVE_FUTEX:
        time.sleep(min(timeout_s, 0.001))
        return
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    rc = _syscall(
        ctypes.c_long(_SYS_FUTEX or 0),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint32(expected & 0xFFFFFFFF),
        ctypes.byref(ts),
        ctypes.c_void_p(None),
        ctypes.c_int(0),
    )
    if rc == -1:
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(err, f"futex wait failed: {os.strerror(err)}")


def futex_wake(addr: int, count: int = 1) -> None:
    """Wake up to ``count`` processes sleeping on the u32 at ``addr``."""
    if not HAVE_FUTEX:
        return
    _syscall(
        ctypes.c_long(_SYS_FUTEX or 0),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAKE),
        ctypes.c_int(count),
        ctypes.c_void_p(None),
        ctypes.c_void_p(None),
        ctypes.c_int(0),
    )


def pid_namespace() -> int:
    """Inode of this process's pid namespace; 0 where it cannot be read."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


# Without /proc (macOS, BSD) every pid's stat file is "not found": liveness then
# comes from kill(pid, 0), which cannot tell a zombie.
_HAVE_PROC = os.path.isdir("/proc/self")


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie.

    A SIGKILLed child stays a zombie until its parent reaps it, and
    ``kill(pid, 0)`` still succeeds on a zombie, so read its state from /proc.
    """
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        return state not in (b"Z", b"X", b"x")
    except FileNotFoundError:
        if _HAVE_PROC:
            return False  # gone (or reaped while we read)
    except OSError:
        pass  # ProcessLookupError mid-read, or /proc hidden from us: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
