"""How a worker's child ends on what it recovers from: one line, a code the supervisor
reads, and no traceback."""

from __future__ import annotations

import signal

import pytest
import structlog

from gpufeed.errors import ResultOutOfOrder, RingCorrupt
from gpufeed.worker.exits import (
    EXIT_DEVICE_LOST,
    EXIT_INTERNAL,
    EXIT_RING_CORRUPT,
    EXIT_STOPPED,
    describe_exit,
    exit_on_known_failures,
    may_be_an_entrys_doing,
)

OUT_OF_ORDER = "result slot carries seq 7, expected 3"


@pytest.mark.parametrize(
    ("error", "code", "event", "fields", "said"),
    [
        (RingCorrupt("head", "past the tail"), EXIT_RING_CORRUPT, "ring corrupt",
         {"field": "head", "detail": "past the tail"}, "found a ring corrupt"),
        (ResultOutOfOrder(OUT_OF_ORDER), EXIT_INTERNAL, "internal error",
         {"kind": "ResultOutOfOrder", "error": OUT_OF_ORDER}, "found an internal error"),
    ],
)  # fmt: skip
def test_a_known_failure_is_one_log_line_and_an_exit_code(error, code, event, fields, said):
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(SystemExit) as ended,
        exit_on_known_failures("ring-a", "ring-b"),
    ):
        raise error
    assert ended.value.code == code
    (line,) = logs
    assert line["event"].startswith(event) and line["log_level"] == "error"
    assert {k: line[k] for k in fields} == fields and line["rings"] == ["ring-a", "ring-b"]
    assert describe_exit(code).startswith(said)


def test_anything_else_still_raises() -> None:
    with pytest.raises(KeyError), exit_on_known_failures():
        raise KeyError("not ours to hide")


@pytest.mark.parametrize(
    ("code", "may_be"),
    [
        (-signal.SIGSEGV, True), (-signal.SIGBUS, True), (-signal.SIGABRT, True),
        (-signal.SIGFPE, True), (1, True), (EXIT_INTERNAL, True),
        # from outside: an operator, a container runtime, the out-of-memory killer
        (-signal.SIGKILL, False), (-signal.SIGTERM, False), (-signal.SIGINT, False),
        (0, False), (None, False), (EXIT_RING_CORRUPT, False), (EXIT_DEVICE_LOST, False),
        (EXIT_STOPPED, False),  # drained on request
    ],
)  # fmt: skip
def test_only_a_death_an_entry_can_cause_counts_against_entries(code, may_be) -> None:
    assert may_be_an_entrys_doing(code) is may_be
