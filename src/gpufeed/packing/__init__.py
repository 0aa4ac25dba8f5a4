"""The stream wire format as code: XREADGROUP replies → slots → result entries.

NumPy only: no Redis client and no GPU here.
"""

from gpufeed.packing.forward import PackedBatch, Reject, pack, reply_entries
from gpufeed.packing.layout import (
    HEADER_BYTES,
    HEADER_DTYPE,
    STATUS_ERROR,
    STATUS_OK,
    headers,
    payload_area,
    payload_capacity,
)
from gpufeed.packing.results import (
    ResultEntry,
    unpack_results,
    write_error_results,
    write_results,
)

__all__ = [
    "HEADER_BYTES",
    "HEADER_DTYPE",
    "STATUS_ERROR",
    "STATUS_OK",
    "PackedBatch",
    "Reject",
    "ResultEntry",
    "headers",
    "pack",
    "payload_area",
    "payload_capacity",
    "reply_entries",
    "unpack_results",
    "write_error_results",
    "write_results",
]
