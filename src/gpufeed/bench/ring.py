"""``gpufeed bench ring``: ring throughput and wake-up latency between two
processes, against ``multiprocessing.Queue`` moving the same messages and an OS
pipe waking the same kind of sleeper.

Every figure comes from separate ``spawn``-ed producer and consumer processes,
the way the worker uses rings. Start and end times are ``time.perf_counter``
readings, which on Linux is CLOCK_MONOTONIC and therefore comparable between
processes.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpufeed.bench import median, percentile
from gpufeed.errors import ProcessFailed
from gpufeed.ring import RingConsumer, RingProducer, RingSegment

_CTX = mp.get_context("spawn")
_JOIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RingBenchConfig:
    slot_bytes: int = 64
    batch: int = 256
    slots: int = 2_000_000
    capacity: int = 4096
    repeats: int = 5
    wake_samples: int = 2000
    queue_message_bytes: int = 64


# -- child processes -------------------------------------------------------------------


def _produce(name: str, slots: int, batch: int, start: Any, conn: mp.connection.Connection) -> None:
    producer = RingProducer.attach(name)
    source = np.random.default_rng(1).integers(
        0, 256, (batch, producer.segment.slot_bytes), dtype=np.uint8
    )
    start.wait()
    conn.send(time.perf_counter())
    sent = 0
    while sent < slots:
        first, second = producer.reserve(min(batch, slots - sent), timeout=None)
        k = len(first)
        first[...] = source[:k]
        if len(second):
            second[...] = source[k : k + len(second)]
            k += len(second)
        producer.commit(k)
        sent += k
    producer.close()


def _consume(name: str, slots: int, batch: int, start: Any, conn: mp.connection.Connection) -> None:
    consumer = RingConsumer.attach(name)
    sink = np.empty((batch, consumer.segment.slot_bytes), dtype=np.uint8)
    start.wait()
    received = 0
    while received < slots:
        first, second = consumer.peek(batch, timeout=None)
        k = len(first)
        sink[:k] = first
        if len(second):
            sink[k : k + len(second)] = second
            k += len(second)
        consumer.release(k)
        received += k
    conn.send(time.perf_counter())
    consumer.close()


def _queue_put(
    queue: Any, messages: int, size: int, start: Any, conn: mp.connection.Connection
) -> None:
    message = bytes(range(256))[:size].ljust(size, b"\0")
    start.wait()
    conn.send(time.perf_counter())
    for _ in range(messages):
        queue.put(message)


def _queue_get(queue: Any, messages: int, start: Any, conn: mp.connection.Connection) -> None:
    start.wait()
    for _ in range(messages):
        queue.get()
    conn.send(time.perf_counter())


def _wake_consumer(
    name: str, ready: mp.connection.Connection, samples: int, conn: mp.connection.Connection
) -> None:
    consumer = RingConsumer.attach(name)
    latencies = []
    for _ in range(samples):
        # As the pipe's reader does: say so, then block (in the futex, since a
        # sleep of over 100 us turns the spin off for the next wait).
        os.write(ready.fileno(), b"r")
        first, _ = consumer.peek(1, timeout=None)
        woke = time.perf_counter_ns()
        stamp = int(first[0, :8].view(np.int64)[0])
        consumer.release(1)
        latencies.append((woke - stamp) / 1000.0)
    conn.send(latencies)
    consumer.close()


def _pipe_wake_reader(
    stamps: mp.connection.Connection,
    ready: mp.connection.Connection,
    samples: int,
    conn: mp.connection.Connection,
) -> None:
    # Raw reads and writes on the pipes' descriptors: the OS's wake-up alone, without
    # multiprocessing's framing and pickling.
    latencies = []
    for _ in range(samples):
        os.write(ready.fileno(), b"r")
        raw = os.read(stamps.fileno(), 8)  # blocks in the kernel until the writer's stamp
        woke = time.perf_counter_ns()
        latencies.append((woke - int.from_bytes(raw, "little")) / 1000.0)
    conn.send(latencies)


# -- harness ---------------------------------------------------------------------------


def _run_pair(targets: list[tuple[Any, tuple[Any, ...]]]) -> list[Any]:
    """Start the targets, each with a shared start barrier and its own pipe appended
    to its args, and return what each sent. The barrier keeps process start-up
    (seconds of imports under ``spawn``) out of the timed interval."""
    procs, conns = [], []
    start = _CTX.Barrier(len(targets), timeout=_JOIN_TIMEOUT_S)
    for target, args in targets:
        parent, child = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(target=target, args=(*args, start, child), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)
    try:
        results = []
        for conn in conns:
            if not conn.poll(_JOIN_TIMEOUT_S):
                raise ProcessFailed("benchmark child did not report in time")
            results.append(conn.recv())
        for proc in procs:
            proc.join(_JOIN_TIMEOUT_S)
        for proc in procs:
            if proc.exitcode != 0:
                raise ProcessFailed(f"benchmark child {proc.name} exited with {proc.exitcode}")
        return results
    finally:
        for proc in procs:
            _stop(proc)


def ring_throughput(cfg: RingBenchConfig) -> float:
    """Slots per second from the producer's first reserve to the consumer's last release."""
    # Like the worker's supervisor, the parent owns the segment and the two
    # children attach to it as producer and consumer.
    segment = RingSegment.create(capacity=cfg.capacity, slot_bytes=cfg.slot_bytes)
    try:
        start, end = _run_pair(
            [
                (_produce, (segment.name, cfg.slots, cfg.batch)),
                (_consume, (segment.name, cfg.slots, cfg.batch)),
            ]
        )
    finally:
        segment.close()
    return cfg.slots / float(end - start)


def queue_throughput(cfg: RingBenchConfig) -> float:
    """Messages per second through ``multiprocessing.Queue``, one message per put."""
    queue = _CTX.Queue(maxsize=cfg.capacity)
    start, end = _run_pair(
        [
            (_queue_put, (queue, cfg.slots, cfg.queue_message_bytes)),
            (_queue_get, (queue, cfg.slots)),
        ]
    )
    queue.close()
    return cfg.slots / float(end - start)


def _latencies_from(proc: Any, parent: mp.connection.Connection, who: str) -> list[float]:
    """What a wake benchmark's sleeper sent once it had all its samples."""
    if not parent.poll(_JOIN_TIMEOUT_S):
        raise ProcessFailed(f"{who} did not report")
    latencies: list[float] = parent.recv()
    proc.join(_JOIN_TIMEOUT_S)
    return latencies


def _stop(proc: Any) -> None:
    if proc.is_alive():
        proc.kill()
        proc.join()


def wake_latencies(cfg: RingBenchConfig) -> list[float]:
    """Microseconds from the producer's timestamp to the sleeping consumer's return.

    The parent is the producer, and waits as the pipe's writer does: blocked until
    the consumer says it is about to wait, then the idle time, then the stamp and
    the commit. (Polling the consumer's waiting flag instead, every 20 us, kept
    the producer's core busy and doubled the figure: 42-55 against 25 us.)
    """
    producer = RingProducer.create(capacity=cfg.capacity, slot_bytes=cfg.slot_bytes)
    ready_r, ready_w = _CTX.Pipe(duplex=False)
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(
        target=_wake_consumer,
        args=(producer.segment.name, ready_w, cfg.wake_samples, child),
        daemon=True,
    )
    try:
        proc.start()
        for end in (child, ready_w):
            end.close()
        for _ in range(cfg.wake_samples):
            # The slot is reserved before the idle time, as the pipe's writer has its
            # buffer ready: the figure is from the stamp to the sleeper's return.
            first, _ = producer.reserve(1, timeout=None)
            stamp = first[0, :8].view(np.int64)
            if not ready_r.poll(_JOIN_TIMEOUT_S) or not os.read(ready_r.fileno(), 1):
                raise ProcessFailed("wake benchmark consumer never got ready")
            time.sleep(200e-6)
            deadline = time.monotonic() + _JOIN_TIMEOUT_S
            while not producer.peer_sleeping():  # not yet, on a busy machine
                if time.monotonic() > deadline or not proc.is_alive():
                    raise ProcessFailed("wake benchmark consumer never went to sleep")
                time.sleep(20e-6)
            stamp[0] = time.perf_counter_ns()
            producer.commit(1)
        return _latencies_from(proc, parent, "wake benchmark consumer")
    finally:
        _stop(proc)
        producer.close()
        for end in (parent, child, ready_r, ready_w):
            end.close()


def pipe_wake_latencies(cfg: RingBenchConfig) -> list[float]:
    """The OS's own wake-up, measured as ``wake_latencies`` measures the ring's: the
    reader says it is about to block in ``read``; the writer waits for that, then the
    same idle time, then writes its timestamp into the pipe."""
    stamps_r, stamps_w = _CTX.Pipe(duplex=False)
    ready_r, ready_w = _CTX.Pipe(duplex=False)
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(
        target=_pipe_wake_reader, args=(stamps_r, ready_w, cfg.wake_samples, child), daemon=True
    )
    try:
        proc.start()
        for end in (child, stamps_r, ready_w):
            end.close()
        for _ in range(cfg.wake_samples):
            # Nothing within the timeout, or end of file: the reader died.
            if not ready_r.poll(_JOIN_TIMEOUT_S) or not os.read(ready_r.fileno(), 1):
                raise ProcessFailed("pipe wake benchmark reader never got ready")
            time.sleep(200e-6)
            os.write(stamps_w.fileno(), time.perf_counter_ns().to_bytes(8, "little"))
        return _latencies_from(proc, parent, "pipe wake benchmark reader")
    finally:
        _stop(proc)
        for end in (parent, child, stamps_r, stamps_w, ready_r, ready_w):
            end.close()  # idempotent: the child's ends were closed here once it started


def run(cfg: RingBenchConfig) -> dict[str, float | int]:
    """All ring figures in one run, as the flat dict ``gpufeed bench ring --json`` prints."""
    ring_rates = [ring_throughput(cfg) for _ in range(cfg.repeats)]
    queue_rate = queue_throughput(cfg)
    wake = wake_latencies(cfg)
    pipe_wake = pipe_wake_latencies(cfg)
    slots_per_s = median(ring_rates)
    return {
        "slot_bytes": cfg.slot_bytes,
        "batch": cfg.batch,
        "slots": cfg.slots,
        "repeats": cfg.repeats,
        "slots_per_s": round(slots_per_s),
        "gb_per_s": round(slots_per_s * cfg.slot_bytes / 1e9, 3),
        "mp_queue_msgs_per_s": round(queue_rate),
        "ratio_vs_mp_queue": round(slots_per_s / queue_rate, 1),
        "wake_p50_us": round(percentile(wake, 50), 1),
        "wake_p99_us": round(percentile(wake, 99), 1),
        "pipe_wake_p50_us": round(percentile(pipe_wake, 50), 1),
        "pipe_wake_p99_us": round(percentile(pipe_wake, 99), 1),
        "wake_ratio_vs_pipe": round(percentile(wake, 50) / percentile(pipe_wake, 50), 2),
    }
