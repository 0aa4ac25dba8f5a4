"""Logging set-up: the one place gpufeed configures logging.

Library modules only ever call ``structlog.get_logger()``. The CLI configures
its own process and hands ``LogSetup`` to the worker, whose spawned children
call it first thing: a ``spawn`` child starts with a fresh interpreter, so it
must be configured again, the same way.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

from gpufeed.errors import ConfigError

LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def check_log_options(log_format: str, level: str) -> None:
    """``ConfigError`` naming the option unless both are known."""
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"--log-format: must be one of {', '.join(LOG_FORMATS)}")
    if level not in LOG_LEVELS:
        raise ConfigError(f"--log-level: must be one of {', '.join(LOG_LEVELS)}")


def resolve_format(log_format: str) -> str:
    """``auto``: console lines on a terminal, JSON lines otherwise (files, collectors)."""
    if log_format == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return log_format


def configure_logging(log_format: str = "auto", process: str = "main", level: str = "info") -> None:
    """Log to stderr as console lines or JSON lines, tagged with the process name and pid."""
    check_log_options(log_format, level)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if resolve_format(log_format) == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    pid = os.getpid()

    def tag(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # A processor, not contextvars: other threads (the ring heartbeat) do not inherit those.
        event.setdefault("process", process)
        event.setdefault("pid", pid)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            tag,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write() per event, newline included: several processes share the
        # same stderr, and print()'s separate write of the newline let another
        # process's line land in between, breaking JSON lines.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


@dataclass(frozen=True)
class LogSetup:
    """What a worker child calls to configure its logging like its parent's (picklable)."""

    log_format: str = "auto"
    level: str = "info"

    def __post_init__(self) -> None:
        check_log_options(self.log_format, self.level)

    def __call__(self, process: str) -> None:
        configure_logging(self.log_format, process, self.level)
