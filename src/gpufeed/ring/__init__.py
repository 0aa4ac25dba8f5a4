"""Shared-memory single-producer single-consumer rings of fixed-size slots."""

from gpufeed.errors import PeerGone, RingBusy, RingClosed, RingCorrupt, RingError
from gpufeed.ring.spsc import RingConsumer, RingNotFound, RingProducer, RingSegment

__all__ = [
    "PeerGone",
    "RingBusy",
    "RingClosed",
    "RingConsumer",
    "RingCorrupt",
    "RingError",
    "RingNotFound",
    "RingProducer",
    "RingSegment",
]
