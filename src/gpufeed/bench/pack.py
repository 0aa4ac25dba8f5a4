"""``gpufeed bench pack``: packing XREADGROUP replies into ring-shaped slot arrays,
against a straightforward per-message loop doing the same job.

Both take the reply the ingest process reads: RESP2, unparsed, so each
entry's fields are a flat ``[name, value, ...]`` list."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpufeed.bench import median
from gpufeed.ops import OpTable
from gpufeed.packing import pack, payload_capacity, read_entries


@dataclass(frozen=True)
class PackBenchConfig:
    slot_bytes: int = 128
    payload_bytes: int = 64
    batch: int = 256
    batches: int = 400
    repeats: int = 5


def make_replies(cfg: PackBenchConfig) -> list[Any]:
    """Unparsed RESP2 XREADGROUP replies, with distinct payloads."""
    rng = np.random.default_rng(0)
    replies = []
    for b in range(cfg.batches):
        blob = rng.integers(0, 256, cfg.batch * cfg.payload_bytes, dtype=np.uint8).tobytes()
        entries = [
            [
                f"{b}-{i}".encode(),
                [b"data", blob[i * cfg.payload_bytes : (i + 1) * cfg.payload_bytes]],
            ]
            for i in range(cfg.batch)
        ]
        replies.append([[b"gpufeed:{bench}:in", entries]])
    return replies


_HEADER = struct.Struct("<IHHII")


def naive_pack(reply: Any, slots: np.ndarray, first_seq: int) -> int:
    """The obvious per-message loop: fields to a dict (as redis-py parses them), one
    header pack and one payload copy per message."""
    i = 0
    for _stream, entries in reply:
        for _id, flat in entries:
            data = dict(zip(flat[::2], flat[1::2], strict=True))[b"data"]
            _HEADER.pack_into(slots[i], 0, len(data), 0, 0, (first_seq + i) & 0xFFFFFFFF, 0)
            slots[i, 16 : 16 + len(data)] = np.frombuffer(data, dtype=np.uint8)
            i += 1
    return i


def _time(fn: Any, replies: list[Any], slots: np.ndarray, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = 0
        for reply in replies:
            n += fn(reply, slots, n)
        rates.append(n / (time.perf_counter() - start))
    return median(rates)


def run(cfg: PackBenchConfig) -> dict[str, float | int]:
    table = OpTable.for_worker("echo", payload_capacity(cfg.slot_bytes))
    slots = np.zeros((cfg.batch, cfg.slot_bytes), dtype=np.uint8)
    replies = make_replies(cfg)

    def gpufeed_pack(reply: Any, out: np.ndarray, first_seq: int) -> int:
        return pack(read_entries(reply), out, table=table, first_seq=first_seq, now_ms=0).count

    # Interleave the two so that machine noise hits both alike.
    ours, naive = [], []
    for _ in range(cfg.repeats):
        ours.append(_time(gpufeed_pack, replies, slots, 1))
        naive.append(_time(naive_pack, replies, slots, 1))
    entries_per_s, naive_per_s = median(ours), median(naive)
    return {
        "slot_bytes": cfg.slot_bytes,
        "payload_bytes": cfg.payload_bytes,
        "batch": cfg.batch,
        "entries_per_s": round(entries_per_s),
        "naive_entries_per_s": round(naive_per_s),
        "ratio_vs_naive": round(entries_per_s / naive_per_s, 2),
    }
