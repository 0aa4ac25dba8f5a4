"""``GpuQueue``: the host side of the persistent queue, a GPU-resident message queue.

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

import time
import weakref
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import structlog

from gpufeed.errors import (
    BackendError,
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
from gpufeed.gpu.persistent.config import GpuQueueStats, QueueConfig
from gpufeed.gpu.persistent.device import DeviceSide, make_device, stop_device
from gpufeed.gpu.persistent.memory import (
    PHASE_DONE,
    PHASE_READY,
    STARTED,
    STOP,
    tag,
    tags,
)
from gpufeed.gpu.persistent.slots import HEADER, SlotLedger
from gpufeed.gpu.persistent.watchdog import Watchdog
from gpufeed.ops.base import Op
from gpufeed.ops.registry import OpTable, load_op
from gpufeed.packing import write_requests
from gpufeed.packing.layout import HEADER_BYTES, SlotArray, payload_capacity
from gpufeed.packing.status import STATUS_OK
from gpufeed.ring import order

log = structlog.get_logger()

_SEQ_MASK = 0xFFFFFFFF


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
        order.check_fences()  # a weakly ordered CPU must have its fences before publishing
        self._device = device or make_device(config, table)
        m = self._memory = self._device.memory
        self._cap, self._log2, self._sb = m.capacity, m.capacity_log2, m.slot_bytes
        self._payload_cap = capacity_bytes
        self._req = m.requests.data.cast("B")
        self._state = m.state.data
        self._slots = SlotLedger(m)
        self._lengths_ok: dict[tuple[int, int], bool] = {}
        self._enq = self._deq = self._dropped = self._retries = 0
        self._failure: BackendError | None = None
        self._closed = False
        self._device.start()
        self._finalizer = weakref.finalize(self, stop_device, self._device)
        try:
            self._await_start()
        except BaseException:
            self._closed = True
            self._finalizer()
            raise
        self._watchdog = Watchdog(self)
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
        msg_id = self._slots.head
        slot = msg_id & (self._cap - 1)
        offset = slot * self._sb
        HEADER.pack_into(self._req, offset, n, op_id, 0, msg_id & _SEQ_MASK, 0)
        self._req[offset + HEADER_BYTES : offset + HEADER_BYTES + n] = data
        self._slots.claim(np.array([msg_id], np.int64))
        self._publish_to_device(msg_id, 1)
        # READY last: the device reads the request only after seeing it.
        if order.release_fence is not None:
            order.release_fence()
        self._state[slot] = tag(msg_id, self._log2, PHASE_READY)
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
        within ``timeout_ms``, the first ones;
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
            first = self._slots.head
            parts = [self._memory.requests[s] for s in self._memory.slots(first, count)]
            write_requests(parts, datas[sent : sent + count], lens[sent : sent + count],
                           np.full(count, op_id, np.uint16), first & _SEQ_MASK)  # fmt: skip
            self._publish(np.arange(first, first + count, dtype=np.int64))
            sent += count
        self._dropped += n - sent
        return list(range(self._slots.head - sent, self._slots.head))

    def enqueue_slots(self, slots: SlotArray) -> int:
        """Copy whole request slots (headers as written by the worker's packer) into
        free slots without waiting; returns how many fit, taking ids from
        ``stats().enq_count`` on. Their results come back with ``take_slots``."""
        self._check()
        count = min(len(slots), self._cap - self._slots.in_use)
        if count == 0:
            return 0
        first, row = self._slots.head, 0
        for part in self._memory.slots(first, count):
            k = part.stop - part.start
            self._memory.requests[part] = slots[row : row + k]
            row += k
        self._publish(np.arange(first, first + count, dtype=np.int64))
        return count

    def _publish_to_device(self, first_id: int, count: int) -> None:
        """The device side's copy of requests it keeps in its own memory. If that fails,
        the claimed slots would never be READY: the queue fails now, rather than with
        KernelStalled once the watchdog notices."""
        try:
            self._device.publish(first_id, count)
        except BackendError as exc:
            self._fail(exc)
            raise

    def _publish(self, ids: npt.NDArray[np.int64]) -> None:
        self._slots.claim(ids)
        self._publish_to_device(int(ids[0]), len(ids))
        if order.release_fence is not None:  # the requests before their READY words
            order.release_fence()
        self._memory.state[ids & (self._cap - 1)] = tags(ids, self._log2, PHASE_READY)
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
        if msg_id in self._slots.parked:
            status, data, _ = self._slots.parked.pop(msg_id)
            self._deq += 1
            return self._outcome(status, data)
        if not self._slots.holds(msg_id):
            raise NotFound(f"no message {msg_id} in the queue")
        if not self._slots.is_done(msg_id):
            if self._failure is not None:
                raise self._failure
            raise NotReady(f"message {msg_id} is still being processed")
        status, data = self._slots.read_result(msg_id & (self._cap - 1))
        self._slots.release(np.array([msg_id], np.int64))
        self._deq += 1
        return self._outcome(status, data)

    def done(self, msg_id: int) -> bool:
        """Whether ``msg_id``'s result is ready (it stays in the queue): one memory read,
        for callers that spin on a single message."""
        self._check_open()
        if msg_id in self._slots.parked:
            return True
        return self._slots.is_done(msg_id) and self._slots.holds(msg_id)

    def poll_completions(self, max_count: int) -> list[int]:
        """Ids of up to ``max_count`` messages whose results are ready and were not
        returned by an earlier call, oldest first. Never waits."""
        self._check_open()
        done: list[int] = []
        parked = self._slots.parked
        for msg_id in sorted(parked):
            if len(done) >= max_count:
                return done
            status, data, reported = parked[msg_id]
            if not reported:
                parked[msg_id] = (status, data, True)
                done.append(msg_id)
        want = max_count - len(done)
        if want <= 0 or self._slots.in_use == 0:
            return done
        ids, slots, held, finished = self._slots.window()
        ready = held & finished & ~self._slots.reported[slots]
        self._slots.reported[slots[ready][:want]] = True
        newly: list[int] = ids[ready][:want].tolist()
        return done + newly

    def take_slots(self, first_id: int, count: int) -> SlotArray | None:
        """Copies of the result slots of ``count`` messages from ``first_id`` once all
        are DONE (then their slots are free), else None. For ``enqueue_slots``."""
        self._check_open()
        ids = np.arange(first_id, first_id + count, dtype=np.int64)
        slots = ids & (self._cap - 1)
        if first_id < self._slots.tail or first_id + count > self._slots.head:
            raise NotFound(f"messages {first_id}..{first_id + count - 1} are not in the queue")
        if not (self._memory.state[slots] == tags(ids, self._log2, PHASE_DONE)).all():
            if self._failure is not None:
                raise self._failure
            return None
        if order.acquire_fence is not None:  # the results after their DONE words
            order.acquire_fence()
        parts = [self._memory.results[s] for s in self._memory.slots(first_id, count)]
        out = parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
        self._slots.release(ids)
        self._deq += count
        return out

    def unfinished_requests(self) -> SlotArray:
        """Copies of the request slots enqueued and not DONE (readable after a device
        failure: they are in host memory)."""
        self._check_open()
        unfinished: SlotArray = self._memory.requests[self._slots.unfinished()[1]]
        return unfinished

    def stats(self) -> GpuQueueStats:
        return GpuQueueStats(self._enq, self._deq, self._dropped, self._retries,
                          self._slots.in_use + len(self._slots.parked))  # fmt: skip

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
        unfinished = len(self._slots.unfinished()[0])
        while unfinished and self._failure is None and time.monotonic() < deadline:
            time.sleep(0.0005)
            unfinished = len(self._slots.unfinished()[0])
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

    def _check_open(self) -> None:
        # After shutdown the words and slots may be freed device-mapped memory: on a
        # GPU, reading them would crash the process, not raise.
        if self._closed:
            raise QueueShutdown("the queue was shut down")

    def _check(self) -> None:
        self._check_open()
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
        free = self._slots.free_slots()
        if free:
            return free
        self._retries += 1
        while time.monotonic() < deadline:
            if self._failure is not None:
                raise self._failure
            time.sleep(0.00005)
            free = self._slots.free_slots()
            if free:
                return free
        return 0

    def _outcome(self, status: int, data: bytes) -> bytes:
        if status != STATUS_OK:
            raise MessageFailed(data.decode(errors="replace") or "the op reported an error")
        return data
