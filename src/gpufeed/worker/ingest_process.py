"""The ingest process's life: started by the supervisor with ``spawn``, tied to it,
its rings attached, SIGTERM turned into a drain, Redis's failures waited out; one
round of the loop is ``Ingest.step`` (worker/ingest.py)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import structlog
from redis.backoff import ExponentialBackoff

from gpufeed.errors import QueueMisconfigured, RingClosed
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.commit import REDIS_ERRORS
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.crashlog import Trials
from gpufeed.worker.exits import EXIT_STOPPED, exit_on_known_failures
from gpufeed.worker.gctune import tune_for_hot_loop
from gpufeed.worker.ingest import Ingest
from gpufeed.worker.lifeline import tie_to_parent
from gpufeed.worker.reader import ensure_group
from gpufeed.worker.suspects import run_trials

log = structlog.get_logger()


def ingest_main(
    config: WorkerConfig,
    index: int,
    requests_name: str,
    responses_name: str,
    drain: Any,
    setup: Callable[[str], None] | None = None,
    crashlog: str | None = None,
    supervisor_pid: int | None = None,
) -> None:
    """Entry point of ingest process ``index`` (started with ``spawn``); ``crashlog``
    is the supervisor's crash log (worker/crashlog.py). It dies with
    ``supervisor_pid``, and drains on SIGTERM (worker/lifeline.py)."""
    ingest: Ingest | None = None
    terminated = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal terminated
        terminated = True
        if ingest is not None:
            ingest.draining = True

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains
    signal.signal(signal.SIGTERM, on_term)
    if supervisor_pid is not None:
        tie_to_parent(supervisor_pid)
    if setup is not None:
        setup(f"ingest-{index}")
    with exit_on_known_failures(requests_name, responses_name):
        requests = RingProducer.attach(requests_name, spin=config.ring_spin)
        responses = RingConsumer.attach(responses_name, spin=config.ring_spin)
        trials = Trials(Path(crashlog), config.consumer_name(index)) if crashlog else None
        ingest = Ingest(config, index, requests, responses, trials)
        ingest.draining = terminated
        tune_for_hot_loop(on_pause=metrics.gc_paused)
        log.info("ingest started", consumer=ingest.consumer, stream=config.in_key)
        try:
            serve(ingest, drain)
        except RingClosed:
            log.warning("ring closed under the ingest process; exiting")
        finally:
            ingest.timings.flush()
            requests.close()
            responses.close()
    if terminated:
        sys.exit(EXIT_STOPPED)


def serve(ingest: Ingest, drain: Any | None = None) -> None:
    """Run ``ingest`` until drained: by ``draining`` (SIGTERM) or the supervisor's ``drain``
    event. Redis errors are waited out with capped exponential backoff; what was read
    and not committed stays pending in Redis, or waits in the ingest process."""
    backoff = ExponentialBackoff(cap=2.0, base=0.05)
    failures = 0
    group_ready = False
    while True:
        if drain is not None and not ingest.draining and drain.is_set():
            ingest.draining = True
        try:
            if not group_ready:
                ensure_group(ingest.client, ingest.config)
                ingest.levels[0].committer.load()  # one script serves every level
                group_ready = True
            if ingest.trials is not None and ingest.trials.pending:
                run_trials(ingest)
            if not ingest.step():
                break
            failures = 0
        except (QueueMisconfigured, redis.ResponseError) as exc:
            # Nothing was written; the results wait here (and no more is read)
            # until someone fixes the key, or the server takes writes again (it
            # was out of memory, a replica, the group was deleted...). Not a
            # restart: a restarted process would meet the same refusal.
            if ingest.draining:
                break  # what was not committed is still pending in Redis
            group_ready = False
            # A pipelined read (priority levels) may have delivered the entries of
            # the levels whose reads went through: read our history again.
            ingest.reader.reread_history()
            failures += 1
            pause = backoff.compute(failures)
            if failures == 1 or failures % 30 == 0:
                what = "queue misconfigured" if isinstance(exc, QueueMisconfigured) \
                    else "redis refused a command"  # fmt: skip
                log.error(f"{what}; results are kept and the commit retried",
                          error=str(exc), attempts=failures)  # fmt: skip
            time.sleep(pause)
        except REDIS_ERRORS as exc:
            failures += 1
            pause = backoff.compute(failures)
            log.warning("redis unavailable; retrying", error=str(exc), pause_s=round(pause, 3))
            time.sleep(pause)
            # A reply lost with the connection may have delivered entries we never
            # saw: re-read our pending history (entries in flight are filtered out).
            ingest.reader.reread_history()
    log.info(
        "ingest drained",
        consumer=ingest.consumer,
        answered=ingest.counts.answered,
        skipped=ingest.counts.skipped,
        **ingest.stats,
    )
