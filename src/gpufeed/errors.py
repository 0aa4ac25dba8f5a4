"""The exception root of gpufeed and its classified subclasses.

Every error gpufeed raises derives from :class:`GpufeedError`; the subclasses
say what went wrong, and their documentation whether trying again can help.
Callers decide by class (``except QueueFull``), as with redis-py's exceptions.
"""

from __future__ import annotations


class GpufeedError(Exception):
    """Root of every error gpufeed raises."""


class ConfigError(GpufeedError):
    """A setting is invalid; the message names the setting and the allowed values."""


# --- rings ---------------------------------------------------------------------------


class RingError(GpufeedError):
    """Something is wrong with a shared-memory ring."""


class RingCorrupt(RingError):
    """A ring's header or cursors fail validation; the ring must not be used.

    ``field`` names the first header field found to be bad.
    """

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"ring corrupt: bad {field}: {detail}")


class RingClosed(RingError):
    """The ring was closed by one of its two sides; no more data will move."""


class PeerGone(RingError):
    """The process on the other side of a ring died or stopped beating; new rings
    with a new peer work again."""


class RingBusy(RingError):
    """The ring already has a live producer (or consumer) attached."""


# --- messages and ops ----------------------------------------------------------------


class QueueMisconfigured(GpufeedError):
    """A key of the queue holds another type of value than gpufeed needs there (its
    output or dead-letter stream is a string, say). Nothing was written; the worker
    keeps its results and tries again until someone fixes the key."""


class InvalidPayload(GpufeedError):
    """A message payload does not fit its op's layout."""


class PayloadTooLarge(InvalidPayload):
    """A message payload is larger than the slot's payload area."""


class UnknownOp(GpufeedError):
    """No op is registered under the requested name."""


class OpLoadError(GpufeedError):
    """A user op could not be loaded from an import path or entry point."""


class InternalError(GpufeedError):
    """gpufeed found one of its own invariants broken: a bug, not bad input.

    The message says what was expected and what was found. A worker process
    that meets one exits and is restarted; what it held is still pending in
    Redis.
    """


class ResultOutOfOrder(InternalError):
    """A result slot's sequence number is not the one its request ring expects next.

    The compute process answers every request ring in FIFO order; a mismatch
    means the two sides disagree about what is in flight, and the rings must
    be rebuilt (the messages stay pending in Redis and are reclaimed).
    """


class ProcessFailed(GpufeedError):
    """A process gpufeed started (a worker, a private Redis server, a benchmark's
    child) exited or never became ready; the message says which, and what it printed
    last where there is a log to show."""


class BackendError(GpufeedError):
    """A compute backend failed on a batch; the batch may be retried."""


class DeviceLost(BackendError):
    """The GPU can no longer be used by this process; retrying in it cannot help.

    A kernel that traps or faults leaves its CUDA context unusable ("sticky"
    errors); only a new process gets a working one. The worker's compute
    process exits on this so that the supervisor starts a fresh one; nothing
    is lost, because every message it held is still pending in Redis.
    """


class KernelStalled(BackendError):
    """A persistent kernel stopped making progress (the queue's watchdog saw no
    completion, or no heartbeat, for longer than its stall timeout); the queue
    cannot be used again."""


# --- the persistent queue (gpufeed.gpu.persistent.GpuQueue) ---------------------------


class QueueError(GpufeedError):
    """A GpuQueue call could not be done; one subclass per status of the queue's API
    (``QueueFull``, ``QueueTimeout`` and ``NotReady`` may succeed when tried again)."""


class QueueFull(QueueError):
    """No free slot, and the call was not to wait (``timeout_ms=0``)."""


class QueueTimeout(QueueError):
    """No free slot came within ``timeout_ms``."""


class QueueShutdown(QueueError):
    """The queue was shut down; create a new one."""


class NotReady(QueueError):
    """The message is still being processed; ask again later."""


class NotFound(QueueError):
    """No such message: never enqueued, or its result was already taken."""


class MessageFailed(QueueError):
    """The op reported an error for this message; the text says what it was."""


class ResultError(GpufeedError):
    """A message came back with status ``error``: ``reason`` says why (the worker's
    own words: a malformed field, an unknown op, the op's exception, ...)."""

    def __init__(self, reason: str, src: bytes, cid: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.src = src  # the message's entry id in the input stream
        self.cid = cid


class ResultExpired(ResultError):
    """A message came back with status ``expired``: its ``deadline_ms`` passed
    before the worker got to it, and it was not computed."""


class ClientClosed(GpufeedError):
    """The client was closed before this message's result came back."""


class ReplyRefused(GpufeedError):
    """Redis refused the client reading its own reply stream (``NOPERM``): the
    results cannot reach it, so what waits fails at once instead of timing out."""
