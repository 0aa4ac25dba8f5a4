"""``gpufeed bench e2e``: the whole worker against the bare Redis work it must do.

All three run against one fresh embedded server, each on its own queue,
while a producer process writes 64-byte messages at the same time:

* the floor: one redis-py loop, ``XREADGROUP COUNT 1000`` then one Lua call
  that XADDs a result per entry and XACKs them: no ring, no compute;
* the checked floor: the same loop, committing with gpufeed's commit script,
  which writes results only for entries still pending for its consumer
  (docs/architecture.md §6) where the floor's Lua call does not look;
* gpufeed: ``gpufeed worker --op echo --backend cpu``.

Against the floor, the ratio is what the whole product costs; against the
checked floor, what the ring, the packing and the compute process cost on top
of the Redis work that exactly-once results take.

Throughput is measured with the producer running flat out (messages divided
by the time from the producer's start to the last result), ``repeats`` times
each, taking turns (who goes first rotates, and every run starts from an
emptied server); the medians and the medians of the per-round ratios are
reported. Latency is measured in a second, paced run at half the floor's
throughput, so it is not queueing behind a backlog the producer built on
purpose: from the input entry's XADD (its id's time) to the moment a client
blocked on the output stream receives the result, the wait a caller of the
queue sees. The result's own id would not do: a script's XADDs take the time
the script started, so it leaves out the commit itself. Ids count whole
milliseconds, so each latency is up to 1 ms more than the true one.

The throughput runs also report CPU time per message: the consuming side's
processes (a floor loop; the worker's supervisor, ingest and compute
processes) and the server's (``INFO cpu``, which includes the producer's
XADDs alike for all three). Where every process has a core of its own,
these, not the shared cores of a small machine, decide the throughput.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from gpufeed.bench import median, percentile, process_tree_cpu_s, redis_cpu_s, server_label
from gpufeed.connect import RedisTarget
from gpufeed.embedded import RedisServer
from gpufeed.errors import InternalError, ProcessFailed
from gpufeed.keys import queue_key
from gpufeed.loadgen.launch import wait_for_consumers, worker_process
from gpufeed.loadgen.produce import xadd_all, xadd_chunks
from gpufeed.packing import Results
from gpufeed.packing.ids import id_ms
from gpufeed.worker.commit import Committer
from gpufeed.worker.config import WorkerConfig

_CTX = mp.get_context("spawn")
# The floor writes the same result entries gpufeed's echo writes: src, status, data.
FLOOR_LUA = """
local ids = {}
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'src', ARGV[i], 'status', 'ok', 'data', ARGV[i + 1])
  ids[#ids + 1] = ARGV[i]
end
redis.call('XACK', KEYS[1], 'floor', unpack(ids))
return #ids
"""


@dataclass(frozen=True)
class E2EBenchConfig:
    messages: int = 200_000
    payload_bytes: int = 64
    latency_messages: int = 60_000
    repeats: int = 3
    timeout_s: float = 300.0


def produce(url: str, stream: str, n: int, size: int, rate: float = 0.0) -> None:
    """Write ``n`` messages of ``size`` zero bytes (a producer process's target)."""
    for _ids in xadd_chunks(RedisTarget(url).connect(), stream, [bytes(size)] * n, rate=rate):
        pass  # not kept: a long run's ids would slow the writes down


def _floor_keys(queue: str, checked: bool) -> tuple[str, str, str]:
    """The input stream, output stream and group of a floor loop."""
    if checked:
        config = WorkerConfig(queue=queue)
        return config.in_key, config.out_key, config.group
    return f"{queue}:in", f"{queue}:out", "floor"


def _floor(url: str, queue: str, stop: Any, checked: bool) -> None:
    """Serve ``queue`` until ``stop`` is set (it outlives the measurement, so
    its CPU time can be read while it runs)."""
    client = redis.Redis.from_url(url)
    stream, out, group = _floor_keys(queue, checked)
    commit = client.register_script(FLOOR_LUA)
    committer = Committer(client, WorkerConfig(queue=queue), "c") if checked else None
    if committer is not None:
        committer.load()
    while not stop.is_set():
        reply: Any = client.xreadgroup(group, "c", {stream: ">"}, count=1000, block=5)
        for _stream, entries in reply or []:
            if committer is not None:
                bodies = [fields[b"data"] for _, fields in entries]
                committer.commit(Results([entry_id for entry_id, _ in entries], bodies))
                continue
            args: list[Any] = []
            for entry_id, fields in entries:
                args += (entry_id, fields[b"data"])
            if args:
                commit(keys=[stream, out], args=args)


WARMUP = 2000


def _warm_up(client: redis.Redis, stream: str, out: str, cfg: E2EBenchConfig) -> None:
    """Send a few batches first: first-call costs (script load, lazy imports, page
    faults) belong to start-up, not to the steady state being measured."""
    xadd_all(client, stream, [bytes(cfg.payload_bytes)] * WARMUP)
    _wait_len(client, out, WARMUP, cfg.timeout_s)


def _src(fields: list[bytes]) -> bytes:
    """The ``src`` field of a result: the first field of every result that the
    commit script and the floors' Lua call write."""
    if fields[0] != b"src":
        raise InternalError(f"a result without src as its first field: {fields[:2]!r}")
    return fields[1]


def read_results(url: str, out: str, after: bytes, n: int, ready: Any, conn: Any) -> None:
    """Wait on ``out`` for ``n`` results written after ``after``, and send back the
    latency of each: its arrival here (wall clock) less its input entry id's time
    (Redis's wall clock, the same machine's). ``ready`` is set once the first
    blocking read has been answered, so nothing arrives before we listen."""
    client = redis.Redis.from_url(url, protocol=2)
    client.set_response_callback("XREAD", lambda response, **options: response)
    latencies: list[float] = []
    while len(latencies) < n:
        reply: Any = client.xread({out: after}, count=100_000, block=100)
        now_ms = time.time() * 1000
        ready.set()
        if reply:
            entries = reply[0][1]
            latencies += [now_ms - id_ms(_src(fields)) for _, fields in entries]
            after = entries[-1][0]
    conn.send(latencies)


def _wait_len(client: redis.Redis, key: str, n: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while client.xlen(key) < n:
        if time.monotonic() > deadline:
            raise ProcessFailed(f"{client.xlen(key)} of {n} results in {key} after {timeout_s} s")
        time.sleep(0.005)
    return time.perf_counter()


class _ResultReader:
    """``read_results`` in a process of its own, started before the producer."""

    def __init__(self, client: redis.Redis, url: str, out: str, n: int, timeout_s: float) -> None:
        last: Any = client.xrevrange(out, count=1)
        ready = _CTX.Event()
        self._conn, child_conn = _CTX.Pipe(duplex=False)
        self._timeout_s = timeout_s
        self._proc = _CTX.Process(
            target=read_results, args=(url, out, last[0][0], n, ready, child_conn), daemon=True
        )
        self._proc.start()
        if not ready.wait(30):
            self._proc.kill()
            raise ProcessFailed("the result reader did not start within 30 s")

    def latencies(self) -> list[float]:
        if not self._conn.poll(self._timeout_s):
            raise ProcessFailed(f"not every result was read within {self._timeout_s} s")
        got: list[float] = self._conn.recv()
        return got

    def close(self) -> None:
        self._proc.kill()
        self._proc.join(5)


@dataclass(frozen=True)
class _Run:
    msgs_per_s: float
    latencies_ms: list[float]
    cpu_us: float  # per message, the consuming side's processes
    redis_cpu_us: float  # per message, the server


def _measure(
    client: redis.Redis,
    url: str,
    queues: tuple[str, str],
    n: int,
    cfg: E2EBenchConfig,
    rate: float,
    consumer_pid: int,
) -> _Run:
    """Warm up, then time ``n`` messages from a producer process to their last
    result; ``consumer_pid`` is the root of the processes whose CPU is counted."""
    stream, out = queues
    _warm_up(client, stream, out, cfg)
    # Only paced runs read their results as they come: in a throughput run the
    # reader would take CPU from the producer and the consumers it measures.
    reader = _ResultReader(client, url, out, n, cfg.timeout_s) if rate > 0 else None
    try:
        cpu_before, redis_before = process_tree_cpu_s([consumer_pid]), redis_cpu_s([client])
        start = time.perf_counter()
        producer = _CTX.Process(
            target=produce, args=(url, stream, n, cfg.payload_bytes, rate), daemon=True
        )
        producer.start()
        end = _wait_len(client, out, n + WARMUP, cfg.timeout_s)
        cpu_after, redis_after = process_tree_cpu_s([consumer_pid]), redis_cpu_s([client])
        producer.join(30)
        latencies = reader.latencies() if reader is not None else []
    finally:
        if reader is not None:
            reader.close()
    cpu_s = sum(s - cpu_before.get(pid, 0.0) for pid, s in cpu_after.items())
    return _Run(n / (end - start), latencies, cpu_s * 1e6 / n,
                (redis_after - redis_before) * 1e6 / n)  # fmt: skip


def _run_floor(
    url: str, queue: str, n: int, cfg: E2EBenchConfig, rate: float, checked: bool = False
) -> _Run:
    client = redis.Redis.from_url(url)
    stream, out, group = _floor_keys(queue, checked)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    stop = _CTX.Event()
    loop = _CTX.Process(target=_floor, args=(url, queue, stop, checked), daemon=True)
    loop.start()
    try:
        assert loop.pid is not None
        return _measure(client, url, (stream, out), n, cfg, rate, loop.pid)
    finally:
        stop.set()
        loop.join(30)


def _run_gpufeed(url: str, queue: str, n: int, cfg: E2EBenchConfig, rate: float) -> _Run:
    client = redis.Redis.from_url(url)
    stream, out = queue_key(queue, "in"), queue_key(queue, "out")
    args = ["--redis-url", url, "--queue", queue, "--op", "echo", "--backend", "cpu"]
    with (
        tempfile.TemporaryDirectory(prefix="gpufeed-bench-") as tmp,
        worker_process(args, Path(tmp) / "worker.log") as worker,
    ):
        wait_for_consumers(client, stream, 1, worker, Path(tmp) / "worker.log")
        return _measure(client, url, (stream, out), n, cfg, rate, worker.pid)


def _median_ratio(ours: list[_Run], base: list[_Run]) -> float:
    """The median of the per-round throughput ratios (each round's runs ran
    back to back, so they shared the machine's mood)."""
    return median([o.msgs_per_s / b.msgs_per_s for o, b in zip(ours, base, strict=True)])


def server_flush(url: str) -> None:
    """Empty the server between runs, so every run starts from the same state."""
    redis.Redis.from_url(url).flushall()


def run(cfg: E2EBenchConfig) -> dict[str, float | int | str]:
    with RedisServer() as server:
        url = server.url
        server_name = server_label(redis.Redis.from_url(url))
        # Take turns, so that the machine's mood swings hit all three alike, and
        # rotate who goes first. Each run starts from an emptied server: on one
        # still holding another run's 200,000-entry streams, the wheel's server
        # spent half as much CPU per message again (docs/benchmarks.md).
        runs: dict[str, list[_Run]] = {"floor": [], "checked": [], "ours": []}
        for r in range(cfg.repeats):
            names = list(runs)
            for name in names[r % 3 :] + names[: r % 3]:
                if name == "ours":
                    got = _run_gpufeed(url, f"bench-{r}", cfg.messages, cfg, 0.0)
                else:
                    checked = name == "checked"
                    got = _run_floor(url, f"{name}-{r}", cfg.messages, cfg, 0.0, checked)
                runs[name].append(got)
                server_flush(url)
        floor_runs, checked_runs, ours_runs = runs["floor"], runs["checked"], runs["ours"]
        floor_rate = median([f.msgs_per_s for f in floor_runs])
        ours_rate = median([o.msgs_per_s for o in ours_runs])
        ratio = _median_ratio(ours_runs, floor_runs)
        paced = round(floor_rate / 2)
        floor_lat = _run_floor(url, "floor-b", cfg.latency_messages, cfg, paced).latencies_ms
        server_flush(url)
        ours_lat = _run_gpufeed(url, "bench-b", cfg.latency_messages, cfg, paced).latencies_ms
    return {
        "server": server_name,
        "messages": cfg.messages,
        "payload_bytes": cfg.payload_bytes,
        "msgs_per_s": round(ours_rate),
        "floor_msgs_per_s": round(floor_rate),
        "ratio_vs_floor": round(ratio, 3),
        "checked_floor_msgs_per_s": round(median([c.msgs_per_s for c in checked_runs])),
        "ratio_vs_checked_floor": round(_median_ratio(ours_runs, checked_runs), 3),
        "repeats": cfg.repeats,
        "latency_rate_msgs_per_s": paced,
        "p50_ms": round(percentile(ours_lat, 50), 2),
        "p99_ms": round(percentile(ours_lat, 99), 2),
        "floor_p50_ms": round(percentile(floor_lat, 50), 2),
        "floor_p99_ms": round(percentile(floor_lat, 99), 2),
        "worker_cpu_us_per_msg": round(median([o.cpu_us for o in ours_runs]), 2),
        "floor_cpu_us_per_msg": round(median([f.cpu_us for f in floor_runs]), 2),
        "redis_cpu_us_per_msg": round(median([o.redis_cpu_us for o in ours_runs]), 2),
        "floor_redis_cpu_us_per_msg": round(median([f.redis_cpu_us for f in floor_runs]), 2),
        "checked_floor_redis_cpu_us_per_msg": round(
            median([c.redis_cpu_us for c in checked_runs]), 2
        ),
    }
