"""The stream wire format as code: XREADGROUP replies → slots → result entries.

NumPy only: no Redis client and no GPU here.
"""

from gpufeed.packing.forward import (
    Columns,
    PackedBatch,
    Reject,
    pack,
    plain_columns,
    read_entries,
    reply_entries,
    write_requests,
)
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
    Results,
    collect_results,
    unpack_results,
    write_error_results,
    write_results,
)

__all__ = [
    "HEADER_BYTES",
    "HEADER_DTYPE",
    "STATUS_ERROR",
    "STATUS_OK",
    "Columns",
    "PackedBatch",
    "Reject",
    "ResultEntry",
    "Results",
    "collect_results",
    "headers",
    "pack",
    "payload_area",
    "payload_capacity",
    "plain_columns",
    "read_entries",
    "reply_entries",
    "unpack_results",
    "write_error_results",
    "write_requests",
    "write_results",
]
