"""``gpufeed bench latency``: one message's round trip through gpufeed against a
bare loop's, and where gpufeed's time goes.

Both serve their own queue on one fresh embedded server, at the same time but
never busy together: a prober sends one message, waits until a client blocked
on the output stream (``XREAD BLOCK``, a thread of the prober) has its result,
pauses ``gap_ms``, and sends the next. Each sample is the time from just
before the ``XADD`` to the reader's wake-up with the result, on the monotonic
clock. Rounds alternate between the two, so the machine's mood swings hit
both alike.

* the floor: one redis-py process, ``XREADGROUP BLOCK`` then, pipelined,
  ``XADD`` of the result and ``XACK``: the Redis work one message needs;
* gpufeed: ``gpufeed worker --op echo --backend cpu --trace-timings``.

The breakdown joins each sample with the stamps the worker's processes logged
for its batch (worker/timings.py), all on the same monotonic clock, so the
stages add up to the round trip exactly:

    read_wake     XADD sent -> the ingest process has XREADGROUP's reply
    pack          -> its slots packed
    request_hop   -> the compute process has peeked them from the request ring
    compute       -> the op's outputs are ready
    response_hop  -> the ingest process has collected them from the response ring
    commit_wait   -> it calls the commit script
    commit        -> the script's reply is in
    client_wake   -> the client blocked on the output stream has the result
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis

from gpufeed.bench import percentile, server_label
from gpufeed.embedded import RedisServer
from gpufeed.errors import ProcessFailed
from gpufeed.keys import queue_key
from gpufeed.loadgen.launch import log_events, wait_for_consumers, worker_process

_CTX = mp.get_context("spawn")

STAGES = (
    ("read_wake", "sent", "read"),
    ("pack", "read", "packed"),
    ("request_hop", "packed", "peeked"),
    ("compute", "peeked", "computed"),
    ("response_hop", "computed", "collected"),
    ("commit_wait", "collected", "committing"),
    ("commit", "committing", "committed"),
    ("client_wake", "committed", "arrived"),
)
WARMUP = 50


@dataclass(frozen=True)
class LatencyBenchConfig:
    samples: int = 1000  # of each
    rounds: int = 5
    gap_ms: float = 1.0
    payload_bytes: int = 64
    timeout_s: float = 10.0  # for one message


def bare_loop(url: str, stream: str, out: str, group: str, stop: Any) -> None:
    """The floor: serve ``stream`` until ``stop`` is set."""
    client = redis.Redis.from_url(url)
    while not stop.is_set():
        reply: Any = client.xreadgroup(group, "floor", {stream: ">"}, count=1000, block=100)
        for _stream, entries in reply or []:
            pipe = client.pipeline(transaction=False)
            for entry_id, fields in entries:
                pipe.xadd(out, {"src": entry_id, "status": "ok", "data": fields[b"data"]})
            pipe.xack(stream, group, *(entry_id for entry_id, _ in entries))
            pipe.execute()


class Prober:
    """Sends one message at a time to ``stream`` and times each until the reader
    blocked on ``out`` has its result."""

    def __init__(self, url: str, stream: str, out: str, cfg: LatencyBenchConfig) -> None:
        self.cfg = cfg
        self.stream = stream
        self.sender = redis.Redis.from_url(url)
        self.sent: dict[bytes, int] = {}
        self.arrived: dict[bytes, int] = {}
        self._seen = threading.Condition()
        self._stop = threading.Event()
        reader = redis.Redis.from_url(url, protocol=2)
        reader.set_response_callback("XREAD", lambda response, **options: response)
        last: Any = self.sender.xrevrange(out, count=1)
        after = last[0][0] if last else b"0-0"
        self._reader = threading.Thread(
            target=self._read, args=(reader, out, after), daemon=True, name=f"read {out}"
        )
        self._reader.start()

    def _read(self, client: redis.Redis, out: str, after: bytes) -> None:
        while not self._stop.is_set():
            reply: Any = client.xread({out: after}, count=1000, block=100)
            now = time.monotonic_ns()
            if not reply:
                continue
            entries = reply[0][1]
            with self._seen:
                for _, fields in entries:
                    self.arrived[fields[fields.index(b"src") + 1]] = now
                self._seen.notify()
            after = entries[-1][0]

    def probe(self, n: int) -> list[bytes]:
        """Send ``n`` messages one at a time; their entry ids."""
        payload = bytes(self.cfg.payload_bytes)
        ids: list[bytes] = []
        for _ in range(n):
            sent = time.monotonic_ns()
            entry_id: Any = self.sender.xadd(self.stream, {"data": payload})
            self.sent[entry_id] = sent
            with self._seen:
                answered = self._seen.wait_for(partial(self.arrived.__contains__, entry_id),
                                               self.cfg.timeout_s)  # fmt: skip
            if not answered:
                raise ProcessFailed(f"no result for {entry_id!r} in {self.cfg.timeout_s} s")
            ids.append(entry_id)
            time.sleep(self.cfg.gap_ms / 1000)
        return ids

    def rtt_us(self, ids: list[bytes]) -> list[float]:
        return [(self.arrived[i] - self.sent[i]) / 1000 for i in ids]

    def close(self) -> None:
        self._stop.set()
        self._reader.join(5)


def stage_stamps(log_path: Path) -> dict[bytes, dict[str, int]]:
    """Each traced message's stage stamps, from a worker's log (worker/timings.py).

    The compute process may have taken an ingest batch in two parts (it wrapped
    past the ring's end) or together with the next one, so a batch's compute
    stamps are those of every compute record whose slots overlap its own: the
    earliest ``peeked``, the latest ``computed``. (Sequence numbers wrap at
    2**32, far beyond a benchmark's run.)
    """
    computed: dict[str, list[dict[str, int]]] = {}
    for record in log_events(log_path, "compute timings"):
        for part in record["batches"]:
            computed.setdefault(part["ring"], []).append(part)
    starts: dict[str, list[int]] = {}
    for ring, parts in computed.items():
        parts.sort(key=lambda part: part["seq"])
        starts[ring] = [part["seq"] for part in parts]
    stamps: dict[bytes, dict[str, int]] = {}
    for record in log_events(log_path, "batch timings"):
        for batch in record["batches"]:
            parts, seqs = computed.get(batch["ring"], []), starts.get(batch["ring"], [])
            first, end = batch["seq"], batch["seq"] + len(batch["ids"])
            k = max(0, bisect_right(seqs, first) - 1)
            overlapping = []
            while k < len(parts) and parts[k]["seq"] < end:
                if parts[k]["seq"] + parts[k]["n"] > first:
                    overlapping.append(parts[k])
                k += 1
            if not overlapping:
                continue
            for entry_id in batch["ids"]:
                stamps[entry_id.encode()] = {
                    "read": batch["read"], "packed": batch["packed"],
                    "peeked": min(part["peeked"] for part in overlapping),
                    "computed": max(part["computed"] for part in overlapping),
                    "collected": batch["collected"], "committing": batch["committing"],
                    "committed": batch["committed"],
                }  # fmt: skip
    return stamps


def breakdown(
    prober: Prober, ids: list[bytes], stamps: dict[bytes, dict[str, int]]
) -> dict[str, float]:
    """p50 and p99 of each stage over the samples whose stamps were logged."""
    per_stage: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    traced = 0
    for i in ids:
        found = stamps.get(i)
        if found is None:
            continue
        traced += 1
        at = {**found, "sent": prober.sent[i], "arrived": prober.arrived[i]}
        for name, start, end in STAGES:
            per_stage[name].append((at[end] - at[start]) / 1000)
    result: dict[str, float] = {"traced_samples": traced}
    if not traced:
        return result
    for name, values in per_stage.items():
        result[f"{name}_p50_us"] = round(percentile(values, 50), 1)
    for name, values in per_stage.items():
        result[f"{name}_p99_us"] = round(percentile(values, 99), 1)
    return result


def _take_turns(cfg: LatencyBenchConfig, probers: dict[str, Prober]) -> dict[str, list[bytes]]:
    """Warm each up, then ``cfg.rounds`` rounds, who goes first rotating."""
    for prober in probers.values():
        prober.probe(WARMUP)
    ids: dict[str, list[bytes]] = {name: [] for name in probers}
    names = list(probers)
    per_round = -(-cfg.samples // cfg.rounds)
    for r in range(cfg.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            ids[name] += probers[name].probe(min(per_round, cfg.samples - len(ids[name])))
    return ids


def _with_floor(url: str, body: Callable[[Prober], dict[str, Any]], cfg: LatencyBenchConfig) -> Any:
    """Run ``body`` with the floor loop serving a queue of its own and a prober for it."""
    stream, out, group = "floor:in", "floor:out", "floor"
    redis.Redis.from_url(url).xgroup_create(stream, group, id="$", mkstream=True)
    stop = _CTX.Event()
    loop = _CTX.Process(target=bare_loop, args=(url, stream, out, group, stop), daemon=True)
    loop.start()
    prober = Prober(url, stream, out, cfg)
    try:
        return body(prober)
    finally:
        prober.close()
        stop.set()
        loop.join(10)
        if loop.is_alive():
            loop.kill()


def run(cfg: LatencyBenchConfig) -> dict[str, float | int | str]:
    queue = "latency"
    stream, out = queue_key(queue, "in"), queue_key(queue, "out")
    args = ["--redis-url", "", "--queue", queue, "--op", "echo", "--backend", "cpu",
            "--trace-timings"]  # fmt: skip
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="gpufeed-bench-") as tmp:
        url = server.url
        client = redis.Redis.from_url(url)
        args[1] = url
        log_path = Path(tmp) / "worker.log"

        def measure(floor: Prober) -> dict[str, Any]:
            with worker_process(args, log_path) as worker:
                wait_for_consumers(client, stream, 1, worker, log_path)
                ours = Prober(url, stream, out, cfg)
                try:
                    ids = _take_turns(cfg, {"gpufeed": ours, "floor": floor})
                except ProcessFailed as exc:
                    raise ProcessFailed(f"{exc}; the worker's log ends:\n"
                                        f"{log_path.read_text()[-3000:]}") from exc  # fmt: skip
                finally:
                    ours.close()
            # The worker has drained and flushed its trace records.
            return {
                "rtt": ours.rtt_us(ids["gpufeed"]),
                "floor_rtt": floor.rtt_us(ids["floor"]),
                "breakdown": breakdown(ours, ids["gpufeed"], stage_stamps(log_path)),
            }

        got = _with_floor(url, measure, cfg)
        name = server_label(client)
    rtt, floor_rtt = got["rtt"], got["floor_rtt"]
    p50, p99 = percentile(rtt, 50), percentile(rtt, 99)
    floor_p50, floor_p99 = percentile(floor_rtt, 50), percentile(floor_rtt, 99)
    return {
        "server": name,
        "samples": len(rtt),
        "floor_samples": len(floor_rtt),
        "gap_ms": cfg.gap_ms,
        "rtt_p50_us": round(p50, 1),
        "rtt_p99_us": round(p99, 1),
        "floor_rtt_p50_us": round(floor_p50, 1),
        "floor_rtt_p99_us": round(floor_p99, 1),
        "rtt_ratio_p50": round(p50 / floor_p50, 3),
        "rtt_ratio_p99": round(p99 / floor_p99, 3),
        **got["breakdown"],
    }
