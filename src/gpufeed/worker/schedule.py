"""When a batch goes: a batching delay, and a cost model to decide it and to shed late work.

The compute process stamps each batch's cost into its first result slot
(``packing.layout.cost_stamp``). ``CostModel`` fits batch time = a + b·n to the
latest stamps, the way BentoML's adaptive batcher fits its own; ``Scheduler``
uses the fit for two decisions of the ingest process:

- **hold**: with the device idle and a small batch in hand, wait a little for
  more (``--max-queue-delay-us``). A fixed delay waits for a full batch or for
  the delay, whichever comes first. ``auto`` waits only while more messages are
  due within the batch's own time than it holds (the arrival rate times
  a + b·n exceeds n: a batch launched now could not keep up with what arrives
  while it computes), at most ``a`` (a ski-rental bound: waiting never costs a
  message more than one extra fixed cost), and never past what the earliest
  deadline in hand allows.
- **shed**: a message whose deadline falls before the predicted commit of its
  batch (the work queued ahead of it, plus its own batch) is answered
  ``expired`` at once, with no compute spent on it.

Until the stamps vary in size the two costs cannot be told apart; the model
then counts all of it per message (``a`` = 0), so ``auto`` does not wait: a
model that is unsure adds no latency.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpufeed.packing import Columns
from gpufeed.packing.requests import parse_deadline
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.isolate import as_ids
from gpufeed.worker.levels import Read, joined

# Batches the fit looks back over, and how many it needs first.
WINDOW = 256
MIN_SAMPLES = 8
# Refit after this many new samples (a fit is a small least-squares solve).
REFIT_EVERY = 16
# Arrivals are counted over this window to estimate the arrival rate.
RATE_WINDOW_S = 1.0
# What a commit adds after the last result of a batch comes back (the script
# call and the round trip), when predicting a message's answer time.
COMMIT_MARGIN_S = 0.002
# The predictions' own misses: over the latest batches, the share of them a
# prediction plus its margin covers (the margin is that quantile of the misses).
MISS_QUANTILE = 95


class Window:
    """The latest ``WINDOW`` values, in a preallocated array: what the fits read is a
    view, not a list converted on every call (a deque through ``np.percentile``
    took 40 us, on the path from a lone message's results to their commit)."""

    def __init__(self) -> None:
        self._values = np.zeros(WINDOW)
        self._next = 0
        self.count = 0

    def extend(self, values: list[float] | list[int]) -> None:
        for v in values:
            self._values[self._next] = v
            self._next = (self._next + 1) % WINDOW
        self.count = min(WINDOW, self.count + len(values))

    def values(self) -> npt.NDArray[np.float64]:
        """The values held, in no particular order (all the fits need)."""
        return self._values[: self.count]


class CostModel:
    """Batch time = a + b·n by least squares over the last ``WINDOW`` batches."""

    def __init__(self) -> None:
        self.sizes = Window()
        self.times = Window()  # its k-th value is the time of sizes' k-th
        self.a = 0.0  # seconds per batch
        self.b = 0.0  # seconds per message
        self.fitted = False
        self._new = 0

    def add(self, sizes: list[int], seconds: list[float]) -> None:
        self.sizes.extend(sizes)
        self.times.extend(seconds)
        self._new += len(sizes)
        if self._new >= REFIT_EVERY or (not self.fitted and self.sizes.count >= MIN_SAMPLES):
            self._fit()

    def _fit(self) -> None:
        self._new = 0
        if self.sizes.count < MIN_SAMPLES:
            return
        n, t = self.sizes.values(), self.times.values()
        n_mean, t_mean = float(n.mean()), float(t.mean())
        # The least-squares line in closed form: 8 us here, np.polyfit 55.
        dn = n - n_mean
        spread = float(dn @ dn)
        if spread == 0:  # one size only: a and b cannot be told apart
            self.a, self.b = 0.0, t_mean / float(n[0])
        else:
            b = float(dn @ (t - t_mean)) / spread
            a = t_mean - b * n_mean
            if a < 0:  # noise: a line through the origin instead
                a, b = 0.0, float((n @ t) / (n @ n))
            elif b < 0:
                a, b = t_mean, 0.0
            self.a, self.b = a, b
        self.fitted = True

    def predict(self, n: int) -> float:
        """Seconds to compute a batch of ``n``."""
        return self.a + self.b * n if n > 0 else 0.0


class ArrivalRate:
    """Messages read per second over the last ``RATE_WINDOW_S``."""

    def __init__(self) -> None:
        self._reads: deque[tuple[float, int]] = deque()
        self._count = 0

    def add(self, n: int, now: float) -> None:
        self._reads.append((now, n))
        self._count += n
        self._trim(now)

    def per_s(self, now: float) -> float:
        self._trim(now)
        return self._count / RATE_WINDOW_S

    def _trim(self, now: float) -> None:
        while self._reads and now - self._reads[0][0] > RATE_WINDOW_S:
            self._count -= self._reads.popleft()[1]


@dataclass(frozen=True)
class Launch:
    """Why a batch went when it did: a metric label and a debug log field."""

    hold_s: float  # 0: send now
    why: str


SEND = "device busy"  # the batch joins work already queued: no reason to hold it
FULL = "full"
DELAY_OVER = "delay over"
NO_GAIN = "no gain"  # auto: no more messages expected within a batch's fixed cost
DEADLINE = "deadline"
WAITING = "waiting"
DRAIN = "drain"
NO_DELAY = "no delay"  # --max-queue-delay-us 0: every read goes at once
RECLAIM_OR_HISTORY = "reclaimed or history"  # entries read again go at once


def earliest_deadline(reads: Read) -> int | None:
    """The earliest ``deadline_ms`` among ``(level, entries)`` reads, if any has one."""
    earliest: int | None = None
    for _, entries in reads:
        if isinstance(entries, Columns):
            continue  # data only
        for _, fields in entries:
            raw = fields.get(b"deadline_ms") if fields else None
            if raw is None:
                continue
            try:
                value = parse_deadline(raw)
            except ValueError:  # malformed: packing rejects it, with a reason
                continue
            earliest = value if earliest is None else min(earliest, value)
    return earliest


class Scheduler:
    """The batching delay and deadline shedding of one ingest process."""

    def __init__(self, config: WorkerConfig) -> None:
        delay = config.queue_delay
        self.auto = delay.auto
        self.delay_s = delay.us / 1e6
        self.max_batch = config.max_batch
        self.shed = config.shed_late
        self.model = CostModel()
        self.rate = ArrivalRate()
        # How much later than predicted batches were answered, in ms (negative:
        # earlier): the machine's noise, and what the model does not see.
        self.misses = Window()
        self._answered = 0
        self.margin_s = 0.0

    @property
    def holds(self) -> bool:
        """Whether batches may ever be held back."""
        return self.auto or self.delay_s > 0

    def observe(self, sizes: list[int], seconds: list[float]) -> None:
        """Cost stamps from the response ring."""
        if sizes:
            self.model.add(sizes, seconds)

    def answered(self, predicted_ms: int, at_ms: float) -> None:
        """A batch predicted to be answered at ``predicted_ms`` came back at ``at_ms``
        (its commit follows): the prediction's error widens or narrows the margin."""
        self.misses.extend([at_ms + COMMIT_MARGIN_S * 1000 - predicted_ms])  # as predicted
        self._answered += 1
        # Every MIN_SAMPLES batches: counted, since the window's length stops at
        # WINDOW, and a quantile per batch would sit between results and commit.
        if self._answered % MIN_SAMPLES == 0 and self.misses.count >= MIN_SAMPLES:
            misses = self.misses.values()
            k = math.ceil(len(misses) * MISS_QUANTILE / 100) - 1  # nearest rank
            self.margin_s = max(0.0, float(np.partition(misses, k)[k])) / 1000

    def arrived(self, n: int, now: float) -> None:
        self.rate.add(n, now)

    def launch(
        self, in_hand: int, held_since: float, device_idle: bool, earliest_deadline_ms: int | None
    ) -> Launch:
        """Send the ``in_hand`` messages now, or hold them: for how long, and why.

        ``held_since``: ``time.monotonic()`` when the oldest of them was read.
        """
        if not device_idle:
            return Launch(0.0, SEND)
        if in_hand >= self.max_batch:
            return Launch(0.0, FULL)
        now = time.monotonic()
        held = now - held_since
        if self.auto:
            a, b = self.model.a, self.model.b
            budget = min(a, self.delay_s)
            expected = self.rate.per_s(now) * (a + b * in_hand)
            if budget <= held or expected <= in_hand:
                return Launch(0.0, NO_GAIN)
            left = budget - held
        else:
            left = self.delay_s - held
            if left <= 0:
                return Launch(0.0, DELAY_OVER)
        if earliest_deadline_ms is not None:
            compute = self.model.predict(in_hand) if self.model.fitted else 0.0
            finish = time.time() + left + compute + COMMIT_MARGIN_S
            if finish * 1000 >= earliest_deadline_ms:
                return Launch(0.0, DEADLINE)
        return Launch(left, WAITING)

    def finish_by_ms(self, n: int, queued_ahead: int) -> int | None:
        """When a batch of ``n`` packed now would be committed, by the model alone, in
        Unix ms; None when shedding is off or the model has no fit yet."""
        if not self.shed or not self.model.fitted:
            return None
        # What is queued ahead runs first, as batches of at most max_batch.
        batches = -(-queued_ahead // self.max_batch)
        ahead = self.model.a * batches + self.model.b * queued_ahead
        return int((time.time() + ahead + self.model.predict(n) + COMMIT_MARGIN_S) * 1000)

    def shed_before_ms(self, finish_by_ms: int | None) -> int | None:
        """Deadlines before this are shed: the prediction, plus the margin its misses
        call for."""
        return None if finish_by_ms is None else finish_by_ms + round(self.margin_s * 1000)


class HeldBack:
    """Entries read and held back for a fuller batch, level by level."""

    def __init__(self) -> None:
        self.reads: Read = []
        self.since = 0.0  # time.monotonic() when the first of them was read; 0: none held
        self.until = 0.0  # when they must go at the latest

    def __len__(self) -> int:
        return sum(len(e) for _, e in self.reads)

    def ids(self, level: int) -> list[bytes]:
        return [i for k, entries in self.reads if k == level for i in as_ids(entries)]

    def merged(self, reads: Read) -> Read:
        """What is held, with ``reads`` after it, level by level (highest first);
        nothing is held any more."""
        if not self.reads:
            return reads
        got = dict(self.reads)
        for k, entries in reads:
            got[k] = joined(got.get(k), entries)
        self.reads = []
        return sorted(got.items(), key=lambda r: -r[0])

    def left_ms(self) -> int:
        """Whole milliseconds the held entries may still wait."""
        return int((self.until - time.monotonic()) * 1000)

    def take(self) -> Read:
        reads, self.reads, self.since = self.reads, [], 0.0
        return reads

    def decide(self, scheduler: Scheduler, reads: Read, device_idle: bool) -> Launch:
        """Send ``reads`` now, or keep them here for a fuller batch."""
        now = time.monotonic()
        if not self.since:  # the first read of this hold
            self.since = now
        launch = scheduler.launch(
            sum(len(e) for _, e in reads), self.since, device_idle, earliest_deadline(reads)
        )
        if launch.hold_s > 0:
            self.reads, self.until = reads, now + launch.hold_s
        else:
            self.since = 0.0
        return launch
