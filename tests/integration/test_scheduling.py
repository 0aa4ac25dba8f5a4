"""The batching delay and deadline shedding against a real worker and server."""

from __future__ import annotations

import time

import pytest
import redis

from conftest import keys, wait_for_results
from gpufeed.loadgen.produce import xadd_all

pytestmark = pytest.mark.timeout(180)


def id_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def by_src(client: redis.Redis, queue: str) -> dict[bytes, tuple[int, dict[bytes, bytes]]]:
    """Each result by its input's id: (when committed, in ms; the result's fields)."""
    return {f[b"src"]: (id_ms(i), f) for i, f in client.xrange(keys(queue)[1])}


def test_a_fixed_delay_gathers_a_trickle_into_one_batch(client, queue, start_worker) -> None:
    worker = start_worker("--backend", "cpu", "--max-batch", "8",
                          "--max-queue-delay-us", "300000")  # fmt: skip
    worker.wait_ready(client, keys(queue)[0])
    trickle = []
    for i in range(3):
        trickle.append(client.xadd(keys(queue)[0], {"data": b"t%d" % i}))
        time.sleep(0.03)
    wait_for_results(client, queue, 3, worker=worker)
    results = by_src(client, queue)
    committed = {results[i][0] for i in trickle}
    assert max(committed) - min(committed) <= 1, "three messages, one batch, one commit"
    assert results[trickle[0]][0] - id_ms(trickle[0]) >= 250, "the first waited for the others"
    # A full batch does not wait.
    full = xadd_all(client, keys(queue)[0], [b"f%d" % i for i in range(8)])
    wait_for_results(client, queue, 11, worker=worker)
    results = by_src(client, queue)
    assert max(results[i][0] - id_ms(i) for i in full) < 250


def overload_with_deadlines(client, queue, start_worker, *flags: str) -> tuple[int, int, int]:
    """40 messages due in 350 ms at a worker that answers 4 per 100 ms, after a warm-up
    that lets its cost model see batches of 1 to 4: (ok in time, ok late, shed)."""
    worker = start_worker("--backend", "cpu", "--op", "user_ops:model_paced",
                          "--max-batch", "4", *flags)  # fmt: skip
    worker.wait_ready(client, keys(queue)[0])
    sent = 0
    for n in [1, 2, 3, 4] * 3:
        xadd_all(client, keys(queue)[0], [b"warm"] * n)
        sent += n
        wait_for_results(client, queue, sent, worker=worker)
    deadline = int(time.time() * 1000) + 350
    ids = [client.xadd(keys(queue)[0], {"data": b"due", "deadline_ms": deadline})
           for _ in range(40)]  # fmt: skip
    wait_for_results(client, queue, sent + 40, worker=worker)
    results = by_src(client, queue)
    in_time = late = shed = 0
    for i in ids:
        committed, fields = results[i]
        if fields[b"status"] == b"ok":
            in_time += committed <= deadline
            late += committed > deadline
        elif b"would pass before" in fields[b"error"]:
            shed += 1
    return in_time, late, shed


def test_messages_that_would_miss_their_deadline_are_shed(client, queue, start_worker) -> None:
    in_time, late, shed = overload_with_deadlines(client, queue, start_worker)
    # Three batches of four could make it; on a quiet machine two do (8), the third
    # shed by the margin its predictions have missed by. On a busy one the misses,
    # and so the margin, grow (6 seen during a full test run): what must hold is
    # that shedding keeps a batch's worth, not that it keeps its quiet-day figure.
    assert in_time >= 4, "what can make it is computed"
    assert late <= 1, f"{late} results came after their deadline"
    assert shed >= 20


def test_without_shedding_the_same_overload_answers_late(client, queue, start_worker) -> None:
    in_time, late, shed = overload_with_deadlines(client, queue, start_worker, "--no-shed-late")
    # Those still in time when packed are computed, and the last two batches of them
    # (8 messages) are answered after their deadline: compute spent for nothing.
    assert shed == 0 and late >= 4, (in_time, late)


def test_auto_answers_every_message_once(client, queue, start_worker) -> None:
    worker = start_worker("--backend", "cpu", "--op", "user_ops:slow_echo", "--max-batch", "32",
                          "--max-queue-delay-us", "auto")  # fmt: skip
    worker.wait_ready(client, keys(queue)[0])
    ids = xadd_all(client, keys(queue)[0], [b"m%d" % i for i in range(600)], rate=1500)
    results = wait_for_results(client, queue, len(ids), worker=worker)
    assert sorted(results) == sorted(ids) and all(len(r) == 1 for r in results.values())
    assert all(results[i][0][b"data"] == b"m%d" % n for n, i in enumerate(ids))
    assert worker.terminate() == 0


def test_what_is_held_back_is_answered_on_drain(client, queue, start_worker) -> None:
    worker = start_worker("--backend", "cpu", "--max-queue-delay-us", "1000000")
    worker.wait_ready(client, keys(queue)[0])
    # Neither needs compute: packing answers both, and nothing else is in flight.
    bad = client.xadd(keys(queue)[0], {"data": b"held", "op": "no-such-op"})
    empty = client.xadd(keys(queue)[0], {"cid": b"no data"})
    time.sleep(0.2)  # read, and held back for up to a second
    assert client.xlen(keys(queue)[1]) == 0
    assert worker.terminate() == 0
    results = by_src(client, queue)
    assert results[bad][1][b"status"] == results[empty][1][b"status"] == b"error"
    assert client.xpending(keys(queue)[0], "gpufeed")["pending"] == 0
