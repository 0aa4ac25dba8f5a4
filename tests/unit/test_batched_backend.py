"""The batched backend's own logic over a NumPy stand-in for CuPy (fake_cupy.py).

What is checked here is gpufeed's, not CUDA's: lanes taken in turn and
batches returned in submission order, result buffers that stay valid until
the compute process has written them, retry then halving after an error that
keeps the context, DeviceLost (with the suspects) after one that loses it.
On a GPU, tests/gpu/test_batched_gpu.py checks the same against real kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from fake_cupy import FakeCuPy

import gpufeed.gpu.batched as batched
from gpufeed.errors import DeviceLost
from gpufeed.gpu.cpu import compute
from gpufeed.ops import OpTable
from gpufeed.packing import STATUS_ERROR, headers, write_requests

SLOT = 64


def slots(*datas: bytes, op_id: int = 0, first_seq: int = 0) -> np.ndarray:
    out = np.zeros((len(datas), SLOT), np.uint8)
    lens = np.array([len(d) for d in datas], np.int64)
    write_requests([out], list(datas), lens, np.full(len(datas), op_id, np.uint16), first_seq)
    return out


def backend_for(monkeypatch, table, faults=lambda s: None, **options):
    fake = FakeCuPy(table, faults)
    monkeypatch.setattr(batched, "import_cupy", lambda: fake)
    return batched.BatchedBackend(table, SLOT, 16, **options), fake


def marked(batch: np.ndarray, tag: bytes) -> bool:
    return bool((batch[:, 16 : 16 + len(tag)] == np.frombuffer(tag, np.uint8)).all(axis=1).any())


def written(done):
    """What the compute process would write into its ring: copies, taken at once."""
    return [(d.ring, d.requests["seq"].tolist(), [bytes(d.out[i, : d.out_lens[i]])
             for i in range(len(d.out_lens))], d.status.tolist()) for d in done]  # fmt: skip


@pytest.fixture
def table() -> OpTable:
    return OpTable.for_worker("echo", SLOT - 16)


@pytest.mark.parametrize("staging", ["pinned", "registered"])
def test_batches_come_back_in_order_with_their_results(monkeypatch, table, staging) -> None:
    backend, fake = backend_for(monkeypatch, table, streams=3, staging=staging)
    ring = np.zeros((4096, SLOT), np.uint8)  # stands in for a request ring
    backend.attach_request_rings([ring])
    assert fake.registered == ([(int(ring.ctypes.data), ring.nbytes)] if staging == "registered"
                               else [])  # fmt: skip
    sent, got, row = [], [], 0
    for b in range(40):
        n = 1 + b % 16
        ring[row : row + n] = slots(*[b"b%d-%d" % (b, i) for i in range(n)], first_seq=row)
        backend.submit(b % 2, ring[row : row + n])
        sent.append((b % 2, list(range(row, row + n)), [b"b%d-%d" % (b, i) for i in range(n)]))
        row += n
        if b % 3 == 0:  # the compute process polls now and then, not after every submit
            got += written(backend.poll(0.0))
    while backend.in_flight():
        got += written(backend.poll(1.0))
    assert [(r, seqs, bodies) for r, seqs, bodies, _ in got] == sent
    assert all(not any(status) for *_, status in got)


def test_results_held_past_a_lane_reuse_keep_their_own_memory(monkeypatch, table) -> None:
    # Four submits on two lanes before the first poll: the lanes are reused
    # while their results still wait to be handed over.
    backend, _ = backend_for(monkeypatch, table, streams=2)
    for b in range(4):
        backend.submit(0, slots(b"batch %d" % b))
    got = written(backend.poll(1.0))
    while backend.in_flight():
        got += written(backend.poll(1.0))
    assert [bodies for _, _, bodies, _ in got] == [[b"batch %d" % b] for b in range(4)]


def test_dense_batches_take_the_whole_batch_path_and_mixed_ones_the_kernel(monkeypatch) -> None:
    table = OpTable.for_worker("dense", SLOT - 16)
    backend, fake = backend_for(monkeypatch, table)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("<f4")
    dense = slots(*[row.tobytes() for row in x])
    mixed = np.concatenate([dense[:2], slots(b"hi", op_id=table.ids["echo"])])
    backend.submit(0, dense)
    backend.submit(0, mixed)
    done = []
    while backend.in_flight():
        done += backend.poll(1.0)
    assert fake.launches == [3], "only the mixed batch ran the kernel"
    want, _ = compute(table, dense, reference=True)
    assert np.allclose(done[0].out[:, :32].view("<f4"), want[:, :32].view("<f4"), atol=1e-5)
    assert bytes(done[1].out[2, :2]) == b"hi"


def test_what_the_legacy_stream_wrote_is_finished_before_any_batch_starts(monkeypatch) -> None:
    """The lanes' buffers, OpParams and dense's W and b are written before the first
    batch, and the device is synchronised after: the lanes' non-blocking streams do
    not wait for the legacy default stream, and no upload runs on one lane's stream
    for the others to use unordered."""
    table = OpTable.for_worker("dense", SLOT - 16)
    backend, fake = backend_for(monkeypatch, table, streams=3)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype("<f4")
    dense = slots(*[row.tobytes() for row in x])
    for ring in range(3):  # dense on every lane, and the kernel too
        backend.submit(ring, dense)
        backend.submit(ring, slots(b"hi", op_id=table.ids["echo"]))
    while backend.in_flight():
        backend.poll(1.0)
    log = fake.log
    first_batch = next(i for i, e in enumerate(log) if e[0] == "launch")
    legacy = [i for i, e in enumerate(log) if e == ("write", 0)]
    assert legacy and max(legacy) < first_batch
    assert any(e == ("sync",) for e in log[max(legacy) : first_batch])
    assert [e for e in log if e[0] == "write" and e[1] != 0] == []


def test_a_launch_refused_once_is_retried_and_succeeds(monkeypatch, table) -> None:
    refused = []

    def faults(batch):
        if marked(batch, b"flaky") and not refused:
            refused.append(len(batch))
            return 701  # launch out of resources: the context is fine
        return None

    backend, fake = backend_for(monkeypatch, table, faults, streams=2)
    before = fake.streams_made
    backend.submit(0, slots(b"ok", b"flaky", b"ok too"))
    (done,) = backend.poll(1.0)
    assert written([done])[0][2:] == ([b"ok", b"flaky", b"ok too"], [0, 0, 0])
    assert fake.streams_made == before + 2, "the lanes were recreated"


def test_a_batch_failing_as_it_completes_keeps_its_place_in_the_ring(monkeypatch, table) -> None:
    """The oldest batch fails when it completes (the context survives) while later
    batches of the same ring are in flight: after its retry, the ring's batches come
    back in submission order, or the ingest process would see results out of order."""
    failed = []

    def faults(batch):
        if marked(batch, b"first") and not failed:
            failed.append(True)
            return -2  # reported by the batch's completion event, not at launch
        return None

    backend, _ = backend_for(monkeypatch, table, faults, streams=3)
    for b, tag in enumerate((b"first", b"second", b"third")):
        backend.submit(0, slots(tag, first_seq=b))
    done = []
    while backend.in_flight():
        done += written(backend.poll(1.0))
    assert failed, "the first batch did fail once"
    assert [seqs for _, seqs, _, _ in done] == [[0], [1], [2]]
    assert [bodies for _, _, bodies, _ in done] == [[b"first"], [b"second"], [b"third"]]


def test_messages_that_always_fail_are_isolated_by_halving(monkeypatch, table) -> None:
    faults = lambda batch: 701 if marked(batch, b"refuse") else None  # noqa: E731
    backend, fake = backend_for(monkeypatch, table, faults)
    datas = [b"m%d" % i for i in range(12)]
    datas[3], datas[9] = b"refuse 3", b"refuse 9"
    backend.submit(0, slots(*datas))
    (done,) = backend.poll(1.0)
    _, seqs, bodies, status = written([done])[0]
    assert seqs == list(range(12))
    assert [i for i, s in enumerate(status) if s == STATUS_ERROR] == [3, 9]
    assert all(b"the GPU failed on this message" in bodies[i] for i in (3, 9))
    assert [bodies[i] for i in range(12) if i not in (3, 9)] == [
        d for i, d in enumerate(datas) if i not in (3, 9)
    ]
    assert sum(fake.launches) == 10, "every other message ran exactly once"


def test_a_lost_context_raises_device_lost_with_every_batch_in_flight(monkeypatch, table) -> None:
    faults = lambda batch: 719 if marked(batch, b"poison") else None  # noqa: E731
    backend, _ = backend_for(monkeypatch, table, faults, streams=4)
    backend.submit(0, slots(b"a", b"b"))
    backend.submit(1, slots(b"c", b"poison"))  # the launch returns; the kernel traps as it runs
    # A busy compute process polls without waiting: the trap must surface there too, where
    # CuPy's Event.done would say "not yet" for ever.
    with pytest.raises(DeviceLost, match="cudaError 719"):
        for _ in range(100):
            backend.poll(0.0)
    held = backend.in_flight_requests()
    assert [headers(h)["len"].tolist() for h in held] == [[1, 1], [1, 6]]
    assert bytes(held[1][1, 16:22]) == b"poison"
    with pytest.raises(DeviceLost):
        backend.poll(1.0)
