"""The bulk histogram update must give exactly what one observe() per value gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from gpufeed.worker.metrics import LATENCY_BUCKETS, observe_many


def samples(h: Histogram) -> dict[tuple[str, str], float]:
    out = {}
    for metric in h.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                out[(s.name, s.labels.get("le", ""))] = s.value
    return out


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_observe_many_matches_observe(values: list[float]) -> None:
    one = Histogram("one", "x", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    bulk = Histogram("one", "x", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        one.observe(v)
    observe_many(bulk, np.array(values, dtype=np.float64))
    a, b = samples(one), samples(bulk)
    assert a.keys() == b.keys()
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(a[key])), key


def test_values_on_a_bucket_bound_count_in_that_bucket() -> None:
    h = Histogram("b", "x", buckets=(1, 2), registry=CollectorRegistry())
    observe_many(h, np.array([1.0, 2.0, 2.5]))
    got = samples(h)
    assert (got[("b_bucket", "1.0")], got[("b_bucket", "2.0")], got[("b_bucket", "+Inf")]) == (
        1, 2, 3,
    )  # fmt: skip
