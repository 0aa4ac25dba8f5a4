"""Creating and attaching POSIX shared-memory segments without surprises.

Two quirks of ``multiprocessing.shared_memory`` matter here:

* Every ``SharedMemory`` object registers its name with Python's resource
  tracker, which unlinks the segment when the *registering* process exits.
  An attaching process must not do that: the creator owns the name. Python
  3.13 has ``track=False``; on 3.11 and 3.12 we suppress the registration by
  hand, under a lock, for the duration of the attach.
* Segments are created with mode 0600 (``SharedMemory._mode``), so only the
  same user can map them. We check that rather than trust it.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing import resource_tracker, shared_memory

_tracker_patch_lock = threading.Lock()


def new_segment_name(prefix: str = "gpufeed") -> str:
    """A fresh, collision-resistant segment name (short enough for macOS's 31)."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


def create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """Create a new 0600 segment of ``size`` bytes; fails if ``name`` exists."""
    shm = shared_memory.SharedMemory(name=name, create=True, size=size)
    if sys.platform.startswith("linux"):
        mode = os.stat(f"/dev/shm/{shm.name}").st_mode & 0o777
        if mode & 0o077:
            os.chmod(f"/dev/shm/{shm.name}", 0o600)
    return shm


@contextmanager
def _untracked() -> Iterator[None]:
    """Keep the resource tracker from adopting a segment we only attach to."""
    with _tracker_patch_lock:
        original = resource_tracker.register

        def register(name: str, rtype: str) -> None:
            if rtype != "shared_memory":
                original(name, rtype)

        resource_tracker.register = register  # type: ignore[assignment]
        try:
            yield
        finally:
            resource_tracker.register = original


def attach_segment(name: str) -> shared_memory.SharedMemory:
    """Map an existing segment without taking ownership of its name."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg,unused-ignore]
    with _untracked():
        return shared_memory.SharedMemory(name=name)


def release_segment(shm: shared_memory.SharedMemory, *, unlink: bool) -> bool:
    """Unmap ``shm`` and, for its creator, remove its name.

    Returns False when the mapping is still exported (a caller kept a NumPy
    view of a slot); the memory is then freed when the last view goes away.
    """
    unmapped = True
    try:
        shm.close()
    except BufferError:
        unmapped = False
    if unlink:
        with suppress(FileNotFoundError):
            shm.unlink()
    return unmapped
