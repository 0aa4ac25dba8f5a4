"""A mapped ring segment: the header validated on attach, the control words and
the slot array. Who owns the name (the creator) and who only maps it."""

from __future__ import annotations

import os
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

from gpufeed.errors import ConfigError, RingCorrupt, RingError
from gpufeed.ring import _header as L
from gpufeed.ring import _shm, order

SlotArray = npt.NDArray[np.uint8]


SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory (a tmpfs)


def ring_bytes(capacity: int, slot_bytes: int) -> int:
    """The shared memory one ring of ``capacity`` slots of ``slot_bytes`` takes."""
    return L.HEADER_LEN + capacity * slot_bytes


def check_shm_room(nbytes: int, what: str = "a ring") -> None:
    """``ConfigError`` unless ``SHM_DIR`` has ``nbytes`` free.

    A segment is created sparse, so creating it succeeds whatever its size;
    a page that does not fit is only found when first touched, and that is a
    SIGBUS, not an error. Docker gives a container 64 MiB of /dev/shm unless
    told otherwise.
    """
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return  # no /dev/shm to ask: the system decides
    free = stat.f_bavail * stat.f_frsize
    if nbytes > free:
        raise ConfigError(
            f"{what} need{'s' if what == 'a ring' else ''} {nbytes / 2**20:,.1f} MiB of shared "
            f"memory ({SHM_DIR}) and {free / 2**20:,.1f} MiB are free: use smaller rings "
            "(--ring-capacity, --slot-bytes; the benchmarks' own options), or give the "
            "container more shared memory (docker run --shm-size, shm_size in "
            "docker-compose.yml)"
        )


class RingNotFound(RingError, FileNotFoundError):
    """No ring segment exists under the given name."""


def _mapped(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    if buf is None:  # typeshed: None once closed
        raise RingError(f"segment {shm.name} is not mapped")
    return buf


class RingSegment:
    """One mapped ring: validated header, control words and the slot array.

    The creator owns the name and unlinks it on :meth:`close`; attachers only
    unmap. Producers and consumers are built on a segment.
    """

    def __init__(self, shm: SharedMemory, owner: bool) -> None:
        self._shm: SharedMemory | None = shm
        self._name: str = shm.name
        self.owner = owner
        buf = _mapped(shm)
        try:
            self.geometry = L.decode_fixed(buf, shm.size)
            self._header: memoryview = buf[: L.HEADER_LEN]
            self.words: memoryview[int] = self._header.cast("Q")
            L.check_cursors(self.words[L.W_HEAD], self.words[L.W_TAIL], self.geometry.capacity)
            self._fixed = bytes(self._header[: L.FIXED_LEN + 8])
        except BaseException:
            self._release_views()
            _shm.release_segment(shm, unlink=False)
            raise
        self.capacity = self.geometry.capacity
        self.slot_bytes = self.geometry.slot_bytes
        self.slots: SlotArray = np.ndarray(
            (self.capacity, self.slot_bytes), dtype=np.uint8, buffer=buf, offset=L.HEADER_LEN
        )
        self.slots_readonly: SlotArray = self.slots.view()
        self.slots_readonly.flags.writeable = False
        self.base_address = int(self.slots.ctypes.data) - L.HEADER_LEN

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def create(cls, *, capacity: int, slot_bytes: int, name: str | None = None) -> RingSegment:
        """Create a new ring segment (mode 0600) and initialise its header."""
        L.check_geometry(capacity, slot_bytes)
        order.check_fences()
        geometry = L.RingGeometry(
            capacity=capacity,
            slot_bytes=slot_bytes,
            creator_pid=os.getpid(),
            created_ns=time.time_ns(),
        )
        check_shm_room(geometry.total_len)
        shm = _shm.create_segment(name or _shm.new_segment_name(), geometry.total_len)
        buf = _mapped(shm)
        buf[: L.HEADER_LEN] = bytes(L.HEADER_LEN)
        buf[: L.FIXED_LEN + 8] = L.encode_fixed(geometry)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> RingSegment:
        """Map an existing ring, validating its header; ``RingCorrupt`` names a bad field."""
        try:
            shm = _shm.attach_segment(name)
        except FileNotFoundError as exc:
            raise RingNotFound(f"no ring segment named {name!r}") from exc
        except ValueError as exc:  # mmap refuses an empty segment
            raise RingCorrupt("total_len", f"segment {name!r} is empty ({exc})") from exc
        return cls(shm, owner=False)

    @property
    def closed(self) -> bool:
        return bool(self.words[L.W_CLOSED])

    def head_tail(self) -> tuple[int, int]:
        """Current (head, tail), validated."""
        head, tail = self.words[L.W_HEAD], self.words[L.W_TAIL]
        L.check_cursors(head, tail, self.capacity)
        return head, tail

    def check_header(self) -> None:
        """Raise ``RingCorrupt`` if the fixed header changed since it was validated.

        Nothing legitimate ever writes those 64 bytes after creation, so any
        change is damage (a stray write, a wrong segment mapped over ours). The
        field named is the first that no longer validates; a change that still
        validates (a rewritten pid or timestamp) is reported as ``header``.
        """
        if self._header[: L.FIXED_LEN + 8] == self._fixed:
            return
        L.decode_fixed(self._header, self.geometry.total_len)
        raise RingCorrupt("header", "the fixed header changed while the ring was mapped")

    def _release_views(self) -> None:
        for attr in ("slots_readonly", "slots"):
            if hasattr(self, attr):
                delattr(self, attr)
        for attr in ("words", "_header"):
            view = self.__dict__.pop(attr, None)
            if view is not None:
                view.release()

    def close(self) -> None:
        """Unmap the segment; its creator also removes the name."""
        if self._shm is None:
            return
        self._release_views()
        _shm.release_segment(self._shm, unlink=self.owner)
        self._shm = None
