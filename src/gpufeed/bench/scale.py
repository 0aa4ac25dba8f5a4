"""``gpufeed bench scale``: how throughput moves with ingest processes, workers and shards.

Every setup runs ``gpufeed worker --op echo --backend cpu`` processes against
fresh embedded servers: one server, or a local Redis Cluster of 1 or 3
masters. When every worker has joined its group, one producer process per
queue writes its share of 64-byte messages flat out; throughput is the
messages divided by the time from the producers' start to the last result.
The baseline, measured in the same run, is one worker with one ingest process
on one server; setups run in turn, ``repeats`` times, and each reports its
median throughput and the median of its per-round ratios to the baseline.

Each setup also reports CPU time per message: Redis's (``used_cpu_sys`` +
``used_cpu_user`` from INFO, summed over the nodes, for the XADD, the read
and the commit), all worker processes' together, and the busiest single
worker process's (from /proc). Setups with several consumers per queue report
the spread: the least-loaded consumer's answered count over the busiest's
(from each ingest process's drain log; 1.0 is perfectly even). A Redis core
and one process are what one shard and one ingest process can never exceed,
so these figures give the ceilings in docs/scaling.md on any machine, however
busy this one is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from gpufeed.bench import median, process_tree_cpu_s, redis_cpu_s, server_label
from gpufeed.bench.e2e import produce
from gpufeed.connect import RedisTarget
from gpufeed.embedded import LocalCluster, RedisServer
from gpufeed.errors import ProcessFailed
from gpufeed.keys import queue_key
from gpufeed.loadgen.launch import log_events, wait_for_consumers, worker_process

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


@dataclass(frozen=True)
class _Round:
    msgs_per_s: float
    redis_cpu_us: float  # per message, all nodes
    worker_cpu_us: float  # per message, all worker processes
    busiest_cpu_us: float  # per message, the busiest single worker process
    spread: float = 1.0  # least-loaded consumer's answered count over the busiest's
    server: str = ""  # server_label of the nodes


def _spread(logs: dict[str, list[Path]]) -> float:
    """The least-loaded consumer's share over the busiest's, on the least even queue."""
    evenness: list[float] = []
    for paths in logs.values():
        # what each ingest process of a drained worker answered
        counts = [int(e["answered"]) for p in paths for e in log_events(p, "ingest drained")]
        busiest = max(counts, default=0)
        evenness.append(min(counts) / busiest if busiest else 0.0)
    return min(evenness)


def _run(setup: Setup, cfg: ScaleBenchConfig, tmp: Path) -> _Round:
    """One round of ``setup``; the workers' logs give the spread once they drained."""
    logs: dict[str, list[Path]] = {}
    measured = _measure(setup, cfg, tmp, logs)
    return dataclasses.replace(measured, spread=_spread(logs))


def _measure(setup: Setup, cfg: ScaleBenchConfig, tmp: Path, logs: dict[str, list[Path]]) -> _Round:
    with _servers(setup.shards) as (url, nodes, names), contextlib.ExitStack() as stack:
        client = RedisTarget(url).connect()
        queues = names[: setup.queues]
        worker_pids: list[int] = []
        for q in queues:
            for w in range(setup.workers):
                log = tmp / f"{setup.name}-{q}-{w}.log"
                logs.setdefault(q, []).append(log)
                args = ["--redis-url", url, "--queue", q, "--op", "echo", "--backend", "cpu",
                        "--consumer", f"w{w}",
                        "--ingest-procs", str(setup.ingest_procs)]  # fmt: skip
                proc = stack.enter_context(worker_process(args, log))
                worker_pids.append(proc.pid)
                wait_for_consumers(client, queue_key(q, "in"), (w + 1) * setup.ingest_procs,
                                   proc, log)  # fmt: skip
        share = cfg.messages // len(queues)
        cpu_before = redis_cpu_s(nodes)
        procs_before = process_tree_cpu_s(worker_pids)
        start = time.perf_counter()
        jobs = [(url, queue_key(q, "in"), share, cfg.payload_bytes) for q in queues]
        producers = [_CTX.Process(target=produce, args=job, daemon=True) for job in jobs]
        for p in producers:
            p.start()
        deadline = time.monotonic() + cfg.timeout_s
        outs = [queue_key(q, "out") for q in queues]
        while sum(int(client.xlen(o)) for o in outs) < share * len(queues):
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{setup.name}: results missing after {cfg.timeout_s} s")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        n = share * len(queues)
        redis_cpu_us = (redis_cpu_s(nodes) - cpu_before) * 1e6 / n
        procs_after = process_tree_cpu_s(worker_pids)
        used = {pid: s - procs_before.get(pid, 0.0) for pid, s in procs_after.items()}
        for p in producers:
            p.join(30)
        return _Round(n / elapsed, redis_cpu_us, sum(used.values()) * 1e6 / n,
                      max(used.values()) * 1e6 / n, server=server_label(nodes[0]))  # fmt: skip


def run(cfg: ScaleBenchConfig, setups: tuple[Setup, ...] = SETUPS) -> dict[str, float | int | str]:
    rounds: dict[str, list[_Round]] = {s.name: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="gpufeed-bench-scale-") as tmp:
        for _ in range(cfg.repeats):  # setups in turn, so noise hits all of them alike
            for setup in setups:
                rounds[setup.name].append(_run(setup, cfg, Path(tmp)))
    base = [r.msgs_per_s for r in rounds[setups[0].name]]
    result: dict[str, float | int | str] = {
        "server": rounds[setups[0].name][0].server,
        "messages": cfg.messages, "payload_bytes": cfg.payload_bytes, "repeats": cfg.repeats,
        "cpu_count": mp.cpu_count(),
    }  # fmt: skip
    for s in setups:
        got = rounds[s.name]
        result[f"{s.name}_msgs_per_s"] = round(median([r.msgs_per_s for r in got]))
        ratios = [r.msgs_per_s / b for r, b in zip(got, base, strict=True)]
        result[f"{s.name}_ratio_vs_baseline"] = round(median(ratios), 3)
        result[f"{s.name}_redis_cpu_us_per_msg"] = round(median([r.redis_cpu_us for r in got]), 2)
        result[f"{s.name}_worker_cpu_us_per_msg"] = round(median([r.worker_cpu_us for r in got]), 2)
        if s.workers * s.ingest_procs > 1:
            result[f"{s.name}_spread_min_over_max"] = round(median([r.spread for r in got]), 3)
        result[f"{s.name}_busiest_process_cpu_us_per_msg"] = round(
            median([r.busiest_cpu_us for r in got]), 2
        )
    return result
