"""``gpufeed worker``: starts and watches the ingest processes and the compute process.

Children are started with ``spawn`` (never ``fork``: a forked child of a
process that initialised CUDA cannot use the GPU). The supervisor owns every
ring segment, so they are removed whatever happens to the children.

If a child dies (or exits because it found a ring corrupt), the supervisor
logs why, stops the others, re-creates all rings and starts a fresh set.
Killing the survivors loses nothing: whatever they held is still pending in
Redis, and the new ingest processes re-read their pending history (same
consumer names) before reading new entries.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import structlog
from redis.backoff import ExponentialBackoff

from gpufeed.connect import is_tls_failure
from gpufeed.errors import ConfigError
from gpufeed.ring import RingSegment
from gpufeed.worker import metrics
from gpufeed.worker.access import check_worker_access
from gpufeed.worker.commit import REDIS_ERRORS
from gpufeed.worker.compute import compute_main
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.crashlog import MAX_PENDING, CrashLog
from gpufeed.worker.exits import EXIT_STOPPED, describe_exit, may_be_an_entrys_doing
from gpufeed.worker.ingest_process import ingest_main
from gpufeed.worker.lease import ConsumerLease
from gpufeed.worker.levels import crash_id

log = structlog.get_logger()
_CTX = mp.get_context("spawn")
MAX_RESTART_PAUSE_S = 10.0
# How long a child's clean exit waits for another child's to show what caused it.
CAUSE_GRACE_S = 2.0


@dataclass
class _Generation:
    """One set of rings and the children using them."""

    segments: list[RingSegment] = field(default_factory=list)
    children: list[Any] = field(default_factory=list)
    drain: Any = None
    compute_ready: Any = None  # set once the compute process serves its rings

    def close(self) -> None:
        for proc in self.children:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            if proc.pid is not None:
                metrics.child_exited(proc.pid)
        for segment in self.segments:
            segment.close()


class Supervisor:
    def __init__(
        self, config: WorkerConfig, child_setup: Callable[[str], None] | None = None
    ) -> None:
        """``child_setup(name)`` runs first in every child (the CLI's logging set-up)."""
        self.config = config
        self.child_setup = child_setup
        self.stopping = False
        self.restarts = 0
        # Outlive every child, not the worker (worker/quarantine.py, worker/crashlog.py).
        self._quarantine_dir = tempfile.TemporaryDirectory(prefix="gpufeed-quarantine-")
        self.quarantine_path = Path(self._quarantine_dir.name) / "quarantine"
        self.crashlog = CrashLog(Path(self._quarantine_dir.name) / "entries")
        self.lease: ConsumerLease | None = None
        self.exit_code = 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            log.info("draining", signal=signal.Signals(signum).name)
        self.stopping = True

    def _start(self) -> _Generation:
        cfg = self.config
        gen = _Generation(drain=_CTX.Event(), compute_ready=_CTX.Event())
        capacity = cfg.ring_capacity
        names = []
        for _ in range(cfg.ingest_procs):
            req = RingSegment.create(capacity=capacity, slot_bytes=cfg.slot_bytes)
            resp = RingSegment.create(capacity=capacity, slot_bytes=cfg.slot_bytes)
            gen.segments += [req, resp]
            names.append((req.name, resp.name))
        log.info("rings created", rings=names, capacity=capacity, slot_bytes=cfg.slot_bytes)
        compute = _CTX.Process(
            target=compute_main,
            args=(
                cfg,
                names,
                self.child_setup,
                str(self.quarantine_path),
                os.getpid(),
                gen.compute_ready,
            ),
            name="gpufeed-compute",
        )
        gen.children.append(compute)
        for i, (req_name, resp_name) in enumerate(names):
            gen.children.append(
                _CTX.Process(
                    target=ingest_main,
                    args=(
                        cfg,
                        i,
                        req_name,
                        resp_name,
                        gen.drain,
                        self.child_setup,
                        str(self.crashlog.path),
                        os.getpid(),
                    ),
                    name=f"gpufeed-ingest-{i}",
                )
            )
        for proc in gen.children:
            proc.start()
        return gen

    def _drain(self, gen: _Generation) -> None:
        gen.drain.set()
        deadline = time.monotonic() + self.config.drain_timeout_s
        for proc in gen.children[1:]:  # ingests first: they close the rings compute reads
            proc.join(max(0.0, deadline - time.monotonic()))
        gen.children[0].join(max(0.0, deadline - time.monotonic()))
        late = [p.name for p in gen.children if p.is_alive()]
        if late:
            log.warning("drain timeout; killing", processes=late)
        gen.close()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain; returns the process exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        cfg = self.config
        log.info(
            "worker starting",
            queue=cfg.queue, op=cfg.op, ingest_procs=cfg.ingest_procs, backend=cfg.backend,
            stream=cfg.in_key, group=cfg.group,
        )  # fmt: skip
        try:
            if not self._preflight():
                return 0 if self.stopping else 2
            if cfg.metrics_port:
                metrics.serve(cfg.metrics_port, cfg.metrics_host, metrics.QueueCollector(cfg))
                log.info("metrics endpoint up", port=cfg.metrics_port, path="/metrics")
            while True:
                gen = self._start()
                crashed = self._watch(gen)
                if crashed is None:
                    self._drain(gen)
                    log.info("worker stopped", restarts=self.restarts)
                    return self.exit_code
                # A child sent SIGTERM alone (by an operator, say) is not a failure.
                level = log.warning if crashed.exitcode == EXIT_STOPPED else log.error
                event = "stopped" if crashed.exitcode == EXIT_STOPPED else "died"
                level(f"child {event}; restarting all children", child=crashed.name,
                      reason=describe_exit(crashed.exitcode))  # fmt: skip
                gen.close()
                self._record_crash(gen, crashed)
                self.restarts += 1
                self._pause(min(MAX_RESTART_PAUSE_S, 0.1 * 2 ** min(self.restarts, 7)))
                if self.stopping:
                    return self.exit_code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._quarantine_dir.cleanup()
            self._release_lease()

    def _record_crash(self, gen: _Generation, crashed: Any) -> None:
        """Count a crash an entry may have caused against every entry pending for the
        consumers involved: all of them if the compute process died, the one ingest
        process's own if it did (worker/crashlog.py)."""
        code = crashed.exitcode
        started = crashed is not gen.children[0] or gen.compute_ready.is_set()
        if not (may_be_an_entrys_doing(code) and started):
            # Not an entry's doing, or a compute process that never got as far as
            # reading one (a GPU busy at start, a bad op): nothing is counted.
            self.crashlog.forget_trials()
            return
        cfg = self.config
        index = gen.children.index(crashed) - 1  # children: compute, then ingest 0, 1...
        consumers = [cfg.consumer_name(i) for i in range(cfg.ingest_procs) if index in (-1, i)]
        pending: dict[bytes, str] = {}
        try:
            client = cfg.redis.connect(socket_timeout=5.0)
            try:
                for consumer in consumers:
                    for level, stream in enumerate(cfg.level_keys):
                        rows: Any = client.xpending_range(
                            stream, cfg.group, "-", "+", MAX_PENDING, consumername=consumer
                        )
                        pending.update((crash_id(level, r["message_id"]), consumer) for r in rows)
            finally:
                client.close()
        except Exception as exc:  # not worth the supervisor's life: nothing is counted
            log.warning("pending entries unknown after a crash; not counted", error=str(exc))
            self.crashlog.forget_trials()
            return
        self.crashlog.record_crash(pending, describe_exit(code), consumers)

    def _preflight(self) -> bool:
        """Wait for Redis, then check the user may do all a worker does.

        False when the worker must not start (logged: bad credentials, a failed
        TLS handshake, missing ACL permissions) or a stop came while waiting.
        """
        target = self.config.redis
        backoff = ExponentialBackoff(cap=5.0, base=0.1)
        failures = 0
        while not self.stopping:
            try:
                check_worker_access(self.config)
                client = target.connect(socket_timeout=1.0, socket_connect_timeout=1.0)
                lease = ConsumerLease(client, self.config)
                lease.acquire()
                lease.keep()
                self.lease = lease
                return True
            except ConfigError as exc:
                log.error("worker cannot start", reason=str(exc))
                return False
            except redis.AuthenticationError as exc:
                log.error("worker cannot start: Redis refused the credentials",
                          url=target.safe_url, error=str(exc))  # fmt: skip
                return False
            except (*REDIS_ERRORS, redis.RedisClusterException, redis.ResponseError) as exc:
                # A refused command (out of memory, say) may pass: wait as for a server
                # that is down. Missing permissions were named above (ConfigError).
                if is_tls_failure(exc):
                    log.error("worker cannot start: TLS handshake failed",
                              url=target.safe_url, error=str(exc))  # fmt: skip
                    return False
                failures += 1
                pause = backoff.compute(failures)
                log.warning("waiting for redis", url=target.safe_url, error=str(exc),
                            pause_s=round(pause, 2))  # fmt: skip
                self._pause(pause)
        return False

    def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when a stop is requested."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stopping:
            self._renew_lease()
            time.sleep(0.05)

    def _renew_lease(self) -> None:
        """Stop, exit 2, if another worker took over the consumer name (this one looked
        dead: Redis unreachable past the lease's life). A thread renews it."""
        if self.lease is None:
            return
        if self.lease.lost and not self.stopping:
            log.error("another worker took over this worker's consumer name; stopping",
                      consumer=self.lease.name)  # fmt: skip
            self.stopping = True
            self.exit_code = 2

    def _release_lease(self) -> None:
        if self.lease is None:
            return
        try:
            self.lease.release()
        except Exception as exc:  # it expires on its own
            log.warning("consumer name lease not released", error=str(exc))

    def _watch(self, gen: _Generation) -> Any | None:
        """Wait for a stop request (None) or a child that ended on its own (the one
        whose exit code tells why, when several ended)."""
        sentinels = {proc.sentinel: proc for proc in gen.children}
        while not self.stopping:
            self._renew_lease()
            ready = mp.connection.wait(list(sentinels), timeout=0.2)
            if ready:
                ended = [sentinels[r] for r in ready]
                for child in ended:
                    child.join(5)  # reap it, so its exit code is known
                if all(child.exitcode in (0, EXIT_STOPPED) for child in ended):
                    # A clean exit is an echo: the compute process ends when the
                    # other side closes its rings. Give the cause a moment to end.
                    # A stop on request is often a signal to the whole process
                    # group, on its way to this process too.
                    others = [s for s in sentinels if s not in ready]
                    for r in mp.connection.wait(others, timeout=CAUSE_GRACE_S):
                        sentinels[r].join(5)
                        ended.append(sentinels[r])
                if self.stopping:
                    return None  # the children were told as well: a drain, not a death
                # The cause: a death an entry may have caused, else any other failure.
                return next((c for c in ended if may_be_an_entrys_doing(c.exitcode)),
                            next((c for c in ended if c.exitcode != 0), ended[0]))  # fmt: skip
        return None
