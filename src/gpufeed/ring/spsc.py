"""Single-producer single-consumer ring of fixed-size slots in shared memory.

Memory ordering
---------------
The producer fills slots, then stores ``head``; the consumer loads ``head``,
then reads the slots below it. The consumer must never see the new ``head``
before the slot bytes it covers. On x86-64 this holds without any fence:

* the slot bytes are written by NumPy's copy loop and ``head`` by a separate,
  later C call (``memoryview.__setitem__``, one aligned 8-byte ``mov``, so it
  cannot tear). The C compiler cannot move stores across those opaque calls,
  and x86-64's TSO model never makes a store visible before an earlier store:
  whoever sees the new ``head`` sees the slot bytes too;
* the consumer loads ``head`` before it loads slot bytes, and TSO never
  reorders a load with an earlier load;
* the same argument runs backwards for ``tail``: the consumer's reads of a
  slot come before its ``tail`` store (TSO does not move stores above earlier
  loads), and the producer loads ``tail`` before it overwrites the slot.

A weakly ordered CPU (AArch64, POWER) gives none of this: there a fence goes
before each ``head`` or ``tail`` store (release: the slot writes, or reads,
come first) and after each ``head`` or ``tail`` load (acquire: the slot reads,
or overwrites, come after). ``order.py`` supplies them (libatomic's fence,
``dmb ish`` on AArch64); one per batch committed or released and one per
cursor read, never per slot, and none at all on x86-64.

Sleeping
--------
A side that finds nothing to do spins for a bounded number of checks, then
sleeps on a futex; it spins only while its recent waits were short enough
for a spin to end them (``_wait``). The "wake only a sleeper" handshake is Dekker's: the
sleeper stores ``waiting = 1`` then re-checks the cursor; the other side stores
the cursor then checks ``waiting``. Each side needs a StoreLoad fence between
its store and its load, which x86-64 does *not* give for free (its store
buffer can delay a store past a later load), so both call ``full_fence()``.
With the fences at least one side sees the other's store: either the sleeper
sees the new cursor and does not sleep, or the waker sees ``waiting`` and
bumps the event word before ``FUTEX_WAKE``. The futex's own compare of the
event word closes the last gap (a bump between our read and our sleep). Busy
sides never make a system call; a sleeper also wakes every ``wait_slice_s``
to check that its peer is still alive.
"""

from __future__ import annotations

import os
import threading
import time
from typing import ClassVar, Self, TypedDict, Unpack

from gpufeed.errors import InternalError, PeerGone, RingBusy, RingClosed
from gpufeed.ring import _header as L
from gpufeed.ring import order
from gpufeed.ring._heartbeat import heartbeat
from gpufeed.ring._wait import (
    futex_wait,
    futex_wake,
    pid_namespace,
    process_alive,
)
from gpufeed.ring.order import full_fence
from gpufeed.ring.segment import RingSegment, SlotArray

DEFAULT_SPIN = 200
# A sleep shorter than this would have ended within a spin of DEFAULT_SPIN
# checks (each one cursor load and compare, about half a microsecond). Fixed:
# a larger ``spin`` spins longer while waits are short, not for longer waits.
SPIN_PAYS_NS = 100_000
DEFAULT_WAIT_SLICE_S = 0.05
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
# Cursor refreshes between two checks of the fixed header. The cursors are
# range-checked on every refresh; the 64 fixed bytes (magic, geometry, CRC) are
# compared only this often, and on every sleep slice, so damage is found within
# a few batches on a busy ring and within one slice on an idle one.
HEADER_CHECK_EVERY = 64
_WAKE_ALL = 0x7FFFFFFF


class EndpointOptions(TypedDict, total=False):
    """Tuning shared by producers and consumers.

    ``spin``: checks before sleeping; ``wait_slice_s``: longest single sleep,
    which bounds how late a dead peer is noticed; ``heartbeat_timeout_s``: how
    long a peer may go without a heartbeat before it counts as gone (the pid
    check catches a dead peer in the same pid namespace much sooner).
    """

    spin: int
    wait_slice_s: float
    heartbeat_timeout_s: float


class _Endpoint:
    """What producer and consumer share: registration, liveness, sleeping, close."""

    _PID_WORD: ClassVar[int]
    _PEER_PID_WORD: ClassVar[int]
    _MY_WAITING: ClassVar[int]
    _MY_EVENT: ClassVar[int]
    _PEER_WAITING: ClassVar[int]
    _PEER_EVENT: ClassVar[int]
    _ROLE: ClassVar[str]

    def __init__(
        self,
        segment: RingSegment,
        *,
        own_segment: bool = False,
        spin: int = DEFAULT_SPIN,
        wait_slice_s: float = DEFAULT_WAIT_SLICE_S,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    ) -> None:
        self.segment = segment
        self._own_segment = own_segment
        self._spin = spin
        self._spin_pays = True
        self._wait_slice_s = wait_slice_s
        self._heartbeat_timeout_ns = int(heartbeat_timeout_s * 1e9)
        self._words: memoryview[int] = segment.words
        self._cap = segment.capacity
        self._mask = segment.capacity - 1
        self._lock = threading.Lock()
        self._closed = False
        self._until_check = HEADER_CHECK_EVERY
        self._my_event_addr = segment.base_address + self._MY_EVENT * 8
        self._peer_event_addr = segment.base_address + self._PEER_EVENT * 8
        try:
            self._register()
        except BaseException:
            if own_segment:
                segment.close()
            raise
        self._setup()
        heartbeat.add(self)

    def _setup(self) -> None:
        """Role-specific state, read from the segment once registered."""

    @classmethod
    def create(
        cls,
        *,
        capacity: int,
        slot_bytes: int,
        name: str | None = None,
        **options: Unpack[EndpointOptions],
    ) -> Self:
        """Create a ring and become one side of it; closing this side removes the name."""
        segment = RingSegment.create(capacity=capacity, slot_bytes=slot_bytes, name=name)
        return cls(segment, own_segment=True, **options)

    @classmethod
    def attach(cls, name: str, **options: Unpack[EndpointOptions]) -> Self:
        """Attach to an existing ring by name as this side."""
        return cls(RingSegment.attach(name), own_segment=True, **options)

    # -- lifecycle ---------------------------------------------------------------------

    def _register(self) -> None:
        words, w = self._words, self._PID_WORD
        pid, ns = words[w], words[w + 1]
        if pid and pid != os.getpid() and self._alive(pid, ns, words[w + 2]):
            raise RingBusy(f"ring {self.segment.name} already has a {self._ROLE} (pid {pid})")
        words[w + 2] = time.monotonic_ns()
        words[w + 1] = pid_namespace()
        words[w] = os.getpid()

    def _alive(self, pid: int, ns: int, beat_ns: int) -> bool:
        if ns == pid_namespace() and not process_alive(pid):
            return False
        return time.monotonic_ns() - beat_ns <= self._heartbeat_timeout_ns

    def _beat(self) -> None:
        with self._lock:
            if not self._closed:
                self._words[self._PID_WORD + 2] = time.monotonic_ns()

    def _check_header(self) -> None:
        self._until_check = HEADER_CHECK_EVERY
        self.segment.check_header()

    def check_peer(self) -> None:
        """Raise ``PeerGone`` if the other side attached and has since died or gone silent."""
        words, w = self._words, self._PEER_PID_WORD
        pid = words[w]
        if pid and not self._alive(pid, words[w + 1], words[w + 2]):
            raise PeerGone(
                f"the other side of ring {self.segment.name} (pid {pid}) died or stopped "
                f"beating for over {self._heartbeat_timeout_ns / 1e9:g} s"
            )

    @property
    def closed(self) -> bool:
        return self._closed or self.segment.closed

    def peer_sleeping(self) -> bool:
        """Whether the other side is asleep (or about to be) waiting for us."""
        return bool(self._words[self._PEER_WAITING])

    def close(self) -> None:
        """Close the ring for both sides and wake the other one; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        heartbeat.discard(self)
        words = self._words
        if order.release_fence is not None:  # our last cursor store before CLOSED
            order.release_fence()
        words[L.W_CLOSED] = 1
        words[self._PEER_EVENT] = (words[self._PEER_EVENT] + 1) & 0xFFFFFFFF
        full_fence()
        futex_wake(self._peer_event_addr, _WAKE_ALL)
        if words[self._PID_WORD] == os.getpid():
            words[self._PID_WORD] = 0
        del self._words
        if self._own_segment:
            self.segment.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- waiting -----------------------------------------------------------------------

    def _ready(self) -> bool:
        raise NotImplementedError

    def _wait(self, timeout: float | None) -> bool:
        """Wait until ``_ready()``; False on timeout. Raises ``PeerGone``.

        Spins first only while spinning pays: when the last wait ended within
        its spin, or slept less than ``SPIN_PAYS_NS``. A waiter whose peer
        takes longer (an idle queue; a round trip through Redis) goes straight
        to sleep instead of burning the core that the peer, or Redis, needs
        (docs/benchmarks.md, "Latency"). Neither the spin nor its absence
        touches the handshake below: skipping the spin only skips polling
        before it.
        """
        ready = self._ready
        if self._spin_pays:
            for _ in range(self._spin):
                if ready():
                    return True
        deadline = None if timeout is None else time.monotonic() + timeout
        words, waiting = self._words, self._MY_WAITING
        asleep = time.monotonic_ns()
        while True:
            remaining = self._wait_slice_s
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    return ready()
            event = words[self._MY_EVENT]
            words[waiting] = 1
            full_fence()
            if ready():
                words[waiting] = 0
                self._spin_pays = True
                return True
            futex_wait(self._my_event_addr, event, remaining)
            words[waiting] = 0
            if ready():
                self._spin_pays = time.monotonic_ns() - asleep < SPIN_PAYS_NS
                return True
            self.check_peer()
            self._check_header()

    def _wake_peer(self) -> None:
        """Called right after publishing our cursor: wake the peer only if it sleeps."""
        full_fence()
        words = self._words
        if words[self._PEER_WAITING]:
            words[self._PEER_EVENT] = (words[self._PEER_EVENT] + 1) & 0xFFFFFFFF
            futex_wake(self._peer_event_addr)


class RingProducer(_Endpoint):
    """The writing side: ``reserve(n)`` slots, fill them, ``commit(n)``."""

    _PID_WORD = L.W_PRODUCER_PID
    _PEER_PID_WORD = L.W_CONSUMER_PID
    _MY_WAITING = L.W_PRODUCER_WAITING
    _MY_EVENT = L.W_SPACE_EVENT
    _PEER_WAITING = L.W_CONSUMER_WAITING
    _PEER_EVENT = L.W_DATA_EVENT
    _ROLE = "producer"

    def _setup(self) -> None:
        self._slots = self.segment.slots
        self._empty = self._slots[:0]
        self._head = self._words[L.W_HEAD]
        self._tail_seen = self._words[L.W_TAIL]
        self._reserved = 0

    def free(self) -> int:
        """Slots the producer could reserve right now."""
        head, tail = self.segment.head_tail()
        return self._cap - (head - tail)

    def unreleased(self) -> int:
        """Slots committed that the consumer has not released yet."""
        head, tail = self.segment.head_tail()
        return head - tail

    def _refresh(self) -> int:
        tail = self._words[L.W_TAIL]
        if order.acquire_fence is not None:  # the consumer's reads of those slots are done
            order.acquire_fence()
        L.check_cursors(self._head, tail, self._cap)
        self._until_check -= 1
        if not self._until_check:
            self._check_header()
        self._tail_seen = tail
        return self._cap - (self._head - tail)

    def _ready(self) -> bool:
        return self._refresh() > 0 or bool(self._words[L.W_CLOSED])

    def reserve(self, n: int, timeout: float | None = 0.0) -> tuple[SlotArray, SlotArray]:
        """Writable views of up to ``n`` free slots, as (first, second).

        ``second`` is non-empty only when the run wraps past the ring's end: slot
        order is ``first`` then ``second``. Both are empty when the ring stayed
        full for ``timeout`` seconds (0: do not wait; None: wait for ever).
        Raises ``RingClosed`` once either side closed the ring.
        """
        if self._words[L.W_CLOSED]:
            raise RingClosed(f"ring {self.segment.name} is closed")
        free = self._cap - (self._head - self._tail_seen)
        if free < n:
            free = self._refresh()
            if free == 0:
                if timeout == 0.0 or not self._wait(timeout):
                    self._reserved = 0
                    return self._empty, self._empty
                if self._words[L.W_CLOSED]:
                    raise RingClosed(f"ring {self.segment.name} is closed")
                free = self._refresh()
        k = n if n < free else free
        start = self._head & self._mask
        end = start + k
        self._reserved = k
        if end <= self._cap:
            return self._slots[start:end], self._empty
        return self._slots[start:], self._slots[: end - self._cap]

    def commit(self, n: int) -> None:
        """Publish the first ``n`` reserved slots to the consumer."""
        if n > self._reserved or n < 0:
            raise InternalError(f"commit({n}) but only {self._reserved} slots are reserved")
        self._reserved = 0
        if n == 0:
            return
        self._head += n
        if order.release_fence is not None:  # the slot writes before the head that covers them
            order.release_fence()
        self._words[L.W_HEAD] = self._head
        self._wake_peer()


class RingConsumer(_Endpoint):
    """The reading side: ``peek(max_n)`` ready slots, use them, ``release(n)``."""

    _PID_WORD = L.W_CONSUMER_PID
    _PEER_PID_WORD = L.W_PRODUCER_PID
    _MY_WAITING = L.W_CONSUMER_WAITING
    _MY_EVENT = L.W_DATA_EVENT
    _PEER_WAITING = L.W_PRODUCER_WAITING
    _PEER_EVENT = L.W_SPACE_EVENT
    _ROLE = "consumer"

    def _setup(self) -> None:
        self._slots = self.segment.slots_readonly
        self._empty = self._slots[:0]
        self._tail = self._words[L.W_TAIL]
        self._head_seen = self._words[L.W_HEAD]
        self._peeked = 0

    def ready(self) -> int:
        """Slots committed by the producer and not yet released."""
        head, tail = self.segment.head_tail()
        return head - tail

    def _refresh(self) -> int:
        head = self._words[L.W_HEAD]
        if order.acquire_fence is not None:  # the slot reads after the head that covers them
            order.acquire_fence()
        L.check_cursors(head, self._tail, self._cap)
        self._until_check -= 1
        if not self._until_check:
            self._check_header()
        self._head_seen = head
        return head - self._tail

    def _ready(self) -> bool:
        return self._refresh() > 0 or bool(self._words[L.W_CLOSED])

    def wait_ready(self, timeout: float | None) -> bool:
        """Wait until a slot is ready or the ring closed, without taking anything."""
        return self._wait(timeout)

    def peek(self, max_n: int, timeout: float | None = 0.0) -> tuple[SlotArray, SlotArray]:
        """Read-only views of up to ``max_n`` ready slots, as (first, second).

        Waits up to ``timeout`` seconds for at least one slot (0: do not wait;
        None: wait for ever). Slots the producer committed before closing are
        still delivered; ``RingClosed`` comes once the ring is closed and empty.
        """
        avail = self._head_seen - self._tail
        if avail < max_n:
            avail = self._refresh()
            if avail == 0:
                if self._words[L.W_CLOSED]:
                    # The producer's last head store came before CLOSED: read head
                    # after it, or a stale head would drop its last slots.
                    if order.acquire_fence is not None:
                        order.acquire_fence()
                    if self._refresh() == 0:
                        raise RingClosed(f"ring {self.segment.name} is closed")
                elif timeout == 0.0 or not self._wait(timeout):
                    self._peeked = 0
                    return self._empty, self._empty
                avail = self._refresh()
                if avail == 0:
                    raise RingClosed(f"ring {self.segment.name} is closed")
        k = max_n if max_n < avail else avail
        start = self._tail & self._mask
        end = start + k
        self._peeked = k
        if end <= self._cap:
            return self._slots[start:end], self._empty
        return self._slots[start:], self._slots[: end - self._cap]

    def release(self, n: int) -> None:
        """Hand the first ``n`` peeked slots back to the producer."""
        if n > self._peeked or n < 0:
            raise InternalError(f"release({n}) but only {self._peeked} slots were peeked")
        self._peeked = 0
        if n == 0:
            return
        self._tail += n
        if order.release_fence is not None:  # the slot reads before the tail that frees them
            order.release_fence()
        self._words[L.W_TAIL] = self._tail
        self._wake_peer()
