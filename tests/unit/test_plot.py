"""``--plot``: every benchmark's figure draws the keys its benchmark prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufeed.bench.plot import PANELS, plot

RESULTS = {
    "ring": {"slot_bytes": 64, "batch": 256, "slots_per_s": 9e7, "mp_queue_msgs_per_s": 2e5,
             "wake_p50_us": 18.0, "wake_p99_us": 70.0, "pipe_wake_p50_us": 11.0,
             "pipe_wake_p99_us": 50.0},
    "pack": {"slot_bytes": 128, "batch": 256, "entries_per_s": 2e6, "naive_entries_per_s": 8e5},
    "e2e": {"messages": 1000, "msgs_per_s": 4e4, "floor_msgs_per_s": 5e4, "p50_ms": 3.0,
            "p99_ms": 9.0, "floor_p50_ms": 2.0, "floor_p99_ms": 6.0},
}  # fmt: skip


@pytest.mark.parametrize("bench", sorted(PANELS))
def test_each_benchmark_figure_is_drawn(bench: str, tmp_path: Path) -> None:
    keys = {key for panel in PANELS[bench] for _, key in panel.bars}
    assert keys <= RESULTS[bench].keys()
    out = plot(bench, RESULTS[bench], tmp_path / f"{bench}.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
