"""``GpuQueue``: the host side of the persistent queue (the seed API, in Python).

The host is the single producer: it writes a request into message ``id``'s
slot, then its READY word; the device (kernel or emulation) writes the
result, then DONE. A slot is reused for ``id + capacity`` only once the host
has taken message ``id``'s result out of it: handed to the caller
(``try_dequeue_result``, ``take_slots``) or, when an enqueue needs room,
parked in host memory until the caller asks for it. So a full queue frees up
as the device completes, whether or not the caller has collected.

Not thread-safe: one thread makes the calls (the watchdog thread only reads).
"""

from __future__ import annotations

import struct
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import structlog

from gpufeed.errors import (
    BackendError,
    ConfigError,
    DeviceLost,
    InvalidPayload,
    KernelStalled,
    MessageFailed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    QueueShutdown,
    QueueTimeout,
)
from gpufeed.gpu.ops.base import Bools, Op
from gpufeed.gpu.ops.registry import OpTable, load_op
from gpufeed.gpu.persistent.device import DeviceSide
from gpufeed.gpu.persistent.layout import (
    HEARTBEAT,
    PHASE_DONE,
    PHASE_READY,
    STARTED,
    STOP,
    Ids,
    tag,
    tags,
)
from gpufeed.packing.forward import write_requests
from gpufeed.packing.layout import HEADER_BYTES, STATUS_OK, SlotArray, payload_capacity
from gpufeed.ring._layout import is_power_of_two

log = structlog.get_logger()

DEVICES = ("cuda", "emulated")
PAYLOADS = ("mapped", "device")
MAX_CAPACITY = 1 << 24
_HEADER = struct.Struct("<IHHII")  # gpufeed.packing.layout.HEADER_DTYPE
_SEQ_MASK = 0xFFFFFFFF
_SCAN = 4096  # ids looked at per vectorised step when freeing slots


@dataclass(frozen=True)
class QueueConfig:
    """A persistent queue's shape, fixed at creation.

    ``slot_bytes`` is the whole slot, as in the worker: a 16-byte header and
    ``slot_bytes - 16`` bytes of payload (and of result).
    """

    capacity: int = 4096
    slot_bytes: int = 256
    device: str = "cuda"  # "cuda": the persistent kernel; "emulated": the CPU emulation
    payload: str = "mapped"  # requests in mapped pinned host memory, or in "device" memory
    gpu: int = 0  # CUDA device ordinal
    warps_per_block: int = 4
    blocks: int = 0  # worker blocks of the kernel; 0: one per SM
    stall_timeout_s: float = 10.0
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not is_power_of_two(self.capacity) or not 2 <= self.capacity <= MAX_CAPACITY:
            raise ConfigError(f"capacity must be a power of two in [2, {MAX_CAPACITY}]")
        if not is_power_of_two(self.slot_bytes) or self.slot_bytes < 64:
            raise ConfigError("slot_bytes must be a power of two >= 64")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.payload not in PAYLOADS:
            raise ConfigError(f"payload must be one of {', '.join(PAYLOADS)}")
        if not 1 <= self.warps_per_block <= 32 or self.blocks < 0:
            raise ConfigError("warps_per_block must be in [1, 32] and blocks >= 0")
        if self.stall_timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ConfigError("stall_timeout_s and start_timeout_s must be positive")


@dataclass(frozen=True)
class QueueStats:
    enq_count: int  # messages enqueued
    deq_count: int  # results taken
    dropped_full: int  # messages refused because no slot was free
    retries: int  # enqueue calls that found the queue full and waited or parked results
    queue_depth: int  # messages holding a slot: enqueued, result not yet taken


def _make_device(config: QueueConfig, table: OpTable) -> DeviceSide:
    if config.device == "emulated":
        from gpufeed.gpu.persistent.emulated import EmulatedDevice

        return EmulatedDevice(table, config.capacity, config.slot_bytes)
    from gpufeed.gpu.persistent.cuda import CudaDevice

    return CudaDevice(table, config)


def _stop_device(device: DeviceSide) -> None:
    """The finaliser of a queue dropped without ``shutdown``: never leave a kernel spinning."""
    device.memory.control[STOP] = 1
    if device.join(5.0):
        device.close()


class GpuQueue:
    """A GPU-resident ring served by a persistent kernel.

    ``GpuQueue(QueueConfig(capacity, slot_bytes), op="sha256")`` serves one op;
    the worker passes its whole ``table`` instead. Use it as a context manager,
    or call ``shutdown()``.
    """

    def __init__(
        self,
        config: QueueConfig,
        op: Op | str = "echo",
        *,
        table: OpTable | None = None,
        device: DeviceSide | None = None,
    ) -> None:
        self.config = config
        capacity_bytes = payload_capacity(config.slot_bytes)
        if table is None:
            table = OpTable([load_op(op) if isinstance(op, str) else op], capacity_bytes)
        self.table = table
        self._device = device or _make_device(config, table)
        m = self._memory = self._device.memory
        self._cap, self._log2, self._sb = m.capacity, m.capacity_log2, m.slot_bytes
        self._payload_cap = capacity_bytes
        self._req = m.requests.data.cast("B")
        self._res = m.results.data.cast("B")
        self._state = m.state.data
        self._owner = np.full(self._cap, -1, np.int64)  # message id in each slot; -1: free
        self._reported = np.zeros(self._cap, bool)  # returned by poll_completions already
        self._parked: dict[int, tuple[int, bytes, bool]] = {}  # id -> (status, data, reported)
        self._lengths_ok: dict[tuple[int, int], bool] = {}
        self._head = self._tail = 0
        self._enq = self._deq = self._dropped = self._retries = 0
        self._failure: BackendError | None = None
        self._closed = False
        self._device.start()
        self._finalizer = weakref.finalize(self, _stop_device, self._device)
        try:
            self._await_start()
        except BaseException:
            self._closed = True
            self._finalizer()
            raise
        self._watchdog = _Watchdog(self)
        self._watchdog.start()
        log.info("persistent queue started", device=self._device.name, capacity=self._cap,
                 slot_bytes=self._sb, ops=[op.name for op in table.ops])  # fmt: skip

    def __enter__(self) -> GpuQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- enqueue --------------------------------------------------------------------------

    def enqueue(self, data: bytes, timeout_ms: int = 0, *, op: str | None = None) -> int:
        """Copy ``data`` into a free slot for ``op`` (default: the queue's first op); its id.

        Waits up to ``timeout_ms`` for a slot; raises ``QueueFull`` (with
        ``timeout_ms=0``) or ``QueueTimeout`` when none came free.
        """
        self._check()
        op_id = self._op_id(op)
        n = len(data)
        self._validate(op_id, n)
        if self._wait_for_room(time.monotonic() + max(timeout_ms, 0) / 1000) == 0:
            self._dropped += 1
            if timeout_ms <= 0:
                raise QueueFull(f"all {self._cap} slots are in use")
            raise QueueTimeout(f"no slot came free within {timeout_ms} ms")
        msg_id = self._head
        slot = msg_id & (self._cap - 1)
        offset = slot * self._sb
        _HEADER.pack_into(self._req, offset, n, op_id, 0, msg_id & _SEQ_MASK, 0)
        self._req[offset + HEADER_BYTES : offset + HEADER_BYTES + n] = data
        self._owner[slot] = msg_id
        self._reported[slot] = False
        self._device.publish(msg_id, 1)
        # READY last: the device reads the request only after seeing it.
        self._state[slot] = tag(msg_id, self._log2, PHASE_READY)
        self._head += 1
        self._enq += 1
        return msg_id

    def enqueue_batch(
        self,
        items: Sequence[bytes] | npt.NDArray[np.uint8],
        timeout_ms: int = 0,
        *,
        op: str | None = None,
    ) -> list[int]:
        """Enqueue ``items`` (bytes, or the rows of a 2-D uint8 array) in order.

        Returns the ids of those enqueued: all of them, or, when slots ran out
        within ``timeout_ms``, the first ones (the seed's ``out_enqueued``);
        the rest can be passed again. An invalid item enqueues nothing.
        """
        self._check()
        op_id = self._op_id(op)
        datas: list[bytes] | SlotArray
        if isinstance(items, np.ndarray):
            if items.ndim != 2 or items.dtype != np.uint8:
                raise InvalidPayload("enqueue_batch takes a 2-D uint8 array (one row per message)")
            datas, lens = items, np.full(len(items), items.shape[1], np.int64)
        else:
            datas = [bytes(d) for d in items]
            lens = np.fromiter(map(len, datas), np.int64, len(datas))
        self._validate_all(op_id, lens)
        n, sent = len(lens), 0
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000
        while sent < n:
            count = min(n - sent, self._wait_for_room(deadline))
            if count == 0:
                break
            first = self._head
            parts = [self._memory.requests[s] for s in self._memory.slots(first, count)]
            write_requests(parts, datas[sent : sent + count], lens[sent : sent + count],
                           np.full(count, op_id, np.uint16), first & _SEQ_MASK)  # fmt: skip
            self._publish(np.arange(first, first + count, dtype=np.int64))
            sent += count
        self._dropped += n - sent
        return list(range(self._head - sent, self._head))

    def enqueue_slots(self, slots: SlotArray) -> int:
        """Copy whole request slots (headers as written by the worker's packer) into
        free slots without waiting; returns how many fit, taking ids from
        ``stats().enq_count`` on. Their results come back with ``take_slots``."""
        self._check()
        self._advance_tail()
        count = min(len(slots), self._cap - (self._head - self._tail))
        if count == 0:
            return 0
        first, row = self._head, 0
        for part in self._memory.slots(first, count):
            k = part.stop - part.start
            self._memory.requests[part] = slots[row : row + k]
            row += k
        self._publish(np.arange(first, first + count, dtype=np.int64))
        return count

    def _publish(self, ids: npt.NDArray[np.int64]) -> None:
        slots = ids & (self._cap - 1)
        self._owner[slots] = ids
        self._reported[slots] = False
        self._device.publish(int(ids[0]), len(ids))
        self._memory.state[slots] = tags(ids, self._log2, PHASE_READY)
        self._head += len(ids)
        self._enq += len(ids)

    # --- results --------------------------------------------------------------------------

    def try_dequeue_result(self, msg_id: int) -> bytes:
        """The result of ``msg_id``, taken out of the queue.

        Raises ``NotReady`` while it is being processed, ``NotFound`` for an id
        never enqueued or already taken, ``MessageFailed`` when the op
        reported an error for it (the result is taken all the same).
        """
        if self._closed:
            raise QueueShutdown("the queue was shut down")
        if msg_id in self._parked:
            status, data, _ = self._parked.pop(msg_id)
            self._deq += 1
            return self._outcome(status, data)
        slot = msg_id & (self._cap - 1)
        if not self._tail <= msg_id < self._head or self._owner[slot] != msg_id:
            raise NotFound(f"no message {msg_id} in the queue")
        if self._state[slot] != tag(msg_id, self._log2, PHASE_DONE):
            if self._failure is not None:
                raise self._failure
            raise NotReady(f"message {msg_id} is still being processed")
        status, data = self._read_result(slot)
        self._owner[slot] = -1
        self._deq += 1
        if msg_id == self._tail:
            self._advance_tail()
        return self._outcome(status, data)

    def done(self, msg_id: int) -> bool:
        """Whether ``msg_id``'s result is ready (it stays in the queue): one memory read,
        for callers that spin on a single message."""
        if msg_id in self._parked:
            return True
        slot = msg_id & (self._cap - 1)
        return bool(
            self._owner[slot] == msg_id and self._state[slot] == tag(msg_id, self._log2, PHASE_DONE)
        )

    def poll_completions(self, max_count: int) -> list[int]:
        """Ids of up to ``max_count`` messages whose results are ready and were not
        returned by an earlier call, oldest first. Never waits."""
        if self._closed:
            raise QueueShutdown("the queue was shut down")
        done: list[int] = []
        for msg_id in sorted(self._parked):
            if len(done) >= max_count:
                return done
            status, data, reported = self._parked[msg_id]
            if not reported:
                self._parked[msg_id] = (status, data, True)
                done.append(msg_id)
        want = max_count - len(done)
        if want <= 0 or self._head == self._tail:
            return done
        ids, slots, held, finished = self._window()
        ready = held & finished & ~self._reported[slots]
        self._reported[slots[ready][:want]] = True
        newly: list[int] = ids[ready][:want].tolist()
        return done + newly

    def take_slots(self, first_id: int, count: int) -> SlotArray | None:
        """Copies of the result slots of ``count`` messages from ``first_id`` once all
        are DONE (then their slots are free), else None. For ``enqueue_slots``."""
        if self._closed:
            raise QueueShutdown("the queue was shut down")
        ids = np.arange(first_id, first_id + count, dtype=np.int64)
        slots = ids & (self._cap - 1)
        if first_id < self._tail or first_id + count > self._head:
            raise NotFound(f"messages {first_id}..{first_id + count - 1} are not in the queue")
        if not (self._memory.state[slots] == tags(ids, self._log2, PHASE_DONE)).all():
            if self._failure is not None:
                raise self._failure
            return None
        parts = [self._memory.results[s] for s in self._memory.slots(first_id, count)]
        out = parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
        self._owner[slots] = -1
        self._deq += count
        self._advance_tail()
        return out

    def unfinished_requests(self) -> SlotArray:
        """Copies of the request slots enqueued and not DONE (readable after a device
        failure: they are in host memory)."""
        _, slots, held, done = self._window()
        unfinished: SlotArray = self._memory.requests[slots[held & ~done]]
        return unfinished

    def stats(self) -> QueueStats:
        return QueueStats(self._enq, self._deq, self._dropped, self._retries,
                          self._head - self._tail + len(self._parked))  # fmt: skip

    @property
    def failure(self) -> BackendError | None:
        """What the watchdog found wrong with the device, if anything."""
        return self._failure

    # --- shutdown -------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Wait (up to ``timeout_s``) for the messages in flight, stop the kernel, free
        everything. Results not taken by then are dropped. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        unfinished = self._unfinished()
        while unfinished and self._failure is None and time.monotonic() < deadline:
            time.sleep(0.0005)
            unfinished = self._unfinished()
        self._memory.control[STOP] = 1
        stopped = self._device.join(max(1.0, deadline - time.monotonic()))
        self._watchdog.stop()
        self._finalizer.detach()
        if stopped:
            self._device.close()
        else:
            # A kernel that ignores STOP cannot be killed from the host; freeing
            # its memory would wait for it forever. Process exit reclaims both.
            log.error("persistent kernel did not stop; its memory stays allocated",
                      device=self._device.name)  # fmt: skip
        log.info("persistent queue shut down", enqueued=self._enq, taken=self._deq,
                 unfinished=unfinished, kernel_stopped=stopped)  # fmt: skip

    # --- internals ------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise QueueShutdown("the queue was shut down")
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: BackendError) -> None:
        if self._failure is None:
            self._failure = error
            log.error("persistent queue failed", error=str(error), kind=type(error).__name__)

    def _await_start(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while not self._memory.control[STARTED]:
            why = self._device.failure()
            if why is not None:
                raise DeviceLost(why)
            if time.monotonic() > deadline:
                raise KernelStalled(
                    f"the persistent kernel did not start within {self.config.start_timeout_s} s"
                )
            time.sleep(0.001)

    def _op_id(self, op: str | None) -> int:
        if op is None:
            return 0
        try:
            return self.table.ids[op]
        except KeyError:
            raise InvalidPayload(f"this queue has no op {op!r}") from None

    def _validate(self, op_id: int, n: int) -> None:
        ok = self._lengths_ok.get((op_id, n))
        if ok is None:
            self._validate_all(op_id, np.array([n], np.int64))
            self._lengths_ok[(op_id, n)] = True

    def _validate_all(self, op_id: int, lens: npt.NDArray[np.int64]) -> None:
        big = lens > self._payload_cap
        if big.any():
            i = int(np.argmax(big))
            raise PayloadTooLarge(f"item {i}: {int(lens[i])} bytes is more than the "
                                  f"{self._payload_cap}-byte payload area of a slot")  # fmt: skip
        op = self.table[op_id]
        valid = op.valid_lengths(lens)
        if not valid.all():
            i = int(np.argmin(valid))
            raise InvalidPayload(
                f"item {i}: wrong payload length {int(lens[i])} for op {op.name!r}: "
                f"{op.length_rule}"
            )

    def _wait_for_room(self, deadline: float) -> int:
        """How many slots are free, waiting until ``deadline`` while none is."""
        free = self._free_slots()
        if free:
            return free
        self._retries += 1
        while time.monotonic() < deadline:
            if self._failure is not None:
                raise self._failure
            time.sleep(0.00005)
            free = self._free_slots()
            if free:
                return free
        return 0

    def _free_slots(self) -> int:
        """Slots free now, after parking the results of finished messages if need be."""
        free = self._cap - (self._head - self._tail)
        if free == 0:
            self._park_done()
            free = self._cap - (self._head - self._tail)
        return free

    def _advance_tail(self) -> None:
        """Move the tail over slots whose results were taken."""
        while self._tail < self._head:
            ids, _, held, _ = self._window(_SCAN)
            k = len(ids) if not held.any() else int(np.argmax(held))
            self._tail += k
            if k < len(ids):
                return

    def _park_done(self) -> None:
        """Free the slots of finished messages by moving their results to host memory."""
        while self._tail < self._head:
            ids, slots, held, done = self._window(_SCAN)
            movable = ~held | done
            k = len(ids) if movable.all() else int(np.argmin(movable))
            for i in np.flatnonzero(done[:k] & held[:k]).tolist():
                slot = int(slots[i])
                status, data = self._read_result(slot)
                self._parked[int(ids[i])] = (status, data, bool(self._reported[slot]))
                self._owner[slot] = -1
            self._tail += k
            if k < len(ids):
                return

    def _read_result(self, slot: int) -> tuple[int, bytes]:
        offset = slot * self._sb
        length, _op, flags, _seq, _ = _HEADER.unpack_from(self._res, offset)
        length = min(length, self._payload_cap)  # never read past a slot, whatever a header says
        start = offset + HEADER_BYTES
        return flags, bytes(self._res[start : start + length])

    def _outcome(self, status: int, data: bytes) -> bytes:
        if status != STATUS_OK:
            raise MessageFailed(data.decode(errors="replace") or "the op reported an error")
        return data

    def _window(self, limit: int | None = None) -> tuple[Ids, Ids, Bools, Bools]:
        """The ids from the tail (at most ``limit``), their slots, whether each still
        holds its slot, and whether each is DONE. Also read by the watchdog thread."""
        tail, head = self._tail, self._head
        ids = np.arange(tail, head if limit is None else min(head, tail + limit), dtype=np.int64)
        slots = ids & (self._cap - 1)
        held = self._owner[slots] == ids
        done = self._memory.state[slots] == tags(ids, self._log2, PHASE_DONE)
        return ids, slots, held, done

    def _unfinished(self) -> int:
        _, _, held, done = self._window()
        return int((held & ~done).sum())

    def _oldest_unfinished(self) -> int:
        """The lowest id enqueued and not yet DONE, or -1."""
        ids, _, held, done = self._window(_SCAN)
        waiting = held & ~done
        return int(ids[np.argmax(waiting)]) if waiting.any() else -1


class _Watchdog(threading.Thread):
    """Notices a device that died or stopped making progress, so that calls raise
    ``DeviceLost`` / ``KernelStalled`` instead of waiting forever."""

    def __init__(self, queue: GpuQueue) -> None:
        super().__init__(name="gpufeed-queue-watchdog", daemon=True)
        # A weak reference: a dropped queue's finaliser must still be able to run.
        self._queue = weakref.ref(queue)
        self._stall_s = queue.config.stall_timeout_s
        self._interval = min(0.1, self._stall_s / 10)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join(5)

    def run(self) -> None:
        queue = self._queue()
        if queue is None:
            return
        control = queue._memory.control
        beat, beat_at = int(control[HEARTBEAT]), time.monotonic()
        waiting, waiting_since = -1, beat_at
        del queue
        while not self._stopped.wait(self._interval):
            queue = self._queue()
            if queue is None:
                return
            now = time.monotonic()
            why = queue._device.failure()
            if why is not None:
                queue._fail(DeviceLost(why))
                return
            oldest = queue._oldest_unfinished()
            if oldest != waiting:
                waiting, waiting_since = oldest, now
            elif oldest >= 0 and now - waiting_since > self._stall_s:
                queue._fail(KernelStalled(
                    f"message {oldest} has waited {now - waiting_since:.1f} s for the device "
                    f"(stall timeout {self._stall_s} s)"
                ))  # fmt: skip
                return
            if int(control[HEARTBEAT]) != beat:
                beat, beat_at = int(control[HEARTBEAT]), now
            elif oldest < 0 and not control[STOP] and now - beat_at > self._stall_s:
                queue._fail(KernelStalled(f"no heartbeat from the device for {self._stall_s} s"))
                return
            del queue
