"""The stream wire format as code: XREADGROUP replies → slots → result entries.

NumPy only: no Redis client, no GPU, and nothing else of gpufeed's but its
errors; what packing needs of the op table it is handed (``OpRules``).
"""

from gpufeed.packing.layout import (
    HEADER_BYTES,
    HEADER_DTYPE,
    headers,
    payload_area,
    payload_capacity,
)
from gpufeed.packing.rejects import ReplyToCheck, error_result
from gpufeed.packing.requests import (
    Columns,
    Entry,
    LengthRule,
    OpRules,
    PackedBatch,
    pack,
    plain_columns,
    read_entries,
    reply_entries,
    write_requests,
)
from gpufeed.packing.results import (
    ResultEntry,
    Results,
    collect_results,
    unpack_results,
    write_error_results,
    write_results,
)
from gpufeed.packing.status import STATUS_ERROR, STATUS_OK, Status

__all__ = [
    "HEADER_BYTES",
    "HEADER_DTYPE",
    "STATUS_ERROR",
    "STATUS_OK",
    "Columns",
    "Entry",
    "LengthRule",
    "OpRules",
    "PackedBatch",
    "ReplyToCheck",
    "ResultEntry",
    "Results",
    "Status",
    "collect_results",
    "error_result",
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
