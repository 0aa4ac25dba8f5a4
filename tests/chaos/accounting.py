"""Where a soak window's time went: CPU seconds by process, the machine's idle
and stolen time, how long tasks waited for a core, and the worker's batches,
read at each window's end.

A latency window means little alone on a shared machine. Beside it, these say
whether the worker did more work per message (its own slowdown: CPU per
message up, batches the same), or got less of the machine (its CPU per message
flat while tasks waited for a core, the hypervisor stole time, or the cores
ran slower, which a fixed yardstick's CPU time shows).
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from gpufeed.bench import process_tree_cpu_s

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


def waiting_s() -> float:
    """Seconds so far in which some task was ready to run but waited for a core
    (the kernel's CPU pressure, "some"; 0 where the kernel does not keep it)."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
    except OSError:
        return 0.0
    return int(some[-1].removeprefix("total=")) / 1e6  # microseconds


def scrape(port: int) -> dict[str, float]:
    """The worker's counters of batches, messages and commit time, from its endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = {
        "gpufeed_batches_total": "batches",
        "gpufeed_batch_size_messages_sum": "messages",
        "gpufeed_commit_seconds_sum": "commit_s",
        "gpufeed_commit_seconds_count": "commits",
        "gpufeed_compute_seconds_sum": "compute_s",
    }
    got = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                got[wanted[sample.name]] += sample.value
    return got


@dataclass
class Reading:
    """Everything read at one instant; two readings make a window's account."""

    at: float
    cpu: dict[str, float]
    machine: dict[str, float]
    waiting: float
    worker: dict[str, float]
    answered: int


def read(processes: dict[str, int], port: int, answered: int, at: float) -> Reading:
    """``processes``: a name for each process whose CPU time is read, its children's
    included (the test's own, named "probe", without the processes it started)."""
    cpu = {}
    for name, pid in processes.items():
        tree = process_tree_cpu_s([pid])
        cpu[name] = tree.get(pid, 0.0) if name == "probe" else sum(tree.values())
    return Reading(at, cpu, machine_s(), waiting_s(), scrape(port), answered)


def account(before: Reading, after: Reading) -> dict[str, Any]:
    """One window: its throughput, each process's CPU microseconds per message
    answered, the machine's idle and stolen share, and the worker's mean batch
    and commit call."""
    n = max(1, after.answered - before.answered)
    seconds = after.at - before.at
    machine = {k: after.machine[k] - before.machine[k] for k in after.machine}
    total = sum(machine.values()) or 1.0
    worker = {k: after.worker[k] - before.worker[k] for k in after.worker}
    cpu = {k: round((after.cpu[k] - before.cpu[k]) / n * 1e6, 2) for k in after.cpu}
    return {
        "msgs_per_s": round(n / seconds),
        "cpu_us_per_msg": cpu,
        "idle": round(machine["idle"] / total, 3),
        "steal": round(machine["steal"] / total, 3),
        "waiting": round((after.waiting - before.waiting) / seconds, 3),
        "batch": round(worker["messages"] / max(1.0, worker["batches"]), 1),
        "commit_ms": round(worker["commit_s"] / max(1.0, worker["commits"]) * 1e3, 3),
        "compute_ms": round(worker["compute_s"] / max(1.0, worker["batches"]) * 1e3, 3),
    }


def slow_window(window: dict[str, Any], usual: dict[str, float]) -> str:
    """How much slower than usual the machine, and the worker, ran in one window."""
    machine = window["yardstick_us"] / usual["yardstick_us"]
    worker = window["cpu_us_per_msg"]["worker"] / usual["worker"]
    return (
        f"the yardstick took {machine:.1f}× its median CPU time, the worker {worker:.1f}× its "
        f"median CPU per message (mean batch {window['batch']:.0f}, backlog {window['backlog']}); "
        f"some task waited for a core {window['waiting']:.0%} of the time "
        f"(median {usual['waiting']:.0%})"
    )


def medians_of(windows: list[dict[str, Any]]) -> dict[str, float]:
    """The medians that ``slow_window`` compares a window to."""
    return {
        "yardstick_us": float(np.median([w["yardstick_us"] for w in windows])),
        "worker": float(np.median([w["cpu_us_per_msg"]["worker"] for w in windows])),
        "waiting": float(np.median([w["waiting"] for w in windows])),
    }


def compare(early: list[dict[str, Any]], late: list[dict[str, Any]]) -> str:
    """The first and last windows' accounts side by side (medians): which process
    came to need more CPU per message, and whether the machine had time to spare."""

    def both(value: Callable[[dict[str, Any]], float], form: str) -> str:
        first, last = (float(np.median([value(w) for w in ws])) for ws in (early, late))
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
        f"a task waiting for a core {both(lambda w: w['waiting'], '.0%')}"
    )
