"""The chaos suite's report: one row per scenario, written to docs/reliability.md.

Rows are collected during the run. The table is printed at the end, and
written to the file named by ``GPUFEED_CHAOS_REPORT`` (``make chaos`` sets
it), so a quick ``make test`` run does not rewrite the committed document.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
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
    # The test that recorded the row, so that a failure after it can be shown on it:
    # rows are recorded before the assertions, whose figures they report.
    test: str = field(default_factory=lambda: os.environ.get("PYTEST_CURRENT_TEST", ""))
    failed: bool = False


ROWS: list[Row] = []


def record(row: Row) -> None:
    ROWS.append(row)


def mark_failed(nodeid: str) -> None:
    for row in ROWS:
        if row.test.rsplit(" (", 1)[0] == nodeid:  # "<nodeid> (call)"
            row.failed = True


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
    for r in sorted(ROWS, key=lambda row: row.scenario):
        detail = f"**FAILED**; {r.detail}" if r.failed else r.detail
        lines.append(f"| {r.scenario} | {r.messages:,} | {r.lost} | {r.duplicated} | "
                     f"{r.duration_s:.1f} | {detail} |")  # fmt: skip
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
- *lost*: inputs with no result (for the machine-crash row, inputs the server
  had acknowledged that are gone after it came back). *duplicated*: results
  beyond the first for one input.
- A worker or compute process killed at any moment loses nothing: whatever
  it held is still pending in Redis and is re-read (same consumer name) or
  reclaimed. The commit script answers only entries still pending for the
  consumer that commits them, so none is answered twice.
- `appendfsync always`: a crashed Redis comes back with every acknowledged
  write. `everysec`: a Redis *process* crash loses nothing either (writes
  are already in the page cache); a *machine* crash can lose the last
  second. Inputs written in it are gone, and producers must resend them.
  Results and acknowledgements written in it vanish together (one script
  call is one MULTI/EXEC in the AOF), so their messages are answered again,
  once. The suite emulates that crash by restoring an earlier copy of the
  append-only files.
- A ring header damaged by another process is found by the side reading
  it (the magic within 64 cursor reads, a wild cursor on the next read); that
  process exits with code 3 and the supervisor rebuilds every ring. What the
  rings held is still pending in Redis and is read again.
- The hostile producer writes any field names (the known ones among them,
  duplicated too) with any values: empty, binary, long, a megabyte now and
  then, not UTF-8, numbers written every odd way (padded, signed, exponents,
  `nan`/`inf`, past 2^63 and 2^64, negative zero), `reply_to` streams of
  another type or naming the queue's own input or dead-letter stream; half
  way, the output stream and then the dead-letter stream are replaced by a
  string for a while. Every entry must get exactly one result (on the output
  stream or its `reply_to` stream), every valid one an ok result, every error
  exactly one dead letter, and no child process may restart: bad input is
  answered by packing, anything unexpected by redoing the batch entry by
  entry, and a wrongly typed key holds the commit (nothing written) until it
  is a stream again.
- An entry that kills a child outright (a native crash: nothing to catch)
  is dead-lettered after three restarts, and nothing else is: the first
  crash cannot tell it from the other entries pending with it; entries still
  pending at the second crash are suspects and are each run alone, one at a
  time across the worker, before any other work; the one running when the
  third crash comes is convicted and answered with an error at the next
  start. An innocent suspect costs one run on its own; each further poison
  entry among the suspects, one restart more. Only deaths an entry can cause
  count (a fault signal such as SIGSEGV or SIGABRT, an unexpected exit
  code): SIGKILL and SIGTERM come from outside, so the scenario that
  SIGKILLs the compute process dead-letters nothing.
- A producer over ten times faster than the worker: the worker holds at
  most a full request ring, a full response ring and one batch (reads stop
  when the request ring is full), so its processes' memory stays flat (the
  stated bound: no process grows by more than 16 MiB after a 2 s warm-up) and
  the backlog waits in Redis as unread entries (the group's `lag`).
- The soak loads the worker at 70% of the capacity measured just before
  (with a producer running, as during the soak). Inputs acknowledged are
  deleted and results trimmed, so the accounting uses the streams'
  `entries-added` counters: an input still in the stream at the end is lost,
  a result beyond one per input a duplicate. Latency is the result id time
  minus the input id time, sampled from the newest results 20 times a
  second; each 10 s window has its p99. It fails on RSS growth over 10%
  after warm-up, or on drift: the median window p99 of the last fifth of the
  run over twice that of the first fifth after warm-up (a median, so that
  one noisy window does not decide it, while a worker that slows down moves
  every window). The slowest window, and every window over five times the
  median window's p99, is named with what was recorded during it: the
  worker's garbage collections of 20 ms or more and commit calls of 100 ms
  or more (both in its log), and Redis's latency monitor and slow log (10 ms
  or more; the slow log names the command, the commit script by name). Each
  window also has its account: CPU time per message of the worker, Redis,
  the producer and the sampler; the machine's idle and stolen share, and how
  long some task on the machine waited for a core (the kernel's CPU
  pressure); the worker's mean batch (from its metrics endpoint); and a
  yardstick, the CPU time of a fixed piece of work (a 2 MiB copy and a short
  loop) done by the sampler, which says how fast the machine ran code then.
  A slow window is named with the yardstick's and the worker's CPU against
  their medians, the share of it spent waiting for a core, and a bound of the
  worker's slowest queue wait (input written to read), compute and commit in
  it (from its histograms), which says where its time went. A window over
  five times the median during which the worker stalled itself fails the
  soak. The report compares the first and last fifth's accounts, so that a
  drift shows whose cost grew.
"""


def write_if_asked() -> None:
    target = os.environ.get("GPUFEED_CHAOS_REPORT")
    if target and ROWS:
        Path(target).write_text(render())
