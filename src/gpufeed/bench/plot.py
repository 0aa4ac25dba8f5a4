"""``--plot out.png``: one figure per benchmark run, gpufeed beside its baseline.

matplotlib is an optional extra (``pip install 'gpufeed[plot]'``); it is
imported only when a plot is asked for, with the Agg backend (no display).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpufeed.errors import ConfigError


@dataclass(frozen=True)
class Panel:
    """One bar chart: pairs of (label, result key); values share the unit."""

    title: str
    unit: str
    bars: Sequence[tuple[str, str]]


# What each benchmark's figure shows: throughput beside the baseline's, then latency.
PANELS: dict[str, list[Panel]] = {
    "ring": [
        Panel("throughput", "messages/s",
              [("gpufeed ring", "slots_per_s"), ("mp.Queue", "mp_queue_msgs_per_s")]),
        Panel("wake-up latency", "µs",
              [("gpufeed p50", "wake_p50_us"), ("gpufeed p99", "wake_p99_us"),
               ("pipe p50", "pipe_wake_p50_us"), ("pipe p99", "pipe_wake_p99_us")]),
    ],
    "pack": [
        Panel("packing", "entries/s",
              [("gpufeed pack", "entries_per_s"), ("per-message loop", "naive_entries_per_s")]),
    ],
    "e2e": [
        Panel("throughput", "messages/s",
              [("gpufeed worker", "msgs_per_s"), ("bare redis-py floor", "floor_msgs_per_s")]),
        Panel("latency (paced)", "ms",
              [("gpufeed p50", "p50_ms"), ("gpufeed p99", "p99_ms"),
               ("floor p50", "floor_p50_ms"), ("floor p99", "floor_p99_ms")]),
    ],
}  # fmt: skip


def plot(bench: str, result: Mapping[str, float | int | str], path: str | Path) -> Path:
    """Draw ``result`` of ``bench`` into ``path`` (PNG, SVG or PDF by its suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'gpufeed[plot]'") from exc
    panels = PANELS[bench]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        labels = [label for label, key in panel.bars if key in result]
        values = [float(result[key]) for _, key in panel.bars if key in result]
        colors = ["#2f7ed8" if label.startswith("gpufeed") else "#8c8c8c" for label in labels]
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:g}" for v in values])
        if values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")  # a 500x ratio would leave the baseline's bar invisible
        ax.set_title(panel.title)
        ax.set_ylabel(panel.unit)
        ax.tick_params(axis="x", labelrotation=15)
    settings = ", ".join(
        f"{k}={v}" for k, v in result.items() if k in ("slot_bytes", "batch", "messages", "repeats")
    )
    fig.suptitle(f"gpufeed bench {bench}" + (f" ({settings})" if settings else ""))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
