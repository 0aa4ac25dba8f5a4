"""The compute process: request rings in, backend, response rings out. No network I/O."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gpufeed.errors import DeviceLost, PeerGone, RingClosed
from gpufeed.gpu.backend import Backend, Completed
from gpufeed.gpu.select import make_backend
from gpufeed.ops.registry import OpTable
from gpufeed.packing.layout import cost_stamp, headers, payload_capacity
from gpufeed.packing.results import write_results
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker import metrics
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.exits import EXIT_DEVICE_LOST, exit_on_known_failures
from gpufeed.worker.gctune import tune_for_hot_loop
from gpufeed.worker.lifeline import tie_to_parent
from gpufeed.worker.quarantine import Quarantine, QuarantinedBackend, lost_device
from gpufeed.worker.timings import StageLog

log = structlog.get_logger()

# Longest single wait on one ring while every ring is idle. With several
# ingest processes a sleeper can only wait on one ring's futex, so it rotates
# among them; this bounds how late a batch on another ring is noticed.
IDLE_SLICE_S = 0.002


@dataclass
class RingPair:
    """The two rings one ingest process shares with the compute process."""

    requests: RingConsumer
    responses: RingProducer
    open: bool = True


def _write(pair: RingPair, done: Completed, stamp: int = 0) -> None:
    """Put one finished batch into its response ring, waiting for room if need be;
    ``stamp``, its cost (``layout.cost_stamp``), goes into its first result slot."""
    n, row = len(done.requests), 0
    while row < n:
        first, second = pair.responses.reserve(n - row, timeout=1.0)
        k = len(first) + len(second)
        if k == 0:
            pair.responses.check_peer()
            continue
        end = row + k
        write_results(
            (first, second),
            done.requests[row:end],
            done.out[row:end],
            done.out_lens[row:end],
            done.status[row:end],
            stamp if row == 0 else 0,
        )
        pair.responses.commit(k)
        row = end


def _finish(pair: RingPair, ring: int, exc: RingClosed | PeerGone) -> None:
    """Stop serving a pair whose ingest process closed its rings or died."""
    pair.open = False
    log.info("ring pair finished", ring=ring, reason=type(exc).__name__)


def serve(
    pairs: list[RingPair], backend: Backend, max_batch: int, timings: StageLog | None = None
) -> None:
    """Round-robin over the request rings until every one is closed and drained."""
    trace = timings is not None and timings.enabled
    # (ring, first seq) -> when it was submitted: each batch's cost for the ingest
    # processes' cost model, and its stage stamps while tracing.
    peeked: dict[tuple[int, int], int] = {}
    last_done = 0  # when the last batch finished
    start = 0
    while any(p.open for p in pairs) or backend.in_flight():
        worked = False
        n = len(pairs)
        for k in range(n):
            i = (start + k) % n
            pair = pairs[i]
            if not pair.open:
                continue
            try:
                first, second = pair.requests.peek(max_batch)
            except (RingClosed, PeerGone) as exc:
                _finish(pair, i, exc)
                continue
            if len(first):
                now = time.monotonic_ns()
                for part in (first, second):
                    if len(part):
                        peeked[i, int(headers(part)["seq"][0])] = now
                backend.submit(i, first)
                if len(second):
                    backend.submit(i, second)
                pair.requests.release(len(first) + len(second))
                worked = True
        start = (start + 1) % max(n, 1)
        for done in backend.poll(0.0 if worked else IDLE_SLICE_S):
            pair = pairs[done.ring]
            if not pair.open:
                continue  # its ingest process is gone; the messages wait in Redis
            computed = done.finished_ns or time.monotonic_ns()
            n = len(done.requests)
            submitted = peeked.pop((done.ring, int(done.requests["seq"][0])), 0) if n else 0
            stamp = 0
            if submitted:
                stamp = cost_stamp(n, (computed - max(submitted, last_done)) / 1e9)
            last_done = computed
            try:
                _write(pair, done, stamp)
            except (RingClosed, PeerGone) as exc:
                _finish(pair, done.ring, exc)
            if trace and timings is not None and n:
                timings.add({
                    "ring": pair.requests.segment.name, "seq": int(done.requests["seq"][0]),
                    "n": n, "peeked": submitted, "computed": computed,
                    "written": time.monotonic_ns(),
                })  # fmt: skip
            if len(peeked) > 4 * max_batch:  # a backend that merged or split batches
                peeked.clear()
        if not worked and not backend.in_flight():
            idle = [p for p in pairs if p.open]
            if idle:
                idle[start % len(idle)].requests.wait_ready(IDLE_SLICE_S if n > 1 else 0.05)


def compute_main(
    config: WorkerConfig,
    rings: list[tuple[str, str]],
    setup: Callable[[str], None] | None = None,
    quarantine_path: str | None = None,
    supervisor_pid: int | None = None,
    ready: Any = None,
) -> None:
    """Entry point of the compute process (started with ``spawn``).

    ``quarantine_path`` is the supervisor's quarantine file, which outlives
    this process (``worker/quarantine.py``); it dies with ``supervisor_pid``
    (``worker/lifeline.py``).
    """
    # The supervisor coordinates shutdown; this process ends when its rings close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if supervisor_pid is not None:
        tie_to_parent(supervisor_pid)
    if setup is not None:
        setup("compute")
    table = OpTable.for_worker(
        config.op, payload_capacity(config.slot_bytes), dense_model=config.dense_model
    )
    backend = make_backend(config.backend_settings, table, config.slot_bytes, config.max_batch)
    quarantine = Quarantine(Path(quarantine_path)) if quarantine_path else None
    if quarantine is not None:
        backend = QuarantinedBackend(backend, quarantine)
    names = [name for pair in rings for name in pair]
    with exit_on_known_failures(*names):
        pairs = [
            RingPair(
                RingConsumer.attach(req, spin=config.ring_spin),
                RingProducer.attach(resp, spin=config.ring_spin),
            )
            for req, resp in rings
        ]
        backend.attach_request_rings([p.requests.segment.slots_readonly for p in pairs])
        log.info("compute started", backend=backend.name, rings=len(pairs), op=table.default.name)
        if ready is not None:  # from here on, a death may be an entry's doing
            ready.set()
        metrics.BACKEND.labels(backend.name, table.default.name).set(1)
        tune_for_hot_loop(on_pause=metrics.gc_paused)
        started = time.monotonic()
        lost = False
        timings = StageLog("compute timings", config.trace_timings)
        try:
            serve(pairs, backend, config.max_batch, timings)
        except DeviceLost as exc:
            lost = True
            held = lost_device(backend, quarantine, exc) if quarantine is not None else 0
            log.error("GPU lost; exiting so that the supervisor starts a fresh compute process",
                      error=str(exc), quarantined=held)  # fmt: skip
        finally:
            timings.flush()
            if not lost:  # a lost context cannot free anything; process exit does
                backend.close()
            for pair in pairs:
                pair.requests.close()
                pair.responses.close()
    if lost:
        # Not sys.exit: finalisers and atexit hooks would call into the lost context.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_DEVICE_LOST)
    log.info("compute stopped", uptime_s=round(time.monotonic() - started, 1))
