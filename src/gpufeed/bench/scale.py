"""``gpufeed bench scale``: how throughput moves with ingest processes, workers and shards.

Every setup runs ``gpufeed worker --op echo --backend cpu`` processes against
fresh embedded servers: one server, or a local Redis Cluster of 1 or 3
masters. When every worker has joined its group, one producer process per
queue writes its share of 64-byte messages flat out; throughput is the
messages divided by the time from the producers' start to the last result.
The baseline, measured in the same run, is one worker with one ingest process
on one server; setups run in turn, ``repeats`` times, and each reports its
median throughput and the median of its per-round ratios to the baseline.

Each setup also reports the Redis CPU time per message (``used_cpu_sys`` +
``used_cpu_user`` from INFO, summed over the nodes, for the XADD, the read
and the commit): what one message costs a Redis core, the figure that
bounds one shard (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from gpufeed.bench import median
from gpufeed.worker.connect import RedisTarget
from gpufeed.worker.launch import wait_for_consumers, worker_process
from gpufeed.worker.produce import xadd_all
from gpufeed.worker.redis_server import LocalCluster, RedisServer

_CTX = mp.get_context("spawn")


@dataclass(frozen=True)
class Setup:
    name: str
    queues: int = 1
    workers: int = 1  # worker processes per queue
    ingest_procs: int = 1
    shards: int = 0  # cluster masters; 0: one plain server


SETUPS = (
    Setup("baseline"),
    Setup("ingest_procs_2", ingest_procs=2),
    Setup("workers_2", workers=2),
    Setup("workers_4", workers=4),
    Setup("queues_3_server", queues=3),
    Setup("queues_3_shards_1", queues=3, shards=1),
    Setup("queues_3_shards_3", queues=3, shards=3),
)


@dataclass(frozen=True)
class ScaleBenchConfig:
    messages: int = 200_000
    payload_bytes: int = 64
    repeats: int = 3
    timeout_s: float = 300.0


def _produce(url: str, stream: str, n: int, size: int) -> None:
    xadd_all(RedisTarget(url).connect(), stream, [bytes(size)] * n)


def _redis_cpu_s(nodes: list[redis.Redis]) -> float:
    total = 0.0
    for node in nodes:
        info: Any = node.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


@contextlib.contextmanager
def _servers(shards: int) -> Iterator[tuple[str, list[redis.Redis], list[str]]]:
    """(URL, a client per node, queue names) for a plain server or a cluster."""
    if shards == 0:
        with RedisServer() as server:
            yield server.url, [redis.Redis(port=server.port)], ["q0", "q1", "q2"]
        return
    with LocalCluster(shards) as cluster:
        names = cluster.queue_per_master("q") if shards > 1 else ["q0", "q1", "q2"]
        yield cluster.url, [redis.Redis(port=n.port) for n in cluster.nodes], names


def _run(setup: Setup, cfg: ScaleBenchConfig, tmp: Path) -> tuple[float, float]:
    """One round of ``setup``: (messages per second, Redis CPU µs per message)."""
    with _servers(setup.shards) as (url, nodes, names), contextlib.ExitStack() as stack:
        client = RedisTarget(url).connect()
        queues = names[: setup.queues]
        for q in queues:
            for w in range(setup.workers):
                log = tmp / f"{setup.name}-{q}-{w}.log"
                args = ["--redis-url", url, "--queue", q, "--op", "echo", "--backend", "cpu",
                        "--consumer", f"w{w}",
                        "--ingest-procs", str(setup.ingest_procs)]  # fmt: skip
                proc = stack.enter_context(worker_process(args, log))
                wait_for_consumers(client, f"gpufeed:{{{q}}}:in", (w + 1) * setup.ingest_procs,
                                   proc, log)  # fmt: skip
        share = cfg.messages // len(queues)
        cpu_before = _redis_cpu_s(nodes)
        start = time.perf_counter()
        jobs = [(url, f"gpufeed:{{{q}}}:in", share, cfg.payload_bytes) for q in queues]
        producers = [_CTX.Process(target=_produce, args=job, daemon=True) for job in jobs]
        for p in producers:
            p.start()
        deadline = time.monotonic() + cfg.timeout_s
        outs = [f"gpufeed:{{{q}}}:out" for q in queues]
        while sum(int(client.xlen(o)) for o in outs) < share * len(queues):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{setup.name}: results missing after {cfg.timeout_s} s")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu_us = (_redis_cpu_s(nodes) - cpu_before) * 1e6 / (share * len(queues))
        for p in producers:
            p.join(30)
        return share * len(queues) / elapsed, cpu_us


def run(cfg: ScaleBenchConfig, setups: tuple[Setup, ...] = SETUPS) -> dict[str, float | int]:
    rates: dict[str, list[float]] = {s.name: [] for s in setups}
    cpu: dict[str, list[float]] = {s.name: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="gpufeed-bench-scale-") as tmp:
        for _ in range(cfg.repeats):  # setups in turn, so noise hits all of them alike
            for setup in setups:
                rate, cpu_us = _run(setup, cfg, Path(tmp))
                rates[setup.name].append(rate)
                cpu[setup.name].append(cpu_us)
    base = rates[setups[0].name]
    result: dict[str, float | int] = {
        "messages": cfg.messages, "payload_bytes": cfg.payload_bytes, "repeats": cfg.repeats,
        "cpu_count": mp.cpu_count(),
    }  # fmt: skip
    for s in setups:
        result[f"{s.name}_msgs_per_s"] = round(median(rates[s.name]))
        ratios = [r / b for r, b in zip(rates[s.name], base, strict=True)]
        result[f"{s.name}_ratio_vs_baseline"] = round(median(ratios), 3)
        result[f"{s.name}_redis_cpu_us_per_msg"] = round(median(cpu[s.name]), 2)
    return result
