"""The batching delay's decisions and the cost model behind them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gpufeed.packing.layout import cost_samples, cost_stamp
from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.schedule import (
    DEADLINE,
    DELAY_OVER,
    FULL,
    NO_GAIN,
    SEND,
    WAITING,
    CostModel,
    Scheduler,
)


def fitted(a: float, b: float, sizes=range(1, 129, 4), noise: float = 0.0) -> CostModel:
    rng = np.random.default_rng(0)
    model = CostModel()
    ns = list(sizes)
    model.add(ns, [a + b * n + noise * rng.standard_normal() for n in ns])
    model._fit()
    return model


def test_the_fit_recovers_fixed_and_per_message_costs() -> None:
    model = fitted(0.005, 50e-6, noise=0.0002)
    assert model.a == pytest.approx(0.005, rel=0.1)
    assert model.b == pytest.approx(50e-6, rel=0.1)
    assert model.predict(100) == pytest.approx(0.010, rel=0.05)


def test_one_batch_size_only_counts_everything_per_message() -> None:
    model = fitted(0.005, 50e-6, sizes=[1] * 20)
    assert model.fitted and model.a == 0.0
    assert model.predict(1) == pytest.approx(0.00505)


def test_cost_stamps_round_trip_and_saturate() -> None:
    reserved = np.array([0, cost_stamp(128, 0.0114), 0, cost_stamp(4096, 99.0), cost_stamp(1, 0)],
                        np.uint32)  # fmt: skip
    sizes, seconds = cost_samples(reserved)
    assert sizes == [128, 1] and seconds == pytest.approx([0.0114, 1e-5])


def scheduler(delay: str, max_batch: int = 64, model: CostModel | None = None) -> Scheduler:
    s = Scheduler(WorkerConfig(max_queue_delay_us=delay, max_batch=max_batch))
    if model is not None:
        s.model = model
    return s


def test_a_fixed_delay_holds_a_small_batch_until_it_is_over() -> None:
    s = scheduler("2000")
    now = time.monotonic()
    held = s.launch(3, now, device_idle=True, earliest_deadline_ms=None)
    assert held.why == WAITING and 0.0015 < held.hold_s <= 0.002
    assert s.launch(3, now - 0.003, device_idle=True, earliest_deadline_ms=None).why == DELAY_OVER
    assert s.launch(64, now, device_idle=True, earliest_deadline_ms=None).why == FULL
    assert s.launch(3, now, device_idle=False, earliest_deadline_ms=None).why == SEND


def test_auto_waits_only_while_more_messages_are_due_within_a_fixed_cost() -> None:
    s = scheduler("auto", max_batch=1024, model=fitted(0.005, 50e-6))
    now = time.monotonic()
    s.arrived(100, now)  # 100 messages a second: under one per 5 ms batch
    assert s.launch(1, now, device_idle=True, earliest_deadline_ms=None).why == NO_GAIN
    s.arrived(4900, now)  # 5,000 a second: 25 due within one batch's fixed cost
    held = s.launch(2, now, device_idle=True, earliest_deadline_ms=None)
    assert held.why == WAITING and held.hold_s == pytest.approx(0.005, abs=0.001)
    assert s.launch(60, now, device_idle=True, earliest_deadline_ms=None).why == NO_GAIN
    # Waiting never costs a message more than one fixed cost.
    assert s.launch(2, now - 0.006, device_idle=True, earliest_deadline_ms=None).why == NO_GAIN
    # Nor its deadline.
    soon = int(time.time() * 1000) + 3
    assert s.launch(2, now, device_idle=True, earliest_deadline_ms=soon).why == DEADLINE


def test_auto_does_not_wait_before_it_can_tell_fixed_from_per_message_cost() -> None:
    s = scheduler("auto", model=fitted(0.005, 50e-6, sizes=[1] * 20))
    now = time.monotonic()
    s.arrived(10_000, now)
    assert s.launch(1, now, device_idle=True, earliest_deadline_ms=None).why == NO_GAIN


def test_the_finish_prediction_counts_the_work_queued_ahead() -> None:
    s = scheduler("0", max_batch=100, model=fitted(0.005, 50e-6))
    now_ms = time.time() * 1000
    alone = s.finish_by_ms(10, 0)
    behind = s.finish_by_ms(10, 200)  # two full batches first
    assert alone is not None and behind is not None
    assert alone - now_ms == pytest.approx(5.5 + 2, abs=1.5)
    assert behind - alone == pytest.approx(2 * 5 + 200 * 0.05, abs=1.5)
    assert scheduler("0", model=CostModel()).finish_by_ms(10, 0) is None, "no fit, no shedding"
    off = Scheduler(WorkerConfig(shed_late=False))
    off.model = fitted(0.005, 50e-6)
    assert off.finish_by_ms(10, 0) is None


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"max_queue_delay_us": "soon"}, "--max-queue-delay-us"),
        ({"max_queue_delay_us": "-5"}, "--max-queue-delay-us"),
        ({"max_queue_delay_us": "2000000"}, "--max-queue-delay-us"),
        ({"priorities": 0}, "--priorities"),
        ({"priorities": 17}, "--priorities"),
        ({"lowest_share": 1.0}, "--lowest-share"),
    ],
)
def test_scheduling_settings_are_checked(settings, flag) -> None:
    from gpufeed.errors import ConfigError

    with pytest.raises(ConfigError, match=flag):
        WorkerConfig(**settings)


def test_a_hostile_deadline_is_left_to_packing_to_reject() -> None:
    from gpufeed.worker.schedule import earliest_deadline

    reads = [(0, [(b"1-0", {b"data": b"x", b"deadline_ms": b"9" * 5000}),
                  (b"2-0", {b"data": b"y", b"deadline_ms": b"1700000000000"})])]  # fmt: skip
    assert earliest_deadline(reads) == 1700000000000


def test_the_shedding_margin_follows_how_late_predictions_come_true() -> None:
    s = scheduler("0", model=fitted(0.005, 50e-6))
    assert s.shed_before_ms(1000) == 1000, "no misses seen: no margin"
    for k in range(64):  # answered 8 ms later than predicted, now and then 20
        s.answered(1000, 1000 + (20 if k % 10 == 0 else 8) - 2)
    assert 1008 <= s.shed_before_ms(1000) <= 1020
    for _ in range(256):  # the machine calms down: answers come early
        s.answered(1000, 995)
    assert s.shed_before_ms(1000) == 1000
    for _ in range(100):  # a full window goes on following: busy again
        s.answered(1000, 1000 + 30 - 2)
    assert s.shed_before_ms(1000) == 1030
    assert s.shed_before_ms(None) is None
