"""The batched backend on a real GPU: every op against its NumPy reference, FIFO
order, and the worker end to end (a message that traps the kernel: test_trapped_kernel.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_support import needs_gpu, random_slots

from conftest import keys, wait_for_results
from gpufeed.gpu.cpu import compute
from gpufeed.ops import BUILTINS, OpTable
from gpufeed.packing.layout import headers, payload_capacity

pytestmark = [*needs_gpu, pytest.mark.timeout(600)]


def kept(done):
    """A backend's results stay valid only until its next call (the compute process
    writes them into its ring at once): keep copies."""
    for d in done:
        d.out = d.out.copy()
    return done


def run_batches(backend, batches, rings=None):
    """Submit every batch (to ring 0, or rings[i]), collect every result, in order."""
    got = []
    for i, batch in enumerate(batches):
        backend.submit(rings[i] if rings else 0, batch)
        got += kept(backend.poll(0.0))
    while backend.in_flight():
        got += kept(backend.poll(1.0))
    return got


def assert_matches_reference(table, requests, done, op_name) -> None:
    want, want_lens = compute(table, requests, reference=True)
    assert np.array_equal(done.out_lens, want_lens)
    assert not done.status.any()
    for i, n in enumerate(want_lens.tolist()):
        got_row, want_row = done.out[i, :n], want[i, :n]
        if op_name == "dense":
            assert np.allclose(got_row.view("<f4"), want_row.view("<f4"), rtol=1e-5, atol=1e-5)
        else:
            assert np.array_equal(got_row, want_row), (op_name, i)


@pytest.mark.parametrize("staging", ["pinned", "registered"])
@pytest.mark.parametrize("slot_bytes", [64, 256, 4096])
@pytest.mark.parametrize("op_name", sorted(BUILTINS))
def test_every_builtin_op_equals_its_reference(op_name, slot_bytes, staging) -> None:
    from gpufeed.gpu.batched import BatchedBackend

    table = OpTable.for_worker(op_name, payload_capacity(slot_bytes))
    backend = BatchedBackend(table, slot_bytes, 512, streams=4, staging=staging)
    rng = np.random.default_rng(slot_bytes)
    arena = np.zeros((1 + 7 + 512 + 300, slot_bytes), np.uint8)
    backend.attach_request_rings([arena])  # registered: DMA straight from this "ring"
    batches, row = [], 0
    for n in (1, 7, 512, 300):  # partial and full batches
        arena[row : row + n] = random_slots(table[0], 0, n, slot_bytes, rng)
        batches.append(arena[row : row + n])
        row += n
    done = run_batches(backend, batches)
    assert [len(d.requests) for d in done] == [1, 7, 512, 300]
    for batch, result in zip(batches, done, strict=True):
        assert_matches_reference(table, batch, result, op_name)
    backend.close()


def test_a_batch_of_every_op_is_dispatched_by_op_id() -> None:
    from gpufeed.gpu.batched import BatchedBackend

    table = OpTable.for_worker("echo", 240)
    rng = np.random.default_rng(1)
    parts = [random_slots(table[i], i, 50, 256, rng) for i in range(len(table))]
    mixed = np.concatenate(parts)[rng.permutation(50 * len(table))]
    backend = BatchedBackend(table, 256, 1024)
    (done,) = run_batches(backend, [mixed])
    want, want_lens = compute(table, mixed, reference=True)
    assert np.array_equal(done.out_lens, want_lens)
    ops = headers(mixed)["op"]
    exact = ops != table.ids["dense"]
    for i in np.flatnonzero(exact).tolist():
        assert np.array_equal(done.out[i, : want_lens[i]], want[i, : want_lens[i]])
    backend.close()


def test_batches_come_back_in_submission_order_per_ring() -> None:
    from gpufeed.gpu.batched import BatchedBackend

    table = OpTable.for_worker("echo", 48)
    backend = BatchedBackend(table, 64, 64, streams=4)
    batches = []
    for b in range(60):
        slots = np.zeros((1 + b % 64, 64), np.uint8)
        header = headers(slots)
        header["len"] = 4
        header["seq"] = np.arange(len(slots)) + 1000 * b
        slots[:, 16:20] = np.frombuffer(np.uint32(b).tobytes(), np.uint8)
        batches.append((b % 3, slots))
    got = run_batches(backend, [s for _, s in batches], rings=[r for r, _ in batches])
    for ring in range(3):
        mine = [d for d in got if d.ring == ring]
        sent = [s for r, s in batches if r == ring]
        assert [d.requests["seq"].tolist() for d in mine] == [
            headers(s)["seq"].tolist() for s in sent
        ]
        assert [int(d.out[0, :4].view("<u4")[0]) for d in mine] == [
            int(s[0, 16:20].view("<u4")[0]) for s in sent
        ]
    backend.close()


def test_worker_with_the_batched_backend_gives_one_correct_result_each(
    client, queue, start_worker
) -> None:
    from test_worker import assert_exactly_one_correct, produce_mixed

    worker = start_worker("--backend", "auto", "--ingest-procs", "2")
    worker.wait_ready(client, keys(queue)[0], consumers=2)
    sent = produce_mixed(client, queue, 5000)
    results = wait_for_results(client, queue, len(sent), worker=worker)
    assert_exactly_one_correct(results, sent)
    (chosen,) = worker.events("backend chosen")
    assert chosen["backend"] == "batched"
    assert worker.terminate() == 0
