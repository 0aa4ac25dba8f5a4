"""``gpufeed demo``: a real server, a real worker, every built-in op, every result checked."""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from gpufeed.connect import RedisTarget
from gpufeed.embedded import RedisServer
from gpufeed.errors import ProcessFailed
from gpufeed.keys import queue_key
from gpufeed.loadgen.launch import log_events, wait_for_consumers, worker_process
from gpufeed.loadgen.payloads import sample_payloads
from gpufeed.loadgen.produce import xadd_all
from gpufeed.ops import BUILTINS, load_op
from gpufeed.packing.ids import id_ms
from gpufeed.packing.layout import payload_capacity

DEMO_SLOT_BYTES = 256
PROGRESS_S = 2.0


@dataclass
class OpReport:
    op: str
    messages: int
    ok: int
    error: int
    wrong: int
    missing: int
    duplicates: int
    msgs_per_s: float
    p50_ms: float
    p99_ms: float

    @property
    def passed(self) -> bool:
        return self.ok == self.messages and not (self.wrong or self.missing or self.duplicates)


@contextlib.contextmanager
def redis_for_demo(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def read_results(
    client: redis.Redis,
    stream: str,
    expected: int,
    timeout_s: float,
    say: Callable[[str], None] = lambda line: None,
) -> dict[bytes, list[tuple[bytes, dict[bytes, bytes]]]]:
    """Read the result stream until ``expected`` results arrived (or the timeout),
    saying how many came every ``PROGRESS_S``."""
    by_src: dict[bytes, list[tuple[bytes, dict[bytes, bytes]]]] = {}
    last, got = "0-0", 0
    deadline = time.monotonic() + timeout_s
    said_at = time.monotonic()
    while got < expected and time.monotonic() < deadline:
        if time.monotonic() - said_at >= PROGRESS_S:
            say(f"{got:,} of {expected:,} results")
            said_at = time.monotonic()
        reply: Any = client.xread({stream: last}, count=10_000, block=500)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                by_src.setdefault(fields[b"src"], []).append((entry_id, fields))
                got += 1
                last = entry_id
    return by_src


def check_op(
    op_name: str,
    ids: list[bytes],
    payloads: list[bytes],
    results: dict[bytes, list[tuple[bytes, dict[bytes, bytes]]]],
) -> OpReport:
    op = load_op(op_name)
    capacity = payload_capacity(DEMO_SLOT_BYTES)
    rows = np.zeros((len(payloads), capacity), np.uint8)
    lens = np.array([len(p) for p in payloads], np.int64)
    for i, p in enumerate(payloads):
        rows[i, : len(p)] = np.frombuffer(p, np.uint8)
    want, want_lens = op.reference(rows, lens)
    ok = error = wrong = missing = duplicates = 0
    latencies: list[float] = []
    last_ms = 0
    for i, entry_id in enumerate(ids):
        got = results.get(entry_id)
        if not got:
            missing += 1
            continue
        duplicates += len(got) - 1
        result_id, fields = got[0]
        latencies.append(id_ms(result_id) - id_ms(entry_id))
        last_ms = max(last_ms, id_ms(result_id))
        if fields.get(b"status") != b"ok":
            error += 1
            continue
        expected = want[i, : want_lens[i]].tobytes()
        data = fields.get(b"data", b"")
        if op_name == "dense" and len(data) == len(expected):
            got_f, want_f = np.frombuffer(data, "<f4"), np.frombuffer(expected, "<f4")
            same = bool(np.allclose(got_f, want_f, rtol=1e-5, atol=1e-6))
        else:
            same = data == expected
        ok += same
        wrong += not same
    span_s = max(1e-3, (last_ms - id_ms(ids[0])) / 1000) if ids else 1.0
    p50 = p99 = float("nan")
    if latencies:  # nearest rank ("inverted_cdf"): a latency some message really had
        p50, p99 = np.percentile(latencies, [50, 99], method="inverted_cdf").tolist()
    return OpReport(
        op_name, len(ids), ok, error, wrong, missing, duplicates, len(ids) / span_s, p50, p99
    )


def run_demo(
    *,
    messages_per_op: int = 100_000,
    backend: str = "auto",
    ingest_procs: int = 1,
    redis_url: str | None = None,
    timeout_s: float = 900.0,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[list[OpReport], str]:
    """Produce ``messages_per_op`` messages for each built-in op and check every result,
    telling ``say`` how it goes.

    Returns the per-op reports and the backend the worker chose. On the user's own
    server (``redis_url``) the demo's keys are deleted afterwards.
    """
    queue = f"demo-{secrets.token_hex(3)}"
    with (
        redis_for_demo(redis_url) as url,
        tempfile.TemporaryDirectory(prefix="gpufeed-demo-") as tmp,
    ):
        client = RedisTarget(url).connect()
        log_path = Path(tmp) / "worker.log"
        args = [
            "--redis-url", url, "--queue", queue, "--op", "echo", "--backend", backend,
            "--ingest-procs", str(ingest_procs), "--slot-bytes", str(DEMO_SLOT_BYTES),
            "--log-format", "json",
        ]  # fmt: skip
        out_key, in_key = queue_key(queue, "out"), queue_key(queue, "in")
        say(f"starting a worker on queue {queue} at {RedisTarget(url).safe_url}")
        try:
            with worker_process(args, log_path) as proc:
                wait_for_consumers(client, in_key, ingest_procs, proc, log_path)
                up = next(log_events(log_path, "compute started"), {})
                say(f"worker up, backend {up.get('backend', '?')}; sending messages")
                sent: dict[str, tuple[list[bytes], list[bytes]]] = {}
                for seed, name in enumerate(sorted(BUILTINS)):
                    payloads = sample_payloads(
                        load_op(name), messages_per_op, payload_capacity(DEMO_SLOT_BYTES), seed
                    )
                    sent[name] = (xadd_all(client, in_key, payloads, op=name), payloads)
                    say(f"sent {messages_per_op:,} {name} messages")
                total = messages_per_op * len(sent)
                results = read_results(client, out_key, total, timeout_s, say)
                say(f"{sum(map(len, results.values())):,} results; checking each")
                if proc.poll() is not None:
                    raise ProcessFailed(f"worker exited early:\n{log_path.read_text()[-4000:]}")
        finally:
            if redis_url:  # the user's server: leave it as it was (if it still answers)
                with contextlib.suppress(redis.RedisError, redis.RedisClusterException):
                    left = list(client.scan_iter(queue_key(queue, "*"), count=1000))
                    if left:
                        client.delete(*left)
        started = next(log_events(log_path, "compute started"), {})
        chosen = str(started.get("backend", "unknown"))
        reports = [check_op(name, ids, p, results) for name, (ids, p) in sent.items()]
        return reports, chosen
