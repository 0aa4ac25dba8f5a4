"""The chaos suite's report: one row per scenario, written to docs/reliability.md.

Rows are collected during the run. The table is printed at the end, and
written to the file named by ``GPUFEED_CHAOS_REPORT`` (``make chaos`` sets
it), so a quick ``make test`` run does not rewrite the committed document.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

# "long" (make chaos) or "quick" (make test): how hard each scenario pushes.
SCALE = os.environ.get("GPUFEED_CHAOS_SCALE", "quick")


def sized(quick: int, long: int) -> int:
    return long if SCALE == "long" else quick


@dataclass
class Row:
    scenario: str
    messages: int
    lost: int
    duplicated: int
    duration_s: float
    detail: str = ""


ROWS: list[Row] = []


def record(row: Row) -> None:
    ROWS.append(row)


def render() -> str:
    lines = [
        "# Reliability: what the chaos suite measured",
        "",
        "Written by `tests/chaos` (`make chaos`); do not edit by hand.",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, scale `{SCALE}`, "
        f"{platform.machine()} with {os.cpu_count()} CPUs.",
        "",
        "| scenario | messages | lost | duplicated | duration (s) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        lines.append(f"| {r.scenario} | {r.messages:,} | {r.lost} | {r.duplicated} | "
                     f"{r.duration_s:.1f} | {r.detail} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_if_asked() -> None:
    target = os.environ.get("GPUFEED_CHAOS_REPORT")
    if target and ROWS:
        Path(target).write_text(render())
