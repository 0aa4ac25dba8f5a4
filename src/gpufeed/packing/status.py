"""A result's status: one enum from the slot header to the result entry.

The same three states travel in three encodings, each fixed by something
outside Python: the result entry's ``status`` field (the wire format
producers read), the result slot header's ``flags`` (``STATUS_OK`` and
``STATUS_ERROR`` in ``ops/cuda/gpufeed_op.cuh``, written by device code) and
the one-byte code of a commit-script record (the ``STATUS`` table in
``worker/commit.lua``). ``Status`` holds all three, so none is translated by
hand anywhere else; a unit test holds the Lua table and the CUDA header to it.
"""

from __future__ import annotations

from enum import StrEnum

from gpufeed.errors import InternalError


class Status(StrEnum):
    """``ok``, ``error`` or ``expired``; compares equal to its wire name."""

    OK = "ok"
    ERROR = "error"
    EXPIRED = "expired"

    @property
    def flag(self) -> int:
        """The result slot header's ``flags`` value; an expired message never takes a
        slot, so ``expired`` has none."""
        if self not in _FLAGS:
            raise InternalError(f"a result slot never carries status {self.value!r}")
        return _FLAGS[self]

    @property
    def code(self) -> bytes:
        """The status byte of a commit-script record."""
        return _CODES[self]

    @property
    def dead_letter(self) -> bool:
        """Whether a result with this status is also written to the dead-letter stream:
        an error is; an expired message did nothing wrong."""
        return self is Status.ERROR

    @classmethod
    def of_flag(cls, flag: int) -> Status:
        """The status a result slot's ``flags`` carry; any value but ``ok``'s is an error,
        whatever wrote it."""
        return STATUS_OF_FLAG.get(flag, Status.ERROR)


_FLAGS = {Status.OK: 0, Status.ERROR: 1}
_CODES = {Status.OK: b"o", Status.ERROR: b"e", Status.EXPIRED: b"x"}

STATUS_OK = Status.OK.flag
STATUS_ERROR = Status.ERROR.flag
# Plain dicts for the per-message paths: an enum's own lookups cost several times more.
STATUS_OF_FLAG = {flag: status for status, flag in _FLAGS.items()}
RECORD_CODE = {status.value: code for status, code in _CODES.items()}  # by wire name
