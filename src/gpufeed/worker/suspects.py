"""Entries suspected of crashing the worker (worker/crashlog.py), as the ingest process
meets them: the convicted answered with an error, the suspects run alone first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
import structlog

from gpufeed.errors import QueueMisconfigured
from gpufeed.packing import Columns, Entry, Status, error_result
from gpufeed.worker.commit import REDIS_ERRORS
from gpufeed.worker.isolate import as_entries, as_ids
from gpufeed.worker.levels import crash_id, parse_crash_id

if TYPE_CHECKING:
    from gpufeed.worker.ingest import Ingest

log = structlog.get_logger()

# What ends a suspect's trial without saying anything about the suspect.
GIVEN_UP_ON = (*REDIS_ERRORS, redis.ResponseError, QueueMisconfigured)


def answer_poison(
    ingest: Ingest, level: int, entries: list[Entry] | Columns
) -> list[Entry] | Columns:
    """Answer the entries convicted of crashing the worker with an error; the rest."""
    assert ingest.trials is not None
    poison = ingest.trials.poison
    if not poison.keys() & {crash_id(level, i) for i in as_ids(entries)}:
        return entries
    kept: list[Entry] = []
    for entry in as_entries(entries):
        name = crash_id(level, entry[0])
        why = poison.get(name)
        if why is None:
            kept.append(entry)
            continue
        ingest.levels[level].to_commit.extend(
            [error_result(entry[0], why, entry[1], ingest.reply_to_check)]
        )
        ingest.log_failed(entry[0], why, Status.ERROR, level)
        ingest.trials.answered(name)
    return kept


def run_trials(ingest: Ingest) -> None:
    """Before any other work: run each suspect of this consumer alone, through the
    ring and the compute process to its commit; then wait for the other ingest
    processes' suspects."""
    trials = ingest.trials
    assert trials is not None
    for name in list(trials.mine):
        level, entry_id = parse_crash_id(name)
        if level >= len(ingest.levels):  # the worker ran with more levels then
            log.warning("suspect of a priority level this worker does not read; dropped",
                        entry_id=name.decode(), priorities=len(ingest.levels))  # fmt: skip
            trials.answered(name)
            continue
        while ingest.in_flight:  # a trial cut short by a lost connection, say
            ingest.collect(timeout=0.05)
        ingest.commit()  # nothing of ours beside the suspect, not even in Redis's hands
        with trials.alone(name, given_up_on=GIVEN_UP_ON):
            found: Any = ingest.client.xrange(ingest.levels[level].stream, entry_id, entry_id)
            entries: list[Entry] | Columns = [(entry_id, found[0][1] if found else None)]
            if trials.poison:
                entries = answer_poison(ingest, level, entries)
            if entries:
                out = ingest.requests.reserve(1, timeout=None)
                ingest.send(entries, out, fresh=False, level_index=level)
            while ingest.in_flight:
                ingest.collect(timeout=0.05)
            ingest.commit()
        log.info("suspect ran alone and was answered", entry_id=name.decode())
    trials.wait_for_the_others(stop=lambda: ingest.draining)
