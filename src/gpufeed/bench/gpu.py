"""``gpufeed bench gpu``: the compute stage on the GPU, against the GPU's own limits.

``--backend batched`` measures, in one run:

* the compute stage alone: a driver process keeps a request ring full and
  drains the response ring while a compute process runs the worker's own
  loop (``worker.compute.serve``) with the batched backend: ring → GPU →
  ring, no Redis. Once with small slots (messages per second) and once with
  large ones (bytes per second), for each staging (pinned buffers and
  registered rings);
* the baseline: pinned host → device bandwidth of one large copy;
* the cost of a batch: the synchronous submit → result time over several
  batch sizes, fitted to ``a + b·n`` (``a`` is the per-batch overhead), and
  the time per message when every message is its own kernel launch.

``--backend persistent`` measures the enqueue → result round trip of one
message through a GpuQueue (requests in mapped host memory, and in device
memory), its throughput with ``enqueue_batch``, and, as the baseline, the
same round trip through the batched backend with a batch of one.

Every GPU measurement runs in a ``spawn``-ed child, so this process never
initialises CUDA. With ``--emulate-device`` the persistent figures come from
the CPU emulation: they check the command, not the GPU.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gpufeed.bench import median, percentile
from gpufeed.errors import ProcessFailed
from gpufeed.gpu.batched import STAGINGS
from gpufeed.ops.registry import OpTable, load_op
from gpufeed.packing import write_requests
from gpufeed.packing.layout import SlotArray, payload_capacity
from gpufeed.ring import RingConsumer, RingProducer, RingSegment, check_shm_room, ring_bytes

_CTX = mp.get_context("spawn")
_TIMEOUT_S = 300.0
OVERHEAD_BATCHES = (1, 16, 64, 256, 1024, 4096)


@dataclass(frozen=True)
class GpuBenchConfig:
    backend: str = "batched"
    op: str = "vector_add"
    slot_bytes: int = 64
    batch: int = 4096
    messages: int = 4_000_000
    big_slot_bytes: int = 65536  # the run that H2D bandwidth limits
    big_messages: int = 40_000
    streams: int = 4
    stagings: tuple[str, ...] = STAGINGS
    samples: int = 20_000  # round trips timed
    emulate_device: bool = False
    gpu: int = 0
    # Called first in every child with its name (the CLI's logging set-up: a
    # spawned child starts unconfigured, and would log to stdout).
    setup: Callable[[str], None] | None = None


def request_slots(op_name: str, slot_bytes: int, n: int, seed: int = 0) -> SlotArray:
    """``n`` request slots for ``op_name`` (op id 0), each with the longest payload it takes."""
    op = load_op(op_name)
    capacity = payload_capacity(slot_bytes)
    lens = np.arange(capacity + 1, dtype=np.int64)
    length = int(lens[op.valid_lengths(lens)].max())
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, (length + 3) // 4)).astype("<f4").view(np.uint8)[:, :length]
    slots = np.zeros((n, slot_bytes), np.uint8)
    write_requests([slots], np.ascontiguousarray(rows), np.full(n, length, np.int64),
                   np.zeros(n, np.uint16), 0)  # fmt: skip
    return slots


def _worker_config(cfg: GpuBenchConfig, slot_bytes: int, staging: str, batch: int) -> Any:
    from gpufeed.worker.config import WorkerConfig

    return WorkerConfig(
        backend=cfg.backend, op=cfg.op, slot_bytes=slot_bytes, max_batch=batch,
        ring_capacity=4 * batch, cuda_streams=cfg.streams, staging=staging, device=cfg.gpu,
        emulate_device=cfg.emulate_device,
    )  # fmt: skip


# -- children ----------------------------------------------------------------------------


def _compute_child(
    cfg: GpuBenchConfig, config: Any, rings: tuple[str, str], start: Any, conn: Any
) -> None:
    """The worker's compute loop over one ring pair (what ``compute_main`` runs)."""
    from gpufeed.gpu.select import make_backend

    if cfg.setup is not None:
        cfg.setup("compute")
    from gpufeed.worker.compute import RingPair, serve

    table = OpTable.for_worker(config.op, payload_capacity(config.slot_bytes))
    backend = make_backend(config.backend_settings, table, config.slot_bytes, config.max_batch)
    pair = RingPair(RingConsumer.attach(rings[0]), RingProducer.attach(rings[1]))
    backend.attach_request_rings([pair.requests.segment.slots_readonly])
    start.wait()
    try:
        serve([pair], backend, config.max_batch)
    finally:
        backend.close()
        pair.requests.close()
        pair.responses.close()
    conn.send(backend.name)


def _batched_child(cfg: GpuBenchConfig, conn: Any) -> None:
    """Pinned H2D bandwidth, per-batch cost and one-message-per-launch cost."""
    import cupy as cp

    from gpufeed.gpu.batched import BatchedBackend
    from gpufeed.gpu.cuda_runtime import MEMCPY_HOST_TO_DEVICE

    if cfg.setup is not None:
        cfg.setup("batched")
    cp.cuda.Device(cfg.gpu).use()
    nbytes = 1 << 30
    host = np.frombuffer(cp.cuda.alloc_pinned_memory(nbytes), np.uint8, nbytes)
    device = cp.empty(nbytes, np.uint8)
    stream = cp.cuda.Stream(non_blocking=True)
    rates = []
    for _ in range(5):
        begin = time.perf_counter()
        cp.cuda.runtime.memcpyAsync(device.data.ptr, host.ctypes.data, nbytes,
                                    MEMCPY_HOST_TO_DEVICE, stream.ptr)  # fmt: skip
        stream.synchronize()
        rates.append(nbytes / (time.perf_counter() - begin) / 1e9)
    del host, device
    table = OpTable.for_worker(cfg.op, payload_capacity(cfg.slot_bytes))
    sizes = [n for n in OVERHEAD_BATCHES if n <= cfg.batch]
    backend = BatchedBackend(table, cfg.slot_bytes, max(sizes), streams=cfg.streams, gpu=cfg.gpu)
    slots = request_slots(cfg.op, cfg.slot_bytes, max(sizes))
    cycle: dict[int, list[float]] = {}
    for n in sizes:
        times = cycle[n] = []
        for _ in range(max(20, min(2000, 200_000 // n))):
            begin = time.perf_counter()
            backend.submit(0, slots[:n])
            while not backend.poll(1.0):
                pass
            times.append((time.perf_counter() - begin) * 1e6)
    xs = np.array(sizes, float)
    ys = np.array([median(cycle[n]) for n in sizes])
    slope, intercept = np.polyfit(xs, ys, 1) if len(sizes) > 1 else (0.0, ys[0])
    launches = 20_000
    begin = time.perf_counter()
    done = 0
    for _ in range(launches):  # one message per kernel launch, K streams in flight
        backend.submit(0, slots[:1])
        done += len(backend.poll(0.0))
    while done < launches:
        done += len(backend.poll(1.0))
    single = (time.perf_counter() - begin) / launches * 1e6
    backend.close()
    conn.send({
        "pinned_h2d_gb_per_s": median(rates),
        "per_batch_overhead_us": float(intercept),
        "per_message_us": float(slope),
        "single_launch_us": single,
        "batch_of_1_p50_us": percentile(cycle[1], 50),
    })  # fmt: skip


def _persistent_child(cfg: GpuBenchConfig, payload: str, conn: Any) -> None:
    """Round trips of one message, and enqueue_batch throughput, through a GpuQueue."""
    from gpufeed.gpu.persistent import GpuQueue, QueueConfig

    if cfg.setup is not None:
        cfg.setup("persistent")
    device = "emulated" if cfg.emulate_device else "cuda"
    capacity = 1 << (4 * cfg.batch - 1).bit_length()
    queue_cfg = QueueConfig(capacity, cfg.slot_bytes, device=device, payload=payload,
                            gpu=cfg.gpu)  # fmt: skip
    slots = request_slots(cfg.op, cfg.slot_bytes, cfg.batch)
    length = int(slots[0, :4].view("<u4")[0])
    rows = np.ascontiguousarray(slots[:, 16 : 16 + length])
    message = rows[0].tobytes()
    # A GPU answers without this process; the emulation is a thread of it, and
    # a spin that never lets go of the GIL would starve it.
    spin = time.sleep if cfg.emulate_device else None
    with GpuQueue(queue_cfg, op=cfg.op) as queue:
        trips = []
        for _ in range(cfg.samples):
            begin = time.perf_counter_ns()
            msg_id = queue.enqueue(message, timeout_ms=1000)
            while not queue.done(msg_id):
                if spin is not None:
                    spin(0)
            queue.try_dequeue_result(msg_id)
            trips.append((time.perf_counter_ns() - begin) / 1000)
        chunks: deque[tuple[int, int]] = deque()
        sent = taken = 0
        started = time.perf_counter()
        while taken < cfg.messages:
            if sent < cfg.messages and len(chunks) < 3:
                ids = queue.enqueue_batch(rows[: min(cfg.batch, cfg.messages - sent)], 1000)
                chunks.append((ids[0], len(ids)))
                sent += len(ids)
            first, n = chunks[0]
            if queue.take_slots(first, n) is not None:
                chunks.popleft()
                taken += n
        rate = cfg.messages / (time.perf_counter() - started)
    conn.send({"p50": percentile(trips, 50), "p99": percentile(trips, 99), "rate": rate})


def _in_child(target: Any, *args: Any) -> Any:
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(_TIMEOUT_S):
            raise ProcessFailed(f"{target.__name__} did not report within {_TIMEOUT_S} s")
        return parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


# -- the compute stage -------------------------------------------------------------------


def compute_stage(cfg: GpuBenchConfig, slot_bytes: int, messages: int, staging: str) -> float:
    """Messages per second from request ring to response ring through a compute process."""
    batch = min(cfg.batch, max(1, (64 << 20) // slot_bytes))  # at most 64 MiB per batch
    config = _worker_config(cfg, slot_bytes, staging, batch)
    # Both at once: each alone could fit in /dev/shm and the two together not (SIGBUS).
    check_shm_room(2 * ring_bytes(config.ring_capacity, slot_bytes), "the benchmark's 2 rings")
    requests = RingSegment.create(capacity=config.ring_capacity, slot_bytes=slot_bytes)
    responses = RingSegment.create(capacity=config.ring_capacity, slot_bytes=slot_bytes)
    source = request_slots(cfg.op, slot_bytes, batch)
    start = _CTX.Barrier(2, timeout=_TIMEOUT_S)
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_compute_child,
                        args=(cfg, config, (requests.name, responses.name), start, child),
                        daemon=True)  # fmt: skip
    proc.start()
    child.close()
    producer, consumer = RingProducer.attach(requests.name), RingConsumer.attach(responses.name)
    try:
        start.wait()
        begin = time.perf_counter()
        sent = received = 0
        while received < messages:
            if sent < messages:
                first, second = producer.reserve(min(batch, messages - sent), timeout=0.0)
                k = len(first)
                first[...] = source[:k]
                if len(second):
                    second[...] = source[k : k + len(second)]
                    k += len(second)
                if k:
                    producer.commit(k)
                    sent += k
            first, second = consumer.peek(batch, timeout=0.001 if sent >= messages else 0.0)
            got = len(first) + len(second)
            if got:
                consumer.release(got)
                received += got
            elif not proc.is_alive():
                raise ProcessFailed(f"compute process exited with {proc.exitcode}")
        elapsed = time.perf_counter() - begin
        producer.close()
        if not parent.poll(_TIMEOUT_S):
            raise ProcessFailed("compute process did not finish")
        parent.recv()
        return messages / elapsed
    finally:
        consumer.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        requests.close()
        responses.close()


def run(cfg: GpuBenchConfig) -> dict[str, Any]:
    if cfg.backend == "persistent":
        return run_persistent(cfg)
    rates = {s: compute_stage(cfg, cfg.slot_bytes, cfg.messages, s) for s in cfg.stagings}
    big = {s: compute_stage(cfg, cfg.big_slot_bytes, cfg.big_messages, s) for s in cfg.stagings}
    costs = _in_child(_batched_child, cfg)
    staging = max(rates, key=rates.__getitem__)
    big_staging = max(big, key=big.__getitem__)
    h2d = big[big_staging] * cfg.big_slot_bytes / 1e9
    result: dict[str, Any] = {
        "op": cfg.op,
        "slot_bytes": cfg.slot_bytes,
        "batch": cfg.batch,
        "msgs_per_s": round(rates[staging]),
        "gb_per_s_h2d": round(h2d, 2),
        "pinned_h2d_gb_per_s": round(costs["pinned_h2d_gb_per_s"], 2),
        "per_batch_overhead_us": round(costs["per_batch_overhead_us"], 1),
        "single_launch_us": round(costs["single_launch_us"], 2),
        "h2d_ratio_vs_pinned": round(h2d / costs["pinned_h2d_gb_per_s"], 3),
        "big_slot_bytes": cfg.big_slot_bytes,
        "staging": staging,
        "big_staging": big_staging,
        "streams": cfg.streams,
    }
    for s in cfg.stagings:
        result[f"msgs_per_s_{s}"] = round(rates[s])
        result[f"gb_per_s_h2d_{s}"] = round(big[s] * cfg.big_slot_bytes / 1e9, 2)
    result["batch_of_1_p50_us"] = round(costs["batch_of_1_p50_us"], 1)
    return result


def run_persistent(cfg: GpuBenchConfig) -> dict[str, Any]:
    mapped = _in_child(_persistent_child, cfg, "mapped")
    result: dict[str, Any] = {
        "op": cfg.op,
        "roundtrip_p50_us": round(mapped["p50"], 2),
        "roundtrip_p99_us": round(mapped["p99"], 2),
        "msgs_per_s": round(mapped["rate"]),
        "batched_roundtrip_p50_us": None,
        "device": "emulated" if cfg.emulate_device else "cuda",
        "slot_bytes": cfg.slot_bytes,
    }
    if not cfg.emulate_device:
        on_device = _in_child(_persistent_child, cfg, "device")
        batched = _in_child(_batched_child, replace(cfg, backend="batched", batch=1))
        result["batched_roundtrip_p50_us"] = round(batched["batch_of_1_p50_us"], 2)
        result["ratio_vs_batched_p50"] = round(batched["batch_of_1_p50_us"] / mapped["p50"], 2)
        result["device_payload_roundtrip_p50_us"] = round(on_device["p50"], 2)
        result["device_payload_roundtrip_p99_us"] = round(on_device["p99"], 2)
        result["device_payload_msgs_per_s"] = round(on_device["rate"])
    return result
