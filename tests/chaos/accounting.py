"""Where a soak window's time went, read at each window's end: each process's
CPU time per message, the machine's idle and stolen time, how long tasks on
the machine waited for a core, the worker's batches, and a yardstick.

A latency window means little alone on a shared machine. Beside it, these
tell a worker that slowed down from a machine that gave it less. The worker's
own slowdown: its CPU per message up while the yardstick (a fixed piece of
work) stays flat and its batches stay the same size. Slower cores: the
yardstick's CPU time up, and the worker's CPU per message with it. Too few
cores: tasks waiting for one (CPU pressure) or time stolen by the hypervisor,
with CPU per message flat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from conftest import Samples, scrape
from gpufeed.bench import median, process_tree_cpu_s

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# The yardstick's work: a 2 MiB copy (memory) and a short Python loop (the core).
_FROM, _TO = np.ones(1 << 18), np.empty(1 << 18)


def yardstick_us() -> float:
    """CPU time (this thread's, so waiting for a core does not count) of a fixed
    piece of work: how fast the machine runs code at this moment. A shared
    machine's cores slow down when their neighbours get busy; everything on
    them, the worker included, then needs more CPU for the same work."""
    started = time.thread_time_ns()
    np.copyto(_TO, _FROM)
    total = 0
    for i in range(2000):
        total += i
    return (time.thread_time_ns() - started) / 1e3


def machine_s() -> dict[str, float]:
    """The machine's CPU seconds so far, all cores: busy, idle and stolen."""
    with open("/proc/stat") as f:
        values = [int(v) * _TICK_S for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def waiting_s() -> float | None:
    """Seconds so far in which some task on the machine (any task, not only
    ours) was ready to run but waited for a core: the kernel's CPU pressure,
    "some". None where the kernel does not keep it."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
    except OSError:
        return None
    return int(some[-1].removeprefix("total=")) / 1e6  # microseconds


# The worker's metrics that a window's account uses, and what it calls them.
_WORKER_METRICS = {
    "gpufeed_batches_total": "batches",
    "gpufeed_batch_size_messages_sum": "messages",
    "gpufeed_commit_seconds_sum": "commit_s",
    "gpufeed_commit_seconds_count": "commits",
    "gpufeed_compute_seconds_sum": "compute_s",
    "gpufeed_compute_seconds_count": "computed",
}


# The worker's histograms whose slowest observation in a window says which of its
# stages held a slow window's time: before its read, its compute, its commit.
_STAGES = {
    "queue wait": "gpufeed_queue_wait_seconds",
    "compute": "gpufeed_compute_seconds",
    "commit": "gpufeed_commit_seconds",
}


def worker_metrics(samples: Samples) -> dict[str, float]:
    """The worker's batches, messages, commit and compute time, from its endpoint."""
    got = dict.fromkeys(_WORKER_METRICS.values(), 0.0)
    seen = set()
    for (name, _labels), value in samples.items():
        if name in _WORKER_METRICS:
            got[_WORKER_METRICS[name]] += value
            seen.add(name)
    missing = set(_WORKER_METRICS) - seen
    assert not missing, f"the worker's endpoint has no {sorted(missing)}"
    return got


@dataclass
class Reading:
    """Everything read at one instant; two readings make a window's account."""

    at: float
    cpu: dict[str, float]
    machine: dict[str, float]
    waiting: float | None
    samples: Samples  # the worker's metrics endpoint
    written: int
    answered: int


def read(processes: dict[str, int], port: int, written: int, answered: int) -> Reading:
    """``processes``: a name for each process whose CPU time is read, its children's
    included (the test's own, named "sampler", without the processes it started).
    ``written`` and ``answered``: the input and output streams' entries so far."""
    cpu = {}
    for name, pid in processes.items():
        tree = process_tree_cpu_s([pid])
        cpu[name] = tree.get(pid, 0.0) if name == "sampler" else sum(tree.values())
    return Reading(time.monotonic(), cpu, machine_s(), waiting_s(), scrape(port), written, answered)


def _slowest_ms(before: Samples, after: Samples, histogram: str) -> float:
    """An upper bound of the slowest observation between two scrapes: the first
    bucket bound that holds all of them (inf past the last bound, 0 for none)."""
    counts: dict[float, float] = {}
    for key, value in after.items():
        name, labels = key
        if name == f"{histogram}_bucket":
            bound = float(dict(labels)["le"])
            counts[bound] = counts.get(bound, 0.0) + value - before.get(key, 0.0)
    total = counts.get(float("inf"), 0.0)
    if total == 0:
        return 0.0
    return 1e3 * min(bound for bound, count in counts.items() if count >= total)


def account(before: Reading, after: Reading) -> dict[str, Any]:
    """One window: messages answered per second; each process's CPU microseconds
    per message (the producer's per message written, the others' per message
    answered, so that a worker falling behind does not make the producer look
    dearer); the machine's idle and stolen share of its CPU time; the share of
    the window in which some task waited for a core; the worker's mean batch,
    commit call and compute time per batch; and a bound of the slowest of
    each of its stages (the histogram bucket that held it)."""
    answered = max(1, after.answered - before.answered)
    written = max(1, after.written - before.written)
    seconds = after.at - before.at
    machine = {k: after.machine[k] - before.machine[k] for k in after.machine}
    total = sum(machine.values()) or 1.0
    first, last = worker_metrics(before.samples), worker_metrics(after.samples)
    worker = {k: last[k] - first[k] for k in last}
    cpu = {
        name: round((after.cpu[name] - before.cpu[name]) * 1e6
                    / (written if name == "producer" else answered), 2)
        for name in after.cpu
    }  # fmt: skip
    waiting = None
    if after.waiting is not None and before.waiting is not None:
        waiting = round((after.waiting - before.waiting) / seconds, 3)
    return {
        "msgs_per_s": round(answered / seconds),
        "cpu_us_per_msg": cpu,
        "idle": round(machine["idle"] / total, 3),
        "steal": round(machine["steal"] / total, 3),
        "waiting": waiting,
        "batch": round(worker["messages"] / max(1.0, worker["batches"]), 1),
        "commit_ms": round(worker["commit_s"] / max(1.0, worker["commits"]) * 1e3, 3),
        "compute_ms": round(worker["compute_s"] / max(1.0, worker["computed"]) * 1e3, 3),
        "slowest_ms": {
            stage: _slowest_ms(before.samples, after.samples, histogram)
            for stage, histogram in _STAGES.items()
        },
    }


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def slow_window(window: dict[str, Any], usual: dict[str, Any]) -> str:
    """How much slower than usual the machine, and the worker, ran in one window."""
    machine = window["yardstick_us"] / usual["yardstick_us"]
    worker = window["cpu_us_per_msg"]["worker"] / usual["worker"]
    return (
        f"the yardstick took {machine:.1f}× its median CPU time, the worker {worker:.1f}× its "
        f"median CPU per message (mean batch {window['batch']:.0f}, backlog {window['backlog']}); "
        f"some task on the machine waited for a core {_share(window['waiting'])} of the time "
        f"(median {_share(usual['waiting'])}); the worker's slowest "
        + ", ".join(f"{stage} ≤ {ms:g} ms" for stage, ms in window["slowest_ms"].items())
    )


def _median(windows: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any]) -> Any:
    """The median of a figure over windows; None where a window lacks it."""
    values = [value(w) for w in windows]
    return None if None in values else median(values)


def medians_of(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians that ``slow_window`` compares a window to."""
    return {
        "yardstick_us": _median(windows, lambda w: w["yardstick_us"]),
        "worker": _median(windows, lambda w: w["cpu_us_per_msg"]["worker"]),
        "waiting": _median(windows, lambda w: w["waiting"]),
    }


def compare(early: list[dict[str, Any]], late: list[dict[str, Any]]) -> str:
    """The first and last windows' accounts side by side (medians): which process
    came to need more CPU per message, and whether the machine had time to spare."""

    def both(value: Callable[[dict[str, Any]], Any], form: str) -> str:
        first, last = _median(early, value), _median(late, value)
        if first is None or last is None:
            return "n/a"
        return f"{first:{form}} → {last:{form}}"

    cpu = ", ".join(
        f"{name} {both(lambda w, k=name: w['cpu_us_per_msg'][k], '.1f')}"
        for name in early[0]["cpu_us_per_msg"]
    )
    return (
        f"CPU per message (µs), first fifth → last: {cpu}; "
        f"yardstick {both(lambda w: w['yardstick_us'], '.0f')} µs; "
        f"mean batch {both(lambda w: w['batch'], '.0f')}; "
        f"machine idle {both(lambda w: w['idle'], '.0%')}, "
        f"stolen {both(lambda w: w['steal'], '.1%')}, "
        f"some task waiting for a core {both(lambda w: w['waiting'], '.0%')}"
    )
