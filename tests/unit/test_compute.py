"""The compute loop against real rings, driven from this process as the ingest side."""

from __future__ import annotations

import threading

from gpufeed.gpu.cpu import CpuBackend
from gpufeed.ops.registry import OpTable
from gpufeed.packing import pack, unpack_results
from gpufeed.packing.layout import payload_capacity
from gpufeed.ring import RingConsumer, RingProducer
from gpufeed.worker.compute import RingPair, serve

SLOT = 256


def _rings() -> tuple[RingProducer, RingConsumer, RingPair]:
    requests = RingProducer.create(capacity=64, slot_bytes=SLOT)
    responses = RingConsumer.create(capacity=64, slot_bytes=SLOT)
    pair = RingPair(RingConsumer.attach(requests.segment.name),
                 RingProducer.attach(responses.segment.name))  # fmt: skip
    return requests, responses, pair


def _close(*endpoints: RingProducer | RingConsumer) -> None:
    for endpoint in endpoints:
        endpoint.close()


def _send(requests: RingProducer, table: OpTable, n: int):
    entries = [(f"1-{i}".encode(), {b"data": f"m{i}".encode()}) for i in range(n)]
    batch = pack(entries, requests.reserve(n), table=table, first_seq=0, now_ms=0)
    requests.commit(batch.count)
    return batch


def test_answers_in_order_then_stops_when_the_ingest_side_closes() -> None:
    table = OpTable.for_worker("echo", payload_capacity(SLOT))
    requests, responses, pair = _rings()
    batch = _send(requests, table, 10)
    server = threading.Thread(target=serve, args=([pair], CpuBackend(table, SLOT, 16), 16))
    server.start()
    got = unpack_results(responses.peek(10, timeout=10.0), batch)
    assert [(r.status, r.body) for r in got] == [("ok", f"m{i}".encode()) for i in range(10)]
    responses.release(10)
    requests.close()
    server.join(10)
    assert not server.is_alive()
    _close(pair.requests, pair.responses, responses)


def test_results_for_an_ingest_side_that_left_are_dropped_not_fatal() -> None:
    # The ingest process found its response ring damaged and closed both rings
    # while a batch of its was being computed: the compute process must drop
    # those results (the messages are still pending in Redis) and carry on.
    table = OpTable.for_worker("echo", payload_capacity(SLOT))
    requests, responses, pair = _rings()
    _send(requests, table, 10)
    responses.close()
    requests.close()
    serve([pair], CpuBackend(table, SLOT, 16), 16)  # returns instead of raising RingClosed
    assert not pair.open
    _close(pair.requests, pair.responses)


def test_each_batch_carries_its_own_cost_in_its_first_result() -> None:
    # Two ingest sides with a batch each: the cpu backend computes both in one round
    # before it is polled; each stamp must still time its own batch (5 ms + 50 us
    # per message), not the round's.
    from gpufeed.packing.layout import cost_samples, headers

    table = OpTable.for_worker("gpufeed.bench.paced:paced", payload_capacity(SLOT))
    sides = [_rings() for _ in range(2)]
    for requests, _, _ in sides:
        _send(requests, table, 10)
    pairs = [pair for _, _, pair in sides]
    server = threading.Thread(target=serve, args=(pairs, CpuBackend(table, SLOT, 16), 16))
    server.start()
    stamps = []
    try:
        for _, responses, _ in sides:
            first, second = responses.peek(10, timeout=10.0)
            stamps.append(cost_samples(headers(first)["reserved"]))
            del first, second  # views of the ring: gone before it closes
            responses.release(10)
    finally:
        for requests, _, _ in sides:
            requests.close()
        server.join(10)
        for _, responses, pair in sides:
            _close(pair.requests, pair.responses, responses)
    for sizes, seconds in stamps:
        assert sizes == [10]
        assert 0.0052 <= seconds[0] < 0.0095, seconds
