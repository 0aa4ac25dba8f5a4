"""Prometheus metrics, aggregated over every process of a worker.

prometheus-client's multiprocess mode: each process writes its samples to
memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor's
endpoint sums them. The variable must be set before ``prometheus_client`` is
imported in any process: ``gpufeed worker --metrics-port`` sets it before
starting anything, and spawned children inherit it. Without it (tests, library use) the same
metrics simply live in each process's memory.

Hot paths record per batch, never per message: a histogram of per-message
latencies is filled with one ``observe_many`` call per batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import Counter, Gauge, Histogram

from gpufeed.packing import Status

log = structlog.get_logger()

_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `gpufeed worker --metrics-port` before import


# Latency buckets in seconds: 0.5 ms … 60 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

MESSAGES = Counter(
    "gpufeed_messages", "Messages answered, by result status.", ["status"]
)  # fmt: skip
BATCHES = Counter("gpufeed_batches", "Batches read from Redis and packed.")
BATCH_SIZE = Histogram(
    "gpufeed_batch_size_messages", "Messages per packed batch.", buckets=BATCH_BUCKETS
)
QUEUE_WAIT = Histogram(
    "gpufeed_queue_wait_seconds",
    "From XADD (the entry id's time) to the worker reading the entry.",
    buckets=LATENCY_BUCKETS,
)
COMPUTE = Histogram(
    "gpufeed_compute_seconds",
    "Per batch: from packing into the request ring to the last result back.",
    buckets=LATENCY_BUCKETS,
)
COMMIT = Histogram(
    "gpufeed_commit_seconds", "Per commit script call.", buckets=LATENCY_BUCKETS
)  # fmt: skip
GC_PAUSE = Histogram(
    "gpufeed_gc_pause_seconds",
    "Collections of Python's cyclic garbage collector, by generation: the process stalls.",
    ["generation"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END = Histogram(
    "gpufeed_end_to_end_seconds",
    "From XADD (the entry id's time) to its result being committed.",
    buckets=LATENCY_BUCKETS,
)
RING_OCCUPANCY = Gauge(
    "gpufeed_ring_occupancy_slots",
    "Messages in the request/response rings, waiting for or in compute.",
    multiprocess_mode="livesum",
)
LAUNCHES = Counter(
    "gpufeed_batch_launches",
    "Batches sent to compute by why they went then (--max-queue-delay-us).",
    ["why"],
)
SHED = Counter(
    "gpufeed_shed",
    "Messages answered expired because the cost model predicted they would miss "
    "their deadline_ms (not counting those already past it when read).",
)
RECLAIMED = Counter("gpufeed_reclaimed", "Entries taken over from idle consumers (XAUTOCLAIM).")
DEAD_LETTERS = Counter("gpufeed_dead_letter", "Entries written to the dead-letter stream.")
SKIPPED = Counter(
    "gpufeed_commit_skipped", "Results not written: the entry was no longer pending for us."
)
BACKEND = Gauge(
    "gpufeed_backend_info",
    "The compute backend in use (value 1).",
    ["backend", "op"],
    multiprocess_mode="livemax",
)


# Stalls this long are logged as well as counted: a message waiting behind one
# sees it in its latency.
SLOW_GC_S = 0.02
SLOW_COMMIT_S = 0.1


def gc_paused(generation: int, seconds: float, collected: int) -> None:
    """``tune_for_hot_loop``'s ``on_pause``: every collection counted, long ones logged."""
    GC_PAUSE.labels(str(generation)).observe(seconds)
    if seconds >= SLOW_GC_S:
        log.warning("garbage collection stalled the process", generation=generation,
                    pause_ms=round(seconds * 1000, 1), collected=collected)  # fmt: skip


def committed(seconds: float, results: int) -> None:
    """One commit script call took ``seconds``: counted, and logged when slow."""
    COMMIT.observe(seconds)
    if seconds >= SLOW_COMMIT_S:
        log.info("slow commit", ms=round(seconds * 1000, 1), results=results)


def observe_many(histogram: Histogram, values: npt.NDArray[np.float64]) -> None:
    """``histogram.observe(v)`` for every v, with one increment per bucket.

    Reaches into prometheus-client's bucket list (``_buckets``, one non-cumulative
    counter per upper bound, and ``_sum``): observing a thousand values one by
    one costs milliseconds per batch. A unit test holds this to what
    ``observe`` gives, so a change in the library shows up there.
    """
    if len(values) == 0:
        return
    bounds: list[float] = histogram._upper_bounds
    index = np.searchsorted(np.asarray(bounds), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    buckets: list[Any] = histogram._buckets
    for i, n in enumerate(counts.tolist()):
        if n:
            buckets[i].inc(n)
    histogram._sum.inc(float(values.sum()))


def record_commit(counts: Any, born_ms: Any) -> None:
    """Count one commit's results by status, and their end-to-end latency."""
    for status, n in ((Status.OK, counts.ok), (Status.ERROR, counts.dead),
                      (Status.EXPIRED, counts.expired)):  # fmt: skip
        if n:
            MESSAGES.labels(status).inc(n)
    if counts.dead:
        DEAD_LETTERS.inc(counts.dead)
    if counts.skipped:
        SKIPPED.inc(counts.skipped)
    if len(born_ms):
        now_ms = time.time() * 1000
        observe_many(END_TO_END, np.maximum(now_ms - np.asarray(born_ms), 0.0) / 1000)


def serve(port: int, host: str, queue_collector: Any | None) -> Any:
    """Serve the summed metrics of every process (and live queue figures) on ``port``."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if os.environ.get(_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    if queue_collector is not None:
        registry.register(queue_collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def child_exited(pid: int) -> None:
    """Drop a dead child's live gauges (its counters stay in the totals)."""
    if os.environ.get(_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class QueueCollector:
    """Figures read from Redis at scrape time: pending, lag, stream lengths; GPU state."""

    def __init__(self, config: Any) -> None:
        self._client = config.redis.connect(socket_timeout=2.0)
        self._config = config
        self._gpu = _GpuProbe()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from gpufeed.admin.stats import queue_stats

        try:
            s = queue_stats(self._client, self._config.keys, self._config.group)
        except Exception as exc:  # a scrape must not fail because Redis is away
            log.warning("metrics: queue figures unavailable", error=str(exc))
        else:
            labels = ["queue"]
            for name, doc, value in (
                ("gpufeed_pending_entries", "Entries delivered but not yet answered.", s.pending),
                ("gpufeed_group_lag_entries", "Entries not yet delivered to the group.", s.lag),
                ("gpufeed_input_stream_length", "XLEN of the input stream.", s.stream_length),
                ("gpufeed_dead_letter_stream_length", "XLEN of the dead letters.", s.dead_letters),
            ):
                if value is not None:
                    family = GaugeMetricFamily(name, doc, labels=labels)
                    family.add_metric([s.queue], float(value))
                    yield family
            if s.levels:  # each priority level's own backlog
                for name, doc, attr in (
                    ("gpufeed_level_pending_entries", "Pending entries of one priority level.",
                     "pending"),
                    ("gpufeed_level_lag_entries", "Undelivered entries of one priority level.",
                     "lag"),
                ):  # fmt: skip
                    family = GaugeMetricFamily(name, doc, labels=["queue", "level"])
                    for lv in s.levels:
                        value = getattr(lv, attr)
                        if value is not None:
                            family.add_metric([s.queue, str(lv.level)], float(value))
                    yield family
        yield from self._gpu.collect()


class _GpuProbe:
    """GPU memory and utilisation through NVML (nvidia-ml-py), when there is one."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # no library, no driver, no device: no GPU metrics
            log.debug("metrics: no GPU figures", reason=repr(exc))

    def collect(self) -> Iterator[Any]:
        if not self._handles:
            return
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily(
            "gpufeed_gpu_memory_used_bytes", "GPU memory used.", labels=["gpu"]
        )
        util = GaugeMetricFamily(
            "gpufeed_gpu_utilization_ratio", "GPU busy fraction (NVML).", labels=["gpu"]
        )
        for i, handle in enumerate(self._handles):
            used.add_metric([str(i)], float(self._nvml.nvmlDeviceGetMemoryInfo(handle).used))
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            util.add_metric([str(i)], rates.gpu / 100.0)
        yield used
        yield util
