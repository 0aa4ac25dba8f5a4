"""The exception root of gpufeed and its classified subclasses.

Every error gpufeed raises derives from :class:`GpufeedError`. The subclasses
say what went wrong and, through ``retryable``, whether trying again can help.
"""

from __future__ import annotations


class GpufeedError(Exception):
    """Root of every error gpufeed raises."""

    #: Whether repeating the failed operation may succeed.
    retryable: bool = False


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
    """The process on the other side of a ring died or stopped beating."""

    retryable = True


class RingBusy(RingError):
    """The ring already has a live producer (or consumer) attached."""


# --- messages and ops ----------------------------------------------------------------


class InvalidPayload(GpufeedError):
    """A message payload does not fit its op's layout."""


class PayloadTooLarge(InvalidPayload):
    """A message payload is larger than the slot's payload area."""


class UnknownOp(GpufeedError):
    """No op is registered under the requested name."""


class OpLoadError(GpufeedError):
    """A user op could not be loaded from an import path or entry point."""


class ResultOutOfOrder(GpufeedError):
    """A result slot's sequence number is not the one its request ring expects next.

    The compute process answers every request ring in FIFO order; a mismatch
    means the two sides disagree about what is in flight, and the rings must
    be rebuilt (the messages stay pending in Redis and are reclaimed).
    """


class BackendError(GpufeedError):
    """A compute backend failed on a batch."""

    retryable = True


class DeviceLost(BackendError):
    """The GPU can no longer be used by this process.

    A kernel that traps or faults leaves its CUDA context unusable ("sticky"
    errors); only a new process gets a working one. The worker's compute
    process exits on this so that the supervisor starts a fresh one; nothing
    is lost, because every message it held is still pending in Redis.
    """

    retryable = False


class KernelStalled(BackendError):
    """A persistent kernel stopped making progress (the queue's watchdog saw no
    completion, or no heartbeat, for longer than its stall timeout)."""

    retryable = False


# --- the persistent queue (gpufeed.gpu.persistent.GpuQueue) -----------------------------


class QueueError(GpufeedError):
    """A GpuQueue call could not be done; the subclasses mirror the seed API's statuses."""


class QueueFull(QueueError):
    """No free slot, and the call was not to wait (``timeout_ms=0``)."""

    retryable = True


class QueueTimeout(QueueError):
    """No free slot came within ``timeout_ms``."""

    retryable = True


class QueueShutdown(QueueError):
    """The queue was shut down; create a new one."""


class NotReady(QueueError):
    """The message is still being processed; ask again later."""

    retryable = True


class NotFound(QueueError):
    """No such message: never enqueued, or its result was already taken."""


class MessageFailed(QueueError):
    """The op reported an error for this message; the text says what it was."""
