"""The ingest process's life: started by the supervisor with ``spawn``, tied to it,
its rings attached, SIGTERM turned into a drain; the loop itself is ``Ingest``
(worker/ingest.py)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from gpufeed.errors import RingClosed
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.crashlog import Trials
from gpufeed.worker.exits import EXIT_STOPPED, exit_on_known_failures
from gpufeed.worker.gctune import tune_for_hot_loop
from gpufeed.worker.ingest import Ingest
from gpufeed.worker.lifeline import tie_to_parent

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
            ingest.run(drain)
        except RingClosed:
            log.warning("ring closed under the ingest process; exiting")
        finally:
            ingest.timings.flush()
            requests.close()
            responses.close()
    if terminated:
        sys.exit(EXIT_STOPPED)
