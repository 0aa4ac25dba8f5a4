"""Soak: a steady load at about 70% of the worker's measured capacity.

Capacity is measured first, with an unpaced producer running alongside the
worker, as it will during the soak. Then every ``SAMPLE_S`` the test samples
each worker process's RSS and the latency of the newest results (result id
time minus input id time, both Redis millisecond clocks). It fails if any
process grows by more than 10% after warm-up, or if the latency drifts: the
median of the per-window p99s in the last fifth of the run more than twice
that of the first fifth after warm-up. One noisy window moves a median
little, while a worker that slows down moves every window. ``make soak`` runs
it for 10 minutes, ``make test`` for 20 seconds; ``GPUFEED_SOAK_S`` overrides.

The report names the slowest window, and every window over five times the
median one, with what was recorded during each: the worker's own stalls
(garbage collections of 20 ms or more, commit calls of 100 ms or more, both
logged by the worker) and Redis's (its latency monitor, events of 10 ms or
more, and the slow log, which names the command). A slow window with none
of these is the machine's: a process that waited for a core, or cores that
ran slower. Each window has an account (``accounting``) to judge that by:
every process's CPU time per message, the machine's idle and stolen time,
how long tasks waited for a core, the worker's mean batch and its slowest
queue wait, compute and commit (the worker serves its metrics, as in
production), and a yardstick's CPU time. A spike during which the worker
stalled itself fails the soak.

The 20-second run is a smaller check of the same machinery: its windows are
one second, where a p99 is decided by one or two scheduler stalls on a shared
machine, so it compares per-window medians, and it loads the worker at 50%,
since the capacity a full backlog shows (full batches) overstates what a
paced load of smaller batches sustains, which on two cores puts 70% close to
saturation.

Millions of messages do not fit a per-message check, so the worker deletes
acknowledged inputs (``--delete-acked``) and trims results, and the streams'
``entries-added`` counters do the accounting: an input still in the stream
after the run is lost, a result beyond one per input is a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime
from typing import Any

import numpy as np
import pytest
import redis
from accounting import account, compare, medians_of, read, slow_window, yardstick_us
from harness import start_producer
from report import Row, record, sized

from conftest import keys, rss_kib, spawned_children
from gpufeed.embedded import free_port
from gpufeed.packing.ids import id_ms
from gpufeed.worker.commit import COMMIT_LUA

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

SOAK_S = float(os.environ.get("GPUFEED_SOAK_S", sized(20, 600)))
SAMPLE_S = sized(1, 10)
WARM_UP_S = sized(4, 60)
LOAD = float(sized(50, 70)) / 100
RSS_GROWTH_LIMIT = 0.10
DRIFT_LIMIT = 2.0
# A window whose latency percentile is this many times the median window's is a
# spike: the soak names what the worker and Redis recorded during each one, and
# fails on one during which the worker stalled itself.
SPIKE_FACTOR = 5
WINDOW_PERCENTILE = sized(50, 99)
COMMIT_SHA = hashlib.sha1(COMMIT_LUA.encode()).hexdigest()
# The worker's and Redis's stalls worth naming (the worker logs its own at these).
GC_STALL, SLOW_COMMIT = "garbage collection stalled the process", "slow commit"
REDIS_LATENCY_MS = 10
# Latencies are differences of two millisecond clocks: below this, a "drift"
# is the clocks' rounding, not the worker slowing down.
LATENCY_FLOOR_MS = 2.0
# The latency sample: the newest PROBE results, read every PROBE_EVERY_S, so a
# window's sample is spread over all of it at little cost to a shared machine.
PROBE, PROBE_EVERY_S = 100, 0.05


def _added(client: redis.Redis, key: str) -> int:
    """Entries ever added to the stream, trimmed or deleted ones included (Redis >= 7)."""
    try:
        return int(client.xinfo_stream(key)["entries-added"])
    except redis.ResponseError:  # no such key: nothing added yet
        return 0


def _wait_answered(client: redis.Redis, queue: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _added(client, keys(queue)[1]) < total and time.monotonic() < deadline:
        time.sleep(0.05)


def _capacity(client: redis.Redis, redis_url: str, queue: str, n: int) -> float:
    """Messages per second the worker answers while an unpaced producer writes.

    Timed only while the producer runs: the worker then competes with it for
    the machine, as during the soak. A worker faster than the producer is
    timed at the producer's rate, which only makes the soak's load lighter.
    """
    out = keys(queue)[1]
    before = _added(client, out)
    producer = start_producer(redis_url, queue, n, 1e-6)
    while _added(client, out) == before:
        time.sleep(0.01)
    time.sleep(0.5)  # past the first batches
    t0, done0 = time.monotonic(), _added(client, out)
    producer.join(120)
    t1, done1 = time.monotonic(), _added(client, out)
    assert t1 - t0 > 1.0, "the producer finished too soon to time the worker"
    _wait_answered(client, queue, before + n, 120)
    return (done1 - done0) / (t1 - t0)


def _latencies_ms(client: redis.Redis, out: str) -> list[float]:
    newest: Any = client.xrevrange(out, count=PROBE)
    return [float(id_ms(rid) - id_ms(fields[b"src"])) for rid, fields in newest]


def _log_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"]).timestamp()  # "…Z": Python ≥ 3.11


def _stalls_during(
    worker, client: redis.Redis, start: float, end: float
) -> tuple[list[str], list[str]]:
    """What the worker, and what Redis, recorded between two wall-clock times."""
    worker_said, redis_said = [], []
    for event, key, what in (
        (GC_STALL, "pause_ms", "GC pause"),
        (SLOW_COMMIT, "ms", "slow commit"),
    ):
        found = [r[key] for r in worker.events(event) if start <= _log_time(r) <= end]
        if found:
            worker_said.append(f"{len(found)} × {what} (longest {max(found):.0f} ms)")
    for name, *_ in client.execute_command("LATENCY", "LATEST"):
        history = client.execute_command("LATENCY", "HISTORY", name)
        found = [ms for ts, ms in history if start - 1 <= ts <= end + 1]
        if found:
            redis_said.append(f"Redis {name.decode() if isinstance(name, bytes) else name} "
                              f"{max(found)} ms")  # fmt: skip
    slow: dict[str, int] = {}
    for entry in client.slowlog_get(1024):
        if start - 1 <= entry["start_time"] <= end + 1:
            command = entry["command"]
            name = command.decode(errors="replace") if isinstance(command, bytes) else command
            words = name.split()
            name = words[0].upper() if words else "?"
            if name == "EVALSHA" and len(words) > 1 and words[1] == COMMIT_SHA:
                name = "commit script"
            slow[name] = max(slow.get(name, 0), entry["duration"] // 1000)
    redis_said += [f"slow {name} {ms} ms" for name, ms in sorted(slow.items())]
    return worker_said, redis_said


def _account(worker, client: redis.Redis, window: dict[str, Any], usual: dict[str, float]) -> str:
    worker_said, redis_said = _stalls_during(worker, client, *window["wall"])
    said = ", ".join(worker_said + redis_said) or "no stall logged by the worker or Redis"
    return f"{window['of_window']:.0f} ms at {window['t_s']:.0f} s: {said}; " + slow_window(
        window, usual
    )


def test_soak_at_seventy_percent_of_capacity(client, redis_server, queue, start_worker) -> None:
    stream, out, _ = keys(queue)
    started = time.monotonic()
    port = free_port()
    worker = start_worker("--max-batch", "256", "--delete-acked", "--out-maxlen", "100000",
                          "--log-format", "json", "--metrics-port", str(port))  # fmt: skip
    worker.wait_ready(client, stream)
    client.config_set("latency-monitor-threshold", REDIS_LATENCY_MS)
    client.execute_command("LATENCY", "RESET")
    # The slow log names the commands behind the latency monitor's "command" events.
    client.config_set("slowlog-log-slower-than", REDIS_LATENCY_MS * 1000)
    client.config_set("slowlog-max-len", 1024)
    client.slowlog_reset()
    pids = [worker.proc.pid, *spawned_children(worker.proc.pid)]
    capacity = _capacity(client, redis_server.url, queue, sized(200_000, 600_000))
    n = int(LOAD * capacity * SOAK_S)
    producer = start_producer(redis_server.url, queue, n, SOAK_S)
    processes = {"worker": worker.proc.pid, "redis": redis_server.proc.pid,
                 "producer": producer.pid, "sampler": os.getpid()}  # fmt: skip
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    reading = read(processes, port, _added(client, stream), _added(client, out))
    while producer.is_alive():
        window: list[float] = []
        yardstick: list[float] = []
        wall = time.time()
        end = time.monotonic() + SAMPLE_S
        while time.monotonic() < end and producer.is_alive():
            window += _latencies_ms(client, out)
            yardstick.append(yardstick_us())
            time.sleep(PROBE_EVERY_S)
        if time.monotonic() < end:
            break  # the producer finished mid-window: a partial window is no sample
        previous, reading = reading, read(processes, port, _added(client, stream),
                                          _added(client, out))  # fmt: skip
        sample = {"t_s": round(time.monotonic() - t0, 1),
                  "rss_kib": {pid: rss_kib(pid) for pid in pids},
                  "p50_ms": float(np.percentile(window, 50)),
                  "p99_ms": float(np.percentile(window, 99)),
                  "backlog": client.xlen(stream),
                  "yardstick_us": float(np.median(yardstick)),
                  **account(previous, reading),
                  "wall": (wall, time.time())}  # fmt: skip
        print(json.dumps(sample), flush=True)
        samples.append({**sample, "of_window": sample[f"p{WINDOW_PERCENTILE}_ms"]})
    producer.join(60)
    assert producer.exitcode == 0
    total = _added(client, stream)
    _wait_answered(client, queue, total, 300)
    time.sleep(1.0)  # a duplicate still on its way would arrive
    assert worker.proc.poll() is None, worker.log()[-3000:]
    lost = client.xlen(stream)  # acknowledged inputs are deleted: these never were
    duplicated = max(0, _added(client, out) - total)

    steady = [s for s in samples if s["t_s"] > WARM_UP_S]
    assert len(steady) >= 10, samples
    fifth = max(1, len(steady) // 5)
    per_window = [s["of_window"] for s in steady]
    early, late = float(np.median(per_window[:fifth])), float(np.median(per_window[-fifth:]))
    slowest = max(steady, key=lambda s: s["of_window"])
    typical = float(np.median(per_window))
    # Every window far above the typical one, with what was recorded during it.
    spikes = [s for s in steady if s["of_window"] > SPIKE_FACTOR * typical]
    the_workers = [s for s in spikes if _stalls_during(worker, client, *s["wall"])[0]]
    growth = {pid: max(s["rss_kib"][pid] for s in steady) / steady[0]["rss_kib"][pid] - 1
              for pid in pids}  # fmt: skip
    most = max(growth.values())
    p = f"p{WINDOW_PERCENTILE}"
    drift_account = compare(steady[:fifth], steady[-fifth:])
    usual = medians_of(steady)

    def told(window: dict[str, Any]) -> str:
        return _account(worker, client, window, usual)

    record(Row(f"soak: {LOAD:.0%} of capacity for {SOAK_S:.0f} s", total, lost, duplicated,
               time.monotonic() - started,
               f"capacity {capacity:,.0f} msg/s, load {n / SOAK_S:,.0f} msg/s; {p} per "
               f"{SAMPLE_S} s window, median of the first fifth {early:.0f} → last fifth "
               f"{late:.0f} ms, of all {typical:.0f} ms; slowest window "
               f"{told(slowest)}; windows over {SPIKE_FACTOR}× the "
               f"median: {len(spikes)}"
               + "".join(f"; {told(s)}" for s in spikes[:5] if s != slowest)
               + f"; {drift_account}; RSS growth after warm-up ≤ {most:.1%}"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
    assert all(g <= RSS_GROWTH_LIMIT for g in growth.values()), growth
    assert late / max(early, LATENCY_FLOOR_MS) <= DRIFT_LIMIT, (early, late, drift_account)
    assert not the_workers, [told(s) for s in the_workers]
