"""Where a ring wake-up's time goes, beside the OS's own wake-ups (docs/benchmarks.md, "Ring").

    python benchmarks/wake_probe.py [samples]

Two forked processes; the sleeper blocks, the waker idles 1 ms, stamps the
time and wakes it; the sleeper notes when it is back. Bare primitives first
(a futex on a shared page, called as the ring calls it; an eventfd; a pipe),
then the ring itself, split at its futex calls: the ring's own code before the
wake-up call, the kernel's wake-up, the ring's code after it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import statistics
import struct
import sys
import time

import numpy as np

import gpufeed.ring.spsc as spsc
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.ring._wait import futex_wait, futex_wake


def bare(mode: str, n: int) -> tuple[float, float]:
    """p50 and p99 wake-up, µs, of ``futex``, ``eventfd`` or ``pipe``."""
    page = mmap.mmap(-1, 4096)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    word = ctypes.c_uint32.from_address(base)
    stamp = ctypes.c_int64.from_address(base + 8)
    efd = os.eventfd(0)
    data_r, data_w = os.pipe()
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        woke = []
        for i in range(n + 20):
            if mode == "futex":
                while (v := word.value) != 2 * i + 1:
                    futex_wait(base, v, 1.0)
            elif mode == "eventfd":
                os.eventfd_read(efd)
            else:
                os.read(data_r, 8)
            woke.append(time.perf_counter_ns() - stamp.value)
            os.write(ack_w, b"k")
        lat = sorted(woke[20:])
        os.write(
            ack_w, struct.pack("dd", lat[len(lat) // 2] / 1e3, lat[len(lat) * 99 // 100] / 1e3)
        )
        os._exit(0)
    for i in range(n + 20):
        time.sleep(0.001)
        stamp.value = time.perf_counter_ns()
        if mode == "futex":
            word.value = 2 * i + 1
            futex_wake(base)
        elif mode == "eventfd":
            os.eventfd_write(efd, 1)
        else:
            os.write(data_w, b"x")
        os.read(ack_r, 1)
    got = b""
    while len(got) < 16:
        got += os.read(ack_r, 16 - len(got))
    os.waitpid(pid, 0)
    p50, p99 = struct.unpack("dd", got)
    return p50, p99


def ring(n: int) -> tuple[float, float, float]:
    """p50, µs: stamp → the ring's wake-up call; stamp → the sleeper back from its
    futex; back from the futex → out of ``peek``."""
    marks: dict[str, int] = {}
    wait, wake = spsc.futex_wait, spsc.futex_wake

    def timed_wait(addr: int, expected: int, timeout: float) -> None:
        wait(addr, expected, timeout)
        marks["woke"] = time.perf_counter_ns()

    def timed_wake(addr: int, count: int = 1) -> None:
        marks["call"] = time.perf_counter_ns()
        wake(addr, count)

    spsc.futex_wait, spsc.futex_wake = timed_wait, timed_wake
    producer = RingProducer.create(capacity=64, slot_bytes=64)
    out_r, out_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        consumer = RingConsumer.attach(producer.segment.name)
        rows = []
        for _ in range(n):
            os.write(ready_w, b"r")
            first, _ = consumer.peek(1, timeout=None)
            back = time.perf_counter_ns()
            sent = int(first[0, :8].view(np.int64)[0])
            consumer.release(1)
            rows.append(((marks["woke"] - sent) / 1e3, (back - marks["woke"]) / 1e3))
        woke = statistics.median(r[0] for r in rows)
        after = statistics.median(r[1] for r in rows)
        os.write(out_w, struct.pack("dd", woke, after))
        os._exit(0)
    before = []
    for _ in range(n):
        slot, _ = producer.reserve(1, timeout=None)
        stamp = slot[0, :8].view(np.int64)  # ready before the clock, as a pipe's buffer is
        os.read(ready_r, 1)
        time.sleep(0.001)
        while not producer.peer_sleeping():
            time.sleep(20e-6)
        sent = stamp[0] = time.perf_counter_ns()
        producer.commit(1)
        before.append((marks["call"] - sent) / 1e3)
    got = b""
    while len(got) < 16:
        got += os.read(out_r, 16 - len(got))
    os.waitpid(pid, 0)
    producer.close()
    woke, after = struct.unpack("dd", got)
    return statistics.median(before), woke, after


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    for mode in ("futex", "eventfd", "pipe"):
        p50, p99 = bare(mode, n)
        print(f"{mode:8s} wake-up p50 {p50:6.1f} us, p99 {p99:7.1f} us")
    call, woke, after = ring(n)
    print(f"ring     stamp -> wake-up call {call:.1f} us, -> sleeper back from its futex "
          f"{woke:.1f} us, then -> out of peek {after:.1f} us (p50)")  # fmt: skip


if __name__ == "__main__":
    main()
