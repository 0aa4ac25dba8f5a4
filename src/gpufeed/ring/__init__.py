"""Shared-memory single-producer single-consumer rings of fixed-size slots."""

from gpufeed.errors import PeerGone, RingBusy, RingClosed, RingCorrupt, RingError
from gpufeed.ring._header import is_power_of_two
from gpufeed.ring._wait import process_alive
from gpufeed.ring.order import check_fences
from gpufeed.ring.segment import RingNotFound, RingSegment, check_shm_room, ring_bytes
from gpufeed.ring.spsc import RingConsumer, RingProducer

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
    "check_fences",
    "check_shm_room",
    "is_power_of_two",
    "process_alive",
    "ring_bytes",
]
