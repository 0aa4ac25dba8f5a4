"""Finding the entry that keeps killing a worker's children, and dead-lettering it.

Crash isolation (``isolate.py``) answers an entry whose handling *raises*. An
entry whose handling kills a process outright (a native crash in an op or a
library, the out-of-memory killer) leaves nothing to catch: the supervisor
restarts the children, the ingest processes re-read their pending history, and
the same entry kills them again, until ``--max-deliveries`` (which counts
reclaims, not these re-reads) or for ever. So the supervisor keeps a crash log:

1. after each crash it asks Redis which entries are pending for its
   consumers, and counts, per entry, the crashes it was pending at (an entry
   answered in between starts again from nothing);
2. an entry pending at ``SUSPECT_AFTER`` crashes in a row is a *suspect*.
   The next children, before anything else, run each suspect alone, one at a
   time across all ingest processes (a file lock), noting ``trying`` before
   and ``cleared`` once its result is committed (``aborted`` if the trial
   ended on an exception, such as a lost connection: it runs again); no other
   work starts until every suspect is cleared;
3. a suspect whose last note is ``trying`` when the children die was alone in
   the worker when they did: it is *poison*. The next children answer it with
   an error result and a dead letter, without running it.

Only a death an entry can cause counts (``exits.may_be_an_entrys_doing``): a
fault signal or an unexpected exit code, not SIGKILL or SIGTERM, which come
from outside (an operator, a container runtime; the out-of-memory killer
cannot be told apart from them, so an entry that exhausts memory natively is
not found this way). And only the entries of the consumers involved count: all
of them when the compute process died, one ingest process's own when it did.

So a poison entry is dead-lettered after three crashes: two to make it a
suspect (the first crash cannot tell it from its batch-mates; the second
leaves those that were answered in between), one to convict it alone. An
innocent suspect costs one run on its own.

The file: one event per line, ``<kind> <entry id> [<consumer> <crashes> <why>]``;
the supervisor rewrites it after each crash, the ingest processes append.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger()

SUSPECT_AFTER = 2
# How many pending entries of each consumer one crash looks at: a ring's worth.
MAX_PENDING = 20_000


@dataclass
class CrashLogState:
    """What the file says now."""

    suspects: dict[bytes, str] = field(default_factory=dict)  # entry id -> consumer
    poison: dict[bytes, str] = field(default_factory=dict)  # entry id -> why
    trial: dict[bytes, bytes] = field(default_factory=dict)  # entry id -> last trial note
    answered: set[bytes] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> CrashLogState:
        state = cls()
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return state
        for line in lines:
            parts = line.split(b" ", 4)
            if len(parts) < 2:
                continue  # a line cut short by a crash mid-write
            kind, entry_id = parts[0], parts[1]
            if kind == b"suspect" and len(parts) >= 3:
                state.suspects[entry_id] = parts[2].decode(errors="replace")
            elif kind == b"poison":
                state.poison[entry_id] = parts[4].decode(errors="replace") if len(parts) > 4 else ""
            elif kind in (b"trying", b"cleared", b"aborted"):
                state.trial[entry_id] = kind
            elif kind == b"answered":
                state.answered.add(entry_id)
        return state

    @property
    def unresolved(self) -> set[bytes]:
        """Suspects not yet run alone to the end."""
        return {i for i in self.suspects if self.trial.get(i) != b"cleared"}

    @property
    def on_trial(self) -> set[bytes]:
        """Suspects whose trial began and neither ended nor was given up."""
        return {i for i in self.suspects if self.trial.get(i) == b"trying"}


class CrashLog:
    """The supervisor's side: counts crashes per pending entry and writes the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # entry id -> (its consumer, the crashes of that consumer's it was pending at, in a row)
        self._crashes: dict[bytes, tuple[str, int]] = {}
        self._poison: dict[bytes, tuple[str, str]] = {}  # entry id -> (consumer, why)

    def record_crash(
        self, pending: dict[bytes, str], why: str, consumers: Iterable[str] | None = None
    ) -> None:
        """After a crash that involved ``consumers`` (by default those in ``pending``):
        ``pending`` maps the entries pending for them then to their consumer; ``why``
        is how the child died. Other consumers' counts and suspects stand."""
        involved = set(pending.values() if consumers is None else consumers)
        state = CrashLogState.read(self.path)
        for entry_id in state.answered:
            self._poison.pop(entry_id, None)
        for entry_id in state.on_trial:
            if entry_id in pending:  # it was alone in the worker when the children died
                crashes = self._crashes.get(entry_id, ("", 0))[1] + 1
                self._poison[entry_id] = (
                    pending[entry_id],
                    f"the worker's processes died {crashes} times while this entry was "
                    f"pending, the last time while it was handled alone ({why})",
                )
                log.error("entry convicted of crashing the worker", entry_id=entry_id.decode(),
                          crashes=crashes, reason=why)  # fmt: skip
        # Poison of an involved consumer no longer pending was answered elsewhere.
        self._poison = {i: p for i, p in self._poison.items()
                        if p[0] not in involved or i in pending}  # fmt: skip
        before = self._crashes
        self._crashes = {i: cc for i, cc in before.items() if cc[0] not in involved}
        self._crashes.update((i, (c, before.get(i, (c, 0))[1] + 1)) for i, c in pending.items())
        suspects = {i: cc for i, cc in self._crashes.items()
                    if cc[1] >= SUSPECT_AFTER and i not in self._poison}  # fmt: skip
        lines = [b"suspect %s %s %d" % (i, c.encode(), n) for i, (c, n) in suspects.items()]
        lines += [b"poison %s %s %d %s" % (i, c.encode(), self._count(i), w.encode())
                  for i, (c, w) in self._poison.items()]  # fmt: skip
        self.path.write_bytes(b"".join(line + b"\n" for line in lines))
        if suspects or self._poison:
            log.warning("entries pending across crashes", suspects=len(suspects),
                        poison=len(self._poison), path=str(self.path))  # fmt: skip

    def forget_trials(self) -> None:
        """After a death that counts against no entry: the trials it cut short were not
        the suspects' doing, and must not convict them at the next death."""
        state = CrashLogState.read(self.path)
        if state.on_trial:
            with self.path.open("ab") as f:
                f.write(b"".join(b"aborted %s\n" % i for i in state.on_trial))

    def _count(self, entry_id: bytes) -> int:
        return self._crashes.get(entry_id, ("", 0))[1]


class Trials:
    """An ingest process's side: its suspects to run alone, and the poison to answer."""

    def __init__(self, path: Path, consumer: str) -> None:
        self.path = path
        state = CrashLogState.read(path)
        self.mine = [i for i, c in state.suspects.items() if c == consumer]
        self.poison = {i: why for i, why in state.poison.items() if i not in state.answered}
        self._any = bool(state.suspects)

    @property
    def pending(self) -> bool:
        """Whether this worker still has suspects to run alone (this process's or others')."""
        return self._any

    def _append(self, kind: bytes, entry_id: bytes) -> None:
        # One write per event, straight to the file: the next line may be the one
        # that takes the process down.
        with self.path.open("ab") as f:
            f.write(b"%s %s\n" % (kind, entry_id))

    @contextlib.contextmanager
    def alone(
        self, entry_id: bytes, given_up_on: tuple[type[BaseException], ...] = ()
    ) -> Iterator[None]:
        """Run one suspect with nothing else of this worker's in flight: across ingest
        processes, one at a time (a lock file); ``trying`` before, ``cleared`` after,
        ``aborted`` if the trial raised one of ``given_up_on`` (not the suspect's
        doing: Redis away or refusing). Anything else leaves ``trying``: the process
        is on its way down, perhaps because of the suspect."""
        with self.path.with_suffix(".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._append(b"trying", entry_id)
                try:
                    yield
                except given_up_on:
                    self._append(b"aborted", entry_id)
                    raise
                self._append(b"cleared", entry_id)
                if entry_id in self.mine:
                    self.mine.remove(entry_id)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def answered(self, entry_id: bytes) -> None:
        self.poison.pop(entry_id, None)
        self._append(b"answered", entry_id)

    def wait_for_the_others(
        self, timeout_s: float = 600.0, stop: Callable[[], bool] = lambda: False
    ) -> None:
        """Until every suspect of every ingest process has been run alone (or ``stop()``
        says to give up): until then, work of ours beside a suspect would blur who
        crashed the worker."""
        deadline = time.monotonic() + timeout_s
        while CrashLogState.read(self.path).unresolved and time.monotonic() < deadline:
            if stop():
                return
            time.sleep(0.05)
        self._any = False
