"""``gpufeed bench scheduling``: batching delays, deadline shedding and priority levels,
measured on an op of known cost (``bench/paced.py``: a + b·n per batch).

1. **Capacity**: a backlog through a worker with no delay; the rate it answers.
2. **Delay**: one worker per setting (``--max-queue-delay-us`` 0, a fixed delay,
   ``auto``), each offered 10%, 50%, 90% and 120% of that capacity in turn:
   round trips (XADD to the result's arrival at a reader blocked on the output
   stream) and answers per second. At 120% every message carries a
   ``deadline_ms``; a result is *late* if it was committed (its id's time)
   after that. The same overload is run once more with ``--no-shed-late``,
   as the worker was before it could shed.
3. **Priorities**: level-1 messages at 5% of capacity, alone, and then behind a
   backlog of ``backlog`` level-0 messages; their p99 round trip loaded over
   unloaded.

Everything runs against one embedded server on this machine, in one run.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from gpufeed.bench import median, percentile, server_label
from gpufeed.bench.paced import BATCH_S, MESSAGE_S
from gpufeed.embedded import RedisServer
from gpufeed.errors import ConfigError, ProcessFailed
from gpufeed.keys import QueueKeys
from gpufeed.loadgen.launch import wait_for_consumers, worker_process

OP = "gpufeed.bench.paced:paced"
PAYLOAD = b"x" * 16
# How often the paced producer wakes to send what is due.
TICK_S = 0.002


@dataclass(frozen=True)
class SchedulingBenchConfig:
    max_batch: int = 128
    loads: tuple[float, ...] = (0.1, 0.5, 0.9, 1.2)
    seconds: float = 4.0  # offered load per level
    fixed_delay_us: int = 2000
    deadline_ms: int = 100  # at overload: each message's deadline after its XADD
    backlog: int = 100_000
    high_share: float = 0.05  # of capacity: the urgent messages' rate
    capacity_messages: int = 20_000
    timeout_s: float = 120.0  # for one phase's results


@dataclass
class Phase:
    """What one offered load gave: per message, when sent and when answered."""

    sent: dict[bytes, float]  # entry id -> perf_counter at XADD
    deadline: dict[bytes, int]  # entry id -> deadline_ms, when given
    answered: dict[bytes, tuple[float, bytes, int]]  # id -> (perf_counter, status, commit ms)
    seconds: float = 0.0  # first XADD to last answer

    def mine(self) -> list[tuple[float, bytes, int]]:
        """The answers to this phase's messages (the stream carries others' too)."""
        return [self.answered[src] for src in self.sent if src in self.answered]

    def rtt_ms(self) -> list[float]:
        return [
            (self.answered[src][0] - sent) * 1e3
            for src, sent in self.sent.items()
            if src in self.answered and self.answered[src][1] == b"ok"
        ]

    def ok_per_s(self) -> float:
        ok = sum(1 for _, status, _ in self.mine() if status == b"ok")
        return ok / self.seconds if self.seconds else 0.0

    def late_share(self) -> float:
        """Of the messages with a deadline: ok results committed after it."""
        if not self.deadline:
            return 0.0
        late = sum(
            1
            for src, (_, status, committed_ms) in self.answered.items()
            if status == b"ok" and committed_ms > self.deadline.get(src, 1 << 62)
        )
        return late / len(self.deadline)

    def expired_share(self) -> float:
        if not self.sent:
            return 0.0
        return sum(1 for _, s, _ in self.mine() if s == b"expired") / len(self.sent)


class Bench:
    def __init__(self, cfg: SchedulingBenchConfig, url: str, tmp: Path) -> None:
        self.cfg = cfg
        self.url = url
        self.tmp = tmp
        self.client = redis.Redis.from_url(url)
        self.runs = 0

    @contextmanager
    def worker(self, *flags: str) -> Iterator[QueueKeys]:
        """A fresh queue and a worker serving it with ``flags``."""
        self.runs += 1
        keys = QueueKeys(f"sched{self.runs}")
        log_path = self.tmp / f"worker{self.runs}.log"
        args = ["--redis-url", self.url, "--queue", keys.queue, "--backend", "cpu", "--op", OP,
                "--max-batch", str(self.cfg.max_batch), "--delete-acked", *flags]  # fmt: skip
        with worker_process(args, log_path) as proc:
            try:
                wait_for_consumers(self.client, keys.in_key, 1, proc, log_path)
                yield keys
            except Exception as exc:
                raise ProcessFailed(f"bench scheduling: {exc!r}; the worker's log ends:\n"
                                    f"{log_path.read_text()[-3000:]}") from exc  # fmt: skip

    def offer(
        self,
        keys: QueueKeys,
        rate: float,
        seconds: float,
        *,
        deadline_ms: int | None = None,
        stream: str | None = None,
        backlog_at_start: int = 0,
    ) -> Phase:
        """Send ``rate`` messages a second for ``seconds`` (or a burst of
        ``backlog_at_start`` when rate is 0) and wait for every answer."""
        stream = stream or keys.in_key
        phase = Phase({}, {}, {})
        start_id = self._last_id(keys.out_key)
        done = threading.Event()
        reader = threading.Thread(target=self._read, args=(keys.out_key, start_id, phase, done))
        reader.start()
        try:
            started = time.perf_counter()
            if backlog_at_start:
                self._send(stream, backlog_at_start, phase, deadline_ms)
            else:
                due = 0.0
                while (now := time.perf_counter()) - started < seconds:
                    due = rate * (now - started)
                    n = int(due) - len(phase.sent)
                    if n > 0:
                        self._send(stream, n, phase, deadline_ms)
                    time.sleep(TICK_S)
            deadline = time.monotonic() + self.cfg.timeout_s
            # The output stream also carries other messages' results (a backlog's):
            # wait for this phase's own.
            while missing := sum(1 for src in phase.sent if src not in phase.answered):
                if time.monotonic() > deadline:
                    raise ProcessFailed(
                        f"bench scheduling: {missing} of {len(phase.sent)} not answered"
                    )
                time.sleep(0.01)
            last = max((phase.answered[src][0] for src in phase.sent), default=started)
            phase.seconds = last - started
        finally:
            done.set()
            reader.join(10)
        return phase

    def _send(self, stream: str, n: int, phase: Phase, deadline_ms: int | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        deadline = int(time.time() * 1000) + deadline_ms if deadline_ms is not None else None
        for _ in range(n):
            fields: dict[Any, Any] = {"data": PAYLOAD}
            if deadline is not None:
                fields["deadline_ms"] = deadline
            pipe.xadd(stream, fields)
        sent_at = time.perf_counter()
        for entry_id in pipe.execute():
            phase.sent[entry_id] = sent_at
            if deadline is not None:
                phase.deadline[entry_id] = deadline

    def _last_id(self, key: str) -> bytes:
        last: Any = self.client.xrevrange(key, count=1)
        return last[0][0] if last else b"0-0"

    def _read(self, key: str, after: bytes, phase: Phase, done: threading.Event) -> None:
        reader = redis.Redis.from_url(self.url)
        try:
            while not done.is_set():
                reply: Any = reader.xread({key: after}, count=10_000, block=100)
                now = time.perf_counter()
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        committed_ms = int(entry_id.split(b"-")[0])
                        phase.answered[fields[b"src"]] = (now, fields[b"status"], committed_ms)
                        after = entry_id
        finally:
            reader.close()


def _summary(phase: Phase) -> dict[str, float]:
    rtt = phase.rtt_ms()
    return {
        "p50_ms": round(percentile(rtt, 50), 3) if rtt else float("nan"),
        "p99_ms": round(percentile(rtt, 99), 3) if rtt else float("nan"),
        "msgs_per_s": round(phase.ok_per_s(), 1),
    }


def run(cfg: SchedulingBenchConfig) -> dict[str, Any]:
    if cfg.max_batch < 1 or cfg.seconds <= 0 or not cfg.loads or cfg.backlog < 1:
        raise ConfigError("bench scheduling: --max-batch, --seconds, --backlog must be positive")
    settings = {"delay0": ("--max-queue-delay-us", "0"),
                "fixed": ("--max-queue-delay-us", str(cfg.fixed_delay_us)),
                "auto": ("--max-queue-delay-us", "auto")}  # fmt: skip
    result: dict[str, Any] = {}
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="gpufeed-bench-") as tmp:
        bench = Bench(cfg, server.url, Path(tmp))
        with bench.worker() as keys:
            capacity = bench.offer(keys, 0, 0, backlog_at_start=cfg.capacity_messages)
            capacity_per_s = len(capacity.sent) / capacity.seconds
        fewest = min(min(cfg.loads), cfg.high_share) * capacity_per_s * cfg.seconds
        if fewest < 20:
            raise ConfigError(
                f"bench scheduling: --seconds {cfg.seconds} sends {fewest:.0f} messages at the "
                "lowest rate; at least 20 are needed for percentiles"
            )
        per: dict[str, dict[float, dict[str, float]]] = {}
        late: dict[str, float] = {}
        expired: dict[str, float] = {}
        for name, flags in settings.items():
            per[name] = {}
            with bench.worker(*flags) as keys:
                # A second at half the capacity first: the cost model's first samples.
                bench.offer(keys, 0.5 * capacity_per_s, 1.0)
                for load in cfg.loads:
                    overload = load > 1
                    phase = bench.offer(
                        keys, load * capacity_per_s, cfg.seconds,
                        deadline_ms=cfg.deadline_ms if overload else None,
                    )  # fmt: skip
                    per[name][load] = _summary(phase)
                    if overload:
                        late[name], expired[name] = phase.late_share(), phase.expired_share()
        with bench.worker("--no-shed-late") as keys:
            top = max(cfg.loads)
            phase = bench.offer(
                keys, top * capacity_per_s, cfg.seconds, deadline_ms=cfg.deadline_ms
            )
            late["noshed"], expired["noshed"] = phase.late_share(), phase.expired_share()
        high_rate = cfg.high_share * capacity_per_s
        with bench.worker("--priorities", "2") as keys:
            urgent = keys.level_key(1)
            alone = bench.offer(keys, high_rate, cfg.seconds, stream=urgent)
            bench._send(keys.in_key, cfg.backlog, Phase({}, {}, {}), None)
            behind = bench.offer(keys, high_rate, cfg.seconds, stream=urgent)
            backlog_left = int(bench.client.xlen(keys.in_key))
        result["server"] = server_label(bench.client)
        bench.client.close()

    best_tput, best_p50 = [], []
    for load in cfg.loads:
        fixed = [per[n][load] for n in ("delay0", "fixed")]
        best_tput.append(per["auto"][load]["msgs_per_s"] / max(f["msgs_per_s"] for f in fixed))
        best_p50.append(per["auto"][load]["p50_ms"] / min(f["p50_ms"] for f in fixed))
    result.update({
        "op": f"paced: {BATCH_S * 1e3:g} ms + {MESSAGE_S * 1e6:g} us per message",
        "max_batch": cfg.max_batch,
        "capacity_msgs_per_s": round(capacity_per_s, 1),
        "fixed_delay_us": cfg.fixed_delay_us,
        "seconds_per_load": cfg.seconds,
        "auto_vs_best_throughput": round(min(best_tput), 3),
        "auto_vs_best_p50": round(max(best_p50), 3),
        "late_share_auto": round(late["auto"], 4),
        "late_share_fixed": round(late["fixed"], 4),
        "late_share_delay0": round(late["delay0"], 4),
        "late_share_noshed": round(late["noshed"], 4),
        **{f"expired_share_{name}": round(share, 4) for name, share in expired.items()},
        "deadline_ms": cfg.deadline_ms,
    })  # fmt: skip
    for name in settings:
        for load in cfg.loads:
            for metric, value in per[name][load].items():
                result[f"{name}_{metric}_at_{round(load * 100)}"] = value
    alone_p99 = percentile(alone.rtt_ms(), 99)
    behind_p99 = percentile(behind.rtt_ms(), 99)
    result.update({
        "high_priority_p99_ms": round(behind_p99, 3),
        "high_priority_unloaded_p99_ms": round(alone_p99, 3),
        "high_priority_p99_ratio": round(behind_p99 / alone_p99, 3),
        "high_priority_p50_ms": round(median(behind.rtt_ms()), 3),
        "backlog": cfg.backlog,
        "backlog_left_after": backlog_left,
    })  # fmt: skip
    return result
