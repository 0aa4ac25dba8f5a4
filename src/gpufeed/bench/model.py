"""``gpufeed bench model``: a tensor op (a model) served end to end against the same
op's batch function called directly, in the same run.

* Throughput: ``messages`` inputs (``TensorOp.samples``) submitted at once
  through ``gpufeed.Client``, from the first ``XADD`` until the last result is
  back, against the batch function called in this process on batches of
  ``max_batch`` (the worker's batch size under a backlog) of the same inputs,
  their arguments built before the clock starts.
* Latency: one input's round trip through the worker against one direct call
  on that input alone.

Rounds alternate, so the machine's mood swings hit both alike; medians are
reported. The results the worker sent back are compared with the direct
calls' (``min_cosine``): a benchmark of wrong answers is worthless.

The worker is ``gpufeed worker --op OP`` on a fresh embedded server, its slot
size the smallest that holds the op's largest input and output.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from gpufeed.bench import median, percentile, server_label
from gpufeed.client import Client
from gpufeed.embedded import RedisServer
from gpufeed.errors import ConfigError, ProcessFailed
from gpufeed.keys import queue_key
from gpufeed.loadgen.launch import wait_for_consumers, worker_process
from gpufeed.ops.registry import load_op
from gpufeed.ops.tensor import TensorOp, to_host
from gpufeed.packing import write_requests
from gpufeed.packing.layout import HEADER_BYTES


@dataclass(frozen=True)
class ModelBenchConfig:
    op: str = "embed"
    messages: int = 2000
    max_batch: int = 64
    latency_samples: int = 50  # per round
    rounds: int = 3
    backend: str = "auto"
    timeout_s: float = 600.0  # for one round's results


def slot_bytes_for(op: TensorOp) -> int:
    """The smallest slot that holds the op's largest input and its output."""
    largest_in = op.input.max_bytes
    need = HEADER_BYTES + max(largest_in, op.output.row_bytes)
    return max(64, 1 << (need - 1).bit_length())


def payload_rows(op: TensorOp, inputs: Sequence[Any]) -> tuple[npt.NDArray[np.uint8], Any]:
    """Inputs as the slot payload rows and lengths the worker's batch function reads."""
    raw = [x.encode() if isinstance(x, str) else np.ascontiguousarray(x).tobytes() for x in inputs]
    lens = np.array([len(b) for b in raw], np.int64)
    slots = np.zeros((len(raw), slot_bytes_for(op)), np.uint8)
    write_requests([slots], raw, lens, np.zeros(len(raw), np.uint16), first_seq=0)
    return slots[:, HEADER_BYTES:], lens


class Direct:
    """The op's batch function called in this process: the floor."""

    def __init__(self, op: TensorOp, inputs: Sequence[Any], batch: int) -> None:
        self.op = op
        rows, lens = payload_rows(op, inputs)
        self.batches = [
            op.arguments(rows[i : i + batch], lens[i : i + batch])
            for i in range(0, len(inputs), batch)
        ]

    def call(self, args: tuple[Any, ...]) -> npt.NDArray[Any]:
        return np.asarray(to_host(self.op.fn(*args)))

    def run(self) -> tuple[float, npt.NDArray[Any]]:
        """Seconds for all batches, and their outputs."""
        start = time.perf_counter()
        outputs = [self.call(args) for args in self.batches]
        return time.perf_counter() - start, np.concatenate(outputs)


def agreement(ours: npt.NDArray[Any], theirs: npt.NDArray[Any]) -> float:
    """The lowest cosine similarity between matching rows (1.0 for equal rows)."""
    a = ours.reshape(len(ours), -1).astype(np.float64)
    b = theirs.reshape(len(theirs), -1).astype(np.float64)
    if a.shape != b.shape:
        raise ProcessFailed(f"bench model: results of shape {a.shape}, direct calls' {b.shape}")
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), (a == b).all(axis=1))
    return float(cos.min())


def device_label() -> str:
    """Where a torch model would run: the GPU torch sees, else the CPU."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return f"cpu ({os.cpu_count()} cores)"


def _through_worker(client: Client, inputs: Sequence[Any], timeout_s: float) -> tuple[float, Any]:
    start = time.perf_counter()
    futures = client.submit_many(inputs)
    outputs = [f.result(timeout_s) for f in futures]
    return time.perf_counter() - start, np.stack(outputs)


def _load(spec: str) -> TensorOp:
    op = load_op(spec)
    if not isinstance(op, TensorOp):
        raise ConfigError(f"bench model: {spec!r} is not a tensor op (gpufeed.ops.TensorOp)")
    return op


def run(cfg: ModelBenchConfig) -> dict[str, Any]:
    if cfg.messages < 1 or cfg.max_batch < 1 or cfg.latency_samples < 1 or cfg.rounds < 1:
        raise ConfigError("bench model: --messages, --max-batch, --latency-samples, --rounds >= 1")
    op = _load(cfg.op)
    inputs = op.samples(cfg.messages)
    direct = Direct(op, inputs, cfg.max_batch)
    lone = inputs[: cfg.latency_samples]
    singles = Direct(op, lone, 1).batches
    direct.call(direct.batches[0])  # loads the model here before anything is timed
    queue = "model"
    args = ["--queue", queue, "--op", cfg.op, "--backend", cfg.backend,
            "--max-batch", str(cfg.max_batch), "--slot-bytes", str(slot_bytes_for(op))]  # fmt: skip
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="gpufeed-bench-") as tmp:
        log_path = Path(tmp) / "worker.log"
        with worker_process(["--redis-url", server.url, *args], log_path) as worker:
            probe = redis.Redis.from_url(server.url)
            client = Client(server.url, queue, op=op)
            try:
                wait_for_consumers(probe, queue_key(queue, "in"), 1, worker, log_path)
                # The worker loads the model on its first batch: not part of any figure.
                _through_worker(client, inputs[: cfg.max_batch], cfg.timeout_s)
                ours_s, floor_s, rtt, floor_rtt = [], [], [], []
                worst = 1.0
                for _ in range(cfg.rounds):
                    took, got = _through_worker(client, inputs, cfg.timeout_s)
                    ours_s.append(took)
                    took, expected = direct.run()
                    floor_s.append(took)
                    worst = min(worst, agreement(got, expected))
                    for x, one in zip(lone, singles, strict=True):
                        start = time.perf_counter()
                        got_one = client.submit(x).result(cfg.timeout_s)
                        rtt.append(time.perf_counter() - start)
                        start = time.perf_counter()
                        expected_one = direct.call(one)
                        floor_rtt.append(time.perf_counter() - start)
                        worst = min(worst, agreement(got_one[None], expected_one))
            except Exception as exc:
                raise ProcessFailed(f"bench model: {exc!r}; the worker's log ends:\n"
                                    f"{log_path.read_text()[-3000:]}") from exc  # fmt: skip
            finally:
                client.close()
            name = server_label(probe)
            probe.close()
    ratios = [f / o for o, f in zip(ours_s, floor_s, strict=True)]
    return {
        "server": name,
        "op": op.name,
        "device": device_label(),
        "backend": cfg.backend,
        "messages": cfg.messages,
        "max_batch": cfg.max_batch,
        "rounds": cfg.rounds,
        "msgs_per_s": round(cfg.messages / median(ours_s), 1),
        "direct_msgs_per_s": round(cfg.messages / median(floor_s), 1),
        "throughput_ratio_vs_direct": round(median(ratios), 3),
        "throughput_ratio_min": round(min(ratios), 3),
        "throughput_ratio_max": round(max(ratios), 3),
        "rtt_p50_ms": round(percentile(rtt, 50) * 1e3, 3),
        "rtt_p99_ms": round(percentile(rtt, 99) * 1e3, 3),
        "direct_p50_ms": round(percentile(floor_rtt, 50) * 1e3, 3),
        "direct_p99_ms": round(percentile(floor_rtt, 99) * 1e3, 3),
        "overhead_p50_ms": round((percentile(rtt, 50) - percentile(floor_rtt, 50)) * 1e3, 3),
        "latency_samples": len(rtt),
        "min_cosine": round(worst, 6),
    }
