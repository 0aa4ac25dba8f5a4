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
